"""Flatten: (C, H, W) -> (C*H*W,) in C order (ONNX Flatten, and the shape operators Reshape,
Squeeze, Unsqueeze and Transpose, which import as a flatten, a no-op or a permutation folded into
the next Dense)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from onnx import helper
from torch import nn

from vfnn.layers.base import AffineLayer, Layer, OnnxPart, Shape

if TYPE_CHECKING:
    import onnx

    from vfnn.onnx_io import Importer
    from vfnn.verifiers.milp import Encoding


@dataclass(frozen=True)
class Flatten(AffineLayer):
    """(C, H, W) -> (C*H*W,) in C order, as torch and ONNX Flatten(axis=1) do."""

    kind: ClassVar[str] = "flatten"
    module_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Flatten,)
    onnx_ops: ClassVar[tuple[str, ...]] = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose")
    reshape_only: ClassVar[bool] = True

    def output_shape(self, shape: Shape) -> Shape:
        return (int(np.prod(shape)),)

    def permute_input(self, perm: np.ndarray) -> tuple[Layer, np.ndarray | None] | None:
        return self, perm  # flat order is kept: the permutation waits for the next Dense

    # -- torch
    def to_module(self) -> nn.Module:
        return nn.Flatten()

    @classmethod
    def module_problem(cls, m: nn.Module) -> str | None:
        if m.start_dim != 1 or m.end_dim != -1:
            return "only Flatten(start_dim=1, end_dim=-1) is supported"
        return None

    @classmethod
    def from_module(cls, m: nn.Module) -> Flatten:
        return cls()

    # -- bounds
    @classmethod
    def center(cls, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    @classmethod
    def radius(cls, m: nn.Module, d: torch.Tensor) -> torch.Tensor:
        return d.flatten(1)

    @classmethod
    def interval(cls, m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lo.flatten(1), hi.flatten(1)

    @classmethod
    def backward(cls, m: nn.Module, A: torch.Tensor, in_shape: Shape, out_shape: Shape
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return A.reshape(*A.shape[: A.dim() - len(out_shape)], *in_shape), None

    # -- MILP: the flat variables are already in C order
    def linear_map(self, shape: Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        idx = np.arange(int(np.prod(shape)))
        return idx, idx, np.ones(idx.size), np.zeros(idx.size)

    def encode_milp(self, enc: Encoding, v: np.ndarray, shape: Shape, bounds: tuple[np.ndarray, np.ndarray]
                    ) -> np.ndarray:
        return v

    # -- ONNX
    def to_onnx(self, index: int, x: str, y: str) -> OnnxPart:
        return [helper.make_node("Flatten", [x], [y], axis=1)], []

    @classmethod
    def from_onnx(cls, imp: Importer, node: onnx.NodeProto) -> None:
        op = node.op_type
        if op == "Transpose":
            cls._transpose(imp, node)
            return
        if op == "Flatten":
            if imp.attr(node, "axis", "int", 1) != 1:
                raise imp.fail(node, "only Flatten(axis=1) is supported")
            target: Shape = (int(np.prod(imp.shape)),)
        elif op == "Reshape":
            target = _reshape_target(imp, node)
        else:
            target = _squeeze_target(imp, node, op)
        if len(target) == 1:
            imp.push(cls(), node)
        elif imp.layers and isinstance(imp.layers[-1], Flatten) or all(
                d == 1 for d in target[:-1]) or target == imp.shape:
            # A reshape to a rank the network does not use for computation: keep the data order.
            imp.shape = target
        else:
            raise imp.fail(node, f"reshape from {imp.shape} to {target} is not a flatten")

    @staticmethod
    def _transpose(imp: Importer, node: onnx.NodeProto) -> None:
        """Record the permutation; the importer folds it into the next Dense's columns."""
        perm = imp.attr(node, "perm", "ints", [])
        if sorted(perm) != list(range(len(imp.shape) + 1)) or perm[0] != 0:
            raise imp.fail(node, f"perm {perm} is not a permutation of the {len(imp.shape) + 1} axes that keeps "
                                 "the batch axis first")
        sample_perm = [p - 1 for p in perm[1:]]
        idx = np.arange(int(np.prod(imp.shape))).reshape(imp.shape).transpose(sample_perm).reshape(-1)
        if not np.array_equal(idx, np.arange(idx.size)):
            imp.perm = idx if imp.perm is None else imp.perm[idx]
        imp.shape = tuple(imp.shape[p] for p in sample_perm)


def _reshape_target(imp: Importer, node: onnx.NodeProto) -> Shape:
    """The sample shape a Reshape produces (batch 1), with ONNX's 0 (copy) and -1 (infer) resolved."""
    n, full = int(np.prod(imp.shape)), (1, *imp.shape)
    spec = [int(s) for s in imp.operand(node, 1, "shape", kind="int").reshape(-1)]
    if imp.attr(node, "allowzero", "int", 0) and 0 in spec:
        raise imp.fail(node, "allowzero=1 with a 0 in the shape makes an empty tensor")
    bad_zero = any(s == 0 and i >= len(full) for i, s in enumerate(spec))
    if bad_zero or spec.count(-1) > 1 or min(spec, default=0) < -1:
        raise imp.fail(node, f"invalid reshape target {spec} for shape {imp.shape}")
    spec = [full[i] if s == 0 else s for i, s in enumerate(spec)]
    known = int(np.prod([s for s in spec if s != -1]))
    if -1 in spec and known > 0 and n % known == 0:
        spec[spec.index(-1)] = n // known
    if int(np.prod(spec)) != n or -1 in spec:
        raise imp.fail(node, f"cannot reshape {imp.shape} to {spec}")
    if len(spec) == 1:
        return (n,)
    if spec[0] != 1:
        raise imp.fail(node, f"reshape to {spec} changes the batch axis")
    return tuple(spec[1:])


def _squeeze_target(imp: Importer, node: onnx.NodeProto, op: str) -> Shape:
    """Squeeze/Unsqueeze: only dimensions of size 1 move, the data order stays."""
    axes = imp.attr(node, "axes", "ints", None)
    if axes is None:
        given = imp.operand(node, 1, "axes", kind="int", optional=True)
        axes = [] if given is None else [int(v) for v in given.reshape(-1)]
    full = [1, *imp.shape]
    rank = len(full) + (len(axes) if op == "Unsqueeze" else 0)
    if any(not -rank <= x < rank for x in axes) or len({x % rank for x in axes}) != len(axes):
        raise imp.fail(node, f"axes {axes} are invalid for rank {rank}")
    axes = [x % rank for x in axes]
    if op == "Squeeze":
        axes = axes or [i for i, d in enumerate(full) if d == 1 and i]
        if 0 in axes:
            raise imp.fail(node, "squeezing the batch axis is not supported")
        if any(full[x] != 1 for x in axes):
            raise imp.fail(node, f"cannot squeeze axes {axes} of shape {tuple(full)}: they are not of size 1")
        return tuple(d for i, d in enumerate(full) if i not in axes)[1:]
    if 0 in axes:
        raise imp.fail(node, "unsqueezing in front of the batch axis is not supported")
    for ax in sorted(axes):
        full.insert(ax, 1)
    return tuple(full[1:])
