"""ParamRamp's six neuron states and its two relaxations (Lyu et al., CVPR 2021, appendix Table 2).

States: the counts against a hand-labelled table (every state, every edge at 0 or r) and a
brute-force classification, directly and through ``unstable_record``.  Relaxations: both line
choices are sound on sampled points (per neuron, and through CROWN/LBP on random nets with
slope 0 and bends on the box edges); the tight lines meet IBP's bounds at the ends; the
adaptive ones never leave more area than the tight ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vfnn.bounds import compute_bounds
from vfnn.layers import ParamRamp, ParamRampModule
from vfnn.layers.paramramp import STATES, ramp
from vfnn.network import Dense, Network
from vfnn.spec import Halfspaces, Spec, SpecCase
from vfnn.stats import unstable_record

# (bend r, l, u, state) by hand: every state, and every bound that ends exactly on a kink.
LABELLED = [
    (0.5, -1.0, -0.25, "left"), (0.5, -1.0, 0.0, "left"),
    (0.5, 0.0, 0.25, "middle"), (0.5, 0.0, 0.5, "middle"), (0.5, 0.25, 0.5, "middle"), (0.5, 0.125, 0.375, "middle"),
    (0.5, 0.5, 1.0, "right"), (0.5, 0.75, 1.0, "right"),
    (0.5, -0.25, 0.25, "left-unstable"), (0.5, -0.25, 0.5, "left-unstable"),
    (0.5, 0.25, 0.75, "right-unstable"), (0.5, 0.0, 0.75, "right-unstable"),
    (0.5, -0.25, 0.75, "both"), (0.25, -0.5, 1.0, "both"),
    # bend 0: the kinks coincide
    (0.0, -0.25, 0.25, "both"), (0.0, 0.0, 0.25, "right"), (0.0, -0.25, 0.0, "left"),
    # single points on a kink: stable, counted as middle (the definitions overlap only there)
    (0.5, 0.0, 0.0, "middle"), (0.5, 0.5, 0.5, "middle"), (0.0, 0.0, 0.0, "middle"),
]


def brute_force_state(r: float, lo: float, hi: float) -> str:
    """The issue's definitions one by one (kinks strictly inside are unstable; a point on a
    kink, where two stable pieces meet, is ``middle``)."""
    matches = [name for name, ok in (
        ("left", hi <= 0), ("middle", 0 <= lo and hi <= r), ("right", lo >= r),
        ("left-unstable", lo < 0 < hi <= r), ("right-unstable", 0 <= lo < r < hi), ("both", lo < 0 and hi > r),
    ) if ok]
    assert matches, (r, lo, hi)
    return "middle" if "middle" in matches else matches[0] if len(matches) == 1 else f"ambiguous {matches}"


def _module(r: np.ndarray, eta: float) -> ParamRampModule:
    return ParamRampModule(torch.as_tensor(r, dtype=torch.float64), eta)


def _labels(states: dict[str, torch.Tensor]) -> list[str]:
    stacked = torch.stack([states[n] for n in STATES])
    assert torch.equal(stacked.sum(0), torch.ones(stacked.shape[1], dtype=torch.long)), "not a partition"
    return [STATES[i] for i in stacked.int().argmax(0).tolist()]


def test_hand_labelled_states_and_brute_force_agree_with_the_kind() -> None:
    r, lo, hi, want = (np.array(c) for c in zip(*LABELLED, strict=True))
    assert [brute_force_state(*c[:3]) for c in LABELLED] == list(want)
    assert set(want) == set(STATES)
    m = _module(r, 0.01)
    got = _labels(ParamRamp.states(m, torch.as_tensor(lo), torch.as_tensor(hi)))
    assert got == list(want)
    # random dyadic bounds: edges land exactly on 0 and on r often
    g = np.random.default_rng(0)
    r = g.integers(0, 4, 4000) / 4
    a, b = g.integers(-4, 8, 4000) / 4, g.integers(-4, 8, 4000) / 4
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    got = _labels(ParamRamp.states(_module(r, 0.0), torch.as_tensor(lo), torch.as_tensor(hi)))
    assert got == [brute_force_state(*c) for c in zip(r, lo, hi, strict=True)]
    assert set(got) == set(STATES)
    # the unstable states are exactly the kind's unstable neurons
    st = ParamRamp.states(_module(r, 0.0), torch.as_tensor(lo), torch.as_tensor(hi))
    unstable = ParamRamp.unstable(_module(r, 0.0), torch.as_tensor(lo), torch.as_tensor(hi))
    assert torch.equal(unstable, st["left-unstable"] | st["right-unstable"] | st["both"])


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_unstable_record_counts_the_six_states(method: str) -> None:
    """One box whose coordinate i is [l_i, u_i] of LABELLED, through an identity layer (exact
    dyadic bounds), then ParamRamp with bend r_i: the record counts each labelled state."""
    r, lo, hi, want = (np.array(c) for c in zip(*LABELLED, strict=True))
    n = len(r)
    eye = np.eye(n, dtype=np.float32)
    net = Network((n,), (Dense(eye, np.zeros(n, np.float32)), ParamRamp(r.astype(np.float32), 0.01),
                         Dense(eye[:2], np.zeros(2, np.float32))))
    spec = Spec((SpecCase(lo, hi, (Halfspaces(np.array([[1.0, -1.0]]), np.zeros(1)),)),), n, 2)
    layer = unstable_record(net, spec, method).layers[0]
    counts = {s: int((want == s).sum()) for s in STATES}
    assert layer.kind == "paramramp" and layer.states == counts
    assert list(layer.states) == list(STATES)
    # the three classic figures keep their meaning and are unions of states
    assert layer.unstable == counts["left-unstable"] + counts["right-unstable"] + counts["both"]
    assert layer.active == counts["middle"] + counts["right"] and layer.inactive == counts["left"]
    assert sum(layer.states.values()) == layer.neurons == n


def _bounds_grid(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (l, u, r) with many edges on a kink, bends 0, and single points."""
    g = np.random.default_rng(seed)
    r = g.uniform(0, 1, n)
    r[: n // 10] = 0.0
    a, b = g.normal(0, 1, n), g.normal(0, 1, n)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    k = n // 10
    lo[k: 2 * k], hi[2 * k: 3 * k] = r[k: 2 * k], r[2 * k: 3 * k]  # bends on the box edges
    lo[3 * k: 4 * k], hi[4 * k: 5 * k] = 0.0, 0.0
    hi[5 * k: 6 * k] = lo[5 * k: 6 * k]  # points
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    return torch.as_tensor(lo), torch.as_tensor(hi), torch.as_tensor(r)


def _at(rx, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001 - a Relaxation
    return rx.lower_d * z + rx.lower_b, rx.upper_d * z + rx.upper_b


@pytest.mark.parametrize("eta", [0.0, 0.01, 0.3])
@pytest.mark.parametrize("tight", [True, False])
def test_lines_enclose_the_function(eta: float, tight: bool) -> None:
    lo, hi, r = _bounds_grid(6000, int(eta * 100) + tight)
    rx = ParamRamp.relax(_module(r.numpy(), eta), lo, hi, tight)
    t = torch.rand(300, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kinks = torch.stack([torch.zeros_like(lo).clamp(min=lo, max=hi), torch.minimum(torch.maximum(r, lo), hi)])
    z = torch.cat([lo[None], hi[None], kinks, lo + t * (hi - lo)])
    f = ramp(z, r, eta)
    low, up = _at(rx, z)
    assert torch.all(low <= f + 1e-12) and torch.all(f <= up + 1e-12)
    st = ParamRamp.states(_module(r.numpy(), eta), lo, hi)
    stable = st["left"] | st["middle"] | st["right"]
    assert torch.equal(rx.unstable, ~stable) and torch.equal(rx.active, stable)
    # stable pieces: both lines are the piece itself
    assert torch.allclose(low[:, stable], f[:, stable], atol=1e-12) and torch.allclose(up[:, stable], f[:, stable],
                                                                                        atol=1e-12)
    for name in STATES:
        assert bool(st[name].any()), name  # every state is exercised


def test_tight_lines_meet_ibp_at_the_ends_and_adaptive_ones_leave_less_area() -> None:
    """Theorem 2 needs lower(l) = f(l) and upper(u) = f(u).  The adaptive line on the side
    with a choice is the one of smaller area (CROWN's rule for ReLU), so its integral over [l, u],
    the mean of its two end values, is never below (lower) or above (upper) the tight one's."""
    for eta in (0.0, 0.01):
        lo, hi, r = _bounds_grid(6000, 7)
        m = _module(r.numpy(), eta)
        tight, adapt = ParamRamp.relax(m, lo, hi, True), ParamRamp.relax(m, lo, hi, False)
        (tl_lo, _), (_, tu_hi) = _at(tight, lo), _at(tight, hi)
        assert torch.allclose(tl_lo, ramp(lo, r, eta), atol=1e-12)
        assert torch.allclose(tu_hi, ramp(hi, r, eta), atol=1e-12)
        tl, tu = (a + b for a, b in zip(_at(tight, lo), _at(tight, hi), strict=True))
        al, au = (a + b for a, b in zip(_at(adapt, lo), _at(adapt, hi), strict=True))
        assert torch.all(al >= tl - 1e-12) and torch.all(au <= tu + 1e-12)
        st = ParamRamp.states(m, lo, hi)
        # the choice matters in every unstable state: lower across 0, upper across r
        assert bool((al > tl + 1e-6)[st["left-unstable"]].any()) and bool((au < tu - 1e-6)[st["right-unstable"]].any())
        assert bool((al > tl + 1e-6)[st["both"]].any()) and bool((au < tu - 1e-6)[st["both"]].any())
        # across both kinks the adaptive lines are the paper's: through (0, 0) and (u, f(u)) below,
        # through (l, f(l)) and (r, r) above, where they differ from the tight ones
        below, above = st["both"] & (adapt.lower_d != tight.lower_d), st["both"] & (adapt.upper_d != tight.upper_d)
        (_, au_lo), (al_hi, _) = _at(adapt, lo), _at(adapt, hi)
        assert torch.allclose(adapt.lower_b[below], torch.zeros(1, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(al_hi[below], ramp(hi, r, eta)[below], atol=1e-12)
        assert torch.allclose(au_lo[above], ramp(lo, r, eta)[above], atol=1e-12)
        assert torch.allclose((adapt.upper_d * r + adapt.upper_b)[above], r[above], atol=1e-12)
        # ... and only there: the chord sides and stable pieces are the same lines
        assert torch.equal(adapt.upper_d[st["left-unstable"]], tight.upper_d[st["left-unstable"]])
        assert torch.equal(adapt.lower_d[st["right-unstable"]], tight.lower_d[st["right-unstable"]])


def _ramp_net(seed: int, eta: float, lower: torch.Tensor, upper: torch.Tensor) -> nn.Sequential:
    """6-12-10-3 with ParamRamp(eta); the first layer's bends are put on its (exact) IBP bounds
    where those are >= 0, and at 0 for some neurons, so kinks sit on box edges."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 12), ParamRampModule(torch.rand(12, generator=g) * 0.8, eta),
                      nn.Linear(12, 10), ParamRampModule(torch.rand(10, generator=g) * 0.8, eta), nn.Linear(10, 3))
    with torch.no_grad():
        for p in m.parameters():
            if p is not m[1].bend and p is not m[3].bend:
                p.copy_(torch.randn(p.shape, generator=g) * (0.6 if p.dim() > 1 else 0.2))
        m = m.double()
        pre = compute_bounds(m, lower, upper, method="ibp").pre_activation[0]
        lo, hi = pre[0][0], pre[1][0]  # box 0's bounds
        bend = m[1].bend
        bend[0:3] = lo[0:3].clamp(min=0)
        bend[3:6] = hi[3:6].clamp(min=0)
        bend[6:8] = 0.0
    return m.eval()


@pytest.mark.parametrize("eta", [0.0, 0.01])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crown_and_lbp_bounds_hold_on_random_nets_with_both_relaxations(eta: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 50)
    centre = torch.rand(2, 6, generator=g, dtype=torch.float64) * 2 - 1
    lower, upper = centre - 0.4, centre + 0.4
    model = _ramp_net(seed, eta, lower, upper)
    C = torch.randn(4, 3, generator=g, dtype=torch.float64)
    u = torch.rand(2, 3000, 6, generator=g, dtype=torch.float64)
    u[:, :500] = torch.round(u[:, :500])  # vertices
    x = lower[:, None] + u * (upper - lower)[:, None]
    with torch.no_grad():
        pre = [model[0](x)]
        pre.append(model[2](model[1](pre[0])))
        y = model(x) @ C.T
    results = {}
    for method in ("crown", "crown-ibp", "lbp", "crown-lbp"):
        for relaxation in ("tight", "adaptive"):
            b = compute_bounds(model, lower, upper, C, method=method, relaxation=relaxation, intersect_ibp=False)
            results[method, relaxation] = b
            assert torch.all(y >= b.lower[:, None] - 1e-9) and torch.all(y <= b.upper[:, None] + 1e-9), (method,
                                                                                                        relaxation)
            for (lo, hi), z in zip(b.pre_activation, pre, strict=True):
                assert torch.all(z >= lo[:, None] - 1e-9) and torch.all(z <= hi[:, None] + 1e-9), (method, relaxation)
    # the two settings are different lines on these nets, not the same numbers twice
    assert not torch.equal(results["crown", "tight"].lower, results["crown", "adaptive"].lower)
    # the kinks really sit on the box edges (box 0, first ParamRamp layer)
    lo0, hi0 = results["crown", "tight"].pre_activation[0]
    bend = model[1].bend.detach()
    assert bool(((bend == lo0[0]) | (bend == hi0[0]) | (bend == 0)).sum() >= 6)


@pytest.mark.parametrize("relaxation", ["tight", "adaptive"])
def test_warm_up_bends_at_infinity_give_finite_bounds_and_gradients(relaxation: str) -> None:
    """Bends of +inf (LeakyReLU, the training warm-up): no inf or NaN reaches bounds or gradients."""
    g = torch.Generator().manual_seed(3)
    m = nn.Sequential(nn.Linear(5, 8), ParamRampModule(torch.full((8,), float("inf")), 0.01), nn.Linear(8, 3))
    x = torch.rand(4, 5, generator=g)
    for method in ("crown-ibp", "crown-lbp", "crown"):
        b = compute_bounds(m, x - 0.3, x + 0.3, torch.eye(3), method=method, relaxation=relaxation)  # type: ignore[arg-type]
        assert torch.isfinite(b.lower).all() and torch.isfinite(b.upper).all()
        m.zero_grad()
        (-b.lower.sum()).backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters()), method
        assert float(m[0].weight.grad.abs().sum()) > 0
