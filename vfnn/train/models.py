"""Architectures by short strings, and saving/loading trained models.

Every model is a plain ``nn.Sequential`` of the modules :class:`vfnn.network.Network` knows
(``ElementwiseAffineModule`` for the input normalisation, ``Linear``, ``Conv2d``, ``ReLU``,
``Flatten``), so the bounds, the ONNX export and the verifiers see exactly what was trained.

Architecture strings:

- ``fc:WxD`` -- D hidden fully connected layers of width W (``fc:100x3``, ``fc:256x4``);
  ``fc:W1,W2,...`` -- hidden widths listed.
- ``cnn:small`` -- the "small" CNN of Gowal et al. 2018 (IBP) that CROWN-IBP (Zhang et al. 2020)
  calls DM-small: conv 16 4x4 stride 2, conv 32 4x4 stride 1, fc 100 (no padding).
- ``cnn:medium`` -- DM-medium: conv 32 3x3/1, conv 32 4x4/2, conv 64 3x3/1, conv 64 4x4/2,
  fc 512, fc 512 (no padding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vfnn.errors import ModelError
from vfnn.network import ElementwiseAffineModule

MODEL_FORMAT = "vfnn-model-1"

# (out_channels, kernel, stride, padding) per conv layer, then hidden fc widths.
CNN_ARCHS: dict[str, tuple[tuple[tuple[int, int, int, int], ...], tuple[int, ...]]] = {
    "small": (((16, 4, 2, 0), (32, 4, 1, 0)), (100,)),
    "medium": (((32, 3, 1, 0), (32, 4, 2, 0), (64, 3, 1, 0), (64, 4, 2, 0)), (512, 512)),
}

ARCH_HELP = "fc:WIDTHxDEPTH (e.g. fc:100x3), fc:W1,W2,... , cnn:small or cnn:medium"


@dataclass(frozen=True)
class Arch:
    """A parsed architecture string."""

    kind: str  # "fc" or "cnn"
    hidden: tuple[int, ...]  # fc: hidden widths; cnn: fc widths after the convolutions
    convs: tuple[tuple[int, int, int, int], ...] = ()

    @staticmethod
    def parse(text: str) -> Arch:
        """Parse ``fc:100x3``, ``fc:200,100``, ``cnn:small``, ``cnn:medium`` (ModelError otherwise)."""
        s = text.strip().lower()
        m = re.fullmatch(r"fc:(\d+)x(\d+)", s)
        if m and int(m.group(1)) > 0 and int(m.group(2)) > 0:
            return Arch("fc", (int(m.group(1)),) * int(m.group(2)))
        m = re.fullmatch(r"fc:(\d+(?:,\d+)*)", s)
        if m and all(int(w) > 0 for w in m.group(1).split(",")):
            return Arch("fc", tuple(int(w) for w in m.group(1).split(",")))
        m = re.fullmatch(r"cnn:(\w+)", s)
        if m and m.group(1) in CNN_ARCHS:
            convs, fcs = CNN_ARCHS[m.group(1)]
            return Arch("cnn", fcs, convs)
        raise ModelError(f"bad architecture {text!r}: expected {ARCH_HELP}")


def normalisation_module(mean: list[float], std: list[float], input_shape: tuple[int, ...]) -> ElementwiseAffineModule:
    """(x - mean) / std per channel, written out to the full input shape as Network requires."""
    c = input_shape[0]
    if len(mean) != c or len(std) != c or min(std) <= 0:
        raise ModelError(f"normalisation needs {c} means and {c} positive stds, got {mean} and {std}")
    m = torch.tensor(mean, dtype=torch.float32).reshape(c, *([1] * (len(input_shape) - 1)))
    s = torch.tensor(std, dtype=torch.float32).reshape(c, *([1] * (len(input_shape) - 1)))
    scale = (1.0 / s).expand(*input_shape).contiguous()
    shift = (-m / s).expand(*input_shape).contiguous()
    return ElementwiseAffineModule(scale, shift)


def build_model(arch: str | Arch, input_shape: tuple[int, ...], n_classes: int,
                mean: list[float], std: list[float]) -> nn.Sequential:
    """A freshly initialised model (torch's default init; seed torch first for reproducibility)."""
    a = Arch.parse(arch) if isinstance(arch, str) else arch
    mods: list[nn.Module] = [normalisation_module(mean, std, input_shape)]
    if a.kind == "fc":
        mods.append(nn.Flatten())
        width = int(np.prod(input_shape))
    else:
        if len(input_shape) != 3:
            raise ModelError(f"a CNN needs (C, H, W) inputs, the data has shape {tuple(input_shape)}")
        c, h, w = input_shape
        for out, k, stride, pad in a.convs:
            h, w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
            if h < 1 or w < 1:
                raise ModelError(f"CNN layers do not fit {tuple(input_shape)} inputs (use an fc architecture)")
            mods += [nn.Conv2d(c, out, k, stride=stride, padding=pad), nn.ReLU()]
            c = out
        mods.append(nn.Flatten())
        width = c * h * w
    for hidden in a.hidden:
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    mods.append(nn.Linear(width, n_classes))
    return nn.Sequential(*mods)


def forward_with_preacts(model: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the input of every ReLU (the pre-activations whose sign is the neuron state)."""
    pre = []
    for m in model:
        if isinstance(m, nn.ReLU):
            pre.append(x)
        x = m(x)
    return x, pre


def relu_layer_sizes(model: nn.Sequential, input_shape: tuple[int, ...]) -> list[int]:
    """Number of neurons in each ReLU layer."""
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    with torch.no_grad():
        _, pre = forward_with_preacts(model, torch.zeros(1, *input_shape, device=dev))
    return [int(z[0].numel()) for z in pre]


def describe(model: nn.Sequential) -> list[dict]:
    """Plain-typed description of the layers, enough to rebuild the module for a state_dict."""
    out: list[dict] = []
    for m in model:
        if isinstance(m, nn.Linear):
            out.append({"type": "linear", "in": m.in_features, "out": m.out_features})
        elif isinstance(m, nn.Conv2d):
            out.append({"type": "conv2d", "in": m.in_channels, "out": m.out_channels,
                        "kernel": list(m.kernel_size), "stride": list(m.stride), "padding": list(m.padding)})
        elif isinstance(m, ElementwiseAffineModule):
            out.append({"type": "affine", "shape": list(m.scale.shape)})
        elif isinstance(m, nn.ReLU):
            out.append({"type": "relu"})
        elif isinstance(m, nn.Flatten):
            out.append({"type": "flatten"})
        elif isinstance(m, nn.AvgPool2d):
            out.append({"type": "avgpool", "kernel": _pair(m.kernel_size), "stride": _pair(m.stride)})
        else:
            raise ModelError(f"cannot train a model containing {type(m).__name__}")
    return out


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(v[0]), int(v[1])]


def from_description(layers: list[dict]) -> nn.Sequential:
    """Inverse of :func:`describe` (parameters uninitialised until a state_dict is loaded)."""
    mods: list[nn.Module] = []
    for d in layers:
        t = d.get("type")
        if t == "linear":
            mods.append(nn.Linear(d["in"], d["out"]))
        elif t == "conv2d":
            mods.append(nn.Conv2d(d["in"], d["out"], tuple(d["kernel"]), stride=tuple(d["stride"]),
                                  padding=tuple(d["padding"])))
        elif t == "affine":
            mods.append(ElementwiseAffineModule(torch.ones(d["shape"]), torch.zeros(d["shape"])))
        elif t == "relu":
            mods.append(nn.ReLU())
        elif t == "flatten":
            mods.append(nn.Flatten())
        elif t == "avgpool":
            mods.append(nn.AvgPool2d(tuple(d["kernel"]), tuple(d["stride"])))
        else:
            raise ModelError(f"unknown layer type {t!r} in a saved model")
    return nn.Sequential(*mods)


def save_model_pt(path: str | Path, model: nn.Sequential, meta: dict) -> Path:
    """Write ``model.pt``: a state_dict, the layer description and plain metadata.

    Loadable with ``torch.load(path, weights_only=True)``; rebuild with :func:`load_model`.
    """
    path = Path(path)
    payload = {"format": MODEL_FORMAT, "layers": describe(model),
               "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, **meta}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_model(path: str | Path) -> tuple[nn.Sequential, dict]:
    """Load a ``model.pt`` of ours or an ONNX file; returns the module and its metadata.

    Metadata always has ``input_shape`` and ``n_classes``.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.suffix.lower() == ".onnx":
        from vfnn.onnx_io import load_onnx

        net = load_onnx(path)
        model = net.to_torch()
        describe(model)  # rejects modules we cannot train
        return model, {"input_shape": list(net.input_shape), "n_classes": net.output_size, "source": "onnx"}
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign/corrupt files
        raise ModelError(f"{path}: not a readable model file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: not a vfnn model.pt (expected format {MODEL_FORMAT})")
    model = from_description(payload["layers"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not match the layer description ({str(exc).splitlines()[0]})") from None
    meta = {k: v for k, v in payload.items() if k not in ("layers", "state_dict", "format")}
    return model, meta
