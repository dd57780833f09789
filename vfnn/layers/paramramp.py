"""ParamRamp (Lyu et al., CVPR 2021): a ReLU with a trainable second bend ``r`` per neuron.

    ParamRamp(z) = eta*z (z < 0),  z (0 <= z <= r),  eta*z + (1 - eta)*r (z > r)
                 = eta*z + (1 - eta) * clamp(z, 0, r)

Neurons right of ``r`` are stable again, so training can push neurons into a stable region on
either side.  ONNX has no such operator and external verifiers read ReLU graphs only, so the
export is the exact identity ``relu(z) - eta*relu(-z) - (1 - eta)*relu(z - r)`` (without the
``relu(-z)`` term when eta = 0) as a 1x1 expansion, a Relu and a 1x1 combination (Gemm for flat
inputs, Conv for images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from onnx import helper, numpy_helper
from torch import nn

from vfnn.errors import ModelError
from vfnn.layers.base import ActivationLayer, OnnxPart, Shape, numpy_of, tensor_of
from vfnn.layers.relu import Relaxation, relu_milp

if TYPE_CHECKING:

    from vfnn.verifiers.milp import Encoding


class ParamRampModule(nn.Module):
    """torch form: ``bend`` is a trainable parameter of the neuron shape, ``slope`` (eta) a float
    the trainer may schedule (0.01 -> 0 in the paper).  A bend of +inf is LeakyReLU(eta), the
    paper's warm-up form, until the trainer sets each bend to the neuron's mean activation."""

    def __init__(self, bend: torch.Tensor, slope: float = 0.0):
        super().__init__()
        self.bend = nn.Parameter(bend)
        self.slope = float(slope)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return ramp(z, self.bend, self.slope)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.bend.shape)}, slope={self.slope}"


def ramp(z: torch.Tensor, bend: torch.Tensor, slope: float) -> torch.Tensor:
    """eta*z + (1 - eta)*clamp(z, 0, r), with r clamped to >= 0 (a negative bend has no meaning)."""
    r = bend.to(z.dtype).clamp(min=0)
    return slope * z + (1.0 - slope) * torch.minimum(z.clamp(min=0), r)


@dataclass(frozen=True, eq=False)
class ParamRamp(ActivationLayer):
    """ParamRamp with bends ``bend`` (the shape of the layer's input, >= 0) and leaky slope ``slope``."""

    bend: np.ndarray
    slope: float = 0.0

    kind: ClassVar[str] = "paramramp"
    module_types: ClassVar[tuple[type[nn.Module], ...]] = (ParamRampModule,)
    onnx_ops: ClassVar[tuple[str, ...]] = ()  # exported as ReLUs; an imported graph stays ReLUs

    def __repr__(self) -> str:
        return f"ParamRamp(shape={self.bend.shape}, slope={self.slope})"

    def problem(self) -> str | None:
        if not 0.0 <= self.slope < 1.0:
            return f"slope {self.slope} must be in [0, 1)"
        if not np.all(self.bend >= 0):
            return "bends must be >= 0 (and not NaN)"
        return None

    def output_shape(self, shape: Shape) -> Shape:
        if self.bend.shape != tuple(shape):
            raise ModelError(f"bends of shape {self.bend.shape} do not match input {shape}")
        return shape

    def nonfinite_part(self) -> str | None:
        # +inf bends are LeakyReLU (the warm-up form): legal in training, not in a verified network.
        return "bend" if not np.all(np.isfinite(self.bend)) else None

    # -- torch
    def to_module(self) -> nn.Module:
        return ParamRampModule(tensor_of(self.bend), self.slope)

    @classmethod
    def from_module(cls, m: nn.Module) -> ParamRamp:
        return cls(np.maximum(numpy_of(m.bend), 0.0), float(m.slope))

    # -- bounds
    @classmethod
    def interval(cls, m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ramp(lo, m.bend, m.slope), ramp(hi, m.bend, m.slope)

    @classmethod
    def relax(cls, m: nn.Module, lower: torch.Tensor, upper: torch.Tensor, tight: bool = False) -> Relaxation:
        """The paper's *tight* lines, whatever ``tight`` says: exact on stable pieces; a chord on
        the side where the function is convex (across 0) or concave (across r), and slope eta
        through the kink on the other side.  Each line meets IBP's bound at its end of the interval, so CROWN >= IBP."""
        eta = float(m.slope)
        r = m.bend.to(lower.dtype).clamp(min=0).expand_as(lower)
        lo, u = lower, torch.max(upper, lower)
        fl, fu = ramp(lo, r, eta), ramp(u, r, eta)
        width = (u - lo).clamp(min=1e-12)
        chord_d = (fu - fl) / width
        chord_b = fl - chord_d * lo
        eta_t = torch.full_like(lo, eta)
        left = lo < 0  # the kink at 0 lies inside (or u <= 0: then the pieces coincide)
        right = u > r  # the kink at r lies inside (or lo >= r)
        dead_left, dead_right = u <= 0, lo >= r
        # Upper line: chord where the function is convex over [lo, u] (no kink at r inside), else
        # slope eta through (r, r); lower line: chord where concave (no kink at 0), else slope eta
        # through (0, 0).  Stable pieces: chord = the piece itself.
        upper_d = torch.where(right & ~dead_right, eta_t, chord_d)
        upper_b = torch.where(right & ~dead_right, (1 - eta) * r, chord_b)
        lower_d = torch.where(left & ~dead_left, eta_t, chord_d)
        lower_b = torch.where(left & ~dead_left, torch.zeros_like(lo), chord_b)
        stable = dead_left | dead_right | (~left & ~right)
        return Relaxation(lower_d, upper_d, upper_b, stable, ~stable, lower_b)

    @classmethod
    def unstable(cls, m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        r = m.bend.to(lo.dtype).clamp(min=0)
        return ((lo < 0) & (hi > 0)) | ((lo < r) & (hi > r))

    # -- MILP: eta*z + (1 - eta)*(relu(z) - relu(z - r)), one binary per kink the bounds cross
    def encode_milp(self, enc: Encoding, v: np.ndarray, shape: Shape, bounds: tuple[np.ndarray, np.ndarray]
                    ) -> np.ndarray:
        lo, hi = bounds
        n = v.size
        r = self.bend.astype(np.float64).reshape(-1)
        idx = np.arange(n)
        shifted = enc.linear(v, idx, idx, np.ones(n), -r, n, lo - r, hi - r)
        a = relu_milp(enc, v, lo, hi)
        b = relu_milp(enc, shifted, lo - r, hi - r)
        src = np.concatenate([v, a, b])
        rows = np.concatenate([idx, idx, idx])
        cols = np.concatenate([idx, idx + n, idx + 2 * n])
        vals = np.concatenate([np.full(n, self.slope), np.full(n, 1 - self.slope), np.full(n, self.slope - 1)])
        return enc.linear(src, rows, cols, vals, np.zeros(n), n)

    # -- ONNX: an exact ReLU graph
    def to_onnx(self, index: int, x: str, y: str) -> OnnxPart:
        n_ch = self.bend.shape[0] if self.bend.ndim == 3 else self.bend.size
        eye = np.eye(n_ch, dtype=np.float32)
        # z -> (z, -z, z - r); with eta = 0 the -z part has weight 0 and is left out (2 ReLUs, not 3)
        parts = [1.0, -1.0, 1.0] if self.slope else [1.0, 1.0]
        weights = [1.0, -self.slope, self.slope - 1.0] if self.slope else [1.0, -1.0]
        expand = np.concatenate([p * eye for p in parts])
        combine = np.concatenate([w * eye for w in weights], 1).astype(np.float32)
        k = len(parts)
        names = (f"E{index}", f"EB{index}", f"K{index}", f"KB{index}")
        zero = np.zeros(n_ch, np.float32)
        if self.bend.ndim == 3:  # per-pixel bends: the shift is a broadcast Add after a 1x1 Conv
            shift = np.concatenate([np.zeros_like(self.bend)] * (k - 1) + [-self.bend])[None]
            inits = [numpy_helper.from_array(expand[:, :, None, None], names[0]),
                     numpy_helper.from_array(shift.astype(np.float32), names[1]),
                     numpy_helper.from_array(combine[:, :, None, None], names[2]),
                     numpy_helper.from_array(zero, names[3])]
            nodes = [helper.make_node("Conv", [x, names[0]], [y + "_expand"], kernel_shape=[1, 1]),
                     helper.make_node("Add", [y + "_expand", names[1]], [y + "_shift"]),
                     helper.make_node("Relu", [y + "_shift"], [y + "_relu"]),
                     helper.make_node("Conv", [y + "_relu", names[2], names[3]], [y], kernel_shape=[1, 1])]
            return nodes, inits
        bias = np.concatenate([zero] * (k - 1) + [-self.bend.reshape(-1)]).astype(np.float32)
        inits = [numpy_helper.from_array(expand, names[0]), numpy_helper.from_array(bias, names[1]),
                 numpy_helper.from_array(combine, names[2]), numpy_helper.from_array(zero, names[3])]
        nodes = [helper.make_node("Gemm", [x, names[0], names[1]], [y + "_expand"], transB=1),
                 helper.make_node("Relu", [y + "_expand"], [y + "_relu"]),
                 helper.make_node("Gemm", [y + "_relu", names[2], names[3]], [y], transB=1)]
        return nodes, inits
