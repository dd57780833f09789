"""Dense: y = W x + b on a flat vector (ONNX Gemm, MatMul; torch Linear)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from vfnn.errors import ModelError
from vfnn.layers.base import AffineLayer, Layer, OnnxPart, Shape, numpy_of, tensor_of

if TYPE_CHECKING:
    import onnx

    from vfnn.onnx_io import Importer


@dataclass(frozen=True, eq=False)
class Dense(AffineLayer):
    """y = W x + b on a flat vector; ``weight`` has shape (out, in)."""

    weight: np.ndarray
    bias: np.ndarray

    kind: ClassVar[str] = "dense"
    module_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear,)
    onnx_ops: ClassVar[tuple[str, ...]] = ("Gemm", "MatMul")
    exact_under_ibp: ClassVar[bool] = True
    spec_mergeable: ClassVar[bool] = True

    def __repr__(self) -> str:
        return f"Dense({self.weight.shape[1]}->{self.weight.shape[0]})"

    def problem(self) -> str | None:
        if self.weight.ndim != 2:
            return f"weight of shape {self.weight.shape} is not rank 2"
        if self.bias.shape != (self.weight.shape[0],):
            return f"bias of shape {self.bias.shape} does not fit {self.weight.shape[0]} outputs"
        return None

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 1 or self.weight.shape[1] != int(np.prod(shape)):
            raise ModelError(f"expects {self.weight.shape[1]} inputs, gets shape {shape}")
        return (self.weight.shape[0],)

    def fold_after(self, aff: Any) -> Layer | None:
        s, t = aff.scale.reshape(-1), aff.shift.reshape(-1)
        return Dense(self.weight * s[:, None], self.bias * s + t)

    def fold_before(self, aff: Any) -> Layer | None:
        s, t = aff.scale.reshape(-1), aff.shift.reshape(-1)
        return Dense(self.weight * s[None, :], self.bias + self.weight @ t)

    def permute_input(self, perm: np.ndarray) -> tuple[Layer, np.ndarray | None] | None:
        w = np.empty_like(self.weight)
        w[:, perm] = self.weight
        return Dense(w, self.bias), None

    # -- torch
    def to_module(self) -> nn.Module:
        m = nn.Linear(self.weight.shape[1], self.weight.shape[0])
        m.weight.data, m.bias.data = tensor_of(self.weight), tensor_of(self.bias)
        return m

    @classmethod
    def from_module(cls, m: nn.Module) -> Dense:
        return cls(numpy_of(m.weight), numpy_of(m.bias, m.out_features))

    # -- bounds
    @classmethod
    def center(cls, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, m.weight.to(x.dtype), None if m.bias is None else m.bias.to(x.dtype))

    @classmethod
    def radius(cls, m: nn.Module, d: torch.Tensor) -> torch.Tensor:
        return F.linear(d, m.weight.to(d.dtype).abs())

    @classmethod
    def backward(cls, m: nn.Module, A: torch.Tensor, in_shape: Shape, out_shape: Shape
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = None if m.bias is None else A @ m.bias.to(A.dtype)
        return A @ m.weight.to(A.dtype), bias

    # -- MILP
    def linear_map(self, shape: Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        W = self.weight.astype(np.float64)
        r, c = np.nonzero(W)
        return r, c, W[r, c], self.bias.astype(np.float64)

    # -- ONNX
    def to_onnx(self, index: int, x: str, y: str) -> OnnxPart:
        inits = [numpy_helper.from_array(self.weight, f"W{index}"), numpy_helper.from_array(self.bias, f"B{index}")]
        return [helper.make_node("Gemm", [x, f"W{index}", f"B{index}"], [y], transB=1)], inits

    @classmethod
    def from_onnx(cls, imp: Importer, node: onnx.NodeProto) -> None:
        if node.op_type == "MatMul":
            w, first = imp.const(node)
            if first or w.ndim != 2:
                raise imp.fail(node, "only input @ constant-matrix is supported")
            imp.dense(node, w.T, np.zeros(w.shape[1]))
            return
        if imp.attr(node, "transA", "int", 0):
            raise imp.fail(node, "transA=1 is not supported")
        trans_b = imp.attr(node, "transB", "int", 0)
        alpha, beta = imp.attr(node, "alpha", "float", 1.0), imp.attr(node, "beta", "float", 1.0)
        w = imp.operand(node, 1, "weight")
        if w.ndim != 2:
            raise imp.fail(node, f"the weight must be a matrix, got shape {w.shape}")
        w = (w if trans_b else w.T) * alpha
        bias = imp.operand(node, 2, "bias", optional=True)
        if bias is None:
            bias = np.zeros(w.shape[0])
        elif bias.size not in (1, w.shape[0]) or (bias.ndim == 2 and bias.shape[0] != 1) or bias.ndim > 2:
            raise imp.fail(node, f"bias of shape {bias.shape} does not fit {w.shape[0]} outputs")
        imp.dense(node, w, np.broadcast_to(bias.reshape(-1) * beta, (w.shape[0],)).copy())
