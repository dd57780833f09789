"""IBP, CROWN and alpha-CROWN (LBP: :mod:`vfnn.bounds.lbp`) over a :class:`~vfnn.bounds.plan.Plan`.

Linear bounds are carried as a tensor ``A`` of shape ``(Bb, P, m, *shape)``: ``Bb`` is 1 while
the coefficients are the same for every box (before the first ReLU relaxation) and ``B`` after;
``P`` is 1 while the lower-bound and upper-bound functions coincide and 2 after (index 0 bounds
from below, index 1 from above); ``m`` is the number of bounded functions (rows).  Biases have
shape ``(Bb, P, m)``.  Keeping both sides in one tensor makes every linear-layer step a single
GEMM or transposed convolution.
"""

from __future__ import annotations

import dataclasses
import math
from math import prod
from typing import Literal

import torch

from vfnn.bounds.patches import Patches
from vfnn.bounds.plan import Affine, Plan
from vfnn.layers import Relaxation

# Largest number of elements one coefficient tensor may hold before rows are split into chunks.
ELEMENT_BUDGET = 1 << 25
# alpha-CROWN keeps every step's coefficient tensors for autograd: boxes are optimised in groups
# whose estimated element count (all layers, all steps kept) stays under this.
ALPHA_BUDGET = 1 << 26
# auto_LiRPA's `minimum_sparsity`: CROWN refines only reference-unstable neurons when they are at
# most this fraction of a layer, otherwise every neuron of the layer.
SPARSE_FRACTION = 0.9

Interval = tuple[torch.Tensor, torch.Tensor]


# -- IBP --------------------------------------------------------------------------------------------
def ibp_chain(chain: list[Affine], lo: torch.Tensor, hi: torch.Tensor) -> Interval:
    for aff in chain:
        lo, hi = aff.interval(lo, hi)
    return lo, hi


def _interval_times(W: torch.Tensor, b: torch.Tensor | None, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
    """Interval of ``W @ x + b`` for x in [lo, hi] (B, n); W is (k, n) or (B, k, n)."""
    mid, diff = ((hi + lo) / 2.0).unsqueeze(-1), ((hi - lo) / 2.0).unsqueeze(-1)
    c, r = (W @ mid).squeeze(-1), (W.abs() @ diff).squeeze(-1)
    if b is not None:
        c = c + b
    return c - r, c + r


def ibp(plan: Plan, lower: torch.Tensor, upper: torch.Tensor,
        C: torch.Tensor | None) -> tuple[list[Interval], Interval]:
    """Interval bound propagation; with C, a final Linear layer is merged with C first
    (``C @ W``), as auto_LiRPA does, which is tighter than bounding y and then C @ y."""
    lo, hi = lower, upper
    pre: list[Interval] = []
    for i in range(plan.n_relu):
        lo, hi = ibp_chain(plan.chains[i], lo, hi)
        pre.append((lo, hi))
        lo, hi = plan.activations[i].interval(lo, hi)
    last = plan.chains[-1]
    if C is not None and last and last[-1].kind.spec_mergeable:
        lo, hi = ibp_chain(last[:-1], lo, hi)
        m = last[-1].module
        W = C @ m.weight.to(C.dtype)
        b = None if m.bias is None else C @ m.bias.to(C.dtype)
        return pre, _interval_times(W, b, lo.flatten(1), hi.flatten(1))
    lo, hi = ibp_chain(last, lo, hi)
    lo, hi = lo.flatten(1), hi.flatten(1)
    return pre, ((lo, hi) if C is None else _interval_times(C, None, lo, hi))


# -- relaxations -----------------------------------------------------------------------------------
def relax_layer(plan: Plan, i: int, lower: torch.Tensor, upper: torch.Tensor, tight: bool = False) -> Relaxation:
    """The linear bounds of activation layer ``i`` over [lower, upper].

    ReLU's own relaxation uses CROWN's adaptive lower slope (auto_LiRPA's default); ``tight``
    replaces it by slope 0 for unstable neurons (Lyu et al.'s tight line, eta*z with eta = 0),
    whose lines meet IBP's bounds at both ends, which is what makes CROWN/LBP never looser than
    IBP.  ParamRamp has tight and adaptive lines of its own (vfnn/layers/paramramp.py)."""
    return plan.activations[i].relax(lower, upper, tight)


# -- backward (CROWN) -------------------------------------------------------------------------------
def _relu_backward(A: torch.Tensor, bias: torch.Tensor, rx: Relaxation,
                   alpha: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace activation outputs by their linear bounds (the lines ``rx`` of the whole layer).

    ``alpha`` (B, 2, m, *shape), if given, replaces the lower slope of unstable neurons
    (index 0 for the lower-bound rows, 1 for the upper-bound rows); ReLU relaxations only."""
    if alpha is None:
        ld_l = ld_u = rx.lower_d.unsqueeze(1)
    else:
        a = alpha.clamp(0, 1) * rx.unstable.unsqueeze(1).unsqueeze(1) + rx.active.unsqueeze(1).unsqueeze(1)
        ld_l, ld_u = a[:, 0], a[:, 1]
    lb = None if rx.lower_b is None else rx.lower_b.unsqueeze(1)
    return substitute_lines(A, bias, (ld_l, ld_u), rx.upper_d.unsqueeze(1), rx.upper_b.unsqueeze(1), lb,
                            rx.upper_d.dim() - 1)


def substitute_lines(A: torch.Tensor, bias: torch.Tensor, lower_d: tuple[torch.Tensor, torch.Tensor],
                     upper_d: torch.Tensor, upper_b: torch.Tensor, lower_b: torch.Tensor | None,
                     nd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The functions ``A`` (Bb, P, m, ...) of activation outputs as functions of their inputs,
    choosing each neuron's lower or upper line by the sign of its coefficient.  The lines
    (``lower_d`` for the lower- and the upper-bound rows) broadcast against ``A[:, 0]``; ``nd``
    trailing axes are the neurons (summed into the constant term)."""
    ld_l, ld_u = lower_d
    lA, uA = A[:, 0], A[:, -1]
    add_l = _row_dot(lA.clamp(max=0), upper_b, nd)
    add_u = _row_dot(uA.clamp(min=0), upper_b, nd)
    if lower_b is not None:  # lower lines with an intercept (not ReLU's)
        add_l = add_l + _row_dot(lA.clamp(min=0), lower_b, nd)
        add_u = add_u + _row_dot(uA.clamp(max=0), lower_b, nd)
    # One select and one product per side (fewer passes over A than clamping it into parts).
    sel_l, sel_u = torch.where(lA < 0, upper_d, ld_l), torch.where(uA > 0, upper_d, ld_u)
    if torch.is_grad_enabled() and (A.requires_grad or sel_l.requires_grad or sel_u.requires_grad):
        new = torch.stack((lA * sel_l, uA * sel_u), 1)
    else:  # the products straight into the result (stacking copied them once more)
        shape = _broadcast_shape(lA.shape, sel_l.shape, sel_u.shape)
        new = torch.empty((shape[0], 2, *shape[1:]), dtype=A.dtype, device=A.device)
        torch.mul(lA, sel_l, out=new[:, 0])
        torch.mul(uA, sel_u, out=new[:, 1])
    return new, bias + torch.stack((add_l, add_u), 1)


def _broadcast_shape(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The broadcast of shapes that are known to broadcast (``torch.broadcast_shapes`` imports ~490
    modules on its first call: 0.5 s of every fresh process's first bound computation)."""
    n = max(len(s) for s in shapes)
    padded = [(1,) * (n - len(s)) + tuple(s) for s in shapes]
    return tuple(0 if 0 in dims else max(dims) for dims in zip(*padded, strict=True))


def _row_dot(X: torch.Tensor, v: torch.Tensor, nd: int) -> torch.Tensor:
    """``(X * v)`` summed over the ``nd`` trailing axes, X (Bb, k, ...) and v (B, 1, ...) with Bb and B
    equal or 1: one matrix product instead of a product tensor of X's size and a sum over it."""
    if v.dim() != X.dim() or v.shape[1] != 1 or X.shape[2:] != v.shape[2:]:
        return (X * v).flatten(-nd).sum(-1)
    Xf, vf = X.flatten(-nd), v.flatten(-nd)  # (Bb, k, n), (B, 1, n)
    if Xf.shape[0] == vf.shape[0]:
        return torch.bmm(Xf, vf.transpose(1, 2)).squeeze(-1)
    if Xf.shape[0] == 1:
        return vf[:, 0] @ Xf[0].T
    return Xf @ vf[0, 0]


def _concretize(A: torch.Tensor, bias: torch.Tensor, center: torch.Tensor, diff: torch.Tensor,
                owned: bool = False) -> Interval:
    """Bounds of the linear functions A @ x + bias over the box center +- diff (auto_LiRPA's form).
    ``owned``: A is a temporary no one else reads, so |A| may overwrite it instead of allocating a
    tensor of A's size (``abs`` was 18% of CROWN's time on a 784-256x4 MLP at batch 30, now 7%)."""
    Bb, P, m = A.shape[:3]
    A = A.reshape(Bb, P * m, -1)
    if Bb == 1:
        ac = center @ A[0].T
        ad = diff @ (A[0].abs_() if owned else A[0].abs()).T
    else:
        ac = torch.bmm(A, center.unsqueeze(-1)).squeeze(-1)
        ad = torch.bmm(A.abs_() if owned else A.abs(), diff.unsqueeze(-1)).squeeze(-1)
    B = center.shape[0]
    ac, ad = ac.reshape(B, P, m), ad.reshape(B, P, m)
    bias = bias.expand(B, P, m)
    return ac[:, 0] - ad[:, 0] + bias[:, 0], ac[:, -1] + ad[:, -1] + bias[:, -1]


Step = Affine | int  # an affine module, or the index of the activation layer to pass back through


def backward_steps(plan: Plan, start: int) -> list[Step]:
    """What back-substitution from the output of ``chains[start]`` to the input passes, in order."""
    steps: list[Step] = []
    for j in range(start, -1, -1):
        steps += reversed(plan.chains[j])
        if j > 0:
            steps.append(j - 1)
    return steps


def back_substitute(steps: list[Step], relax: list[Relaxation], A: torch.Tensor, bias: torch.Tensor,
                    alphas: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The functions ``A`` (with constant ``bias``) of the map before ``steps`` as linear bounds
    in terms of the map after them (the input, for all of a plan's steps)."""
    for step in steps:
        if isinstance(step, Affine):
            A, b = step.backward(A)
            if b is not None:
                bias = bias + b
        else:
            A, bias = _relu_backward(A, bias, relax[step], None if alphas is None else alphas[step])
    return A, bias


def substitute(steps: list[Step], relax: list[Relaxation], A: torch.Tensor, bias: torch.Tensor,
               center: torch.Tensor, diff: torch.Tensor, alphas: list[torch.Tensor] | None = None) -> Interval:
    """Bounds of the functions ``A`` (with constant ``bias``) of the map before ``steps``, by
    back-substitution through them to the input box."""
    out, bias = back_substitute(steps, relax, A, bias, alphas)
    owned = (out.untyped_storage().data_ptr() != A.untyped_storage().data_ptr()
             and not (out.requires_grad and torch.is_grad_enabled()) and out.is_contiguous())
    return _concretize(out, bias, center, diff, owned)


def backward_bounds(plan: Plan, relax: list[Relaxation], start: int, A: torch.Tensor, center: torch.Tensor,
                    diff: torch.Tensor, alphas: list[torch.Tensor] | None = None) -> Interval:
    """Bounds of the functions ``A`` (Bb, 1, m, *shape) of the output of ``chains[start]``,
    by back-substitution to the input box."""
    bias = torch.zeros(A.shape[:3], dtype=A.dtype, device=A.device)
    return substitute(backward_steps(plan, start), relax, A, bias, center, diff, alphas)


def patch_bounds(plan: Plan, relax: list[Relaxation], start: int, rows: torch.Tensor, center: torch.Tensor,
                 diff: torch.Tensor) -> Interval:
    """:func:`backward_bounds` of the unit rows ``rows`` of an image map (``chains[start]``'s
    output, (C, H, W)) carried as patches while that is cheaper (:mod:`vfnn.bounds.patches`)."""
    p = Patches.unit_rows(rows, plan.chain_out_shape(start), center.dtype)
    steps = backward_steps(plan, start)
    for k, step in enumerate(steps):
        q = None if p.covers_map() else _activation_patches(p, relax[step]) if isinstance(step, int) else \
            step.kind.backward_patches(step.module, p, step.in_shape)
        if q is None:
            return substitute(steps[k:], relax, p.dense(), p.bias, center, diff)
        p = q
    return p.concretize(center, diff)


def _activation_patches(p: Patches, rx: Relaxation) -> Patches:
    """Activation outputs replaced by their linear bounds, the lines cut to each row's window."""
    ld = p.cut(rx.lower_d)
    lb = None if rx.lower_b is None else p.cut(rx.lower_b)
    A, bias = substitute_lines(p.A, p.bias, (ld, ld), p.cut(rx.upper_d), p.cut(rx.upper_b), lb, 3)
    return dataclasses.replace(p, A=A, bias=bias)


def _path_numel(plan: Plan, start: int) -> int:
    sizes = [prod(plan.input_shape)] + [prod(a.out_shape) for c in plan.chains[: start + 1] for a in c]
    return max(sizes)


def crown_rows(plan: Plan, relax: list[Relaxation], start: int, rows: torch.Tensor | None,
               center: torch.Tensor, diff: torch.Tensor) -> Interval:
    """CROWN bounds of the neurons ``rows`` (flat indices; None = all) at the output of ``chains[start]``."""
    shape = plan.chain_out_shape(start)
    n = prod(shape)
    idx = torch.arange(n, device=center.device) if rows is None else rows
    B = center.shape[0]
    chunk = max(1, ELEMENT_BUDGET // (B * 2 * _path_numel(plan, start)))
    los, his = [], []
    for s in range(0, idx.numel(), chunk):
        r = idx[s: s + chunk]
        if len(shape) == 3:
            lo, hi = patch_bounds(plan, relax, start, r, center, diff)
        else:
            eye = torch.zeros(r.numel(), n, dtype=center.dtype, device=center.device)
            eye[torch.arange(r.numel(), device=eye.device), r] = 1.0
            lo, hi = backward_bounds(plan, relax, start, eye.reshape(1, 1, r.numel(), *shape), center, diff)
        los.append(lo)
        his.append(hi)
    return torch.cat(los, 1), torch.cat(his, 1)


def spec_rows(plan: Plan, C: torch.Tensor | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The output functions as a coefficient tensor (Bb, 1, k, *output_shape)."""
    n = prod(plan.output_shape)
    if C is None:
        C = torch.eye(n, dtype=dtype, device=device)
    if C.dim() == 2:
        C = C.unsqueeze(0)
    return C.reshape(C.shape[0], 1, C.shape[1], *plan.output_shape)


def _ibp_only(chain: list[Affine], first: bool) -> bool:
    """Chains whose pre-activation bounds auto_LiRPA takes from interval arithmetic: reshapes
    only (nothing to relax), and a single Linear/Conv on the input (IBP is exact there)."""
    if all(a.kind.reshape_only for a in chain):
        return True
    return first and len(chain) == 1 and chain[0].kind.exact_under_ibp


IntermediateRule = Literal["per-box", "batch-union", "full"]
INTERMEDIATE_RULES: tuple[str, ...] = ("per-box", "batch-union", "full")


def _take_crown(rule: str, unstable: torch.Tensor) -> torch.Tensor:
    """Which neurons (B, n) of each box take their CROWN bound, from the reference-unstable ones.

    ``per-box``: box b's own unstable set, or all its neurons when that is more than
    :data:`SPARSE_FRACTION` of the layer; ``batch-union``: auto_LiRPA's, the union over the batch
    (all neurons past the fraction); ``full``: every neuron (CROWN without references)."""
    B, n = unstable.shape
    if rule == "full":
        return torch.ones_like(unstable)
    if rule == "batch-union":
        locs = unstable.any(0)
        if int(locs.sum()) > SPARSE_FRACTION * n:
            locs = torch.ones_like(locs)
        return locs.unsqueeze(0).expand(B, n)
    full = unstable.sum(1) > SPARSE_FRACTION * n
    return unstable | full.unsqueeze(1)


def crown_intermediate(plan: Plan, lower: torch.Tensor, upper: torch.Tensor, tight: bool = False,
                       rule: IntermediateRule = "per-box", known: list[Interval] | None = None
                       ) -> tuple[list[Interval], list[Relaxation]]:
    """Pre-activation bounds of every ReLU layer by CROWN, refining only where it can matter.

    For layer i a reference interval is first propagated from layer i-1's bounds (IBP over one
    chain).  With the default ``per-box`` rule each box takes CROWN on the neurons that are
    unstable for *it* under its reference (by the kind's relaxation), or on all its neurons when
    those are more than 90% of the layer, and keeps the tighter of CROWN and the reference per
    neuron.  CROWN rows are computed once for the union of the boxes' sets, but a row's value for
    a box does not depend on the other boxes, so neither does any box's result: a box's bounds are
    the same alone as in any batch, and per neuron never looser than its reference, hence (by
    induction) never looser than IBP.

    ``batch-union`` is auto_LiRPA's ``sparse_intermediate_bounds`` exactly (the union of the batch's
    unstable neurons replaces the reference, without intersection; past 90% the reference is
    dropped): it reproduces auto_LiRPA's numbers, batch dependence included.  ``full`` runs CROWN
    from every neuron with no reference ("pure" CROWN), for comparisons.  ``tight``: the tight
    lower lines (:func:`relax_layer`) instead of the adaptive ones.  ``known``: valid bounds of every
    layer per box (e.g. of a box that encloses it, in a branch and bound over inputs), intersected
    with each reference: neurons they prove stable take no CROWN rows."""
    if rule not in INTERMEDIATE_RULES:
        raise ValueError(f"unknown intermediate rule {rule!r}; choose from {', '.join(INTERMEDIATE_RULES)}")
    B = lower.shape[0]
    center, diff = ((upper + lower) / 2.0).flatten(1), ((upper - lower) / 2.0).flatten(1)
    pre: list[Interval] = []
    relax: list[Relaxation] = []
    for i in range(plan.n_relu):
        lo, hi = (lower, upper) if i == 0 else plan.activations[i - 1].interval(*pre[-1])
        ref_l, ref_u = ibp_chain(plan.chains[i], lo, hi)
        if known is not None:
            ref_l, ref_u = torch.maximum(ref_l, known[i][0]), torch.minimum(ref_u, known[i][1])
        if not _ibp_only(plan.chains[i], i == 0):
            shape = plan.pre_shapes[i]
            rl, ru = ref_l.reshape(B, -1), ref_u.reshape(B, -1)
            # unstable as the kind sees it: l < 0 < u for ReLU (auto_LiRPA's test), either kink for ParamRamp
            take = _take_crown(rule, plan.relax(i, ref_l, ref_u).unstable.reshape(B, -1))
            locs = take.any(0)
            count = int(locs.sum())
            if count:
                idx = None if count == rl.shape[1] else locs.nonzero().squeeze(1)
                cl, cu = crown_rows(plan, relax, i, idx, center, diff)
                sub_l, sub_u = (rl, ru) if idx is None else (rl[:, idx], ru[:, idx])
                t = take if idx is None else take[:, idx]
                if rule == "per-box":
                    cl, cu = torch.maximum(sub_l, cl), torch.minimum(sub_u, cu)
                new_l, new_u = torch.where(t, cl, sub_l), torch.where(t, cu, sub_u)
                if idx is not None:
                    new_l, new_u = rl.index_copy(1, idx, new_l), ru.index_copy(1, idx, new_u)
                ref_l, ref_u = new_l.reshape(B, *shape), new_u.reshape(B, *shape)
        pre.append((ref_l, ref_u))
        relax.append(relax_layer(plan, i, ref_l, ref_u, tight))
    return pre, relax


def crown_output(plan: Plan, relax: list[Relaxation], lower: torch.Tensor, upper: torch.Tensor,
                 C: torch.Tensor | None, alphas: list[torch.Tensor] | None = None) -> Interval:
    """CROWN (or, with ``alphas``, alpha-CROWN) bounds of C @ y, in row chunks if C is large."""
    B = lower.shape[0]
    center, diff = ((upper + lower) / 2.0).flatten(1), ((upper - lower) / 2.0).flatten(1)
    A = spec_rows(plan, C, lower.dtype, lower.device)
    k = A.shape[2]
    if k == 0:
        empty = torch.zeros(B, 0, dtype=lower.dtype, device=lower.device)
        return empty, empty.clone()
    chunk = k if alphas is not None else max(1, ELEMENT_BUDGET // (B * 2 * _path_numel(plan, plan.n_relu)))
    los, his = [], []
    for s in range(0, k, chunk):
        lo, hi = backward_bounds(plan, relax, plan.n_relu, A[:, :, s: s + chunk], center, diff, alphas)
        los.append(lo)
        his.append(hi)
    return torch.cat(los, 1), torch.cat(his, 1)


def crown_lines(plan: Plan, relax: list[Relaxation], C: torch.Tensor | None, dtype: torch.dtype,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN's lower linear bounds of C @ y in terms of the input: (A (Bb, k, n_in), bias (Bb, k)),
    ``C @ y >= A x + bias`` over the box the relaxations ``relax`` were made for."""
    A = spec_rows(plan, C, dtype, device)
    bias = torch.zeros(A.shape[:3], dtype=dtype, device=device)
    A, bias = back_substitute(backward_steps(plan, plan.n_relu), relax, A, bias)
    return A[:, 0].flatten(2), bias[:, 0]


def _refine_rows(plan: Plan, relax: list[Relaxation], i: int, rows: torch.Tensor, take: torch.Tensor,
                 base: Interval, center: torch.Tensor, diff: torch.Tensor, alphas: list[torch.Tensor]) -> Interval:
    """Layer i's bounds with its ``rows`` recomputed under ``alphas``, intersected with ``base``;
    box b takes the recomputed value only where ``take`` (B, rows) is set (its own unstable
    neurons), so a box's bounds do not depend on which rows its batch-mates needed."""
    B = center.shape[0]
    shape = plan.pre_shapes[i]
    n = prod(shape)
    eye = torch.zeros(rows.numel(), n, dtype=center.dtype, device=center.device)
    eye[torch.arange(rows.numel(), device=eye.device), rows] = 1.0
    cl, cu = backward_bounds(plan, relax, i, eye.reshape(1, 1, rows.numel(), *shape), center, diff, alphas)
    bl, bu = base[0].reshape(B, -1), base[1].reshape(B, -1)
    sl, su = bl[:, rows], bu[:, rows]
    lo = bl.index_copy(1, rows, _tighter(cl, sl, take, 1.0)).reshape(B, *shape)
    hi = bu.index_copy(1, rows, _tighter(cu, su, take, -1.0)).reshape(B, *shape)
    return lo, hi


def _tighter(new: torch.Tensor, base: torch.Tensor, take: torch.Tensor, sign: float) -> torch.Tensor:
    """``max(base, new)`` (sign 1; min for -1) where ``take``, else ``base``, with the gradient
    going to ``new`` wherever it is within rounding of ``base`` or tighter.

    At the first alpha step ``new`` equals ``base`` up to rounding, and which side a plain max
    sends the gradient to would then depend on the rounding, which depends on how many rows and
    boxes share the computation: that made alpha-CROWN's result depend on the batch-mates."""
    tol = torch.finfo(base.dtype).eps ** 0.5 * (1.0 + base.abs())
    best = torch.max(base, new) if sign > 0 else torch.min(base, new)
    live = take & (sign * (new - base) >= -tol)
    return torch.where(live, new + (best - new).detach(), base)


def alpha_group_size(plan: Plan, k: int) -> int:
    """How many boxes alpha-CROWN optimises together within :data:`ALPHA_BUDGET`."""
    cost = 2 * k * _path_numel(plan, plan.n_relu) * (plan.n_relu + 1)
    for i in range(1, plan.n_relu):
        cost += 2 * prod(plan.pre_shapes[i]) * _path_numel(plan, i) * (i + 1)
    return max(1, ALPHA_BUDGET // max(cost, 1))


def alpha_crown(plan: Plan, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor | None, steps: int,
                lr: float, tight: bool = False,
                rule: IntermediateRule = "per-box") -> tuple[list[Interval], Interval]:
    """alpha-CROWN: optimise the lower slopes of unstable neurons with projected Adam steps.

    As auto_LiRPA's ``CROWN-Optimized``, slopes exist per (box, side, bounded row, neuron) for the
    output rows *and* for every intermediate layer's CROWN-unstable neurons (each box's own), and
    all of them are optimised jointly for the output bounds (the intermediate bounds are recomputed
    each step, intersected with CROWN's).  A box whose slope tensors for a layer would exceed a
    memory budget keeps CROWN's bounds there.  Adam is elementwise and each box's loss depends on
    its own slopes only, so a box's result does not depend on the other boxes of ``lower``.  The
    tightest bounds seen (intermediate and output) are returned.  The model parameters receive no
    gradients (``torch.autograd.grad`` w.r.t. the slopes only).  ``tight``: CROWN's starting
    bounds and slopes use the tight lower lines; ``rule``: CROWN's (:func:`crown_intermediate`)."""
    B = lower.shape[0]
    center, diff = ((upper + lower) / 2.0).flatten(1), ((upper - lower) / 2.0).flatten(1)
    with torch.no_grad():
        pre0, relax0 = crown_intermediate(plan, lower, upper, tight, rule)
        pre0 = [(lo.detach(), hi.detach()) for lo, hi in pre0]
        relax0 = [relax_layer(plan, i, lo, hi, tight) for i, (lo, hi) in enumerate(pre0)]
        best_l, best_u = crown_output(plan, relax0, lower, upper, C)
    best_pre = list(pre0)
    if steps <= 0 or not any(bool(r.unstable.any()) for r in relax0):
        return best_pre, (best_l, best_u)
    k = spec_rows(plan, C, lower.dtype, lower.device).shape[2]
    if k == 0:
        return best_pre, (best_l, best_u)

    def slopes(m: int, upto: int) -> list[torch.Tensor]:
        return [r.lower_d.unsqueeze(1).unsqueeze(1).expand(B, 2, m, *r.lower_d.shape[1:]).clone().requires_grad_(True)
                for r in relax0[:upto]]

    # Per box, the intermediate rows optimised are its own CROWN-unstable neurons, and a layer is
    # skipped for a box when its rows for a full group of boxes would exceed the memory budget
    # (a test on the box alone, not on the batch, so that no box depends on its group-mates).
    group = alpha_group_size(plan, k)
    rows: dict[int, torch.Tensor] = {}
    takes: dict[int, torch.Tensor] = {}
    inter: dict[int, list[torch.Tensor]] = {}
    for i in range(1, plan.n_relu):
        lo, hi = pre0[i]
        unstable = (lo.reshape(B, -1) < 0) & (hi.reshape(B, -1) > 0)
        fits = group * 2 * unstable.sum(1) * _path_numel(plan, i) <= 2 * ELEMENT_BUDGET
        unstable = unstable & fits.unsqueeze(1)
        idx = unstable.any(0).nonzero().squeeze(1)
        if idx.numel():
            rows[i], takes[i], inter[i] = idx, unstable[:, idx], slopes(idx.numel(), i)
    final = slopes(k, plan.n_relu)
    params = final + [a for v in inter.values() for a in v]
    # Adam (torch's defaults) with the learning rate decayed by 0.98 per step, written out: building
    # a torch.optim.Adam imports torch._dynamo, 2 s on a first call in a fresh verifier process.
    moments = [(torch.zeros_like(a), torch.zeros_like(a)) for a in params]

    def evaluate() -> tuple[list[Interval], Interval]:
        pre, relax = list(pre0), list(relax0)
        for i, idx in rows.items():
            pre[i] = _refine_rows(plan, relax, i, idx, takes[i], pre0[i], center, diff, inter[i])
            relax[i] = relax_layer(plan, i, *pre[i], tight)
        return pre, crown_output(plan, relax, lower, upper, C, final)

    for step in range(steps + 1):
        with torch.enable_grad() if step < steps else torch.no_grad():
            pre, (lo, hi) = evaluate()
            grads = torch.autograd.grad((hi - lo).sum(), params, allow_unused=True) if step < steps else ()
        with torch.no_grad():
            best_l, best_u = torch.max(best_l, lo.detach()), torch.min(best_u, hi.detach())
            best_pre = [(torch.max(bl, pl.detach()), torch.min(bu, pu.detach()))
                        for (bl, bu), (pl, pu) in zip(best_pre, pre, strict=True)]
            if step == steps:
                break
            t, rate = step + 1, lr * 0.98 ** step
            for a, g, (m, v) in zip(params, grads, moments, strict=True):
                if g is not None:
                    m.mul_(0.9).add_(g, alpha=0.1)
                    v.mul_(0.999).addcmul_(g, g, value=0.001)
                    a.addcdiv_(m, (v.sqrt() / math.sqrt(1 - 0.999 ** t)).add_(1e-8), value=-rate / (1 - 0.9 ** t))
                a.clamp_(0, 1)
    return best_pre, (best_l, best_u)
