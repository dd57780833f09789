"""Bound propagation: IBP, CROWN and alpha-CROWN over vfnn's torch models.

:func:`compute_bounds` bounds, for each of B input boxes, the input of every ReLU layer and a
set of linear functions ``C @ y`` of the output.  It works on the ``nn.Sequential`` that
:meth:`vfnn.network.Network.to_torch` builds (and on models being trained, which use the same
module types), on the device and in the dtype of the box tensors.

- ``ibp``: interval arithmetic (centre/radius form); differentiable.
- ``crown-ibp``: IBP pre-activation bounds and one CROWN pass back from ``C @ y`` (Zhang et al.,
  2020): the cheap certified-training bound; differentiable.
- ``crown``: backward linear relaxation (Zhang et al., 2018) with the adaptive lower slope;
  every ReLU layer's pre-activation bounds are CROWN bounds too, for the neurons a reference
  interval leaves unstable, intersected with that reference (see
  :func:`~vfnn.bounds.propagate.crown_intermediate`): a box's bounds do not depend on the other
  boxes of the batch and per neuron are never looser than IBP's.  ``intermediate="batch-union"``
  gives auto_LiRPA's ``compute_bounds(method="CROWN")`` numbers exactly (batch dependence
  included).  The output bounds are intersected with IBP's (``intersect_ibp=False``: the raw
  CROWN output bounds).  Differentiable.
- ``alpha-crown``: lower slopes of unstable neurons (for the output rows and for every
  intermediate layer) optimised jointly by projected Adam steps, as auto_LiRPA's
  ``CROWN-Optimized``; never looser than ``crown`` (elementwise best of both, also for the
  pre-activation bounds), and like it independent of the batch-mates.
- ``lbp``: forward linear bound propagation (Lyu et al., 2021, Theorem 1; :mod:`vfnn.bounds.lbp`):
  lower and upper linear functions of the input carried layer by layer, concretised by Hoelder.
- ``crown-lbp``: LBP pre-activation bounds and one CROWN pass back from ``C @ y``; differentiable,
  the certified-training bound of Lyu et al.

``relaxation``: the lower line of unstable ReLUs, ``"adaptive"`` (CROWN's, slope 1 when u > -l,
else 0; auto_LiRPA's) or ``"tight"`` (slope 0, the paper's: with it IBP <= LBP <= CROWN-LBP <= CROWN,
Theorem 2).  Defaults: tight for lbp/crown-lbp and for ParamRamp networks, adaptive for the others
(auto_LiRPA's numbers).

The module imports no torch until a bound is computed, so command-line tools can list
:data:`METHODS` cheaply.

docs/bounds.md has the formulas, the choices and measured speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vfnn.bounds.plan import Plan

Method = Literal["ibp", "crown-ibp", "crown", "alpha-crown", "lbp", "crown-lbp"]
METHODS: tuple[str, ...] = ("ibp", "crown-ibp", "crown", "alpha-crown", "lbp", "crown-lbp")
LowerLine = Literal["adaptive", "tight"]
RELAXATIONS: tuple[str, ...] = ("adaptive", "tight")
Intermediate = Literal["per-box", "batch-union", "full"]
INTERMEDIATE: tuple[str, ...] = ("per-box", "batch-union", "full")  # = propagate.INTERMEDIATE_RULES

__all__ = ["INTERMEDIATE", "METHODS", "RELAXATIONS", "Bounds", "Intermediate", "LowerLine", "Method", "compute_bounds"]


@dataclass
class Bounds:
    """Result of :func:`compute_bounds`.

    ``pre_activation[i]`` is (lower, upper) of the input of ReLU layer i, each (B, *layer_shape);
    ``lower``/``upper`` are (B, k) bounds of ``C @ y`` (of ``y`` itself when C is None).
    ``lower_lines`` (``compute_bounds(..., lines=True)``) is CROWN's linear lower bound of
    ``C @ y`` in terms of the input, ``(A, bias)`` of shapes (B or 1, k, n_in) and (B or 1, k):
    ``C @ y >= A x + bias`` for every x in the box (before any intersection with IBP)."""

    pre_activation: list[tuple[torch.Tensor, torch.Tensor]]
    lower: torch.Tensor
    upper: torch.Tensor
    lower_lines: tuple[torch.Tensor, torch.Tensor] | None = None


def _spec_matrix(C: torch.Tensor | None, B: int, like: torch.Tensor) -> torch.Tensor | None:
    import torch

    if C is None:
        return None
    C = torch.as_tensor(C).to(dtype=like.dtype, device=like.device)
    if C.dim() == 3 and C.shape[0] != B:
        raise ValueError(f"C has {C.shape[0]} per-box matrices for {B} boxes")
    if C.dim() not in (2, 3):
        raise ValueError(f"C must be (k, n_out) or (B, k, n_out), got shape {tuple(C.shape)}")
    return C


def _alpha_crown(plan: Plan, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor | None, steps: int,
                 lr: float, tight: bool, rule: Intermediate) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                                                      tuple[torch.Tensor, torch.Tensor]]:
    """alpha-CROWN in groups of boxes (memory), never looser than CROWN on the whole batch; a box's
    result does not depend on its group (see :func:`~vfnn.bounds.propagate.alpha_crown`)."""
    import torch

    from vfnn.bounds.propagate import alpha_crown, alpha_group_size, crown_intermediate, crown_output

    pre, relax = crown_intermediate(plan, lower, upper, tight, rule)
    lo, hi = crown_output(plan, relax, lower, upper, C)
    k = lo.shape[1]
    g = alpha_group_size(plan, k)
    parts = []
    for s in range(0, lower.shape[0], g):
        Cs = C[s: s + g] if C is not None and C.dim() == 3 else C
        parts.append(alpha_crown(plan, lower[s: s + g], upper[s: s + g], Cs, steps, lr, tight, rule))
    lo = torch.max(lo, torch.cat([p[1][0] for p in parts]))
    hi = torch.min(hi, torch.cat([p[1][1] for p in parts]))
    pre = [(torch.max(pl, torch.cat([p[0][i][0] for p in parts])),
            torch.min(pu, torch.cat([p[0][i][1] for p in parts]))) for i, (pl, pu) in enumerate(pre)]
    return pre, (lo, hi)


def compute_bounds(model: nn.Module, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor | None = None,
                   method: Method = "crown", *, alpha_steps: int = 20, alpha_lr: float = 0.1,
                   intersect_ibp: bool = True, relaxation: LowerLine | None = None,
                   intermediate: Intermediate = "per-box", lines: bool = False,
                   known: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Bounds:
    """Bound ``model`` over the boxes ``[lower, upper]`` (each (B, *input_shape)).

    ``C``: (k, n_out) for every box or (B, k, n_out) per box; None bounds the outputs.
    ``alpha_steps``/``alpha_lr``: Adam steps and learning rate of alpha-CROWN.
    ``intersect_ibp``: for ``crown``/``alpha-crown``, take the elementwise tighter of the CROWN
    and IBP output bounds (pre-activation bounds are never intersected; see module docstring).
    ``relaxation``: the lines of unstable neurons, ``"adaptive"`` or ``"tight"``; None is tight for
    ``lbp``/``crown-lbp`` and for networks with a kind whose ``default_relaxation`` is tight
    (ParamRamp), adaptive otherwise (IBP has no lines and ignores it).
    ``intermediate``: how ``crown``/``alpha-crown`` choose the neurons CROWN refines
    (:func:`~vfnn.bounds.propagate.crown_intermediate`): ``"per-box"`` (each box its own, a box's
    bounds do not depend on the batch), ``"batch-union"`` (auto_LiRPA's, for its exact numbers) or
    ``"full"`` (every neuron, no reference).
    ``lines``: also return CROWN's lower linear bounds of ``C @ y`` (``Bounds.lower_lines``; the
    methods with one CROWN pass from the output: crown, crown-ibp, crown-lbp), e.g. to shrink a
    box to where a property can fail.
    ``known``: for ``crown``, valid (lower, upper) bounds of every ReLU layer's input per box, each
    (B, *layer_shape) — e.g. an enclosing box's, in a branch and bound over inputs — intersected
    with the reference bounds: the result is never looser, and neurons they prove stable cost no
    CROWN rows.
    """
    import torch

    from vfnn.bounds.lbp import lbp
    from vfnn.bounds.plan import make_plan
    from vfnn.bounds.propagate import crown_intermediate, crown_lines, crown_output, ibp, relax_layer
    from vfnn.errors import ModelError

    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r}; choose from {', '.join(METHODS)}")
    if relaxation is not None and relaxation not in RELAXATIONS:
        raise ValueError(f"unknown relaxation {relaxation!r}; choose from {', '.join(RELAXATIONS)}")
    if intermediate not in INTERMEDIATE:
        raise ValueError(f"unknown intermediate rule {intermediate!r}; choose from {', '.join(INTERMEDIATE)}")
    if known is not None and method != "crown":
        raise ValueError(f"known bounds are used by crown, not {method}")
    if lines and method not in ("crown", "crown-ibp", "crown-lbp"):
        raise ValueError(f"lines are given by crown, crown-ibp and crown-lbp, not {method}")
    if lower.shape != upper.shape:
        raise ValueError(f"lower {tuple(lower.shape)} and upper {tuple(upper.shape)} differ in shape")
    upper = upper.to(lower.dtype)
    plan = make_plan(model, tuple(lower.shape[1:]))
    if relaxation is None:
        tight_kind = any(a.kind.default_relaxation == "tight" for a in plan.activations)
        relaxation = "tight" if method in ("lbp", "crown-lbp") or tight_kind else "adaptive"
    tight = relaxation == "tight"
    if method == "alpha-crown" and not all(a.kind.slope_optimisable for a in plan.activations):
        raise ModelError("alpha-crown optimises ReLU slopes only; bound this network with crown")
    C = _spec_matrix(C, lower.shape[0], lower)
    if method == "ibp":
        pre, (lo, hi) = ibp(plan, lower, upper, C)
        return Bounds(pre, lo, hi)
    if method == "lbp":
        pre, out = lbp(plan, lower, upper, C, tight)
        assert out is not None
        return Bounds(pre, *out)
    if method in ("crown-ibp", "crown-lbp"):
        if method == "crown-ibp":
            pre, _ = ibp(plan, lower, upper, None)
        else:
            pre, _ = lbp(plan, lower, upper, None, tight, output=False)
        relax = [relax_layer(plan, i, pl, pu, tight) for i, (pl, pu) in enumerate(pre)]
        lo, hi = crown_output(plan, relax, lower, upper, C)
        return Bounds(pre, lo, hi, crown_lines(plan, relax, C, lower.dtype, lower.device) if lines else None)
    relax = None
    if method == "crown":
        if known is not None:
            if len(known) != plan.n_relu:
                raise ValueError(f"known has bounds of {len(known)} layers, the model has {plan.n_relu}")
            known = [(kl.to(lower.dtype).reshape(-1, *shape), ku.to(lower.dtype).reshape(-1, *shape))
                     for (kl, ku), shape in zip(known, plan.pre_shapes, strict=True)]
        pre, relax = crown_intermediate(plan, lower, upper, tight, intermediate, known)
        lo, hi = crown_output(plan, relax, lower, upper, C)
    else:
        with torch.no_grad():
            pre, (lo, hi) = _alpha_crown(plan, lower, upper, C, alpha_steps, alpha_lr, tight, intermediate)
    if intersect_ibp:
        if method == "alpha-crown":
            with torch.no_grad():
                _, (ibp_lo, ibp_hi) = ibp(plan, lower, upper, C)
        else:
            _, (ibp_lo, ibp_hi) = ibp(plan, lower, upper, C)
        lo, hi = torch.max(lo, ibp_lo), torch.min(hi, ibp_hi)
    out_lines = crown_lines(plan, relax, C, lower.dtype, lower.device) if relax is not None and lines else None
    return Bounds(pre, lo, hi, out_lines)
