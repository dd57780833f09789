"""The built-in complete verifier: a PGD attack, then one big-M MILP per unsafe disjunct (HiGHS).

Encoding (Tjeng, Xiao & Tedrake, ICLR 2019): every linear layer is an equality block over
continuous variables; a ReLU whose pre-activation bounds ``[l, u]`` straddle zero gets a binary
``d`` and ``a >= z, a <= z - l(1 - d), 0 <= a <= u d``; a stable one is the identity (``l >= 0``)
or the constant 0 (``u <= 0``) and costs nothing.  Bounds come from :mod:`vfnn.bounds`: CROWN
(back-substituted bounds roughly halve the binaries compared with IBP), and for the single box of
a high-dimensional input alpha-CROWN on the disjuncts CROWN leaves open (its optimised slopes
settle more of them without a MILP and leave fewer binaries in the rest).

For a disjunct ``A y <= b`` the MILP minimises the margin ``t >= A_i y - b_i`` (all rows): the
disjunct is reachable iff ``min t <= 0``.  ``objective_target`` stops HiGHS at the first
counterexample and ``objective_bound`` prunes every node whose bound is already positive, so the
search ends as soon as either side is settled.  With ``early_stop=false`` the MILP is solved to
optimality instead (the tests run both, since "infeasible under a cutoff" would also hide a
modelling bug).
"""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from vfnn.bounds import METHODS
from vfnn.layers import ActivationLayer
from vfnn.network import Network
from vfnn.spec import Halfspaces, SpecCase
from vfnn.verifiers.attack import AttackConfig, Replayer, box_attack, centre_search, find_counterexample
from vfnn.verifiers.base import Availability, Option, Problem, RawOutcome, Verifier

CUTOFF = 1e-6  # objective_bound: a node whose margin bound exceeds this cannot hold a counterexample
BOUND_SLACK = 1e-5  # widen float32 bounds so rounding never cuts off a reachable point
BOX_ATTACK_BOXES = 16  # per batch of the input-splitting search, boxes a short PGD runs in


class MilpVerifier(Verifier):
    """HiGHS big-M MILP with vfnn's bounds; complete (sat/unsat unless time runs out)."""

    name = "milp"
    description = "built-in MILP (HiGHS, big-M with CROWN bounds) after a PGD attack"
    options = (
        Option("threads", int, 1, "HiGHS threads"),
        Option("bounds", str, "auto", "per-neuron bound method; auto: crown, and where the input box is not split "
               "(high-dimensional inputs) and the activations are ReLUs, alpha-crown on the disjuncts crown leaves "
               "open (fewer MILPs, fewer binaries)", ("auto", *METHODS)),
        Option("attack_steps", int, 50, "PGD steps per restart (0: no attack)"),
        Option("attack_restarts", int, 0, "restarts per batch (0: sized from the input dimension and step cost)"),
        Option("attack_fraction", float, 0.1, "share of the time budget the attack may use"),
        Option("attack_rounds", int, 0, "batches of restarts (0: until the attack's time is up)"),
        Option("attack_time", float, 0.5, "at most this many seconds of attack"),
        Option("attack_guided", bool, True, "also start the attack from bound-guided sub-boxes and corners"),
        Option("branching", str, "mixed", "input to split: mixed (widest at even split depths, smear at odd ones), "
               "widest (the widest input, alpha,beta-CROWN's naive), smear (|gradient| x width at the centre) or sb "
               "(bound both halves along every input, keep the best; ~10x dearer per box)",
               ("mixed", "widest", "smear", "sb")),
        Option("batch", int, 256, "input boxes bounded together in one batch"),
        Option("split_max_inputs", int, 16, "bisect input boxes (BaB on inputs) for at most this many inputs"),
        Option("split_binaries", int, 24, "split a box while its MILP would have more binaries than this"),
        Option("presolve", bool, False, "HiGHS presolve of each MILP (off: on 784-input MLPs it spends seconds "
               "on the dense first layer, and the MILPs that finish take 1.3-2.1x longer with it)"),
        Option("early_stop", bool, True, "stop each MILP once its sign is settled (objective bound/target)"),
        Option("seed", int, 0, "random seed of the attack"),
    )

    def availability(self) -> Availability:
        try:
            return Availability(True, version=f"highspy {version('highspy')}")
        except PackageNotFoundError:
            return Availability(False, reason="highspy is not installed", install_hint="pip install highspy")

    def _solve(self, problem: Problem, options: dict[str, Any]) -> RawOutcome:
        import torch

        torch.manual_seed(options["seed"])
        start = time.monotonic()
        spec, net = problem.spec, problem.network
        stats: dict[str, Any] = {"boxes": 0, "milps": 0, "binaries": 0, "nodes": 0, "pruned_by_bounds": 0,
                                 "box_attacks": 0}

        def done(status: str, x: np.ndarray | None = None, message: str = "") -> RawOutcome:
            return RawOutcome(status, None if x is None else x.tolist(),  # type: ignore[arg-type]
                              tool_time=time.monotonic() - start, tool_stats=stats, message=message)

        replayer = Replayer(problem.onnx_path, spec)
        if options["attack_steps"] > 0:
            budget = min(options["attack_fraction"] * problem.time_left(), options["attack_time"])
            found = find_counterexample(net, spec, start + budget, replayer, AttackConfig(
                options["attack_steps"], options["attack_restarts"], options["attack_rounds"],
                options["attack_guided"], options["seed"]))
            stats.update(found.stats())
            if found.x is not None:
                stats["found_by"] = "attack"
                return done("sat", found.x)
        model = net.to_torch().double()
        split = net.input_size <= options["split_max_inputs"]
        method, refine = options["bounds"], False
        if method == "auto":
            relus = all(type(layer).slope_optimisable for layer in net.layers if isinstance(layer, ActivationLayer))
            method, refine = "crown", relus and not split
        stats["refined_by_alpha"] = 0
        undecided: list[tuple[int, int, str]] = []
        for ci, case in enumerate(spec.cases):
            if not case.unsafe:  # nothing is unsafe for this input region
                continue
            rows = np.cumsum([0] + [h.A.shape[0] for h in case.unsafe])
            C = np.concatenate([h.A for h in case.unsafe], 0)
            # a box, its open disjuncts, and the bounds of the box it was split from (valid in it)
            queue: list[tuple[np.ndarray, np.ndarray, tuple[int, ...], Any]] = [
                (case.lower, case.upper, tuple(range(len(case.unsafe))), None)]
            while queue:
                if problem.time_left() <= 0:
                    return done("timeout")
                batch = queue[-options["batch"]:]
                del queue[-options["batch"]:]
                stats["boxes"] += len(batch)
                lows, highs = np.stack([b[0] for b in batch]), np.stack([b[1] for b in batch])
                x, smear = centre_search(model, net, lows, highs, case, ci, replayer)
                if x is not None:
                    stats["found_by"] = "box centre"
                    return done("sat", x)
                known = None if any(b[3] is None for b in batch) else [
                    (np.stack([b[3][i][0] for b in batch]), np.stack([b[3][i][1] for b in batch]))
                    for i in range(len(batch[0][3]))]
                pre, row_lower = box_bounds(model, net, lows, highs, C, method, known)
                if split and options["branching"] == "sb":
                    score = _sb_scores(model, net, batch, C, rows, case, method)
                else:
                    score = split_scores(options["branching"], case, lows, highs, smear)
                promising: list[tuple[float, int]] = []  # (margin bound, box) of the boxes split again
                for k, (lo, hi, open_, _) in enumerate(batch):
                    still = tuple(d for d in open_ if not np.any(
                        row_lower[k, rows[d]:rows[d + 1]] > case.unsafe[d].b + CUTOFF))
                    stats["pruned_by_bounds"] += len(open_) - len(still)
                    box_pre = [(pl[k], pu[k]) for pl, pu in pre]
                    if still and refine:  # the one box of a high-dimensional input: worth alpha-CROWN
                        n_open = len(still)
                        still, box_pre = _refine(model, net, lo, hi, case, still, box_pre)
                        stats["refined_by_alpha"] += 1
                        stats["pruned_by_bounds"] += n_open - len(still)
                    if not still:
                        continue
                    unstable = sum(int(np.sum((pl < 0) & (pu > 0))) for pl, pu in box_pre)
                    if split and unstable > options["split_binaries"] and len(queue) < 1_000_000:
                        queue.extend((lo2, hi2, still, box_pre) for lo2, hi2 in _bisect(lo, hi, score[k]))
                        promising.append((min(float(np.max(row_lower[k, rows[d]:rows[d + 1]] - case.unsafe[d].b))
                                              for d in still), k))
                        continue
                    encoding = Encoding(net, lo, hi, box_pre)
                    stats["binaries"] += encoding.n_binaries
                    for d in still:
                        left = problem.time_left()
                        if left <= 0:
                            return done("timeout")
                        status, x, nodes = encoding.solve(case.unsafe[d], left, options["threads"],
                                                          options["early_stop"], options["presolve"])
                        stats["milps"] += 1
                        stats["nodes"] += nodes
                        if status == "sat":
                            stats["found_by"] = "milp"
                            return done("sat", x)
                        if status != "unsat":
                            undecided.append((ci, d, status))
                if promising:  # a short PGD inside the boxes whose margin bound is lowest
                    pick = [k for _, k in sorted(promising)[:BOX_ATTACK_BOXES]]
                    stats["box_attacks"] += len(pick)
                    x = box_attack(model, net, spec, ci, lows[pick], highs[pick], replayer, problem.deadline)
                    if x is not None:
                        stats["found_by"] = "box attack"
                        return done("sat", x)
        if not undecided:
            return done("unsat")
        status = "timeout" if any(s == "timeout" for *_, s in undecided) else "unknown"
        return done(status, message="; ".join(f"case {c} disjunct {d}: {s}" for c, d, s in undecided[:5]))


def box_bounds(model: Any, net: Network, lows: np.ndarray, highs: np.ndarray, C: np.ndarray, method: str,
               known: list[tuple[np.ndarray, np.ndarray]] | None = None
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """vfnn's bounds for a batch of boxes (float64): per ReLU layer (lower, upper) of shape
    (B, neurons), widened by BOUND_SLACK, and lower bounds of ``C @ y`` (B, k).  ``known``: valid
    bounds of the same shapes (the enclosing boxes', already widened); the result is never looser
    and, for crown, neurons they prove stable cost no CROWN rows."""
    import torch

    from vfnn.bounds import compute_bounds

    B = lows.shape[0]
    lo = torch.as_tensor(lows, dtype=torch.float64).reshape(B, *net.input_shape)
    hi = torch.as_tensor(highs, dtype=torch.float64).reshape(B, *net.input_shape)
    given = None if known is None or method != "crown" else [
        (torch.as_tensor(kl), torch.as_tensor(ku)) for kl, ku in known]
    with torch.no_grad():
        b = compute_bounds(model, lo, hi, C=torch.as_tensor(C, dtype=torch.float64), method=method, known=given)
    pre = []
    for i, (pl, pu) in enumerate(b.pre_activation):
        pl, pu = pl.reshape(B, -1).numpy(), pu.reshape(B, -1).numpy()
        pl, pu = pl - BOUND_SLACK * (1 + np.abs(pl)), pu + BOUND_SLACK * (1 + np.abs(pu))
        if known is not None:  # widening applies to the new bounds only: inherited ones do not drift
            pl, pu = np.maximum(pl, known[i][0]), np.minimum(pu, known[i][1])
        pre.append((pl, pu))
    return pre, b.lower.reshape(B, -1).numpy() - BOUND_SLACK


def _refine(model: Any, net: Network, lo: np.ndarray, hi: np.ndarray, case: SpecCase, still: tuple[int, ...],
            pre: list[tuple[np.ndarray, np.ndarray]]) -> tuple[tuple[int, ...], list[tuple[np.ndarray, np.ndarray]]]:
    """alpha-CROWN on the rows of the disjuncts CROWN left open: the disjuncts it still leaves open
    and the pre-activation bounds, elementwise the tighter of both (fewer binaries)."""
    rows = np.cumsum([0] + [case.unsafe[d].A.shape[0] for d in still])
    C = np.concatenate([case.unsafe[d].A for d in still], 0)
    alpha_pre, row_lower = box_bounds(model, net, lo[None], hi[None], C, "alpha-crown")
    left = tuple(d for j, d in enumerate(still) if not np.any(
        row_lower[0, rows[j]:rows[j + 1]] > case.unsafe[d].b + CUTOFF))
    return left, [(np.maximum(pl, al[0]), np.minimum(pu, au[0])) for (pl, pu), (al, au) in zip(pre, alpha_pre,
                                                                                               strict=True)]


def _sb_scores(model: Any, net: Network, batch: list, C: np.ndarray, rows: np.ndarray, case: SpecCase,
               method: str) -> np.ndarray:
    """Split scores by trial: bound both halves of every box along every input (one batch) and
    score each input by the worse half's proof value min_d max_i (lower(A_i y) - b_i)."""
    n = batch[0][0].size
    lows, highs = [], []
    for lo, hi, _ in batch:
        for j in range(n):
            for (a, b) in _bisect(lo, hi, np.eye(n)[j]):
                lows.append(a)
                highs.append(b)
    _, row_lower = box_bounds(model, net, np.stack(lows), np.stack(highs), C, method)
    row_lower = row_lower.reshape(len(batch), n, 2, -1)
    scores = np.empty((len(batch), n))
    for k, (_, _, open_) in enumerate(batch):
        value = np.min([np.max(row_lower[k, :, :, rows[d]:rows[d + 1]] - case.unsafe[d].b, axis=-1) for d in open_],
                       axis=0)  # (n, 2): > 0 where that half is proven safe
        scores[k] = value.min(axis=1)
    return scores - scores.min(axis=1, keepdims=True) + 1e-9 * (np.stack([h - lo for lo, h, _ in batch]))


def split_scores(branching: str, case: SpecCase, lows: np.ndarray, highs: np.ndarray, smear: np.ndarray
                 ) -> np.ndarray:
    """Per box and input, how much splitting there should help (the largest is split): ``widest``
    the width, ``smear`` |gradient| x width at the centre, ``mixed`` the width at even split depths
    (the number of halvings from the case box) and smear at odd ones."""
    if branching == "smear":
        return smear
    width = highs - lows
    if branching == "widest":
        return width
    root = np.maximum(case.upper - case.lower, 1e-300)
    depth = np.rint(np.log2(root / np.maximum(width, 1e-300)).sum(1)).astype(int)
    return np.where((depth % 2 == 0)[:, None], width, smear)


def _bisect(lo: np.ndarray, hi: np.ndarray, score: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Halve the box along the input with the highest split score."""
    j = int(np.argmax(score))
    mid = (lo[j] + hi[j]) / 2
    hi1, lo2 = hi.copy(), lo.copy()
    hi1[j], lo2[j] = mid, mid
    return [(lo, hi1), (lo2, hi)]


class Encoding:
    """The MILP constraints of one network over one input box (shared by the box's disjuncts),
    from per-ReLU-layer pre-activation bounds (flat arrays, already widened)."""

    def __init__(self, net: Network, lower: np.ndarray, upper: np.ndarray,
                 pre: list[tuple[np.ndarray, np.ndarray]]):
        self.net, self.lower, self.upper, self.pre = net, lower, upper, pre
        self._build()

    # -- model building --------------------------------------------------------------------------
    def var(self, n: int, lo: np.ndarray | float, hi: np.ndarray | float, integer: bool = False) -> np.ndarray:
        idx = np.arange(self.n_cols, self.n_cols + n)
        self.col_lo.append(np.broadcast_to(np.asarray(lo, np.float64), (n,)))
        self.col_hi.append(np.broadcast_to(np.asarray(hi, np.float64), (n,)))
        self.integer.append(np.full(n, integer))
        self.n_cols += n
        return idx

    def rows(self, cols: np.ndarray, vals: np.ndarray, row_of: np.ndarray, n: int,
              lo: np.ndarray | float, hi: np.ndarray | float) -> None:
        self.coo.append((row_of + self.n_rows, cols, vals))
        self.row_lo.append(np.broadcast_to(np.asarray(lo, np.float64), (n,)))
        self.row_hi.append(np.broadcast_to(np.asarray(hi, np.float64), (n,)))
        self.n_rows += n

    def linear(self, src: np.ndarray, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                bias: np.ndarray, n_out: int, lo: np.ndarray | float = -np.inf,
                hi: np.ndarray | float = np.inf) -> np.ndarray:
        """New variables z = M v + bias, where M is (rows, cols, vals) over the vector ``src``
        (entries of ``src`` equal to -1 are the constant 0 and drop out)."""
        keep = src[cols] >= 0
        rows, cols, vals = rows[keep], src[cols[keep]], vals[keep]
        z = self.var(n_out, lo, hi)
        # z - M v = bias
        self.rows(np.concatenate([z, cols]), np.concatenate([np.ones(n_out), -vals]),
                   np.concatenate([np.arange(n_out), rows]), n_out, bias, bias)
        return z

    def _build(self) -> None:
        self.n_cols = self.n_rows = 0
        self.col_lo, self.col_hi, self.integer, self.coo, self.row_lo, self.row_hi = [], [], [], [], [], []
        self.n_binaries = 0
        v = self.var(self.net.input_size, self.lower, self.upper)
        self.inputs = v
        layers, act_i, free = self.net.layers, 0, (np.array(-np.inf), np.array(np.inf))
        for k, (layer, shape) in enumerate(zip(layers, self.net.input_shapes(), strict=True)):
            if isinstance(layer, ActivationLayer):
                v = layer.encode_milp(self, v, shape, self.pre[act_i])
                act_i += 1
                continue
            feeds_act = k + 1 < len(layers) and isinstance(layers[k + 1], ActivationLayer)
            v = layer.encode_milp(self, v, shape, self.pre[act_i] if feeds_act else free)
        if (v < 0).any():  # an output fixed to 0 by an inactive ReLU: give it a variable
            zero = np.nonzero(v < 0)[0]
            v = v.copy()
            v[zero] = self.var(len(zero), 0.0, 0.0)
        self.outputs = v

    # -- solving ---------------------------------------------------------------------------------
    def solve(self, disjunct: Halfspaces, time_limit: float, threads: int, early_stop: bool,
              presolve: bool = False) -> tuple[str, np.ndarray | None, int]:
        """Minimise the margin of ``disjunct``; ``("sat", x)``, ``("unsat", None)``, or why not."""
        import highspy

        k = disjunct.A.shape[0]
        base_cols, base_rows = self.n_cols, self.n_rows
        coo, row_lo, row_hi = list(self.coo), list(self.row_lo), list(self.row_hi)
        t = base_cols
        # t - A_i y >= -b_i
        A = disjunct.A
        nz_r, nz_c = np.nonzero(A)
        rows = np.concatenate([np.arange(k), nz_r]) + base_rows
        cols = np.concatenate([np.full(k, t), self.outputs[nz_c]])
        vals = np.concatenate([np.ones(k), -A[nz_r, nz_c]])
        coo.append((rows, cols, vals))
        row_lo.append(-disjunct.b)
        row_hi.append(np.full(k, np.inf))
        n_cols, n_rows = base_cols + 1, base_rows + k
        col_lo = np.concatenate(self.col_lo + [np.array([-np.inf])])
        col_hi = np.concatenate(self.col_hi + [np.array([np.inf])])
        integer = np.concatenate(self.integer + [np.array([False])])
        r = np.concatenate([c[0] for c in coo])
        c = np.concatenate([c[1] for c in coo])
        val = np.concatenate([c[2] for c in coo])
        order = np.lexsort((r, c))
        r, c, val = r[order], c[order], val[order]
        start = np.searchsorted(c, np.arange(n_cols + 1))

        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = n_cols, n_rows
        cost = np.zeros(n_cols)
        cost[t] = 1.0
        lp.col_cost_ = cost
        lp.col_lower_, lp.col_upper_ = col_lo, col_hi
        lp.row_lower_, lp.row_upper_ = np.concatenate(row_lo), np.concatenate(row_hi)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = start.astype(np.int32)
        lp.a_matrix_.index_ = r.astype(np.int32)
        lp.a_matrix_.value_ = val
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous for i in integer]
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", int(threads))
        h.setOptionValue("time_limit", max(0.01, float(time_limit)))
        h.setOptionValue("random_seed", 0)
        h.setOptionValue("presolve", "on" if presolve else "off")
        if early_stop:
            h.setOptionValue("objective_bound", CUTOFF)
            h.setOptionValue("objective_target", 0.0)
        h.passModel(lp)
        h.run()
        ms = h.getModelStatus()
        info = h.getInfo()
        nodes = int(getattr(info, "mip_node_count", 0) or 0)
        S = highspy.HighsModelStatus
        has_sol = info.primal_solution_status == highspy.SolutionStatus.kSolutionStatusFeasible
        if has_sol:
            sol = np.asarray(h.getSolution().col_value)
            if sol[t] <= 0:
                return "sat", sol[self.inputs], nodes
        if ms == S.kInfeasible or (ms == S.kOptimal and (not has_sol or sol[t] > 0)):
            return "unsat", None, nodes
        if ms == S.kObjectiveBound:
            return "unsat", None, nodes
        if ms == S.kTimeLimit:
            return "timeout", None, nodes
        return f"HiGHS {h.modelStatusToString(ms)}", None, nodes
