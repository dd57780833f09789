"""The built-in MILP verifier: its encoding against torch, and its verdicts against Marabou's
(and against itself without the early-termination cutoffs) on small random ReLU networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vfnn.network import AvgPool2d, Conv2d, Dense, Flatten, Network, ReLU
from vfnn.spec import robustness_spec
from vfnn.verifiers import get_verifier


def random_net(rng: np.random.Generator, n_in: int, hidden: list[int], n_out: int) -> Network:
    layers, prev = [], n_in
    for h in hidden + [n_out]:
        layers += [Dense(rng.normal(0, np.sqrt(2 / prev), (h, prev)).astype(np.float32),
                         rng.normal(0, 0.1, h).astype(np.float32)), ReLU()]
        prev = h
    return Network((n_in,), tuple(layers[:-1]), "rand")


def test_conv_network_robustness_is_decided_and_sat_replays() -> None:
    rng = np.random.default_rng(3)
    net = Network((1, 6, 6), (
        Conv2d(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), np.zeros(4, np.float32), (1, 1), (1, 1, 1, 1)),
        ReLU(), AvgPool2d((2, 2), (2, 2)), Flatten(),
        Dense(rng.normal(0, 0.3, (3, 36)).astype(np.float32), np.zeros(3, np.float32)),
    ), "conv")
    x = rng.uniform(0, 1, 36)
    label = int(np.argmax(net.forward(x.reshape(1, 1, 6, 6))[0]))
    verdicts = {}
    for eps in (0.2, 0.3):  # 0.2: CROWN alone does not decide it, the MILP (52 binaries) proves it; 0.3: sat
        spec = robustness_spec(x, label, eps, 3)
        r = get_verifier("milp").verify(net, spec, 60, {"attack_steps": 0, "bounds": "crown"})
        verdicts[eps] = r.status
        assert r.unstable is not None and r.unstable.neurons == 144
        assert r.status == "sat" or r.tool_stats["milps"] >= 1
    marabou = get_verifier("marabou")
    if marabou.availability().available:  # average pooling reaches Marabou as a diagonal convolution
        m = marabou.verify(net, robustness_spec(x, label, 0.2, 3), 60, {"margin": 1e-6}, unstable_method=None)
        assert m.status == verdicts[0.2], m.message
    assert verdicts == {0.2: "unsat", 0.3: "sat"}


def test_milp_agrees_with_marabou_and_with_itself_without_cutoffs_or_with_presolve() -> None:
    """Cutoffs, input splitting and HiGHS presolve (off by default) change speed, never a verdict."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    marabou = get_verifier("marabou")
    milp = get_verifier("milp")
    seen = []
    for k in range(8):
        net = random_net(rng, 3 + k % 3, [12, 12], 4)
        x = rng.uniform(0.2, 0.8, net.input_size)
        label = int(np.argmax(net.forward(x[None])[0]))
        spec = robustness_spec(x, label, [0.02, 0.1][k % 2], 4)
        # attack off: every sat below comes from the MILP itself, and BaB splitting off for half of them
        opts = {"attack_steps": 0, "split_max_inputs": 0 if k % 2 else 16}
        a = milp.verify(net, spec, 60, opts, unstable_method=None)
        b = milp.verify(net, spec, 60, {**opts, "early_stop": False, "split_max_inputs": 0}, unstable_method=None)
        d = milp.verify(net, spec, 60, {**opts, "split_max_inputs": 0, "presolve": True}, unstable_method=None)
        assert a.status == b.status == d.status, (k, a.message, b.message, d.message)
        if marabou.availability().available:
            c = marabou.verify(net, spec, 60, {"margin": 1e-6}, unstable_method=None)
            if c.decided:
                assert a.status == c.status, (k, a.status, c.status)
        seen.append(a.status)
    assert {"sat", "unsat"} <= set(seen)


@pytest.mark.parametrize("verifier", ["milp", "marabou"])
def test_several_input_regions_report_the_violated_one(verifier: str) -> None:
    from vfnn.spec import Halfspaces, Spec, SpecCase

    if not get_verifier(verifier).availability().available:
        pytest.skip(f"{verifier} is not installed")
    # y = x0 - x1 through a ReLU pair; unsafe when y0 - y1 <= -0.5, i.e. x1 - x0 >= 0.5
    net = Network((2,), (Dense(np.array([[1, -1], [-1, 1]], np.float32), np.zeros(2, np.float32)), ReLU(),
                         Dense(np.eye(2, dtype=np.float32), np.zeros(2, np.float32))), "diff")
    h = Halfspaces(np.array([[1.0, -1.0]]), np.array([-0.5]))
    safe_box = SpecCase(np.array([0.5, 0.0]), np.array([1.0, 0.5]), (h,))  # x1 - x0 <= 0
    no_unsafe = SpecCase(np.zeros(2), np.ones(2), ())
    bad_box = SpecCase(np.array([0.0, 0.6]), np.array([0.05, 1.0]), (h,))
    r = get_verifier(verifier).verify(net, Spec((safe_box, no_unsafe, bad_box), 2, 2), 30)
    assert r.status == "sat" and r.case_index == 2
    r = get_verifier(verifier).verify(net, Spec((safe_box, no_unsafe), 2, 2), 30)
    assert r.status == "unsat"


def test_auto_bounds_refine_open_disjuncts_with_alpha_crown_on_high_dimensional_inputs() -> None:
    """On a 64-input MLP (one box, no input splitting) the default bounds run alpha-CROWN on the
    disjuncts CROWN leaves open: never more MILPs or binaries than CROWN alone, the same verdicts,
    and at some radius strictly fewer binaries."""
    milp, fewer, statuses = get_verifier("milp"), False, set()
    for seed, eps in ((5, 0.02), (6, 0.03), (6, 0.06)):
        rng = np.random.default_rng(seed)
        net = random_net(rng, 64, [32, 32], 10)
        x = rng.uniform(0, 1, 64)
        spec = robustness_spec(x, int(np.argmax(net.forward(x[None])[0])), eps, 10)
        crown = milp.verify(net, spec, 60, {"bounds": "crown", "attack_steps": 0}, unstable_method=None)
        auto = milp.verify(net, spec, 60, {"attack_steps": 0}, unstable_method=None)
        assert auto.status == crown.status and auto.status in ("sat", "unsat"), (eps, auto.status, crown.status)
        statuses.add(auto.status)
        a, c = auto.tool_stats, crown.tool_stats
        assert a["milps"] <= c["milps"] and a["binaries"] <= c["binaries"], (eps, a, c)
        assert c["refined_by_alpha"] == 0 and a["refined_by_alpha"] == (1 if c["milps"] else 0)
        fewer |= a["binaries"] < c["binaries"]
    assert fewer, "alpha-CROWN never removed a binary: the test radii no longer exercise it"
    assert statuses == {"sat", "unsat"}


def test_mixed_branching_splits_the_widest_input_at_even_depths_and_by_smear_at_odd_ones() -> None:
    from vfnn.verifiers.milp import split_scores

    case = robustness_spec(np.full(3, 0.5), 0, 0.5, 2, clip=None).cases[0]  # the box [0, 1]^3
    lows = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    highs = np.array([[1.0, 1.0, 1.0], [0.5, 1.0, 1.0], [0.5, 1.0, 1.0]])  # depths 0, 1, 2
    smear = np.array([[0.0, 0.0, 9.0]] * 3)
    scores = split_scores("mixed", case, lows, highs, smear)
    assert np.array_equal(scores[0], highs[0] - lows[0]) and np.array_equal(scores[1], smear[1])
    assert np.array_equal(scores[2], highs[2] - lows[2])
    assert np.array_equal(split_scores("widest", case, lows, highs, smear), highs - lows)
    assert np.array_equal(split_scores("smear", case, lows, highs, smear), smear)
