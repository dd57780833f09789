"""The one in-memory model of a feed-forward piecewise-linear network.

A :class:`Network` is an input shape (without the batch dimension) and a sequence of layers.
Everything in vfnn (ONNX import/export, bounds, verifiers, training) speaks this model, so each
of them handles a handful of layer kinds instead of the whole ONNX operator set.

Weights are float32 numpy arrays, as in ONNX. ``to_torch`` and ``from_torch`` convert to and
from a ``torch.nn.Sequential`` made only of the modules listed in :data:`TORCH_MODULES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from vfnn.errors import ModelError


@dataclass(frozen=True, eq=False)
class Dense:
    """y = W x + b on a flat vector; ``weight`` has shape (out, in)."""

    weight: np.ndarray
    bias: np.ndarray

    def __repr__(self) -> str:
        return f"Dense({self.weight.shape[1]}->{self.weight.shape[0]})"


@dataclass(frozen=True, eq=False)
class Conv2d:
    """2-D convolution on (C, H, W) inputs; ``padding`` is (top, left, bottom, right)."""

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __repr__(self) -> str:
        o, c, kh, kw = self.weight.shape
        return f"Conv2d({c}->{o}, kernel={kh}x{kw}, stride={self.stride}, padding={self.padding})"


@dataclass(frozen=True, eq=False)
class ElementwiseAffine:
    """y = x * scale + shift, broadcast over the input (input normalisation, batch-norm).

    ``scale`` and ``shift`` have the full shape of the layer's input.  Import folds this layer
    into a neighbouring Dense/Conv2d whenever that is exact; it survives only where it is not
    (e.g. normalisation in front of a padded convolution).
    """

    scale: np.ndarray
    shift: np.ndarray

    def __repr__(self) -> str:
        return f"ElementwiseAffine(shape={self.scale.shape})"


@dataclass(frozen=True)
class ReLU:
    """max(x, 0), elementwise."""


@dataclass(frozen=True)
class Flatten:
    """(C, H, W) -> (C*H*W,) in C order, as torch and ONNX Flatten(axis=1) do."""


@dataclass(frozen=True)
class AvgPool2d:
    """Average pooling without padding."""

    kernel: tuple[int, int]
    stride: tuple[int, int]


Layer = Dense | Conv2d | ElementwiseAffine | ReLU | Flatten | AvgPool2d


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _as_float32(layer: Layer) -> Layer:
    """The same layer with float32 weights (a no-op when they already are)."""
    if isinstance(layer, Dense):
        return Dense(_f32(layer.weight), _f32(layer.bias))
    if isinstance(layer, Conv2d):
        return Conv2d(_f32(layer.weight), _f32(layer.bias), tuple(layer.stride), tuple(layer.padding))
    if isinstance(layer, ElementwiseAffine):
        return ElementwiseAffine(_f32(layer.scale), _f32(layer.shift))
    return layer


class ElementwiseAffineModule(nn.Module):
    """torch form of :class:`ElementwiseAffine` (buffers, not trained)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


TORCH_MODULES = (nn.Linear, nn.Conv2d, ElementwiseAffineModule, nn.ReLU, nn.Flatten, nn.AvgPool2d)


@dataclass(frozen=True, eq=False)
class Network:
    """A feed-forward network: ``input_shape`` (no batch dimension) and ``layers`` in order."""

    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    name: str = field(default="network")

    def __post_init__(self) -> None:
        # One precision everywhere: bounds, MILP, ONNX export and replay must all see the same numbers.
        object.__setattr__(self, "layers", tuple(_as_float32(layer) for layer in self.layers))
        shape = tuple(self.input_shape)
        for i, layer in enumerate(self.layers):
            shape = _output_shape(layer, shape, i)
        object.__setattr__(self, "_shapes", shape)

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self._shapes  # type: ignore[attr-defined]

    @property
    def output_size(self) -> int:
        return int(np.prod(self.output_shape))

    def layer_shapes(self) -> list[tuple[int, ...]]:
        """Output shape of every layer, in order."""
        shapes, shape = [], tuple(self.input_shape)
        for i, layer in enumerate(self.layers):
            shape = _output_shape(layer, shape, i)
            shapes.append(shape)
        return shapes

    @property
    def relu_count(self) -> int:
        """Number of ReLU neurons (the ones that can be unstable)."""
        shapes = self.layer_shapes()
        return sum(int(np.prod(s)) for layer, s in zip(self.layers, shapes, strict=True) if isinstance(layer, ReLU))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Evaluate on a batch ``(N, *input_shape)`` in float64 numpy; returns ``(N, outputs)``."""
        with torch.no_grad():
            module = self.to_torch().double()
            out = module(torch.as_tensor(np.asarray(x, dtype=np.float64)))
        return out.reshape(out.shape[0], -1).numpy()

    def to_torch(self) -> nn.Sequential:
        """A fresh ``nn.Sequential`` computing the same function (float32)."""
        return nn.Sequential(*(_to_module(layer, self.input_shape) for layer in self.layers))

    @staticmethod
    def from_torch(module: nn.Module, input_shape: tuple[int, ...], name: str = "network") -> Network:
        """Read back a ``nn.Sequential`` made of :data:`TORCH_MODULES` (nesting is flattened)."""
        skipped = (nn.Identity, nn.Dropout)
        layers = [_from_module(m) for m in _leaf_modules(module) if not isinstance(m, skipped)]
        return Network(tuple(input_shape), tuple(layers), name).simplified()

    def simplified(self) -> Network:
        """Fold every ElementwiseAffine into a neighbouring linear layer where that is exact."""
        return Network(self.input_shape, _fold_affines(list(self.layers)), self.name)


def nonfinite_part(layer: Layer) -> str | None:
    """The name of the first array of ``layer`` holding NaN or inf, else None.

    Bounds and solvers silently produce nonsense (0 unstable neurons, "HiGHS Empty") on such
    weights, so importers refuse them with the layer named."""
    for part in ("weight", "bias", "scale", "shift"):
        a = getattr(layer, part, None)
        if a is not None and not np.all(np.isfinite(a)):
            return part
    return None


def _structure_problem(layer: Layer) -> str | None:
    """What is malformed in ``layer``'s arrays or hyper-parameters (ranks, sizes, strides), else None."""
    if isinstance(layer, (Dense, Conv2d)):
        rank = 2 if isinstance(layer, Dense) else 4
        if layer.weight.ndim != rank:
            return f"weight of shape {layer.weight.shape} is not rank {rank}"
        if layer.bias.shape != (layer.weight.shape[0],):
            return f"bias of shape {layer.bias.shape} does not fit {layer.weight.shape[0]} outputs"
    if isinstance(layer, Conv2d) and (len(layer.stride) != 2 or min(layer.stride) < 1 or len(layer.padding) != 4
                                      or min(layer.padding) < 0):
        return f"stride {layer.stride} must be 2 positive and padding {layer.padding} 4 non-negative integers"
    if isinstance(layer, AvgPool2d) and (len(layer.kernel) != 2 or len(layer.stride) != 2
                                         or min(*layer.kernel, *layer.stride) < 1):
        return f"kernel {layer.kernel} and stride {layer.stride} must be 2 positive integers each"
    if isinstance(layer, ElementwiseAffine) and layer.scale.shape != layer.shift.shape:
        return f"scale shape {layer.scale.shape} differs from shift shape {layer.shift.shape}"
    return None


def _output_shape(layer: Layer, shape: tuple[int, ...], index: int) -> tuple[int, ...]:
    where = f"layer {index} ({type(layer).__name__})"
    if (problem := _structure_problem(layer)) is not None:
        raise ModelError(f"{where}: {problem}")
    if isinstance(layer, Dense):
        n_in = int(np.prod(shape))
        if len(shape) != 1 or layer.weight.shape[1] != n_in:
            raise ModelError(f"{where}: expects {layer.weight.shape[1]} inputs, gets shape {shape}")
        return (layer.weight.shape[0],)
    if isinstance(layer, Conv2d):
        if len(shape) != 3 or shape[0] != layer.weight.shape[1]:
            raise ModelError(f"{where}: expects ({layer.weight.shape[1]}, H, W) input, gets {shape}")
        kh, kw = layer.weight.shape[2:]
        t, left, b, r = layer.padding
        h = (shape[1] + t + b - kh) // layer.stride[0] + 1
        w = (shape[2] + left + r - kw) // layer.stride[1] + 1
        if h < 1 or w < 1:
            raise ModelError(f"{where}: kernel {kh}x{kw} does not fit the padded input {shape}")
        return (layer.weight.shape[0], h, w)
    if isinstance(layer, AvgPool2d):
        if len(shape) != 3:
            raise ModelError(f"{where}: expects a (C, H, W) input, gets {shape}")
        h = (shape[1] - layer.kernel[0]) // layer.stride[0] + 1
        w = (shape[2] - layer.kernel[1]) // layer.stride[1] + 1
        if h < 1 or w < 1:
            raise ModelError(f"{where}: kernel {layer.kernel} does not fit the input {shape}")
        return (shape[0], h, w)
    if isinstance(layer, Flatten):
        return (int(np.prod(shape)),)
    if isinstance(layer, ElementwiseAffine):
        if layer.scale.shape != shape:
            raise ModelError(f"{where}: scale shape {layer.scale.shape} does not match input {shape}")
        return shape
    if isinstance(layer, ReLU):
        return shape
    raise ModelError(f"{where}: unknown layer type")


def _to_module(layer: Layer, input_shape: tuple[int, ...]) -> nn.Module:
    if isinstance(layer, Dense):
        m = nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
        m.weight.data = torch.from_numpy(_f32(layer.weight).copy())
        m.bias.data = torch.from_numpy(_f32(layer.bias).copy())
        return m
    if isinstance(layer, Conv2d):
        t, left, b, r = layer.padding
        if t != b or left != r:
            raise ModelError(f"asymmetric convolution padding {layer.padding} has no torch.nn.Conv2d form")
        o, c, kh, kw = layer.weight.shape
        m = nn.Conv2d(c, o, (kh, kw), stride=layer.stride, padding=(t, left))
        m.weight.data = torch.from_numpy(_f32(layer.weight).copy())
        m.bias.data = torch.from_numpy(_f32(layer.bias).copy())
        return m
    if isinstance(layer, ElementwiseAffine):
        scale, shift = torch.from_numpy(_f32(layer.scale).copy()), torch.from_numpy(_f32(layer.shift).copy())
        return ElementwiseAffineModule(scale, shift)
    if isinstance(layer, ReLU):
        return nn.ReLU()
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, AvgPool2d):
        return nn.AvgPool2d(layer.kernel, layer.stride)
    raise ModelError(f"unknown layer {layer!r}")


def _leaf_modules(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaf_modules(child)]
    return [module]


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _from_module(m: nn.Module) -> Layer:
    def arr(t: torch.Tensor | None, n: int) -> np.ndarray:
        return np.zeros(n, np.float32) if t is None else t.detach().cpu().float().numpy().copy()

    if isinstance(m, nn.Linear):
        return Dense(arr(m.weight, 0), arr(m.bias, m.out_features))
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or _pair(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise ModelError("Conv2d with groups, dilation, string padding or non-zero padding mode is not supported")
        ph, pw = _pair(m.padding)
        return Conv2d(arr(m.weight, 0), arr(m.bias, m.out_channels), _pair(m.stride), (ph, pw, ph, pw))
    if isinstance(m, ElementwiseAffineModule):
        return ElementwiseAffine(arr(m.scale, 0), arr(m.shift, 0))
    if isinstance(m, nn.ReLU):
        return ReLU()
    if isinstance(m, nn.Flatten):
        return Flatten()
    if isinstance(m, nn.AvgPool2d):
        if _pair(m.padding) != (0, 0):
            raise ModelError("AvgPool2d with padding is not supported")
        return AvgPool2d(_pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size))
    supported = ", ".join(t.__name__ for t in TORCH_MODULES)
    raise ModelError(f"torch module {type(m).__name__} is not supported (supported: {supported})")


def per_channel_values(a: np.ndarray) -> np.ndarray | None:
    """The per-channel values of a (C, H, W) array that is constant over H and W, else None."""
    flat = a.reshape(a.shape[0], -1)
    return flat[:, 0] if np.all(flat == flat[:, :1]) else None


def _fold_backward(prev: Layer, aff: ElementwiseAffine) -> Layer | None:
    """``aff`` applied after ``prev`` as one layer, or None when that is not exact."""
    if isinstance(prev, ElementwiseAffine):
        return ElementwiseAffine(prev.scale * aff.scale, prev.shift * aff.scale + aff.shift)
    if isinstance(prev, Dense):
        s, t = aff.scale.reshape(-1), aff.shift.reshape(-1)
        return Dense(prev.weight * s[:, None], prev.bias * s + t)
    s, t = per_channel_values(aff.scale), per_channel_values(aff.shift)
    if isinstance(prev, Conv2d) and s is not None and t is not None:
        return Conv2d(prev.weight * s[:, None, None, None], prev.bias * s + t, prev.stride, prev.padding)
    return None


def _fold_forward(aff: ElementwiseAffine, nxt: Layer) -> Layer | None:
    """``aff`` applied before ``nxt`` (possibly with a Flatten between) as one layer, or None."""
    if isinstance(nxt, Dense):
        s, t = aff.scale.reshape(-1), aff.shift.reshape(-1)
        return Dense(nxt.weight * s[None, :], nxt.bias + nxt.weight @ t)
    s, t = per_channel_values(aff.scale), per_channel_values(aff.shift)
    # With padding, the border would see the shifted zero: not exact.
    if isinstance(nxt, Conv2d) and nxt.padding == (0, 0, 0, 0) and s is not None and t is not None:
        w = nxt.weight
        return Conv2d(w * s[None, :, None, None], nxt.bias + np.einsum("ocij,c->o", w, t), nxt.stride, nxt.padding)
    return None


def _fold_affines(layers: list[Layer]) -> tuple[Layer, ...]:
    """Merge ElementwiseAffine layers into a neighbouring linear layer wherever that is exact."""
    out: list[Layer] = []
    pending: ElementwiseAffine | None = None  # an affine waiting for a later linear layer
    for layer in layers:
        if isinstance(layer, ElementwiseAffine):
            if np.all(layer.scale == 1) and np.all(layer.shift == 0):
                continue
            if pending is not None:
                pending = _fold_backward(pending, layer)  # type: ignore[assignment]
                continue
            merged = _fold_backward(out[-1], layer) if out else None
            if merged is not None:
                out[-1] = merged
            else:
                pending = layer
            continue
        if pending is not None and isinstance(layer, Flatten):
            flat = ElementwiseAffine(pending.scale.reshape(-1), pending.shift.reshape(-1))
            out.append(layer)
            pending = flat
            continue
        if pending is not None:
            merged = _fold_forward(pending, layer)
            if merged is None:
                out.append(pending)
            else:
                layer = merged
            pending = None
        out.append(layer)
    if pending is not None:
        out.append(pending)
    return tuple(out)
