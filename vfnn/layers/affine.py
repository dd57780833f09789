"""ElementwiseAffine: y = x * scale + shift (input normalisation, batch-norm; ONNX Add/Sub/Mul/Div,
BatchNormalization).  Import folds it into a neighbouring Dense/Conv2d whenever that is exact."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from onnx import helper, numpy_helper
from torch import nn

from vfnn.errors import ModelError
from vfnn.layers.base import AffineLayer, Layer, OnnxPart, Shape, numpy_of, per_channel_values, tensor_of
from vfnn.layers.dense import Dense

if TYPE_CHECKING:
    import onnx

    from vfnn.bounds.patches import Patches
    from vfnn.onnx_io import Importer


class ElementwiseAffineModule(nn.Module):
    """torch form of :class:`ElementwiseAffine` (buffers, not trained)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


@dataclass(frozen=True, eq=False)
class ElementwiseAffine(AffineLayer):
    """y = x * scale + shift, broadcast over the input.

    ``scale`` and ``shift`` have the full shape of the layer's input.  It survives import only
    where folding is not exact (e.g. normalisation in front of a padded convolution)."""

    scale: np.ndarray
    shift: np.ndarray

    kind: ClassVar[str] = "affine"
    module_types: ClassVar[tuple[type[nn.Module], ...]] = (ElementwiseAffineModule,)
    onnx_ops: ClassVar[tuple[str, ...]] = ("Add", "Sub", "Mul", "Div", "BatchNormalization")

    def __repr__(self) -> str:
        return f"ElementwiseAffine(shape={self.scale.shape})"

    def problem(self) -> str | None:
        if self.scale.shape != self.shift.shape:
            return f"scale shape {self.scale.shape} differs from shift shape {self.shift.shape}"
        return None

    def output_shape(self, shape: Shape) -> Shape:
        if self.scale.shape != shape:
            raise ModelError(f"scale shape {self.scale.shape} does not match input {shape}")
        return shape

    def is_identity(self) -> bool:
        return bool(np.all(self.scale == 1) and np.all(self.shift == 0))

    def per_channel(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(scale, shift) per channel of a (C, H, W) affine constant over H and W, else None."""
        if self.scale.ndim != 3:
            return None
        s, t = per_channel_values(self.scale), per_channel_values(self.shift)
        return None if s is None or t is None else (s, t)

    def fold_after(self, aff: Any) -> Layer | None:
        return ElementwiseAffine(self.scale * aff.scale, self.shift * aff.scale + aff.shift)

    # -- torch
    def to_module(self) -> nn.Module:
        return ElementwiseAffineModule(tensor_of(self.scale), tensor_of(self.shift))

    @classmethod
    def from_module(cls, m: nn.Module) -> ElementwiseAffine:
        return cls(numpy_of(m.scale), numpy_of(m.shift))

    # -- bounds
    @classmethod
    def center(cls, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x * m.scale.to(x.dtype) + m.shift.to(x.dtype)

    @classmethod
    def radius(cls, m: nn.Module, d: torch.Tensor) -> torch.Tensor:
        return d * m.scale.to(d.dtype).abs()

    @classmethod
    def backward(cls, m: nn.Module, A: torch.Tensor, in_shape: Shape, out_shape: Shape
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = (A * m.shift.to(A.dtype)).flatten(-len(in_shape)).sum(-1)
        return A * m.scale.to(A.dtype), bias

    @classmethod
    def backward_patches(cls, m: nn.Module, p: Patches, in_shape: Shape) -> Patches:
        return p.through_elementwise(m.scale, m.shift)

    # -- verifiers
    def linear_map(self, shape: Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        idx = np.arange(int(np.prod(shape)))
        return idx, idx, self.scale.astype(np.float64).reshape(-1), self.shift.astype(np.float64).reshape(-1)

    def for_marabou(self, shape: Shape) -> Layer:
        """A diagonal Gemm when flat; per-channel affines export as 1x1 convolutions already."""
        if self.scale.ndim == 1:
            return Dense(np.diag(self.scale).astype(np.float32), self.shift.astype(np.float32))
        if self.per_channel() is None:
            raise ModelError("a per-pixel affine layer has no form Marabou's ONNX parser reads correctly")
        return self

    # -- ONNX
    def to_onnx(self, index: int, x: str, y: str) -> OnnxPart:
        if (pc := self.per_channel()) is not None:  # an exact 1x1 Conv with a diagonal kernel
            s, t = pc
            c = self.scale.shape[0]
            w = np.zeros((c, c, 1, 1), np.float32)
            w[np.arange(c), np.arange(c), 0, 0] = s
            inits = [numpy_helper.from_array(w, f"W{index}"),
                     numpy_helper.from_array(t.astype(np.float32), f"B{index}")]
            return [helper.make_node("Conv", [x, f"W{index}", f"B{index}"], [y], kernel_shape=[1, 1])], inits
        # A per-pixel affine has no cleaner form (a shift alone is one Add).
        if np.all(self.scale == 1):
            inits = [numpy_helper.from_array(self.shift[None].astype(np.float32), f"T{index}")]
            return [helper.make_node("Add", [x, f"T{index}"], [y])], inits
        inits = [numpy_helper.from_array(self.scale[None], f"S{index}"),
                 numpy_helper.from_array(self.shift[None], f"T{index}")]
        return [helper.make_node("Mul", [x, f"S{index}"], [y + "_mul"]),
                helper.make_node("Add", [y + "_mul", f"T{index}"], [y])], inits

    @classmethod
    def from_onnx(cls, imp: Importer, node: onnx.NodeProto) -> None:
        if node.op_type == "BatchNormalization":
            cls._batch_norm(imp, node)
            return
        op = node.op_type
        c, first = imp.const(node)
        c = imp.broadcast(node, c)
        if op == "Div" and first:
            raise imp.fail(node, "dividing a constant by the input is not piecewise linear")
        one, zero = np.ones(imp.shape), np.zeros(imp.shape)
        if op == "Div" and np.any(c == 0):
            raise imp.fail(node, "division by zero")
        if op == "Add":
            scale, shift = one, c
        elif op == "Sub":
            scale, shift = (-one, c) if first else (one, -c)
        else:
            scale, shift = (c if op == "Mul" else 1.0 / c), zero
        imp.push(cls(scale, shift), node)

    @classmethod
    def _batch_norm(cls, imp: Importer, node: onnx.NodeProto) -> None:
        shape = imp.shape
        if len(shape) not in (1, 3):
            raise imp.fail(node, f"batch-norm on shape {shape} is not supported")
        if imp.attr(node, "training_mode", "int", 0) or any(node.output[1:]):
            raise imp.fail(node, "batch-norm in training mode uses batch statistics; export in eval mode")
        if imp.attr(node, "spatial", "int", 1) != 1:
            raise imp.fail(node, "batch-norm with spatial=0 is not supported")
        g, b, mean, var = (imp.operand(node, i, what) for i, what in
                           enumerate(("scale", "bias", "mean", "variance"), start=1))
        for v, what in ((g, "scale"), (b, "bias"), (mean, "mean"), (var, "variance")):
            if v.shape != (shape[0],):
                raise imp.fail(node, f"{what} of shape {v.shape} does not fit {shape[0]} channels")
        eps = imp.attr(node, "epsilon", "float", 1e-5)
        if np.any(var < 0) or np.any(var + eps <= 0):
            raise imp.fail(node, f"variance {node.input[4]!r} is negative (or variance + epsilon is not positive)")
        s = g / np.sqrt(var + eps)
        extra = (1,) * (len(shape) - 1)
        imp.push(cls(np.broadcast_to(s.reshape(-1, *extra), shape).copy(),
                     np.broadcast_to((b - mean * s).reshape(-1, *extra), shape).copy()), node)


def fold_affines(layers: list[Layer]) -> tuple[Layer, ...]:
    """Merge ElementwiseAffine layers into a neighbouring linear layer wherever that is exact
    (each kind says how: ``fold_after``/``fold_before``; a reshape passes the affine on, flattened)."""
    out: list[Layer] = []
    pending: ElementwiseAffine | None = None  # an affine waiting for a later linear layer
    for layer in layers:
        if isinstance(layer, ElementwiseAffine):
            if layer.is_identity():
                continue
            if pending is not None:
                pending = pending.fold_after(layer)  # type: ignore[assignment]
                continue
            merged = out[-1].fold_after(layer) if out else None
            if merged is not None:
                out[-1] = merged
            else:
                pending = layer
            continue
        if pending is not None and layer.reshape_only:
            out.append(layer)
            pending = ElementwiseAffine(pending.scale.reshape(-1), pending.shift.reshape(-1))
            continue
        if pending is not None:
            merged = layer.fold_before(pending)
            if merged is None:
                out.append(pending)
            else:
                layer = merged
            pending = None
        out.append(layer)
    if pending is not None:
        out.append(pending)
    return tuple(out)
