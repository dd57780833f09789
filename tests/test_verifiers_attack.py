"""The falsification attack (vfnn/verifiers/attack.py): it finds counterexamples of known-sat ACAS Xu
instances, every point it returns is unsafe when the ONNX file is run, it returns nothing on an
unsat instance and when the replay rejects every candidate, and it stops at its deadline.

Batch sizes and rounds are fixed here (``restarts``/``rounds``) so that what is found does not
depend on the machine's speed; the deadlines are generous except in the deadline test.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from vfnn.network import Dense, Network, ReLU
from vfnn.onnx_io import load_onnx, save_onnx
from vfnn.spec import Spec, robustness_spec
from vfnn.verifiers import get_verifier
from vfnn.verifiers.attack import AttackConfig, AttackResult, Replayer, find_counterexample
from vfnn.verifiers.replay import run_onnx
from vfnn.vnnlib import read_vnnlib

FIXED = AttackConfig(steps=50, restarts=2048, rounds=4)


def acas(root: Path, net: str, prop: int) -> tuple[Path, Network, Spec]:
    onnx = root / "onnx" / f"ACASXU_run2a_{net}_batch_2000.onnx"
    return onnx, load_onnx(onnx), read_vnnlib(root / "vnnlib" / f"prop_{prop}.vnnlib", n_inputs=5, n_outputs=5)


def assert_counterexample(onnx: Path, spec: Spec, res: AttackResult) -> None:
    """The point lies in its case's box and the executed output is strictly unsafe there."""
    assert res.x is not None and res.case is not None, res.stats()
    case = spec.cases[res.case]
    assert case.contains_input(res.x)
    y = run_onnx(onnx, res.x)
    assert case.is_unsafe(y, 0.0)
    assert np.allclose(y, res.y)
    assert res.best_margin <= 0


# prop 2 (one disjunct of 4 rows) needs PGD and guidance; 7 and 8 have two disjuncts each
@pytest.mark.parametrize("net, prop", [("3_2", 2), ("1_9", 7), ("2_9", 8), ("1_7", 3)])
def test_finds_known_acasxu_counterexamples(acasxu: Path, net: str, prop: int) -> None:
    onnx, network, spec = acas(acasxu, net, prop)
    res = find_counterexample(network, spec, time.monotonic() + 60, Replayer(onnx, spec), FIXED)
    assert_counterexample(onnx, spec, res)
    assert res.rejected == 0


def test_returns_nothing_on_an_unsat_instance(acasxu: Path) -> None:
    onnx, network, spec = acas(acasxu, "1_1", 3)  # prop 3 holds on 1_1 (expected.csv: unsat)
    res = find_counterexample(network, spec, time.monotonic() + 60, Replayer(onnx, spec), FIXED)
    assert res.x is None and res.y is None and res.case is None
    assert res.best_margin > 0  # how far it got is reported, not hidden


class RejectAll(Replayer):
    def check(self, x: np.ndarray, case: int) -> tuple[np.ndarray, np.ndarray] | None:
        self.rejected += 1
        return None


def test_no_point_leaves_without_the_replay(acasxu: Path) -> None:
    """A sat instance whose candidates the replay all rejects gives no counterexample, and says so."""
    onnx, network, spec = acas(acasxu, "1_7", 3)
    res = find_counterexample(network, spec, time.monotonic() + 60, RejectAll(onnx, spec),
                              AttackConfig(steps=20, restarts=256, rounds=2))
    assert res.x is None
    assert res.rejected > 0 and res.best_margin <= 0
    assert res.stats()["attack_rejected"] == res.rejected


def test_replayer_rejects_a_safe_point(acasxu: Path) -> None:
    onnx, _, spec = acas(acasxu, "1_1", 1)
    replayer = Replayer(onnx, spec)
    c = spec.cases[0]
    assert replayer.check((c.lower + c.upper) / 2, 0) is None
    assert replayer.rejected == 1


def test_respects_its_deadline(acasxu: Path) -> None:
    onnx, network, spec = acas(acasxu, "1_1", 1)  # unsat: the attack runs until it is stopped
    t0 = time.monotonic()
    res = find_counterexample(network, spec, t0 + 0.3, Replayer(onnx, spec))  # rounds=0: until the deadline
    assert res.x is None and res.rounds >= 1
    assert time.monotonic() - t0 < 3.0  # 0.3 s asked; the slack is for a loaded machine
    late = find_counterexample(network, spec, time.monotonic() - 1, Replayer(onnx, spec))
    assert late.x is None and late.restarts == 0 and late.rounds == 0


def test_high_dimensional_robustness_counterexample(tmp_path: Path) -> None:
    """An MLP on 64 inputs (no sub-boxes: the whole box is bounded): a large radius is sat, found
    by PGD alone and with guidance; without a replayer the network is exported for the check."""
    rng = np.random.default_rng(0)
    net = Network((64,), (Dense(rng.normal(0, 0.2, (32, 64)).astype(np.float32), np.zeros(32, np.float32)), ReLU(),
                          Dense(rng.normal(0, 0.3, (10, 32)).astype(np.float32), np.zeros(10, np.float32))), "mlp")
    x = rng.uniform(0, 1, 64)
    label = int(np.argmax(net.forward(x[None])[0]))
    spec = robustness_spec(x, label, 0.05, 10)
    res = find_counterexample(net, spec, time.monotonic() + 60, None,
                              AttackConfig(steps=50, restarts=64, rounds=2, guided=False))
    assert_counterexample(save_onnx(net, tmp_path / "mlp.onnx"), spec, res)
    assert res.found_by == "pgd"
    guided = find_counterexample(net, spec, time.monotonic() + 60, None, AttackConfig(steps=50, restarts=64, rounds=2))
    assert guided.x is not None and guided.guided_boxes == 1
    assert int(np.argmax(net.forward(res.x[None])[0])) != label


def test_milp_reports_the_attack(acasxu: Path) -> None:
    onnx, _, spec = acas(acasxu, "1_9", 7)
    r = get_verifier("milp").verify(onnx, spec, 60, {"attack_time": 30, "attack_fraction": 1.0},
                                    unstable_method=None)
    assert r.status == "sat" and r.tool_stats["found_by"] == "attack"
    assert r.tool_stats["attack_restarts"] > 0 and r.tool_stats["attack_best_margin"] <= 0


def test_bound_guided_corners_minimise_crown_lower_lines() -> None:
    """Each row's corner is where CROWN's linear lower bound of that row is smallest over the box
    (so the line's value there is the row's CROWN bound), and a sub-box's score is the min over
    disjuncts of the max of its rows' bounds: a 9-disjunct robustness spec on a 2-hidden-layer MLP."""
    import torch

    from vfnn.bounds import compute_bounds
    from vfnn.verifiers.attack import _crown_corners

    rng = np.random.default_rng(1)

    def dense(n_out: int, n_in: int, scale: float) -> Dense:
        w, b = rng.normal(0, scale, (n_out, n_in)), rng.normal(0, 0.1, n_out)
        return Dense(w.astype(np.float32), b.astype(np.float32))

    net = Network((20,), (dense(30, 20, 0.4), ReLU(), dense(30, 30, 0.3), ReLU(), dense(10, 30, 0.3)), "mlp")
    x = rng.uniform(0, 1, 20)
    spec = robustness_spec(x, int(np.argmax(net.forward(x[None])[0])), 0.1, 10)
    case = spec.cases[0]
    model = net.to_torch()
    score, corners, (corner_case, corner_sub) = _crown_corners(model, net, spec, [(0, case.lower, case.upper)],
                                                               compute_bounds)
    C = np.concatenate([h.A for h in case.unsafe])
    b = np.concatenate([h.b for h in case.unsafe])
    lo, hi = (torch.as_tensor(v, dtype=torch.float32)[None] for v in (case.lower, case.upper))
    bounds = compute_bounds(model, lo, hi, C=torch.as_tensor(C, dtype=torch.float32), method="crown",
                            intersect_ibp=False, lines=True)
    A, bias = (t[0].detach().double().numpy() for t in bounds.lower_lines)
    samples = rng.uniform(case.lower, case.upper, (200, 20))
    for j in range(len(C)):  # the first len(C) corners are the rows' own
        at_corner = A[j] @ corners[j] + bias[j]
        assert np.all(at_corner <= samples @ A[j] + bias[j] + 1e-9)
        assert at_corner == pytest.approx(float(bounds.lower[0, j].detach()), abs=1e-4)
    assert score[0] == pytest.approx(float((bounds.lower[0].detach().double().numpy() - b).min()), abs=1e-5)
    assert len(corners) == 2 * len(C) and np.all(corner_case == 0) and np.all(corner_sub == 0)


def test_the_splitting_search_falsifies_by_pgd_in_its_most_promising_boxes(acasxu: Path) -> None:
    """Without the first attack (attack_steps=0), milp's input-splitting search still finds the
    counterexample of a known-sat ACAS Xu instance: a short PGD in the boxes whose margin bound is
    lowest (box centres alone do not find it).  The point replays on the ONNX file."""
    onnx, _, spec = acas(acasxu, "3_2", 2)
    r = get_verifier("milp").verify(onnx, spec, 120, {"attack_steps": 0}, unstable_method=None)
    assert r.status == "sat" and r.tool_stats["found_by"] == "box attack", (r.status, r.tool_stats)
    assert r.tool_stats["box_attacks"] > 0
    case = spec.cases[r.case_index]
    x = np.asarray(r.counterexample_input)
    assert case.contains_input(x) and case.is_unsafe(run_onnx(onnx, x), 0.0)
