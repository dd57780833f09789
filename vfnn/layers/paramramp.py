"""ParamRamp (Lyu et al., CVPR 2021): a ReLU with a trainable second bend ``r`` per neuron.

    ParamRamp(z) = eta*z (z < 0),  z (0 <= z <= r),  eta*z + (1 - eta)*r (z > r)
                 = eta*z + (1 - eta) * clamp(z, 0, r)

Neurons right of ``r`` are stable again, so training can push neurons into a stable region on
either side.  ONNX has no such operator and external verifiers read ReLU graphs only, so the
export is the exact identity ``relu(z) - eta*relu(-z) - (1 - eta)*relu(z - r)`` (without the
``relu(-z)`` term when eta = 0): a linear expansion, a ReLU and a linear combination
(:meth:`ParamRamp.export_form`), which the export merges into the Gemm/Conv before and after
(:mod:`vfnn.layers.merge`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from vfnn.errors import ModelError
from vfnn.layers.affine import ElementwiseAffine
from vfnn.layers.base import ActivationLayer, Layer, OnnxPart, Shape, numpy_of, tensor_of
from vfnn.layers.conv import Conv2d
from vfnn.layers.dense import Dense
from vfnn.layers.relu import Relaxation, ReLU, relu_milp

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


# Lyu et al.'s six neuron states: three stable pieces, then the unstable ones by the kinks inside.
STATES: tuple[str, ...] = ("left", "middle", "right", "left-unstable", "right-unstable", "both")


def _states(lo: torch.Tensor, hi: torch.Tensor, r: torch.Tensor) -> dict[str, torch.Tensor]:
    """Masks of the six states over [lo, hi] with bends ``r >= 0`` (a partition of the neurons).

    A kink counts only strictly inside: bounds ending exactly at 0 or r are stable.  The
    definitions overlap only on a single point (lo = hi = 0 is ``left`` and ``middle``; lo = hi
    = r is ``middle`` and ``right``), which goes to ``middle``; so ``left`` is exactly the
    stable neurons with lo < 0 (the statistics' *inactive*) and ``middle`` + ``right`` those
    with lo >= 0 (*active*)."""
    middle = (lo >= 0) & (hi <= r)
    left = (hi <= 0) & ~middle
    right = (lo >= r) & ~middle
    left_unstable = (lo < 0) & (hi > 0) & (hi <= r)
    right_unstable = (lo >= 0) & (lo < r) & (hi > r)
    both = (lo < 0) & (hi > r)
    return {"left": left, "middle": middle, "right": right, "left-unstable": left_unstable,
            "right-unstable": right_unstable, "both": both}


def _pick(cond: torch.Tensor, a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Line ``a`` (slope, intercept) where ``cond``, else line ``b``."""
    return torch.where(cond, a[0], b[0]), torch.where(cond, a[1], b[1])


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
        """Lyu et al.'s lines for the six states (appendix Table 2; ``bound_param_ramp.py`` of the
        paper's code: ``neg-slope-lb`` is ``tight``, ``adaptive-lb`` the default).

        Stable pieces get the piece itself.  Across one kink, the side where the function is
        convex over [l, u] (upper line across 0, lower line across r) gets the chord.  The other
        side is where the choice lies: ``tight`` takes the outer piece's line through the kink
        (slope eta through (0, 0) below, through (r, r) above), which meets IBP's bound at its end
        of the interval, so CROWN/LBP are never looser than IBP (Theorem 2).  Adaptive takes,
        as CROWN's ReLU lower slope does, whichever of the two lines through the kink leaves the
        smaller area: the middle piece (slope 1 through the origin) when the interval reaches
        further past the kink on the middle side (``u > -l`` at 0, ``r - l >= u - r`` at r).
        A neuron across both kinks has two such choices, and its adaptive "middle" lines are
        those through (0, 0) and (u, f(u)) below and through (l, f(l)) and (r, r) above."""
        eta = float(m.slope)
        r = m.bend.to(lower.dtype).clamp(min=0).expand_as(lower)
        lo, u = lower, torch.max(upper, lower)
        st = _states(lo, u, r)
        # r where a line uses it (there r <= u); finite where the bend is +inf (the LeakyReLU
        # warm-up), so unused branches hold no inf or NaN that would reach gradients
        rc = torch.minimum(r, u)
        fl, fu = ramp(lo, r, eta), ramp(u, r, eta)
        zero, one, eta_t = torch.zeros_like(lo), torch.ones_like(lo), torch.full_like(lo, eta)
        right_b = (1 - eta) * rc  # the right piece eta*z + (1 - eta)*r
        # Denominators are positive in the states that use them (l < 0 < u there, or l < r < u);
        # elsewhere 1, so that no unused branch divides by zero (its NaN would reach gradients).
        crossing = st["left-unstable"] | st["right-unstable"]
        chord_d = (fu - fl) / torch.where(crossing, u - lo, one)
        chord_b = fl - chord_d * lo
        if tight:
            wide_l = wide_r = torch.zeros_like(st["both"])
        else:  # the interval reaches further past the kink on the middle side
            wide_l, wide_r = u > -lo, u - r <= r - lo
        # both kinks, adaptive: through (0, 0) and (u, f(u)); through (l, f(l)) and (r, r)
        both_ld = fu / torch.where(st["both"], u, one)
        both_ud = (rc - fl) / torch.where(st["both"], rc - lo, one)
        lower_d = lower_b = upper_d = upper_b = zero  # replaced everywhere: the states partition the neurons
        rules = (  # state, lower line (d, b), upper line (d, b)
            ("left", (eta_t, zero), (eta_t, zero)),
            ("middle", (one, zero), (one, zero)),
            ("right", (eta_t, right_b), (eta_t, right_b)),
            ("left-unstable", _pick(wide_l, (one, zero), (eta_t, zero)), (chord_d, chord_b)),
            ("right-unstable", (chord_d, chord_b), _pick(wide_r, (one, zero), (eta_t, right_b))),
            ("both", _pick(wide_l, (both_ld, zero), (eta_t, zero)),
             _pick(wide_r, (both_ud, (1 - both_ud) * rc), (eta_t, right_b))),
        )
        for name, (ld, lb), (ud, ub) in rules:
            mask = st[name]
            lower_d, lower_b = torch.where(mask, ld, lower_d), torch.where(mask, lb, lower_b)
            upper_d, upper_b = torch.where(mask, ud, upper_d), torch.where(mask, ub, upper_b)
        unstable = st["left-unstable"] | st["right-unstable"] | st["both"]
        return Relaxation(lower_d, upper_d, upper_b, ~unstable, unstable, lower_b)

    @classmethod
    def unstable(cls, m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        r = m.bend.to(lo.dtype).clamp(min=0)
        return ((lo < 0) & (hi > 0)) | ((lo < r) & (hi > r))

    # Measured (docs/bounds.md): adaptive lines gave CROWN/CROWN-IBP lower bounds below IBP's and
    # never a better mean bound on ParamRamp nets, so the tight lines are the default; adaptive on request.
    default_relaxation: ClassVar[str] = "tight"
    state_names: ClassVar[tuple[str, ...]] = STATES
    unstable_states: ClassVar[tuple[str, ...]] = ("left-unstable", "right-unstable", "both")

    @classmethod
    def states(cls, m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> dict[str, torch.Tensor]:
        """The paper's six states (see :func:`_states`): each neuron's piece, or the kinks inside."""
        return _states(lo, hi, m.bend.to(lo.dtype).clamp(min=0).expand_as(lo))

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
    def export_form(self, shape: Shape) -> tuple[Layer, ...]:
        """expansion z -> (z, -z, z - r) (no -z part when eta = 0: 2 ReLUs per neuron, not 3), ReLU,
        combination (1, -eta, eta - 1): Dense layers for flat inputs, 1x1 Conv2d ones for images,
        with a per-pixel shift (an ElementwiseAffine) where the bends differ within a channel."""
        n_ch = self.bend.shape[0] if self.bend.ndim == 3 else self.bend.size
        eye = np.eye(n_ch, dtype=np.float32)
        parts = [1.0, -1.0, 1.0] if self.slope else [1.0, 1.0]
        weights = [1.0, -self.slope, self.slope - 1.0] if self.slope else [1.0, -1.0]
        expand = np.concatenate([p * eye for p in parts])
        combine = np.concatenate([w * eye for w in weights], 1).astype(np.float32)
        k, zero = len(parts), np.zeros(n_ch, np.float32)
        shift = np.concatenate([np.zeros_like(self.bend)] * (k - 1) + [-self.bend]).astype(np.float32)
        if self.bend.ndim != 3:
            return Dense(expand, shift.reshape(-1)), ReLU(), Dense(combine, zero)
        return (Conv2d(expand[:, :, None, None], np.zeros(k * n_ch, np.float32)),
                ElementwiseAffine(np.ones_like(shift), shift), ReLU(), Conv2d(combine[:, :, None, None], zero))

    def to_onnx(self, index: int, x: str, y: str) -> OnnxPart:
        nodes, inits = [], []
        parts = self.export_form(self.bend.shape)
        for j, part in enumerate(parts):
            out = y if j == len(parts) - 1 else f"{y}_part{j}"
            part_nodes, part_inits = part.to_onnx(index, x, out)
            names = {t.name: f"{t.name}_part{j}" for t in part_inits}  # the parts share ``index``
            for t in part_inits:
                t.name = names[t.name]
            for node in part_nodes:
                node.input[:] = [names.get(name, name) for name in node.input]
            nodes += part_nodes
            inits += part_inits
            x = out
        return nodes, inits
