"""Soundness on real instances: a CI-sized subset of ACAS Xu (VNN-COMP) with known verdicts.

Every instance below is decided in about a second by the verifier that runs it (measured with
benchmarks/verifiers.py); a timeout fails the test as well as a wrong verdict.  Every `sat` has
been replayed on the original ONNX file by the base class, which the test checks again here.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from vfnn.verifiers import get_verifier
from vfnn.verifiers.replay import run_onnx
from vfnn.vnnlib import read_vnnlib

ACASXU = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "acasxu"

# 2_2 and 3_3 on prop 1 are 60 s timeouts with the |gradient| x width split alone ("smear") and about
# a second with the default split (widest input at even depths): they fail if the branching regresses.
MILP = [("1_2", 1), ("3_2", 1), ("4_3", 1), ("2_2", 1), ("3_3", 1), ("1_3", 2), ("1_4", 2), ("1_6", 2), ("1_7", 3),
        ("1_8", 3), ("3_3", 3), ("2_1", 3), ("1_9", 4), ("4_4", 4)]
MARABOU = [("1_7", 3), ("1_8", 3), ("1_9", 3), ("3_1", 3), ("5_5", 3), ("1_7", 4), ("1_9", 4), ("2_1", 4), ("5_5", 4),
           ("4_4", 4)]


def expected() -> dict[tuple[str, str], str]:
    with open(ACASXU / "expected.csv") as f:
        return {(r["network"], r["property"]): r["expected"] for r in csv.DictReader(f)}


def check(verifier: str, net: str, prop: int) -> None:
    if not ACASXU.is_dir():
        pytest.skip(f"ACAS Xu benchmark not found at {ACASXU}")
    v = get_verifier(verifier)
    if not v.availability().available:
        pytest.skip(f"{verifier} is not installed")
    onnx = ACASXU / "onnx" / f"ACASXU_run2a_{net}_batch_2000.onnx"
    vnnlib = ACASXU / "vnnlib" / f"prop_{prop}.vnnlib"
    spec = read_vnnlib(vnnlib, n_inputs=5, n_outputs=5)
    want = expected()[(onnx.name, vnnlib.name)]
    r = v.verify(onnx, spec, 60.0, spec_path=vnnlib)
    assert r.status == want, f"{verifier} {net} prop_{prop}: {r.status} ({r.message}), expected {want}"
    assert r.unstable is not None and r.unstable.neurons == 300 and r.unstable.method == "crown"
    if want == "sat":
        x = np.asarray(r.counterexample_input)
        case = spec.cases[r.case_index]
        assert case.contains_input(x) and case.is_unsafe(run_onnx(onnx, x), 1e-4)
    assert r.wall_time < 60.0 + 10.0


@pytest.mark.parametrize("net, prop", MILP, ids=[f"{n}-prop{p}" for n, p in MILP])
def test_milp_acasxu(net: str, prop: int) -> None:
    check("milp", net, prop)


@pytest.mark.parametrize("net, prop", MARABOU, ids=[f"{n}-prop{p}" for n, p in MARABOU])
def test_marabou_acasxu(net: str, prop: int) -> None:
    check("marabou", net, prop)
