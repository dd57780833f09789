"""The Verifier contract without any external tool: replay, isolation, results, registry, CLI errors.

The hooks below are real adapters (subclasses of Verifier) whose ``_solve`` misbehaves on
purpose; they run through the same isolated child process as every real verifier.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vfnn.network import Dense, Network, ReLU
from vfnn.spec import Halfspaces, Spec, SpecCase, robustness_spec
from vfnn.stats import LayerStats, UnstableRecord
from vfnn.verifiers import (
    Availability,
    OptionError,
    Problem,
    RawOutcome,
    UnsupportedProblem,
    VerificationResult,
    Verifier,
    get_verifier,
    validate_counterexample,
    verifier_names,
)
from vfnn.verifiers.replay import run_onnx
from vfnn.verify_cli import counterexample_text

ROOT = Path(__file__).resolve().parents[1]
ACASXU = ROOT.parent / "shared" / "benchmarks" / "acasxu"


def tiny_net() -> Network:
    """y = [relu(x0 - x1), relu(x1 - x0)]: y0 >= y1 exactly when x0 >= x1."""
    W1 = np.array([[1, -1], [-1, 1]], np.float32)
    return Network((2,), (Dense(W1, np.zeros(2, np.float32)), ReLU(), Dense(np.eye(2, dtype=np.float32),
                                                                             np.zeros(2, np.float32))), "tiny")


def unsafe_spec() -> Spec:
    """Unsafe when y0 - y1 <= -0.5 over x in [0,1]^2: reachable (x1 - x0 >= 0.5)."""
    h = Halfspaces(np.array([[1.0, -1.0]]), np.array([-0.5]))
    return Spec((SpecCase(np.zeros(2), np.ones(2), (h,)),), 2, 2, "tiny_unsafe")


class Scripted(Verifier):
    """A verifier whose hook does what ``behaviour`` says (to test the base class)."""

    name = "scripted"

    def __init__(self, behaviour: str):
        self.behaviour = behaviour

    def availability(self) -> Availability:
        return Availability(True, version="0")

    def _solve(self, problem: Problem, options: dict) -> RawOutcome:
        b = self.behaviour
        if b == "hang":
            time.sleep(3600)
        if b == "segfault":
            print("about to crash", flush=True)
            os.kill(os.getpid(), signal.SIGSEGV)
        if b == "exit":
            print("tool says goodbye", flush=True)
            os._exit(3)
        if b == "raise":
            raise UnsupportedProblem("cannot express this property")
        if b == "bogus":  # a point whose output is safe: y0 - y1 = 0 > -0.5
            return RawOutcome("sat", [0.5, 0.5], tool_time=0.1)
        if b == "outside":
            return RawOutcome("sat", [0.0, 2.0], tool_time=0.1)
        if b == "good":  # slightly outside the box (float32 rounding): clipped, then replayed
            return RawOutcome("sat", [-1e-8, 1.0 + 1e-8], tool_time=0.1, tool_stats={"splits": 3})
        if b == "unknown":
            return RawOutcome("unknown", tool_time=0.2, message="gave up")
        raise AssertionError(b)


def run(behaviour: str, timeout: float = 20.0, **opts: object) -> VerificationResult:
    return Scripted(behaviour).verify(tiny_net(), unsafe_spec(), timeout, opts, unstable_method=None)


def test_good_counterexample_is_clipped_replayed_and_reported() -> None:
    r = run("good")
    assert r.status == "sat" and r.case_index == 0
    assert r.counterexample_input == [0.0, 1.0]
    assert r.counterexample_output == pytest.approx([0.0, 1.0])
    assert r.tool_stats == {"splits": 3} and r.verifier_version == "0" and r.exit_code == 1


@pytest.mark.parametrize("behaviour, reason", [("bogus", "not in the unsafe region"), ("outside", "outside every")])
def test_counterexample_that_does_not_replay_becomes_error(behaviour: str, reason: str) -> None:
    r = run(behaviour)
    assert r.status == "error" and r.counterexample_input is None
    assert "rejected by replay" in r.message and reason in r.message


def test_hanging_tool_is_killed_at_timeout_plus_grace() -> None:
    t = time.monotonic()
    r = run("hang", timeout=1.0, grace=0.5)
    elapsed = time.monotonic() - t
    assert r.status == "timeout" and "hard deadline" in r.message
    assert elapsed < 1.5 + 3.0  # deadline + grace, plus process start-up on a loaded machine


def test_crashing_tool_gives_error_with_signal_and_output_tail() -> None:
    r = run("segfault")
    assert r.status == "error" and "SIGSEGV" in r.message and "about to crash" in r.message
    r = run("exit")
    assert r.status == "error" and "code 3" in r.message and "tool says goodbye" in r.message


def test_unsupported_and_unknown_are_kept_apart_from_timeout() -> None:
    r = run("raise")
    assert r.status == "error" and r.message == "unsupported: cannot express this property"
    r = run("unknown")
    assert r.status == "unknown" and r.message == "gave up" and r.exit_code == 3


def test_memory_cap_turns_a_huge_allocation_into_error() -> None:
    r = HogVerifier().verify(tiny_net(), unsafe_spec(), 20.0, {"memory_mb": 2048}, unstable_method=None)
    assert r.status == "error" and "out of memory" in r.message


class HogVerifier(Scripted):
    def __init__(self) -> None:
        super().__init__("hog")

    def _solve(self, problem: Problem, options: dict) -> RawOutcome:
        blocks = [np.empty(2**28, np.uint8) for _ in range(64)]  # 16 GiB of address space, cap is 2 GiB
        return RawOutcome("unknown", message=str(len(blocks)))


def test_trivial_specs_need_no_tool() -> None:
    empty = Spec((SpecCase(np.zeros(2), np.ones(2), ()),), 2, 2)
    assert Scripted("hang").verify(tiny_net(), empty, 5.0, unstable_method=None).status == "unsat"
    always = Spec((SpecCase(np.zeros(2), np.ones(2), (Halfspaces(np.zeros((0, 2)), np.zeros(0)),)),), 2, 2)
    r = Scripted("hang").verify(tiny_net(), always, 5.0, unstable_method=None)
    assert r.status == "sat" and r.counterexample_input == [0.5, 0.5]


class Translating(Scripted):
    """``translate`` refuses the spec named "refuse" and hands anything else to the solve."""

    def __init__(self, marker: Path) -> None:
        super().__init__("translated")
        self.marker = marker

    def translate(self, problem: Problem, options: dict) -> str:
        if problem.spec.name == "refuse":
            raise UnsupportedProblem("no such constraint in this tool")
        return f"input for {problem.spec.name}"

    def _solve_translated(self, problem: Problem, options: dict, translated: object) -> RawOutcome:
        self.marker.write_text("solved")
        return RawOutcome("unknown", message=str(translated))


def test_translate_runs_before_the_solve_and_can_refuse_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "solved.txt"
    r = Translating(marker).verify(tiny_net(), unsafe_spec(), 20.0)
    assert r.status == "unknown" and r.message == "input for tiny_unsafe" and marker.is_file()
    marker.unlink()
    refused = Spec(unsafe_spec().cases, 2, 2, "refuse")
    r = Translating(marker).verify(tiny_net(), refused, 20.0)
    assert r.status == "error" and r.message == "unsupported: no such constraint in this tool"
    assert not marker.exists() and r.unstable is None  # nothing ran: no solve, no record


class PerCase(Scripted):
    """Answers per input region: unsat where x0 can reach 1, ``other`` elsewhere."""

    per_case = True

    def __init__(self, other: str) -> None:
        super().__init__(other)

    def _solve(self, problem: Problem, options: dict) -> RawOutcome:
        (case,) = problem.spec.cases  # the base hands over one region at a time
        if case.upper[0] == 1.0:
            return RawOutcome("unsat", tool_time=0.25)
        if self.behaviour == "sat":
            return RawOutcome("sat", [0.0, 1.0], tool_time=0.5)
        return RawOutcome(self.behaviour, tool_time=0.5, message="gave up")  # type: ignore[arg-type]


def _two_cases() -> Spec:
    h = unsafe_spec().cases[0].unsafe
    return Spec((SpecCase(np.zeros(2), np.ones(2), h), SpecCase(np.zeros(2), np.array([0.5, 1.0]), h)), 2, 2, "two")


def test_per_case_adapters_get_one_region_at_a_time_and_the_answers_are_merged() -> None:
    r = PerCase("sat").verify(tiny_net(), _two_cases(), 20.0)
    assert r.status == "sat" and r.counterexample_input == [0.0, 1.0] and r.tool_stats["cases"] == ["unsat", "sat"]
    assert r.tool_time == pytest.approx(0.75) and r.unstable is not None and r.unstable.neurons == 4  # both boxes
    r = PerCase("unknown").verify(tiny_net(), _two_cases(), 20.0, unstable_method=None)
    assert r.status == "unknown" and r.message == "case 1: gave up" and r.tool_stats["deciding_case"] == 1


def test_merge_cases_order() -> None:
    from vfnn.verifiers.base import merge_cases

    u, t, k, e = (RawOutcome(s) for s in ("unsat", "timeout", "unknown", "error"))  # type: ignore[arg-type]
    assert merge_cases([u, u]).status == "unsat"
    assert merge_cases([u, e, k]).status == "unknown" and merge_cases([e, k, t]).status == "timeout"
    assert merge_cases([e, RawOutcome("sat", [0.0, 0.0])]).status == "sat"


def test_unstable_record_is_read_from_the_cache_once_computed(tmp_path: Path) -> None:
    from vfnn.onnx_io import save_onnx
    from vfnn.vnnlib import write_vnnlib

    model, spec = save_onnx(tiny_net(), tmp_path / "m.onnx"), write_vnnlib(unsafe_spec(), tmp_path / "s.vnnlib")
    cache = tmp_path / "cache"
    first = Scripted("unknown").verify(model, spec, 20.0, unstable_cache=cache)
    (entry,) = cache.glob("*.json")
    assert first.unstable is not None and UnstableRecord.from_dict(json.loads(entry.read_text())) == first.unstable
    marked = first.unstable.to_dict() | {"output_lower": [123.0]}
    entry.write_text(json.dumps(marked))  # a second verifier must read this, not compute its own
    second = Scripted("unknown").verify(model, spec, 20.0, unstable_cache=cache)
    assert second.unstable is not None and second.unstable.output_lower == (123.0,)
    other = Scripted("unknown").verify(model, spec, 20.0, unstable_cache=cache, unstable_method="ibp")
    assert other.unstable is not None and other.unstable.method == "ibp" and len(list(cache.glob("*.json"))) == 2


def test_options_are_typed_and_unknown_names_rejected() -> None:
    opts = get_verifier("milp").resolve_options({"threads": "2", "early_stop": "false"})
    assert opts["threads"] == 2 and opts["early_stop"] is False
    with pytest.raises(OptionError, match="unknown option 'nope'"):
        get_verifier("milp").resolve_options({"nope": 1})
    with pytest.raises(OptionError, match="must be one of"):
        get_verifier("milp").resolve_options({"bounds": "magic"})


def test_result_json_round_trip() -> None:
    rec = UnstableRecord("crown", (LayerStats(0, 50, 7, 20, 23),), (-1.0, 0.5), (2.0, 3.0))
    r = VerificationResult("sat", "milp", "highspy 1.16.0", {"threads": 1}, 1.5, 0.7, 60.0, [0.1, 0.2], [1.0, 2.0],
                           0, rec, {"nodes": 12}, "ok", "m.onnx", "p.vnnlib")
    back = VerificationResult.from_json(r.to_json())
    assert back == r and back.to_dict()["unstable"]["total_unstable"] == 7
    with pytest.raises(ValueError):
        VerificationResult("maybe", "x", None, {}, 0.0, None, 1.0)  # type: ignore[arg-type]


def test_replay_on_acasxu_reference_counterexample() -> None:
    from vfnn.vnnlib import read_vnnlib

    onnx = ACASXU / "onnx" / "ACASXU_run2a_1_7_batch_2000.onnx"
    spec = read_vnnlib(ACASXU / "vnnlib" / "prop_3.vnnlib", n_inputs=5, n_outputs=5)
    text = (ACASXU / "counterexamples" / "ACASXU_run2a_1_7_batch_2000_prop_3.counterexample").read_text()
    vals = [float(tok.strip("()")) for tok in text.split() if not tok.startswith("(")]
    x, y = vals[:5], vals[5:]
    ok, y_run, why = validate_counterexample(onnx, spec, x, y)
    assert ok and np.allclose(y_run, y, rtol=1e-3, atol=1e-4), why
    # A wrong tool output does not make a real counterexample false: execution decides, the note stays.
    ok, _, why = validate_counterexample(onnx, spec, x, [v + 1.0 for v in y])
    assert ok and "differs from onnxruntime" in why
    safe = [-0.3, 0.0, 0.5, 0.5, 0.5]
    ok, y_safe, why = validate_counterexample(onnx, spec, safe)
    assert ok == spec.cases[0].is_unsafe(run_onnx(onnx, safe), 1e-4)


def test_registry_lists_builtin_verifiers() -> None:
    assert {"milp", "marabou", "abcrown"} <= set(verifier_names())
    assert get_verifier("milp").availability().available


def test_counterexample_file_format() -> None:
    assert counterexample_text([0.5, -1.0], [2.0]) == "((X_0 0.5)\n(X_1 -1.0)\n(Y_0 2.0))\n"


def _vfnn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfnn", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("args, needle", [
    (["--verifier", "nope", "M", "S"], "unknown verifier 'nope'"),
    (["MISSING.onnx", "S"], "MISSING.onnx: no such file"),
    (["--opt", "threads", "M", "S"], "--opt expects key=value"),
])
def test_cli_user_errors_are_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    model, spec = tmp_path / "m.onnx", tmp_path / "s.vnnlib"
    args = [str(model) if a == "M" else str(spec) if a == "S" else a for a in args]
    if "MISSING.onnx" not in args:
        model.write_bytes(b"")
    spec.write_text("")
    p = _vfnn("verify", *args)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr + p.stdout
    assert len(p.stderr.strip().splitlines()) == 1


def test_cli_dimension_mismatch(tmp_path: Path) -> None:
    from vfnn.onnx_io import save_onnx
    from vfnn.vnnlib import write_vnnlib

    model = save_onnx(tiny_net(), tmp_path / "tiny.onnx")
    spec = write_vnnlib(robustness_spec(np.zeros(3), 0, 0.1, 3), tmp_path / "three.vnnlib")
    p = _vfnn("verify", "--bounds", "none", str(model), str(spec))
    assert p.returncode == 2 and "Traceback" not in p.stderr + p.stdout
    assert len(p.stderr.strip().splitlines()) == 1 and "3" in p.stderr


def test_cli_verdict_and_counterexample_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vfnn.cli import main
    from vfnn.onnx_io import save_onnx
    from vfnn.vnnlib import write_vnnlib

    model = save_onnx(tiny_net(), tmp_path / "tiny.onnx")
    spec = write_vnnlib(unsafe_spec(), tmp_path / "unsafe.vnnlib")
    cex = tmp_path / "cex.txt"
    with pytest.raises(SystemExit) as exit_:
        main(["verify", "--verifier", "milp", "-t", "30", "--save-counterexample", str(cex), str(model), str(spec)])
    out = capsys.readouterr().out
    assert exit_.value.code == 1 and out.startswith("sat [milp]") and "unstable (crown)" in out, out
    assert len(out.strip().splitlines()) == 1
    assert cex.read_text().startswith("((X_0 ") and "(Y_1 " in cex.read_text()
    with pytest.raises(SystemExit) as exit_:
        main(["verify", "--json", "-t", "30", "-o", "threads=1", str(model), str(spec)])
    r = VerificationResult.from_json(capsys.readouterr().out)
    assert exit_.value.code == 1 and r.status == "sat" and r.options["threads"] == 1 and r.model_path == str(model)
