"""Falsification: look for a counterexample of a Spec on a Network before anything is proved.

One job: find, before a deadline, an input whose *executed* output is unsafe.  A verifier runs
this first because a sat instance is usually cheap to falsify and expensive to decide.

The search is projected signed-gradient descent (PGD) on the margin
``min_d max_i (A_i y - b_i)`` over *all* the unsafe disjuncts of a case at once (<= 0: unsafe),
for many restarts in one batch (thousands for low-dimensional inputs), in rounds that double in
size, each sized from the measured cost of a step so that the deadline holds.  Restarts start
at the box centres, at uniform points, and at *bound-guided* points: the box is cut into
sub-boxes, vfnn's CROWN bounds rank them by how far below zero the margin may go (sub-boxes that
the bounds prove safe get no restarts) and give, per output row, the linear lower bound whose
minimising corner is a start.

Nothing unchecked leaves this module: a candidate (float32 margin <= 0) is returned only after
:func:`vfnn.verifiers.replay.validate_counterexample` has run the ONNX file on it with onnxruntime
and its output lies strictly in that case's unsafe region.  A rejected candidate is counted
(``rejected``) and the search goes on; every result reports the best margin it reached, so an
attack that missed says by how much.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vfnn.network import Network
from vfnn.spec import Spec, SpecCase
from vfnn.verifiers.replay import validate_counterexample

LOW_DIM = 16  # inputs up to this many: thousands of restarts, sub-box guidance
MAX_RESTARTS_LOW, MAX_RESTARTS_HIGH = 8192, 512
MARGIN_ELEMENTS = 2 ** 24  # restarts x disjuncts x rows held at once
STEP_SCALES = (0.5, 0.25, 0.125, 0.0625)  # first step as a share of the box width, per restart
GUIDE_SHARE, GUIDE_TIME, GUIDE_BOXES = 0.25, 0.5, 256  # bound-guided stage: share of the budget, cap
ELITE = 64  # best points kept across rounds; a quarter of each later round starts near them
BOX_ATTACK_STEPS = 10  # PGD steps of :func:`box_attack`


@dataclass(frozen=True)
class AttackConfig:
    """How hard to search.  ``restarts=0`` sizes batches from the input dimension and the
    measured step cost; ``rounds=0`` runs rounds until the deadline."""

    steps: int = 50
    restarts: int = 0
    rounds: int = 0
    guided: bool = True
    seed: int = 0


@dataclass
class AttackResult:
    """What the attack found (``x`` replayed, in case ``case``'s box) and what it tried."""

    x: np.ndarray | None = None
    y: np.ndarray | None = None
    case: int | None = None
    found_by: str = ""
    time: float = 0.0
    restarts: int = 0
    rounds: int = 0
    best_margin: float = math.inf
    rejected: int = 0
    guided_boxes: int = 0
    safe_boxes: int = 0

    def stats(self) -> dict[str, Any]:
        """The figures a verifier puts in ``tool_stats`` (so a miss is visible, not silent)."""
        return {"attack_time": round(self.time, 4), "attack_restarts": self.restarts, "attack_rounds": self.rounds,
                "attack_best_margin": None if not math.isfinite(self.best_margin) else float(self.best_margin),
                "attack_rejected": self.rejected, "attack_guided_boxes": self.guided_boxes,
                "attack_safe_boxes": self.safe_boxes, "attack_found_by": self.found_by or None}


class Replayer:
    """Accepts a candidate only when onnxruntime, run on the ONNX file, puts it strictly in the
    unsafe region of its case (and :func:`validate_counterexample` agrees)."""

    def __init__(self, onnx_path: str | Path, spec: Spec):
        self.onnx_path, self.spec, self.rejected = Path(onnx_path), spec, 0

    def check(self, x: np.ndarray, case: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(x clipped into the case box, executed output)`` if ``x`` is a counterexample."""
        c = self.spec.cases[case]
        xc = np.clip(np.asarray(x, np.float64).reshape(-1), c.lower, c.upper)
        ok, y, _ = validate_counterexample(self.onnx_path, self.spec, xc)
        if ok and y is not None and c.is_unsafe(y, 0.0):
            return xc, y
        self.rejected += 1
        return None


class _Targets:
    """Every unsafe disjunct of every case as padded tensors (rows repeated: the max is unchanged):
    ``A`` (D, k, n_out), ``b`` (D, k), ``case_of`` (D,)."""

    def __init__(self, spec: Spec, dtype: Any):
        import torch

        A, b, real, case_of = [], [], [], []
        k = max((h.A.shape[0] for c in spec.cases for h in c.unsafe), default=1)
        for ci, c in enumerate(spec.cases):
            for h in c.unsafe:
                pad = np.arange(k) % h.A.shape[0]
                A.append(h.A[pad])
                b.append(h.b[pad])
                real.append(np.arange(k) < h.A.shape[0])
                case_of.append(ci)
        self.A = torch.as_tensor(np.stack(A), dtype=dtype)
        self.b = torch.as_tensor(np.stack(b), dtype=dtype)
        self.real = torch.as_tensor(np.stack(real), dtype=dtype)
        self.case_of = torch.as_tensor(case_of)
        self.k = k

    def margins(self, y: Any, case: Any) -> tuple[Any, Any]:
        """``(margin, loss)`` per restart.  The margin is the min over its case's disjuncts of
        max_i (A_i y - b_i) (<= 0: unsafe); the loss adds, for the disjunct that attains it,
        the sum of its violated rows, so that every row gets a gradient, not only the worst."""
        import torch

        rows = torch.einsum("nj,dkj->ndk", y, self.A) - self.b
        per = rows.max(dim=2).values.masked_fill(self.case_of[None, :] != case[:, None], math.inf)
        m, d = per.min(dim=1)
        excess = (torch.relu(rows) * self.real).sum(dim=2)
        return m, m + excess.gather(1, d[:, None])[:, 0]


@dataclass
class _Guide:
    """Bound-guided start material: promising sub-boxes (most negative margin bound first) and
    per-row minimising corners of CROWN's linear lower bounds."""

    case: np.ndarray  # (G,)
    lower: np.ndarray  # (G, n)
    upper: np.ndarray  # (G, n)
    corners: np.ndarray  # (P, n)
    corner_case: np.ndarray  # (P,)
    safe: int  # sub-boxes the bounds prove safe (no restarts there)


def find_counterexample(net: Network, spec: Spec, deadline: float, replayer: Replayer | None = None,
                        config: AttackConfig = AttackConfig()) -> AttackResult:
    """Search for a replayed counterexample until ``deadline`` (``time.monotonic()``).

    ``replayer`` checks candidates on the model's ONNX file; without one the network is exported
    to a temporary file for the check.  Returns an :class:`AttackResult` whose ``x`` is None
    when nothing was found (never an unreplayed point)."""
    if replayer is None:
        from vfnn.onnx_io import save_onnx

        with tempfile.TemporaryDirectory(prefix="vfnn-attack-") as tmp:
            return find_counterexample(net, spec, deadline, Replayer(save_onnx(net, Path(tmp) / "net.onnx"), spec),
                                       config)
    import torch

    start = time.monotonic()
    res = AttackResult()
    cases = [i for i, c in enumerate(spec.cases) if c.unsafe]
    if not cases or config.steps <= 0 or start >= deadline:
        return res
    rejected0 = replayer.rejected
    gen = torch.Generator().manual_seed(config.seed)
    model = net.to_torch()
    for p in model.parameters():
        p.requires_grad_(False)
    targets = _Targets(spec, torch.float32)
    n = net.input_size
    low_dim = n <= LOW_DIM
    box_lo = torch.as_tensor(np.stack([c.lower for c in spec.cases]), dtype=torch.float32)
    box_hi = torch.as_tensor(np.stack([c.upper for c in spec.cases]), dtype=torch.float32)

    def finish(hit: tuple[np.ndarray, np.ndarray] | None = None, case: int | None = None, how: str = ""
               ) -> AttackResult:
        if hit is not None:
            res.x, res.y, res.case, res.found_by = hit[0], hit[1], case, how
        res.time = time.monotonic() - start
        res.rejected = replayer.rejected - rejected0
        return res

    # Round 0: the box centres, no gradient.
    centres = (box_lo + box_hi)[cases] / 2
    hit = _evaluate(model, net, targets, centres, torch.as_tensor(cases), replayer, res, "centre")
    if hit is not None:
        return finish(*hit)

    guide = None
    if config.guided and time.monotonic() < deadline:
        guide = _bound_guide(model, net, spec, cases, deadline, low_dim)
        if guide is not None:
            res.guided_boxes, res.safe_boxes = len(guide.case) + guide.safe, guide.safe
            if len(guide.case) == 0:  # the bounds prove every sub-box safe: nothing to attack
                return finish()
            hit = _evaluate(model, net, targets, torch.as_tensor(guide.corners, dtype=torch.float32),
                            torch.as_tensor(guide.corner_case), replayer, res, "bound-guided corner")
            if hit is not None:
                return finish(*hit)

    n_max = config.restarts or (MAX_RESTARTS_LOW if low_dim else MAX_RESTARTS_HIGH)
    n_max = max(1, min(n_max, MARGIN_ELEMENTS // max(1, targets.A.shape[0] * targets.k)))
    size = config.restarts or min(n_max, 256 if low_dim else 32)
    per_sample = None  # measured seconds per restart-step
    elite = None  # the best points so far and their cases
    while time.monotonic() < deadline and (config.rounds == 0 or res.rounds < config.rounds):
        left = deadline - time.monotonic()
        if per_sample is not None and not config.restarts:
            # double the batch while a whole round still fits in what is left
            fit = int(left / max(per_sample * (config.steps + 1), 1e-9))
            size = max(16, min(n_max, 2 * size, fit))
        x0, lo, hi, case, scales = _starts(size, res.rounds, cases, box_lo, box_hi, guide, elite, gen)
        t0 = time.monotonic()
        hit, done, bx, bm = _pgd(model, net, targets, x0, lo, hi, case, scales, config.steps, deadline, replayer,
                                 res)
        res.rounds += 1
        res.restarts += size
        if hit is not None:
            return finish(*hit)
        if done:
            per_sample = (time.monotonic() - t0) / (size * (done + 1))
        if elite is not None:
            bx, bm, case = torch.cat([elite[0], bx]), torch.cat([elite[2], bm]), torch.cat([elite[1], case])
        top = torch.argsort(bm)[:ELITE]
        elite = (bx[top], case[top], bm[top])
    return finish()


def _evaluate(model: Any, net: Network, targets: _Targets, x: Any, case: Any, replayer: Replayer,
              res: AttackResult, how: str) -> tuple[tuple[np.ndarray, np.ndarray], int, str] | None:
    """Run a batch of points; replay those whose margin is <= 0 (most negative first)."""
    import torch

    with torch.no_grad():
        y = model(x.reshape(len(x), *net.input_shape)).reshape(len(x), -1)
        m, _ = targets.margins(y, case)
    res.best_margin = min(res.best_margin, float(m.min()))
    for i in torch.argsort(m)[: int((m <= 0).sum())][:8].tolist():
        hit = replayer.check(x[i].numpy().astype(np.float64), int(case[i]))
        if hit is not None:
            return hit, int(case[i]), how
    return None


def _pgd(model: Any, net: Network, targets: _Targets, x: Any, lo: Any, hi: Any, case: Any, scales: Any,
         steps: int, deadline: float, replayer: Replayer, res: AttackResult
         ) -> tuple[tuple[tuple[np.ndarray, np.ndarray], int, str] | None, int, Any, Any]:
    """Signed-gradient descent, each restart with its own first step (a share ``scales`` of the
    box width, cosine decay); replays candidates as they appear.  Returns the hit (or None), the
    number of gradient steps done, and each restart's best point and margin."""
    import torch

    N = len(x)
    width = hi - lo
    bar = torch.zeros(N, dtype=x.dtype)  # a restart whose candidate was rejected must go below this
    best_x, best_m = x.clone(), torch.full((N,), math.inf, dtype=x.dtype)
    k = 0
    for k in range(steps + 1):
        x.requires_grad_(True)
        y = model(x.reshape(N, *net.input_shape)).reshape(N, -1)
        m, loss = targets.margins(y, case)
        md = m.detach()
        better = md < best_m
        best_m = torch.where(better, md, best_m)
        best_x[better] = x.detach()[better]
        res.best_margin = min(res.best_margin, float(md.min()))
        cand = torch.nonzero(md <= bar).reshape(-1)
        if cand.numel():
            for i in cand[torch.argsort(md[cand])][:8].tolist():
                hit = replayer.check(x[i].detach().numpy().astype(np.float64), int(case[i]))
                if hit is not None:
                    return (hit, int(case[i]), "pgd"), k, best_x, best_m
                bar[i] = torch.minimum(2 * md[i], md[i] - 1e-5)
        if k == steps or time.monotonic() >= deadline:
            break
        (g,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            step = scales * width * 0.5 * (1 + math.cos(math.pi * k / steps))
            x = torch.minimum(torch.maximum(x - step * g.sign(), lo), hi)
    return None, k, best_x, best_m


def _starts(size: int, round_: int, cases: list[int], box_lo: Any, box_hi: Any, guide: _Guide | None,
            elite: tuple[Any, Any] | None, gen: Any) -> tuple[Any, Any, Any, Any, Any]:
    """Start points with their case boxes, cases and first-step scales.  Uniform in every case
    box; with a guide, half from the promising sub-boxes (the best most often) and their corners
    (all of them in the first round, then perturbed); with an ``elite`` (the best points of
    earlier rounds, each with its case), a quarter near those points, with small steps."""
    import torch

    n = box_lo.shape[1]
    case = torch.as_tensor(cases)[torch.randint(len(cases), (size,), generator=gen)]
    lo, hi = box_lo[case], box_hi[case]
    x = lo + (hi - lo) * torch.rand(size, n, generator=gen, dtype=lo.dtype)
    scales = torch.as_tensor(STEP_SCALES, dtype=lo.dtype)[torch.arange(size) % len(STEP_SCALES)][:, None]
    at = size  # fill from the end: guided, then elite starts
    if guide is not None and size >= 2:
        g = size // 2
        w = 1.0 / torch.arange(1, len(guide.case) + 1, dtype=torch.float64)  # sub-box of rank r: weight 1/(r+1)
        pick = torch.multinomial(w, g, replacement=True, generator=gen)
        gl = torch.as_tensor(guide.lower, dtype=lo.dtype)[pick]
        gh = torch.as_tensor(guide.upper, dtype=lo.dtype)[pick]
        gx = gl + (gh - gl) * torch.rand(g, n, generator=gen, dtype=lo.dtype)
        gcase = torch.as_tensor(guide.case)[pick]
        P = len(guide.corners)
        c = torch.arange(min(P, g)) if round_ == 0 else torch.randint(max(P, 1), (min(P, g // 4),), generator=gen)
        if len(c):
            cc = torch.as_tensor(guide.corner_case)[c]
            corners = torch.as_tensor(guide.corners, dtype=lo.dtype)[c]
            if round_:
                corners = corners + 0.05 * (box_hi[cc] - box_lo[cc]) * torch.randn(len(c), n, generator=gen,
                                                                                     dtype=lo.dtype)
            gx[:len(c)], gcase[:len(c)] = corners, cc
        at -= g
        x[at:], case[at:] = gx, gcase
    if elite is not None and size >= 4:
        e = size // 4
        pick = torch.randint(len(elite[0]), (e,), generator=gen)
        ecase = elite[1][pick]
        spread = torch.as_tensor((0.1, 0.03, 0.01, 0.003), dtype=lo.dtype)[torch.arange(e) % 4][:, None]
        x[:e] = elite[0][pick] + spread * (box_hi[ecase] - box_lo[ecase]) * torch.randn(e, n, generator=gen,
                                                                                      dtype=lo.dtype)
        case[:e], scales[:e] = ecase, spread
    lo, hi = box_lo[case], box_hi[case]
    return torch.minimum(torch.maximum(x, lo), hi), lo, hi, case, scales


def _bound_guide(model: Any, net: Network, spec: Spec, cases: list[int], deadline: float, low_dim: bool
                 ) -> _Guide | None:
    """CROWN over sub-boxes of every case box (low-dimensional inputs; the whole box otherwise):
    drop sub-boxes proven safe, rank the rest, and take each output row's minimising corner of its
    linear lower bound.  Low-dimensional boxes are refined level by level (the sub-boxes not
    proven safe are halved) while the next level, costed in proportion to the last, fits in
    GUIDE_SHARE of the time left (at most GUIDE_TIME s) and GUIDE_BOXES.  None when the deadline
    passes first."""
    from vfnn.bounds import compute_bounds

    t0 = time.monotonic()
    until = t0 + min(GUIDE_SHARE * (deadline - t0), GUIDE_TIME)
    subs = [(ci, spec.cases[ci].lower, spec.cases[ci].upper) for ci in cases]
    bounded = _crown_corners(model, net, spec, subs, compute_bounds)
    last, safe = time.monotonic() - t0, 0
    while low_dim:
        open_ = [sub for sub, score in zip(subs, bounded[0], strict=True) if score <= 0]
        halves = [half for sub in open_ for half in _halve(spec.cases[sub[0]], *sub)]
        t1 = time.monotonic()
        # the first call pays set-up costs: the first halving is always done and measured
        if (not open_ or len(halves) == len(open_) or len(halves) > GUIDE_BOXES
                or (len(subs) > len(cases) and t1 + last * len(halves) / len(subs) > until)):
            break
        safe += len(subs) - len(open_)
        subs = halves
        bounded = _crown_corners(model, net, spec, subs, compute_bounds)
        last = time.monotonic() - t1
        if time.monotonic() >= deadline:
            return None
    score, corners, (corner_case, corner_sub) = bounded
    keep = np.nonzero(score <= 0)[0]
    keep = keep[np.argsort(score[keep], kind="stable")]
    ok = np.nonzero(score[corner_sub] <= 0)[0]
    ok = ok[np.argsort(score[corner_sub[ok]], kind="stable")]
    n = spec.n_inputs
    return _Guide(np.array([subs[i][0] for i in keep], dtype=np.int64),
                  np.array([subs[i][1] for i in keep]).reshape(len(keep), n),
                  np.array([subs[i][2] for i in keep]).reshape(len(keep), n),
                  corners[ok].reshape(len(ok), n), corner_case[ok], safe + len(subs) - len(keep))


def _halve(case: SpecCase, ci: int, lo: np.ndarray, hi: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Bisect a sub-box along its widest input relative to the case box."""
    j = int(np.argmax((hi - lo) / np.maximum(case.upper - case.lower, 1e-12)))
    if hi[j] <= lo[j]:
        return [(ci, lo, hi)]
    mid = (lo[j] + hi[j]) / 2
    h1, l2 = hi.copy(), lo.copy()
    h1[j], l2[j] = mid, mid
    return [(ci, lo, h1), (ci, l2, hi)]


def _crown_corners(model: Any, net: Network, spec: Spec, subs: list[tuple[int, np.ndarray, np.ndarray]],
                   compute_bounds: Any) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Per sub-box: the CROWN lower bound of its margin (> 0: proven safe); per (sub-box, row)
    and per (sub-box, disjunct) the box corner that minimises the bound's linear function.

    One CROWN pass bounds every row of a sub-box's case together (rows padded by repetition to
    the longest case), so the intermediate bounds are computed once per sub-box, not per row."""
    import torch

    rows = {ci: [(d, r) for d, h in enumerate(spec.cases[ci].unsafe) for r in range(h.A.shape[0])]
            for ci in {s[0] for s in subs}}
    k = max(len(v) for v in rows.values())
    S, n = len(subs), spec.n_inputs
    C = np.stack([np.stack([spec.cases[ci].unsafe[d].A[r] for d, r in (rows[ci][j % len(rows[ci])]
                                                                       for j in range(k))]) for ci, _, _ in subs])
    b = np.stack([[spec.cases[ci].unsafe[d].b[r] for d, r in (rows[ci][j % len(rows[ci])] for j in range(k))]
                  for ci, _, _ in subs])
    lows, highs = np.stack([s[1] for s in subs]), np.stack([s[2] for s in subs])
    with torch.no_grad():
        bounds = compute_bounds(model, torch.as_tensor(lows, dtype=torch.float32).reshape(S, *net.input_shape),
                                torch.as_tensor(highs, dtype=torch.float32).reshape(S, *net.input_shape),
                                C=torch.as_tensor(C, dtype=torch.float32), method="crown", intersect_ibp=False,
                                lines=True)
    a = bounds.lower_lines[0].expand(S, k, n).numpy().astype(np.float64)  # slope of each row's lower bound in x
    value = bounds.lower.numpy().astype(np.float64) - b
    score = np.full(S, np.inf)  # margin bound of a sub-box: min over disjuncts of max over the disjunct's rows
    corners, c_case, c_sub = [], [], []
    for s, (ci, lo, hi) in enumerate(subs):
        worst: dict[int, float] = {}
        slope: dict[int, np.ndarray] = {}
        for j, (d, _) in enumerate(rows[ci]):
            worst[d] = max(worst.get(d, -np.inf), value[s, j])
            slope[d] = slope.get(d, 0) + a[s, j]
            corners.append(np.where(a[s, j] > 0, lo, hi))
        score[s] = min(worst.values())
        corners.extend(np.where(v > 0, lo, hi) for v in slope.values())
        c_case.extend([ci] * (len(rows[ci]) + len(slope)))
        c_sub.extend([s] * (len(rows[ci]) + len(slope)))
    return score, np.array(corners), (np.array(c_case, dtype=np.int64), np.array(c_sub, dtype=np.int64))


def centre_search(model: Any, net: Network, lows: np.ndarray, highs: np.ndarray, case: SpecCase, case_index: int,
                  replayer: Replayer) -> tuple[np.ndarray | None, np.ndarray]:
    """Check the centres of a batch of boxes of one case (a free counterexample search inside an
    input-splitting branch and bound) and return the split scores |d margin / d x_j| * width_j at
    the centre (the "smear" heuristic).  A centre is returned only once it replays."""
    import torch

    param = next(model.parameters(), None)
    dtype = torch.float64 if param is None else param.dtype
    mid = torch.as_tensor((lows + highs) / 2, dtype=dtype).requires_grad_(True)
    y = model(mid.reshape(len(mid), *net.input_shape)).reshape(len(mid), -1)
    margins = torch.stack([(y @ torch.as_tensor(h.A, dtype=y.dtype).T - torch.as_tensor(h.b, dtype=y.dtype))
                           .max(dim=1).values for h in case.unsafe], 1)
    best = margins.min(dim=1).values.detach()
    for i in torch.argsort(best)[: int((best <= 0).sum())][:8].tolist():
        hit = replayer.check(mid[i].detach().numpy(), case_index)
        if hit is not None:
            return hit[0], np.zeros(0)
    (g,) = torch.autograd.grad(margins.sum(), mid)
    return None, g.abs().numpy() * (highs - lows) + 1e-12 * (highs - lows)


def box_attack(model: Any, net: Network, spec: Spec, case_index: int, lows: np.ndarray, highs: np.ndarray,
               replayer: Replayer, deadline: float, steps: int = BOX_ATTACK_STEPS) -> np.ndarray | None:
    """A short PGD from the centre of each of a few small boxes of one case (the most promising
    boxes of an input-splitting search: a counterexample in a narrow region the first attack
    missed).  Returns a replayed counterexample or None."""
    import torch

    param = next(model.parameters(), None)
    dtype = torch.float64 if param is None else param.dtype
    lo, hi = torch.as_tensor(lows, dtype=dtype), torch.as_tensor(highs, dtype=dtype)
    n = len(lo)
    scales = torch.as_tensor(STEP_SCALES, dtype=dtype)[torch.arange(n) % len(STEP_SCALES)][:, None]
    hit, *_ = _pgd(model, net, _Targets(spec, dtype), (lo + hi) / 2, lo, hi, torch.full((n,), case_index), scales,
                   steps, deadline, replayer, AttackResult())
    return None if hit is None else hit[0][0]
