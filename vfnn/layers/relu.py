"""ReLU: max(x, 0), elementwise (ONNX Relu; torch ReLU), and its CROWN relaxation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from onnx import helper
from torch import nn

from vfnn.layers.base import ActivationLayer, OnnxPart, Shape

if TYPE_CHECKING:
    import onnx

    from vfnn.onnx_io import Importer
    from vfnn.verifiers.milp import Encoding


@dataclass
class Relaxation:
    """CROWN's linear bounds of one activation layer: ``ld*x + lb <= f(x) <= ud*x + ub`` (each
    (B, *shape)).  ``lower_b`` is None for ReLU (its lower lines pass through 0), which is also
    what alpha-CROWN's slope optimisation requires."""

    lower_d: torch.Tensor
    upper_d: torch.Tensor
    upper_b: torch.Tensor
    active: torch.Tensor  # l >= 0
    unstable: torch.Tensor  # not active and u > 0
    lower_b: torch.Tensor | None = None

    @staticmethod
    def of(lower: torch.Tensor, upper: torch.Tensor) -> Relaxation:
        """The triangle relaxation with the adaptive lower slope, computed as auto_LiRPA does
        (including its 1e-8 guard), so stable neurons get slopes exactly 0 or 1."""
        lb_r = lower.clamp(max=0)
        ub_r = torch.max(upper.clamp(min=0), lb_r + 1e-8)
        upper_d = ub_r / (ub_r - lb_r)
        upper_b = -lb_r * upper_d
        lower_d = (upper_d > 0.5).to(upper_d.dtype)
        active = lower >= 0
        return Relaxation(lower_d, upper_d, upper_b, active, ~active & (upper > 0))


@dataclass(frozen=True)
class ReLU(ActivationLayer):
    """max(x, 0), elementwise."""

    kind: ClassVar[str] = "relu"
    module_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.ReLU,)
    onnx_ops: ClassVar[tuple[str, ...]] = ("Relu",)

    def to_module(self) -> nn.Module:
        return nn.ReLU()

    @classmethod
    def from_module(cls, m: nn.Module) -> ReLU:
        return cls()

    slope_optimisable: ClassVar[bool] = True

    @classmethod
    def relax(cls, m: nn.Module, lower: torch.Tensor, upper: torch.Tensor, tight: bool = False) -> Relaxation:
        """CROWN's adaptive lower slope (auto_LiRPA's default); ``tight``: slope 0 where unstable."""
        rx = Relaxation.of(lower, upper)
        if tight:
            rx = dataclasses.replace(rx, lower_d=rx.lower_d * (~rx.unstable).to(rx.lower_d.dtype))
        return rx

    @classmethod
    def interval(cls, m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lo.clamp(min=0), hi.clamp(min=0)

    @classmethod
    def unstable(cls, m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return (lo < 0) & (hi > 0)

    def encode_milp(self, enc: Encoding, v: np.ndarray, shape: Shape, bounds: tuple[np.ndarray, np.ndarray]
                    ) -> np.ndarray:
        return relu_milp(enc, v, *bounds)

    def to_onnx(self, index: int, x: str, y: str) -> OnnxPart:
        return [helper.make_node("Relu", [x], [y])], []

    @classmethod
    def from_onnx(cls, imp: Importer, node: onnx.NodeProto) -> None:
        imp.push(cls(), node)


def relu_milp(enc: Encoding, v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """relu(v) for MILP variables ``v`` with bounds [lo, hi]: Tjeng et al.'s big-M encoding for the
    unstable neurons (one binary each); stable ones need no variable (-1 is the constant 0)."""
    out = np.where(lo >= 0, v, -1)  # active: identity; inactive: constant 0 (-1)
    out[v < 0] = -1
    unstable = np.nonzero((lo < 0) & (hi > 0) & (v >= 0))[0]
    n = len(unstable)
    if n:
        a = enc.var(n, 0.0, hi[unstable])
        d = enc.var(n, 0.0, 1.0, integer=True)
        zi, lb, ub = v[unstable], lo[unstable], hi[unstable]
        r = np.arange(n)
        # a - z >= 0
        enc.rows(np.concatenate([a, zi]), np.concatenate([np.ones(n), -np.ones(n)]),
                 np.concatenate([r, r]), n, 0.0, np.inf)
        # a - z - l d <= -l
        enc.rows(np.concatenate([a, zi, d]), np.concatenate([np.ones(n), -np.ones(n), -lb]),
                 np.concatenate([r, r, r]), n, -np.inf, -lb)
        # a - u d <= 0
        enc.rows(np.concatenate([a, d]), np.concatenate([np.ones(n), -ub]), np.concatenate([r, r]),
                 n, -np.inf, 0.0)
        out[unstable] = a
        enc.n_binaries += n
    return out
