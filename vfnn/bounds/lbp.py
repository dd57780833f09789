"""LBP: forward linear bound propagation (Lyu et al., CVPR 2021, Theorem 1), and the intermediate
bounds of CROWN-LBP.

Every layer carries a lower and an upper linear function of the input, ``L(x) <= z <= U(x)`` on the
box, as coefficient tensors ``(Bb, n0, *shape)`` (one "image" of the layer per input coordinate:
the columns of the matrix) and constants ``(Bb, *shape)``; ``Bb`` is 1 while the functions are
the same for every box (before the first relaxation) and the number of boxes after.

- Through an affine module, in centre/radius form over the functions (``M = (L + U)/2``,
  ``D = (U - L)/2``): ``M' = W M + b`` by the kind's ``center`` (coefficients: ``center`` minus its
  bias ``center(0)``), ``D' = |W| D`` by its ``radius``.  This is ``W+ L + W- U`` / ``W+ U + W- L``,
  Theorem 1 for an identity activation, so one module at a time is IBP's step lifted to functions.
- Through an activation with lines ``ld z + lb <= f(z) <= ud z + ub`` (the kind's ``relax`` on the
  concrete bounds, optionally with ReLU's tight lower line): ``L' = ld+ L + ld- U + lb``,
  ``U' = ud+ U + ud- L + ub``.
- Concrete bounds by Hoelder over the box: ``L . centre - |L| . radius + const``.
- With ``C``, the rows are carried back through the last chain exactly (the kinds' ``backward``)
  and applied to the last activation's functions, which is never looser than IBP's merging of C
  with a final Linear layer.

Memory is ``O(n0 * widest layer)`` per box; boxes are processed in groups within
:data:`~vfnn.bounds.propagate.ELEMENT_BUDGET`.  Everything is a torch graph (differentiable).
"""

from __future__ import annotations

from math import prod

import torch

from vfnn.bounds.plan import Affine, Plan
from vfnn.bounds.propagate import ELEMENT_BUDGET, Interval, relax_layer

# A linear function of the input: coefficients (Bb, n0, *shape) and constant (Bb, *shape).
Linear = tuple[torch.Tensor, torch.Tensor]


def _module_step(aff: Affine, M: Linear, D: Linear | None) -> tuple[Linear, Linear | None]:
    """Centre function and radius function through one affine module."""
    Mc, Mb = M
    Bb, n0 = Mc.shape[:2]
    zero = torch.zeros((1, *aff.in_shape), dtype=Mb.dtype, device=Mb.device)
    bias = aff.kind.center(aff.module, zero)  # exact: the map's constant term
    mc = aff.kind.center(aff.module, Mc.reshape(Bb * n0, *aff.in_shape)) - bias
    M = (mc.reshape(Bb, n0, *aff.out_shape), aff.kind.center(aff.module, Mb))
    if D is not None:
        Dc, Db = D
        dc = aff.kind.radius(aff.module, Dc.reshape(Dc.shape[0] * n0, *aff.in_shape))
        D = (dc.reshape(Dc.shape[0], n0, *aff.out_shape), aff.kind.radius(aff.module, Db))
    return M, D


def _chain(chain: list[Affine], L: Linear, U: Linear | None) -> tuple[Linear, Linear | None]:
    """Lower and upper functions through an affine chain (``U`` None: L is exact, L = U)."""
    if not chain:
        return L, U
    if U is None:
        M, D = L, None
    else:
        M = ((L[0] + U[0]) / 2.0, (L[1] + U[1]) / 2.0)
        D = ((U[0] - L[0]) / 2.0, (U[1] - L[1]) / 2.0)
    for aff in chain:
        M, D = _module_step(aff, M, D)
    if D is None:
        return M, None
    return (M[0] - D[0], M[1] - D[1]), (M[0] + D[0], M[1] + D[1])


def _concretize(F: Linear, center: torch.Tensor, diff: torch.Tensor, upper: bool) -> torch.Tensor:
    """Hoelder over the box: the minimum (or maximum) of each function, (B, n)."""
    coef, const = F
    Bb, n0 = coef.shape[:2]
    coef = coef.reshape(Bb, n0, prod(coef.shape[2:]))
    if Bb == 1:
        c, d = center @ coef[0], diff @ coef[0].abs()
    else:
        c = torch.bmm(center.unsqueeze(1), coef).squeeze(1)
        d = torch.bmm(diff.unsqueeze(1), coef.abs()).squeeze(1)
    const = const.reshape(Bb, -1)
    return c + d + const if upper else c - d + const


def _scale(s: torch.Tensor, F: Linear) -> Linear:
    """``s * F`` for per-neuron factors ``s`` (B, *shape)."""
    return s.unsqueeze(1) * F[0], s * F[1]


def _add(F: Linear, G: Linear) -> Linear:
    return F[0] + G[0], F[1] + G[1]


def _activation(plan: Plan, i: int, L: Linear, U: Linear, lo: torch.Tensor, hi: torch.Tensor,
                tight: bool) -> tuple[Linear, Linear]:
    """Theorem 1's step through activation ``i`` with its lines on [lo, hi] (signs split, so
    lines of any slope are sound)."""
    rx = relax_layer(plan, i, lo, hi, tight)
    ld, ud = rx.lower_d, rx.upper_d
    lb = torch.zeros_like(ld) if rx.lower_b is None else rx.lower_b
    if bool((ld >= 0).all()) and bool((ud >= 0).all()):  # monotone activations: no cross terms
        nL, nU = _scale(ld, L), _scale(ud, U)
    else:
        nL = _add(_scale(ld.clamp(min=0), L), _scale(ld.clamp(max=0), U))
        nU = _add(_scale(ud.clamp(min=0), U), _scale(ud.clamp(max=0), L))
    return (nL[0], nL[1] + lb), (nU[0], nU[1] + rx.upper_b)


def _rows_back(chain: list[Affine], C: torch.Tensor, out_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows ``C`` (Bc, k, n_out) of the chain's output as functions of its input: exact
    composition by the kinds' ``backward``; coefficients (Bc, k, n_in) and constants (Bc, k)."""
    Bc, k = C.shape[:2]
    A = C.reshape(Bc, 1, k, *out_shape)
    bias = torch.zeros((Bc, 1, k), dtype=C.dtype, device=C.device)
    for aff in reversed(chain):
        A, b = aff.backward(A)
        if b is not None:
            bias = bias + b
    return A.reshape(Bc, k, prod(A.shape[3:])), bias.reshape(Bc, k)


def _group(plan: Plan, lower: torch.Tensor, upper: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor] | None,
           tight: bool, output: bool) -> tuple[list[Interval], Interval | None]:
    B = lower.shape[0]
    n0 = prod(plan.input_shape)
    center, diff = ((upper + lower) / 2.0).flatten(1), ((upper - lower) / 2.0).flatten(1)
    eye = torch.eye(n0, dtype=lower.dtype, device=lower.device).reshape(1, n0, *plan.input_shape)
    L: Linear = (eye, torch.zeros((1, *plan.input_shape), dtype=lower.dtype, device=lower.device))
    U: Linear | None = None  # None: the functions are exact (U = L)
    pre: list[Interval] = []
    for i in range(plan.n_relu):
        L, U = _chain(plan.chains[i], L, U)
        Ui = L if U is None else U
        shape = plan.pre_shapes[i]
        lo = _concretize(L, center, diff, False).reshape(B, *shape)
        hi = _concretize(Ui, center, diff, True).reshape(B, *shape)
        pre.append((lo, hi))
        L, U = _activation(plan, i, L, Ui, lo, hi, tight)
    if not output:
        return pre, None
    if rows is None:  # the outputs themselves
        L, U = _chain(plan.chains[-1], L, U)
        Ui = L if U is None else U
        return pre, (_concretize(L, center, diff, False).flatten(1), _concretize(Ui, center, diff, True).flatten(1))
    A, bias = rows  # (Bc, k, n_in), (Bc, k): functions of the last chain's input
    Ui = L if U is None else U
    Lc, Lb = L[0].flatten(2), L[1].flatten(1)
    Uc, Ub = Ui[0].flatten(2), Ui[1].flatten(1)
    Ap, An = A.clamp(min=0).transpose(1, 2), A.clamp(max=0).transpose(1, 2)  # (Bc, n_in, k)
    out_l = (Lc @ Ap + Uc @ An, (Lb.unsqueeze(1) @ Ap + Ub.unsqueeze(1) @ An).squeeze(1) + bias)
    out_u = (Uc @ Ap + Lc @ An, (Ub.unsqueeze(1) @ Ap + Lb.unsqueeze(1) @ An).squeeze(1) + bias)
    return pre, (_concretize(out_l, center, diff, False), _concretize(out_u, center, diff, True))


def group_size(plan: Plan, k: int | None) -> int:
    """Boxes bounded together: each carries a few coefficient tensors of n0 x (widest layer)."""
    widths = [prod(a.out_shape) for c in plan.chains for a in c] + [prod(plan.input_shape), k or 1]
    return max(1, ELEMENT_BUDGET // (4 * prod(plan.input_shape) * max(widths)))


def lbp(plan: Plan, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor | None, tight: bool = True,
        output: bool = True) -> tuple[list[Interval], Interval | None]:
    """LBP bounds of every activation's input and (``output``) of ``C @ y`` (of y when C is None).

    ``tight``: ReLU's tight lower line (slope 0 when unstable, the paper's choice, under which
    LBP is never looser than IBP, Theorem 2); else CROWN's adaptive one."""
    B = lower.shape[0]
    rows = None
    if output and C is not None:
        rows = _rows_back(plan.chains[-1], C if C.dim() == 3 else C.unsqueeze(0), plan.output_shape)
    k = None if rows is None else rows[0].shape[1]
    g = group_size(plan, k)
    parts = []
    for s in range(0, B, g):
        r = rows if rows is None or rows[0].shape[0] == 1 else (rows[0][s: s + g], rows[1][s: s + g])
        parts.append(_group(plan, lower[s: s + g], upper[s: s + g], r, tight, output))
    if len(parts) == 1:
        return parts[0]
    pre = [(torch.cat([p[0][i][0] for p in parts]), torch.cat([p[0][i][1] for p in parts]))
           for i in range(plan.n_relu)]
    if not output:
        return pre, None
    return pre, (torch.cat([p[1][0] for p in parts]), torch.cat([p[1][1] for p in parts]))
