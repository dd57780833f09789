"""α,β-CROWN adapter: parsing of real captured output, process handling, availability, integration.

``tests/data/abcrown/<case>/`` holds the stdout, stderr, results file, config and spec of real
α,β-CROWN 0.7.0 runs (Dec 2025 release, CPU), captured with the adapter's ``keep_files`` option
(see ``tests/data/abcrown/README.md``).  The integration tests at the end run the real tool and are
skipped unless ``VFNN_ABCROWN`` and ``VFNN_ABCROWN_PYTHON`` point at an installation.
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from vfnn.spec import Halfspaces, Spec, SpecCase, robustness_spec
from vfnn.verifiers.abcrown import (
    ENV_PATH,
    ENV_PYTHON,
    AbcrownVerifier,
    build_config,
    choose_mode,
    classify,
    outcome_from_output,
    parse_results,
    parse_stdout,
    to_yaml,
    write_abcrown_vnnlib,
)
from vfnn.verifiers.base import ToolCrashed, UnsupportedProblem
from vfnn.verifiers.replay import validate_counterexample
from vfnn.vnnlib import read_vnnlib

DATA = Path(__file__).parent / "data" / "abcrown"
MLP = DATA / "mlp24.onnx"


def case(name: str) -> dict:
    d = DATA / name
    meta = json.loads((d / "command.json").read_text())
    spec = read_vnnlib(d / "spec.vnnlib")
    return {
        "stdout": (d / "stdout.txt").read_text(),
        "stderr": (d / "stderr.txt").read_text(),
        "results": (d / "results.txt").read_text() if (d / "results.txt").is_file() else None,
        "budget": float(meta["timeout"]),
        "mode": meta["mode"],
        "spec": spec,
        "config": (d / "config.yaml").read_text(),
    }


def outcome(name: str):
    c = case(name)
    return outcome_from_output(c["results"], c["stdout"], c["budget"], c["spec"].n_inputs, c["spec"].n_outputs)


# -- verdicts and statistics from real output ------------------------------------------------------

def test_acasxu_sat_counterexample_is_parsed_in_index_order():
    raw = outcome("acasxu_sat")
    assert raw.status == "sat"
    assert raw.counterexample == [-0.3035311698913574, -0.009549297392368317, 0.4933803379535675,
                                  0.30000001192092896, 0.30000001192092896]
    assert raw.output is not None and len(raw.output) == 5
    assert int(np.argmin(raw.output)) == 0  # prop_3 is violated when COC (Y_0) scores lowest
    assert raw.tool_time == pytest.approx(0.08736276626586914)


def test_acasxu_unsat():
    raw = outcome("acasxu_unsat")
    assert raw.status == "unsat" and raw.counterexample is None
    assert raw.tool_stats["tool_verdict"] == "unsat"
    assert 0 < raw.tool_time < 60


def test_acasxu_input_split_proof_counts_domains():
    raw = outcome("acasxu_prop1_unsat")
    assert raw.status == "unsat"
    assert raw.tool_stats["domains_visited"] == 941
    assert "(>= Y_0 3.991125645861615)" in (DATA / "acasxu_prop1_unsat" / "spec.vnnlib").read_text()


def test_acasxu_input_split_timeout_is_a_real_timeout():
    raw = outcome("acasxu_timeout")
    assert raw.status == "timeout", raw.message
    assert "ran out of time" in raw.message
    assert raw.tool_stats["domains_visited"] == 8766  # the last (cumulative) "N domains visited"
    assert "unstable_neurons" not in raw.tool_stats  # input splitting never splits neurons


def test_acasxu_relu_bab_timeout_reports_unstable_neurons_per_layer():
    raw = outcome("acasxu_bab_timeout")
    assert raw.status == "timeout"
    stats = raw.tool_stats
    assert stats["unstable_neurons"] == 269
    layers = stats["unstable_per_layer"]
    assert [ly["neurons"] for ly in layers] == [50] * 6  # ACAS Xu: six hidden layers of 50 ReLUs
    assert sum(ly["unstable"] for ly in layers) == 269
    assert stats["domains_visited"] == 1916


def test_mlp_bab_unsat_statistics():
    raw = outcome("mlp_bab_unsat")
    assert raw.status == "unsat"
    assert raw.tool_stats["unstable_neurons"] == 18
    assert raw.tool_stats["unstable_per_layer"] == [
        {"layer": "/14", "neurons": 32, "unstable": 8}, {"layer": "/16", "neurons": 32, "unstable": 10}]
    assert raw.tool_stats["domains_visited"] == 14


def test_mlp_bab_sat_counterexample_replays_on_the_onnx_file():
    c = case("mlp_bab_sat")
    raw = outcome("mlp_bab_sat")
    assert raw.status == "sat" and len(raw.counterexample) == 24
    ok, y, why = validate_counterexample(MLP, c["spec"], raw.counterexample, raw.output)
    assert ok, why


def test_giving_up_early_is_unknown_not_timeout():
    c = case("mlp_unknown")
    assert c["results"].strip() == "timeout"  # what the tool writes ...
    raw = outcome("mlp_unknown")
    assert raw.status == "unknown", raw.message  # ... but it stopped after 0.3 s of a 26 s budget
    assert "gave up" in raw.message


def test_timeout_rule_uses_time_out_line_or_exhausted_budget():
    unknown = case("mlp_unknown")
    stats = parse_stdout(unknown["stdout"])
    assert not stats.time_out
    res = parse_results(unknown["results"])
    assert classify(res, stats, budget=stats.time)[0] == "timeout"  # used its whole budget
    assert classify(res, stats, budget=10 * stats.time)[0] == "unknown"
    real = case("acasxu_timeout")
    no_line = real["stdout"].replace("Time out!", "")
    assert classify(parse_results(real["results"]), parse_stdout(no_line), budget=1e4)[0] == "unknown"


def test_stdout_parser_ignores_timer_lines():
    stats = parse_stdout(case("acasxu_timeout")["stdout"])
    assert stats.result == "timeout" and stats.time_out
    assert 7.9 < stats.time < 9.0  # the final "Time: <float>", not "Time: adv_check 0.0079 ..."


def test_results_file_errors():
    with pytest.raises(ToolCrashed):
        parse_results("")
    with pytest.raises(ToolCrashed):
        parse_results("Traceback (most recent call last):")
    with pytest.raises(ToolCrashed, match="gaps"):
        parse_results("sat\n((X_0 1.0)\n(X_2 2.0)\n(Y_0 0.5))")
    with pytest.raises(ToolCrashed, match="no counterexample"):
        outcome_from_output("sat\n", "Result: sat\nTime: 0.1\n", 10, 5, 5)
    with pytest.raises(ToolCrashed, match="expected 5"):
        outcome_from_output("sat\n((X_0 1.0)\n(Y_0 2.0))", "", 10, 5, 5)


# -- the configs vfnn writes ------------------------------------------------------------------------

def test_mode_choice_and_config_text_match_the_captured_runs():
    assert choose_mode("auto", 5) == "input-split" and choose_mode("auto", 24) == "bab"
    assert choose_mode("bab", 5) == "bab"
    for name in ("acasxu_sat", "mlp_bab_unsat"):
        c = case(name)
        written = c["config"].split("\n", 1)[1]  # after the "# written by vfnn" header
        assert written == to_yaml(build_config(c["mode"], "cpu")) + "\n"
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(to_yaml(build_config("input-split"))) == build_config("input-split")


# -- the spec file vfnn writes for α,β-CROWN ----------------------------------------------------------
# α,β-CROWN's reader accepts only "(op A B)" comparisons whose operands are variables or numbers.

_OPERAND = r"(?:[XY]_\d+|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_ABCROWN_COMPARISON = re.compile(rf"^\((?:<=|>=) {_OPERAND} {_OPERAND}\)$")


def _comparisons(text: str) -> list[str]:
    body = "\n".join(line for line in text.splitlines() if line.startswith(("(assert", "    (and")))
    return re.findall(r"\((?:<=|>=)[^()]*\)", body)


def _same_spec(a: Spec, b: Spec) -> bool:
    return len(a.cases) == len(b.cases) and all(
        np.array_equal(x.lower, y.lower) and np.array_equal(x.upper, y.upper) and len(x.unsafe) == len(y.unsafe)
        and all(np.array_equal(np.sign(h.A), np.sign(g.A)) for h, g in zip(x.unsafe, y.unsafe, strict=True))
        for x, y in zip(a.cases, b.cases, strict=True))


def test_spec_writer_uses_only_what_abcrown_reads_and_round_trips(tmp_path):
    spec = robustness_spec(np.linspace(0.1, 0.9, 24), 3, 0.04, 4)
    text = write_abcrown_vnnlib(spec, tmp_path / "s.vnnlib").read_text()
    comps = _comparisons(text)
    assert len(comps) == 2 * 24 + 3 and all(_ABCROWN_COMPARISON.match(c) for c in comps), comps
    assert _same_spec(spec, read_vnnlib(tmp_path / "s.vnnlib"))


def test_spec_writer_on_every_acasxu_property(acasxu, tmp_path):
    for k in range(1, 11):  # prop_1 is "Y_0 >= c", prop_6 has two input boxes
        spec = read_vnnlib(acasxu / "vnnlib" / f"prop_{k}.vnnlib")
        text = write_abcrown_vnnlib(spec, tmp_path / f"p{k}.vnnlib").read_text()
        assert all(_ABCROWN_COMPARISON.match(c) for c in _comparisons(text)), k
        back = read_vnnlib(tmp_path / f"p{k}.vnnlib")
        assert _same_spec(spec, back), k
        y = np.random.default_rng(k).normal(scale=3.0, size=(200, 5))
        for x_case, b_case in zip(spec.cases, back.cases, strict=True):
            assert [x_case.is_unsafe(v, 0.0) for v in y] == [b_case.is_unsafe(v, 0.0) for v in y]


def test_spec_writer_scales_single_outputs_and_refuses_sums(tmp_path):
    box = (np.zeros(2), np.ones(2))
    scaled = Spec((SpecCase(*box, (Halfspaces(np.array([[2.0, 0.0], [0.0, -4.0]]), np.array([3.0, 2.0])),)),), 2, 2)
    text = write_abcrown_vnnlib(scaled, tmp_path / "a.vnnlib").read_text()
    assert "(and (<= Y_0 1.5) (>= Y_1 -0.5))" in text
    summed = Spec((SpecCase(*box, (Halfspaces(np.array([[1.0, 1.0]]), np.array([0.0])),)),), 2, 2)
    with pytest.raises(UnsupportedProblem, match="cannot express"):
        write_abcrown_vnnlib(summed, tmp_path / "b.vnnlib")


# -- availability -------------------------------------------------------------------------------------

def _fake_install(tmp_path: Path, body: str = "") -> tuple[Path, Path]:
    """A directory laid out like α,β-CROWN's complete_verifier/ (version file + script)."""
    cv = tmp_path / "complete_verifier"
    cv.mkdir()
    (cv / "__init__.py").write_text("import sys\n__version__ = '0.7.0'\n")
    script = cv / "abcrown.py"
    script.write_text(body or "raise SystemExit(3)\n")
    return script, Path(sys.executable)


def test_unconfigured_is_unavailable_with_hint(monkeypatch):
    monkeypatch.delenv(ENV_PATH, raising=False)
    monkeypatch.delenv(ENV_PYTHON, raising=False)
    a = AbcrownVerifier().availability()
    assert not a.available and ENV_PATH in a.reason
    assert ENV_PATH in a.install_hint and ENV_PYTHON in a.install_hint


def test_missing_script_or_interpreter_gives_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_PATH, str(tmp_path / "nope" / "abcrown.py"))
    monkeypatch.setenv(ENV_PYTHON, sys.executable)
    a = AbcrownVerifier().availability()
    assert not a.available and "not found" in a.reason and "nope" in a.reason
    script, _ = _fake_install(tmp_path)
    a = AbcrownVerifier(abcrown_path=str(script), python=str(tmp_path / "nopython")).availability()
    assert not a.available and "nopython" in a.reason
    monkeypatch.delenv(ENV_PYTHON)
    a = AbcrownVerifier(abcrown_path=str(script)).availability()
    assert not a.available and ENV_PYTHON in a.reason


def test_configured_reports_version_from_its_files(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_PATH, raising=False)
    script, python = _fake_install(tmp_path)
    a = AbcrownVerifier(abcrown_path=str(script), python=str(python)).availability()
    assert a.available and a.version == "0.7.0"
    monkeypatch.setenv(ENV_PATH, str(script.parent.parent))  # the checkout root works too
    monkeypatch.setenv(ENV_PYTHON, str(python))
    assert AbcrownVerifier().availability().version == "0.7.0"
    assert AbcrownVerifier.resolve_options({})["abcrown_path"] == str(script.parent.parent)


# -- process handling, on captured output played back by a stand-in script -----------------------------
# These check the adapter's command line, files, exit-code and deadline handling in CI.  The
# stand-in prints what the real tool printed (it is not an integration test; those are below).

REPLAY = textwrap.dedent(r"""
    import argparse, pathlib, shutil, sys, time
    p = argparse.ArgumentParser()
    for a in ("--config", "--onnx_path", "--vnnlib_path", "--device", "--timeout", "--results_file", "--cex_path"):
        p.add_argument(a, required=True)
    p.add_argument("--save_adv_example", action="store_true", required=True)
    args = p.parse_args()
    assert pathlib.Path(args.config).is_file() and pathlib.Path(args.vnnlib_path).is_file()
    assert pathlib.Path(args.onnx_path).is_file() and float(args.timeout) > 0 and args.device == "cpu"
    case = pathlib.Path({case!r})
    out = (case / "stdout.txt").read_text()
    sys.stderr.write((case / "stderr.txt").read_text())
    if {sleep}:  # a hang: print what came before the verdict, then never finish
        sys.stdout.write(out.split("\nResult:")[0])
        sys.stdout.flush()
        time.sleep({sleep})
    sys.stdout.write(out)
    if (case / "results.txt").is_file():
        shutil.copyfile(case / "results.txt", args.results_file)
    else:
        sys.exit(1)
""")


def _replaying(tmp_path: Path, name: str, sleep: float = 0) -> AbcrownVerifier:
    script, python = _fake_install(tmp_path, REPLAY.format(case=str(DATA / name), sleep=sleep))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return AbcrownVerifier(abcrown_path=str(script), python=str(python))


def test_sat_goes_through_replay_validation(tmp_path):
    c = case("mlp_bab_sat")
    r = _replaying(tmp_path, "mlp_bab_sat").verify(MLP, c["spec"], 30, unstable_method=None)
    assert r.status == "sat", r.message
    assert r.tool_stats["mode"] == "bab"  # 24 inputs
    assert len(r.counterexample_input) == 24 and r.case_index == 0


def test_counterexample_that_does_not_replay_becomes_error(tmp_path):
    # The captured MLP counterexample checked against a different property of the same network
    # (robustness at the centre of a tiny box that does not contain the point).
    other = robustness_spec(np.full(24, 0.5), 3, 0.001, 4)
    r = _replaying(tmp_path, "mlp_bab_sat").verify(MLP, other, 30, unstable_method=None)
    assert r.status == "error" and "rejected by replay" in r.message


def test_inexpressible_property_is_an_error_before_running(tmp_path):
    rows = np.zeros((1, 4))
    rows[0, :2] = 1.0  # y_0 + y_1 <= 0: no α,β-CROWN VNN-LIB form
    base = read_vnnlib(DATA / "mlp_bab_sat" / "spec.vnnlib").cases[0]
    spec = Spec((SpecCase(base.lower, base.upper, (Halfspaces(rows, np.zeros(1)),)),), 24, 4)
    r = _replaying(tmp_path, "mlp_bab_sat").verify(MLP, spec, 30, unstable_method=None)
    assert r.status == "error" and "unsupported" in r.message and "cannot express" in r.message


def test_crash_becomes_error_with_the_tail_of_stderr(tmp_path):
    c = case("error_shape")
    r = _replaying(tmp_path, "error_shape").verify(MLP, read_vnnlib(DATA / "mlp_bab_sat" / "spec.vnnlib"), 30,
                                                    unstable_method=None)
    assert c["results"] is None
    assert r.status == "error"
    assert "exit code 1" in r.message and "RuntimeError: shape" in r.message


def test_overrunning_tool_is_killed_near_the_deadline(tmp_path):
    spec = read_vnnlib(DATA / "mlp_bab_sat" / "spec.vnnlib")
    v = _replaying(tmp_path, "acasxu_bab_timeout", sleep=120)
    r = v.verify(MLP, spec, 2, {"grace": 4, "startup_s": 1}, unstable_method=None)
    assert r.status == "timeout"
    assert "killed" in r.message
    assert r.tool_stats["unstable_neurons"] == 269  # parsed from what it had printed so far
    assert r.wall_time < 2 + 4 + 3


NO_TORCH = textwrap.dedent("""
    import json, sys
    from vfnn.verifiers.abcrown import AbcrownVerifier
    v = AbcrownVerifier(abcrown_path=sys.argv[1], python=sys.executable)
    r = v.verify(sys.argv[2], sys.argv[3], 30, unstable_method=sys.argv[4] or None)
    print(json.dumps({"status": r.status, "torch": "torch" in sys.modules, "onnx": "onnx" in sys.modules,
                      "process_time": r.tool_stats.get("process_time"),
                      "unstable": None if r.unstable is None else r.unstable.neurons}))
""")


@pytest.mark.parametrize("method", ["", "crown"])
def test_the_adapter_process_imports_neither_torch_nor_onnx(tmp_path, method):
    """The tool reads the ONNX file itself: vfnn's side stays light (its start-up is the adapter's
    overhead); the unstable record, when asked for, comes from a child of its own."""
    v = _replaying(tmp_path, "mlp_bab_unsat")
    script = v._paths["abcrown_path"]
    p = subprocess.run([sys.executable, "-c", NO_TORCH, script, str(MLP), str(DATA / "mlp_bab_unsat" / "spec.vnnlib"),
                        method], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "unsat" and not out["torch"] and not out["onnx"], out
    assert out["process_time"] > 0  # the tool's own process wall time, as the executor measured it
    assert (out["unstable"] is not None) == bool(method)


# -- integration: the real tool ----------------------------------------------------------------------

needs_abcrown = pytest.mark.skipif(
    not (os.environ.get(ENV_PATH) and os.environ.get(ENV_PYTHON)),
    reason=f"α,β-CROWN not configured: set {ENV_PATH} and {ENV_PYTHON} (see verifiers/abcrown/README.md)",
)


@needs_abcrown
@pytest.mark.slow
@pytest.mark.parametrize("net,prop", [("ACASXU_run2a_4_8_batch_2000.onnx", "prop_3"),
                                      ("ACASXU_run2a_1_7_batch_2000.onnx", "prop_3")])
def test_real_abcrown_on_acasxu(acasxu, net, prop):
    expected = {(r["network"], r["property"]): r["expected"] for r in csv.DictReader(open(acasxu / "expected.csv"))}
    v = AbcrownVerifier()
    assert v.availability().available, v.availability().reason
    spec_path = acasxu / "vnnlib" / f"{prop}.vnnlib"
    r = v.verify(acasxu / "onnx" / net, read_vnnlib(spec_path), 60, spec_path=spec_path)
    assert r.status == expected[(net, f"{prop}.vnnlib")], r.message
    assert r.tool_stats["mode"] == "input-split" and r.tool_time is not None
    if r.status == "sat":
        assert r.counterexample_output is not None  # replayed by onnxruntime


@needs_abcrown
@pytest.mark.slow
def test_real_abcrown_bab_on_mlp():
    spec = read_vnnlib(DATA / "mlp_bab_unsat" / "spec.vnnlib")
    r = AbcrownVerifier().verify(MLP, spec, 60)
    assert r.status == "unsat", r.message
    assert r.tool_stats["mode"] == "bab" and r.tool_stats["unstable_neurons"] > 0


def _paramramp_nets() -> dict[str, tuple]:
    """A flat and a conv ParamRamp net (seeded), an input and its label for each."""
    from vfnn.layers import Conv2d, Dense, Flatten, ParamRamp
    from vfnn.network import Network

    g = np.random.default_rng(11)

    def f(*shape: int) -> np.ndarray:
        return g.normal(0, 0.6, shape).astype(np.float32)

    fc = Network((6,), (Dense(f(8, 6), f(8)), ParamRamp(g.uniform(0.1, 1.0, 8).astype(np.float32), 0.01),
                        Dense(f(8, 8), f(8)), ParamRamp(g.uniform(0.1, 1.0, 8).astype(np.float32), 0.0),
                        Dense(f(3, 8), f(3))))
    conv = Network((1, 5, 5), (Conv2d(f(2, 1, 3, 3), f(2)),
                               ParamRamp(g.uniform(0.1, 0.8, (2, 3, 3)).astype(np.float32), 0.01), Flatten(),
                               Dense(f(3, 18), f(3))))
    out = {}
    for name, net, x in (("fc", fc, g.uniform(-1, 1, 6)), ("conv", conv, g.uniform(0, 1, 25))):
        out[name] = (net, x, int(np.argmax(net.forward(x.reshape(1, *net.input_shape))[0])))
    return out


@needs_abcrown
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["fc", "conv"])
def test_real_abcrown_agrees_with_milp_on_paramramp_nets(arch, tmp_path):
    """α,β-CROWN reads the exported ReLU graph of a ParamRamp net unchanged: at a small radius both
    prove the property and at a large one both find (replayed) counterexamples."""
    from vfnn.onnx_io import save_onnx
    from vfnn.verifiers import get_verifier

    net, x, label = _paramramp_nets()[arch]
    model = save_onnx(net, tmp_path / "ramp.onnx")
    statuses = []
    for eps in (0.01, 2.0):
        spec = robustness_spec(x, label, eps, 3, clip=None)
        m = get_verifier("milp").verify(net, spec, 60)
        a = AbcrownVerifier().verify(model, spec, 60)
        assert a.status == m.status and m.status in ("sat", "unsat"), (eps, a.status, m.status, a.message)
        statuses.append(a.status)
    assert statuses == ["unsat", "sat"]
