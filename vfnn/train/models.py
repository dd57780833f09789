"""Architectures by short strings, and saving/loading trained models.

Every model is a plain ``nn.Sequential`` of the modules :class:`vfnn.network.Network` knows
(``ElementwiseAffineModule`` for the input normalisation, ``Linear``, ``Conv2d``, ``ReLU``,
``Flatten``, optionally ``BatchNorm1d``/``BatchNorm2d``), so the bounds, the ONNX export and the
verifiers see exactly what was trained.

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
from vfnn.layers import ParamRampModule, activation_modules
from vfnn.network import ElementwiseAffineModule, Network

MODEL_FORMAT = "vfnn-model-2"  # 1 stored a layer description and a state_dict

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


ACTIVATIONS = ("relu", "paramramp")


def activation_module(activation: str, shape: tuple[int, ...], ramp_slope: float = 0.0) -> nn.Module:
    """A ReLU, or a ParamRamp whose bends start at +inf: LeakyReLU(eta), the paper's warm-up form,
    until :func:`set_ramp_bends` gives each neuron its mean activation."""
    if activation == "relu":
        return nn.ReLU()
    if activation == "paramramp":
        return ParamRampModule(torch.full(shape, float("inf")), ramp_slope)
    raise ModelError(f"unknown activation {activation!r} (known: {', '.join(ACTIVATIONS)})")


@torch.no_grad()
def set_ramp_bends(model: nn.Sequential, x: torch.Tensor, batch: int = 1024) -> int:
    """Set every ParamRamp bend to the neuron's mean activation over ``x`` (Lyu et al.'s
    initialisation at the end of the warm-up).  Returns the number of ParamRamp layers."""
    ramps = ramp_modules(model)
    sums: list[torch.Tensor] = [torch.zeros_like(m.bend) for m in ramps]
    for s in range(0, len(x), batch):
        _, pre = forward_with_preacts(model, x[s: s + batch])
        for i, (m, z) in enumerate(zip(ramps, pre, strict=True)):
            sums[i] += m(z).sum(0)
    for m, total in zip(ramps, sums, strict=True):
        m.bend.copy_((total / max(len(x), 1)).clamp(min=0))
    return len(ramps)


def ramp_modules(model: nn.Sequential) -> list[ParamRampModule]:
    return [m for m in model if isinstance(m, ParamRampModule)]


def ramp_slope_at(start: float, end: float | None, warmup: int, epochs: int, epoch: int) -> float:
    """ParamRamp's slope in ``epoch``: ``start`` through the warm-up, then linear to ``end`` at the last epoch."""
    if end is None or epoch <= warmup:
        return start
    return start + (end - start) * (epoch - warmup) / max(epochs - 1 - warmup, 1)


@torch.no_grad()
def jitter_ramp_bends(model: nn.Sequential, noise: float) -> None:
    """Lyu et al.'s fix for over-fitted bends: r += N(0, (noise * mean r of the layer)^2), kept >= 0."""
    for m in ramp_modules(model):
        m.bend.add_(torch.randn_like(m.bend) * noise * m.bend.mean()).clamp_(min=0)


def build_model(arch: str | Arch, input_shape: tuple[int, ...], n_classes: int,
                mean: list[float], std: list[float], activation: str = "relu",
                ramp_slope: float = 0.0, batch_norm: bool = False) -> nn.Sequential:
    """A freshly initialised model (torch's default init; seed torch first for reproducibility).

    ``activation`` "paramramp" puts a :class:`~vfnn.layers.ParamRampModule` with leaky slope
    ``ramp_slope`` where a ReLU would be (Lyu et al. 2021).  ``batch_norm`` puts a BatchNorm2d /
    BatchNorm1d between every hidden conv / fc layer and its activation (Li et al. 2023's NRS loss
    and pruning read its gains); the export folds it into that layer."""
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
            mods += [nn.Conv2d(c, out, k, stride=stride, padding=pad), *([nn.BatchNorm2d(out)] if batch_norm else []),
                     activation_module(activation, (out, h, w), ramp_slope)]
            c = out
        mods.append(nn.Flatten())
        width = c * h * w
    for hidden in a.hidden:
        mods += [nn.Linear(width, hidden), *([nn.BatchNorm1d(hidden)] if batch_norm else []),
                 activation_module(activation, (hidden,), ramp_slope)]
        width = hidden
    mods.append(nn.Linear(width, n_classes))
    return nn.Sequential(*mods)


def forward_with_preacts(model: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the input of every activation (the pre-activations whose sign is the neuron state)."""
    pre, acts = [], activation_modules()
    for m in model:
        if isinstance(m, acts):
            pre.append(x)
        x = m(x)
    return x, pre


def relu_layer_sizes(model: nn.Sequential, input_shape: tuple[int, ...]) -> list[int]:
    """Number of neurons in each activation layer."""
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    with torch.no_grad():
        _, pre = forward_with_preacts(model, torch.zeros(1, *input_shape, device=dev))
    return [int(z[0].numel()) for z in pre]


def model_state(model: nn.Sequential, input_shape: tuple[int, ...]) -> dict:
    """The model in its :class:`~vfnn.network.Network` form (one layer per module, nothing
    folded), as plain data that ``torch.load(weights_only=True)`` reads back."""
    return Network.from_torch(model, input_shape, simplify=False).to_state()


def model_from_state(state: dict) -> nn.Sequential:
    """Inverse of :func:`model_state`: the same modules with the same weights, bit for bit."""
    return Network.from_state(state).to_torch()


def save_model_pt(path: str | Path, model: nn.Sequential, meta: dict) -> Path:
    """Write ``model.pt``: the network (:func:`model_state`) and plain metadata (which must hold
    ``input_shape``).

    Loadable with ``torch.load(path, weights_only=True)``; rebuild with :func:`load_model`.
    """
    path = Path(path)
    payload = {"format": MODEL_FORMAT, "network": model_state(model, tuple(meta["input_shape"])), **meta}
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
        return net.to_torch(), {"input_shape": list(net.input_shape), "n_classes": net.output_size, "source": "onnx"}
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign/corrupt files
        raise ModelError(f"{path}: not a readable model file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        hint = f" (found {found}: written by an older vfnn; use its model.onnx or retrain)" if found else ""
        raise ModelError(f"{path}: not a vfnn model.pt (expected format {MODEL_FORMAT}){hint}")
    try:
        model = model_from_state(payload["network"])
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    meta = {k: v for k, v in payload.items() if k not in ("network", "format")}
    return model, meta
