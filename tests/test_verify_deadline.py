"""`vfnn verify` and `Verifier.verify` under one deadline: start-up counts, the process ends in time,
a solve that never started is an error; first-contact output (counterexample paths, progress line)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import alive
from test_verifiers_core import tiny_net, unsafe_spec

from vfnn.network import Network
from vfnn.verifiers import Availability, Problem, RawOutcome, Verifier

ROOT = Path(__file__).resolve().parents[1]
NET_42 = "onnx/ACASXU_run2a_4_2_batch_2000.onnx"  # prop_2 on 4_2 takes milp far longer than these timeouts


class Sleepy(Verifier):
    """Sleeps until long after any deadline, or reports the deadline it was given."""

    name = "sleepy"

    def __init__(self, report: bool = False):
        self.report = report

    def availability(self) -> Availability:
        return Availability(True, version="0")

    def _solve(self, problem: Problem, options: dict) -> RawOutcome:
        if self.report:
            return RawOutcome("unknown", message=repr(problem.deadline))
        time.sleep(3600)
        raise AssertionError


@pytest.fixture
def tiny_files(tmp_path: Path) -> tuple[Path, Path]:
    from vfnn.onnx_io import save_onnx
    from vfnn.vnnlib import write_vnnlib

    return save_onnx(tiny_net(), tmp_path / "tiny.onnx"), write_vnnlib(unsafe_spec(), tmp_path / "unsafe.vnnlib")


def _vfnn(*args: str, stderr: int | None = subprocess.PIPE) -> tuple[subprocess.CompletedProcess, float]:
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "vfnn", *args], stdout=subprocess.PIPE, stderr=stderr, text=True,
                       cwd=ROOT, timeout=120)
    return p, time.monotonic() - t


# -- the library: one deadline for the whole call -------------------------------------------------

def test_caller_deadline_reaches_the_tool_and_bounds_the_kill() -> None:
    deadline = time.monotonic() + 20.0
    r = Sleepy(report=True).verify(tiny_net(), unsafe_spec(), 30.0, unstable_method=None, deadline=deadline)
    assert r.message == repr(deadline)
    t = time.monotonic()
    r = Sleepy().verify(tiny_net(), unsafe_spec(), 30.0, {"grace": 0.2}, unstable_method=None, deadline=t + 1.0)
    assert r.status == "timeout" and "hard deadline" in r.message
    assert time.monotonic() - t < 1.2 + 3.0  # the 30 s timeout counts from the caller's start, not from now


def test_a_spent_budget_is_an_error_saying_the_solver_never_started() -> None:
    r = Sleepy().verify(tiny_net(), unsafe_spec(), 5.0, unstable_method="crown", deadline=time.monotonic() - 0.1)
    assert r.status == "error" and r.exit_code == 5
    assert "never started" in r.message and r.tool_stats["solver_started"] is False


def test_a_killed_solve_keeps_the_unstable_record_computed_in_its_child() -> None:
    Sleepy(report=True).verify(tiny_net(), unsafe_spec(), 30.0)  # starts this process's fork server
    r = Sleepy().verify(tiny_net(), unsafe_spec(), 1.5, {"grace": 0.2})
    assert r.status == "timeout" and r.unstable is not None and r.unstable.neurons == 2


def test_spec_path_is_parsed_after_the_model_once(tiny_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    import vfnn.onnx_io
    from vfnn.cli import main

    log = tmp_path / "loads.txt"
    real = vfnn.onnx_io.load_onnx

    def counting(path: object) -> Network:
        with open(log, "a") as f:  # a file: the command loads the model in a child process
            f.write(f"{path}\n")
        return real(path)

    monkeypatch.setattr(vfnn.onnx_io, "load_onnx", counting)
    model, spec = tiny_files
    with pytest.raises(SystemExit) as exit_:
        main(["verify", "-t", "60", str(model), str(spec)])
    assert exit_.value.code == 1
    assert log.read_text().splitlines() == [str(model)]


def test_the_command_process_imports_neither_torch_nor_onnx() -> None:
    """`vfnn verify` supervises; torch and onnx (~1.3 s of imports) are its child's: the deadline
    covers them, and they are paid once (benchmarks/overhead.py measures the rest)."""
    code = ("import sys, vfnn.cli, vfnn.verify_cli, vfnn.verifiers.base, vfnn.verifiers.process, "
            "vfnn.verifiers.abcrown; print(sorted(m for m in ('torch', 'onnx') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr


# -- the command: the process ends within timeout + 2 s -------------------------------------------

def test_verify_process_ends_soon_after_its_timeout(acasxu: Path) -> None:
    timeout = 3.0
    p, elapsed = _vfnn("verify", "-t", str(timeout), str(acasxu / NET_42), str(acasxu / "vnnlib" / "prop_2.vnnlib"))
    assert p.returncode in (4, 5), p.stdout + p.stderr
    # timeout + grace (1 s) + 0.5 s, plus the interpreter's own start on a loaded machine; before, ~2x timeout
    assert elapsed < timeout + 3.5, (elapsed, p.stdout)
    if p.returncode == 5:  # a very loaded machine: start-up alone took the whole budget
        assert "never started" in p.stdout
    assert float(p.stdout.split(" in ")[1].split("s")[0]) <= elapsed


def test_start_up_longer_than_the_timeout_is_an_error_not_a_verdict(acasxu: Path) -> None:
    p, elapsed = _vfnn("verify", "-t", "0.3", str(acasxu / NET_42), str(acasxu / "vnnlib" / "prop_2.vnnlib"))
    assert p.returncode == 5 and "the solver never started" in p.stdout, p.stdout + p.stderr
    assert elapsed < 0.3 + 3.5


# -- first contact ----------------------------------------------------------------------------------

def test_unwritable_counterexample_path_prints_the_verdict_then_one_error_line(tiny_files: tuple[Path, Path]) -> None:
    model, spec = tiny_files
    p, _ = _vfnn("verify", "-t", "60", "--save-counterexample", "/proc/x/y.txt", str(model), str(spec))
    assert p.returncode == 2, p.stdout + p.stderr
    (verdict,) = p.stdout.strip().splitlines()
    assert verdict.startswith("sat [milp]") and "not saved" in verdict and "saved to" not in verdict
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("vfnn: error: counterexample not saved: ") and "/proc/x" in line


def test_counterexample_path_that_is_a_directory_is_one_line_before_solving(tiny_files: tuple[Path, Path],
                                                                            tmp_path: Path) -> None:
    model, spec = tiny_files
    p, _ = _vfnn("verify", "-t", "60", "--save-counterexample", str(tmp_path), str(model), str(spec))
    assert p.returncode == 2 and p.stdout == ""
    (line,) = p.stderr.strip().splitlines()
    assert "is a directory" in line and str(tmp_path) in line


def test_progress_line_only_on_a_terminal(tiny_files: tuple[Path, Path]) -> None:
    model, spec = tiny_files
    master, slave = pty.openpty()
    try:
        p, _ = _vfnn("verify", "-t", "60", str(model), str(spec), stderr=slave)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert p.returncode == 1 and p.stdout.startswith("sat [milp]")
    assert b"verifying with milp" in seen and b"\r" in seen
    p, _ = _vfnn("verify", "-t", "60", str(model), str(spec))
    assert p.returncode == 1 and p.stderr == ""


def test_nothing_survives_a_killed_verify_command(acasxu: Path) -> None:
    from vfnn.campaign.proctree import children, descendants

    spec = acasxu / "vnnlib" / "prop_2.vnnlib"
    cmd = [sys.executable, "-m", "vfnn", "verify", "-t", "60", str(acasxu / NET_42), str(spec)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(children(c) for c in children(proc.pid)):
            time.sleep(0.05)  # the command -> its child -> the solve
        time.sleep(0.5)
        tree = descendants(proc.pid)
        assert len(tree) >= 2, tree
        _kill_and_check_tree_gone(proc, tree)
    finally:
        proc.kill()


def _kill_and_check_tree_gone(proc: subprocess.Popen, tree: list[int]) -> None:
    """SIGKILL the command; every process of ``tree`` must be gone within a second."""
    proc.kill()
    killed = time.monotonic()
    proc.wait()
    while any(alive(p) for p in tree) and time.monotonic() - killed < 10:
        time.sleep(0.02)
    assert not [p for p in tree if alive(p)] and time.monotonic() - killed < 1.0


def test_a_killed_verify_takes_the_external_tool_with_it(acasxu: Path, tmp_path: Path) -> None:
    """α,β-CROWN runs as a program of its own: a `kill -9` of `vfnn verify` must not leave it running."""
    from vfnn.campaign.proctree import descendants

    cv = tmp_path / "complete_verifier"
    cv.mkdir()
    (cv / "__init__.py").write_text("__version__ = '0.7.0'\n")
    (cv / "abcrown.py").write_text("import time\ntime.sleep(120)\n")  # a tool that runs on and on
    env = dict(os.environ, VFNN_ABCROWN=str(cv / "abcrown.py"), VFNN_ABCROWN_PYTHON=sys.executable)
    spec = acasxu / "vnnlib" / "prop_2.vnnlib"
    cmd = [sys.executable, "-m", "vfnn", "verify", "-v", "abcrown", "-t", "100", str(acasxu / NET_42), str(spec)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60

        def tool() -> list[int]:
            return [p for p in descendants(proc.pid) if "abcrown.py" in _cmdline(p)]

        while time.monotonic() < deadline and not tool():
            time.sleep(0.05)
        tree = descendants(proc.pid)
        assert tool(), tree
        _kill_and_check_tree_gone(proc, tree)
    finally:
        proc.kill()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
