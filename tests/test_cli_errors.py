"""Errors are for people: paths that cannot be written and corrupt results give one line, exit 2,
and never lose what was already computed; a bug in vfnn is exit 5, never 1 (which reads as a verdict)."""

import json
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from cli_runner import run_cli

from vfnn.cli import cli
from vfnn.network import Dense, Network, ReLU
from vfnn.onnx_io import save_onnx
from vfnn.spec import robustness_spec
from vfnn.vnnlib import write_vnnlib


def vfnn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfnn", *args], capture_output=True, text=True, timeout=300)


def test_unwritable_counterexample_path_keeps_the_verdict(tmp_path):
    rng = np.random.default_rng(0)
    layers = (Dense(rng.normal(size=(4, 2)), rng.normal(size=4)), ReLU(), Dense(rng.normal(size=(2, 4)), np.zeros(2)))
    net = Network((2,), layers)
    model = save_onnx(net, tmp_path / "m.onnx")
    x = np.array([0.5, 0.5])
    wrong = 1 - int(np.argmax(net.forward(x[None])[0]))  # "robust as the wrong class": x itself violates it
    spec = write_vnnlib(robustness_spec(x, wrong, 0.1, 2), tmp_path / "s.vnnlib")
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = vfnn("verify", str(model), str(spec), "--json", "--save-counterexample", str(blocker / "cex.txt"))
    assert json.loads(proc.stdout)["status"] == "sat"  # printed before the write failed
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("vfnn: error: ") and str(blocker) in line


def test_corrupt_results_line_is_named_not_skipped(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text('{"broken\n')
    for command in (["gate", str(results), "--min-verified", "0.5"], ["report", str(results)]):
        proc = vfnn(*command)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"{results}:1: not a vfnn result record" in proc.stderr


def test_init_and_arch_exclude_each_other(tmp_path):
    model = save_onnx(Network((64,), (Dense(np.zeros((10, 64)), np.zeros(10)),)), tmp_path / "init.onnx")
    proc = vfnn("train", "--init", str(model), "--arch", "fc:16x3", "--epochs", "1", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--arch and --init exclude each other" in proc.stderr


# --- the top-level guard in vfnn.cli.main: exit 1 is a verdict, a bug is exit 5 with one line



@pytest.fixture
def failing_command():
    """A command registered for the test only, ending in whatever way its argument says."""
    @click.command("fail-as")
    @click.argument("how")
    def fail_as(how: str) -> None:
        if how == "bug":
            {}["missing"]  # noqa: B018 - a KeyError, as a bug in a command would raise
        if how == "exit1":
            sys.exit(1)
        if how == "message":
            sys.exit("something went wrong")
        if how == "click-file":
            raise click.FileError("some.txt", "cannot open")  # click's own exit code for this is 1

    cli.add_command(fail_as)
    yield
    cli.commands.pop("fail-as")


def test_internal_error_is_one_line_exit_5(failing_command, capsys, monkeypatch):
    monkeypatch.delenv("VFNN_DEBUG", raising=False)
    code, out, err = run_cli(["fail-as", "bug"], capsys)
    assert code == 5 and "Traceback" not in err + out
    (line,) = err.strip().splitlines()
    assert line.startswith("vfnn: internal error: KeyError: 'missing'") and "--debug" in line


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how: str, failing_command, capsys, monkeypatch):
    monkeypatch.delenv("VFNN_DEBUG", raising=False)
    if how == "env":
        monkeypatch.setenv("VFNN_DEBUG", "1")
    code, _, err = run_cli((["--debug"] if how == "flag" else []) + ["fail-as", "bug"], capsys)
    assert code == 5 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("vfnn: internal error: KeyError")


@pytest.mark.parametrize("how, want", [("exit1", 5), ("message", 5), ("click-file", 2)])
def test_exit_1_only_for_verdicts(how: str, want: int, failing_command, capsys):
    code, _, err = run_cli(["fail-as", how], capsys)
    assert code == want and "Traceback" not in err, err


def test_usage_errors_exit_2_and_version_0(capsys):
    assert run_cli(["verify"], capsys)[0] == 2
    assert run_cli(["gate", "--min-verified", "abc", "r.jsonl"], capsys)[0] == 2
    assert run_cli(["no-such-command"], capsys)[0] == 2
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and "vfnn" in out


def _record(**drop: bool) -> dict:
    rec = {"schema": 1, "key": "m.onnx::s.vnnlib::milp", "onnx": "m.onnx", "vnnlib": "s.vnnlib", "verifier": "milp",
           "result": {"status": "unsat", "wall_time": 0.5}, "meta": {"eps": 0.1}, "model": {"name": "m"}}
    return {k: v for k, v in rec.items() if k not in drop}


@pytest.mark.parametrize("broken, needle", [
    ({"onnx": True}, "no 'onnx'"), ({"verifier": True}, "no 'verifier'"), ({"result": True}, "no 'result'"),
    ({"key": True}, "no 'key'"), ("status", "'result.status' is not one of"), ("eps", "'meta.eps' is not a number"),
])
def test_malformed_record_names_file_and_line(broken, needle: str, tmp_path: Path, capsys):
    bad = _record(**broken) if isinstance(broken, dict) else _record()
    if broken == "status":
        bad["result"]["status"] = "verified"
    elif broken == "eps":
        bad["meta"]["eps"] = "0.1"
    results = tmp_path / "results.jsonl"
    good = dict(_record(), key="other", vnnlib="t.vnnlib")
    results.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    for command in (["gate", str(results), "--min-verified", "0.5"], ["report", str(results), "--no-replay"]):
        code, out, err = run_cli(command, capsys)
        assert code == 2 and "Traceback" not in err, (command, code, err)
        (line,) = err.strip().splitlines()
        assert f"{results}:2: not a vfnn result record" in line and needle in line, line
