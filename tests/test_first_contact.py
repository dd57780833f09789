"""First contact (issue 12, sections 4 and 7): wrong paths and limits are one line and exit 2, the
gate never passes what it did not see, bench says which rows could not run, the package installs
without setuptools warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from vfnn.cli import main
from vfnn.network import Dense, Network, ReLU
from vfnn.onnx_io import save_onnx
from vfnn.spec import robustness_spec
from vfnn.vnnlib import write_vnnlib

REPO = Path(__file__).resolve().parents[1]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit 2 and exactly one line on stderr naming what is wrong (no usage block, no traceback)."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, err)
    assert lines[0].startswith("vfnn: error: ") and all(n in lines[0] for n in needles), lines[0]


@pytest.fixture()
def model_and_spec(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    layers = (Dense(rng.normal(size=(4, 2)), rng.normal(size=4)), ReLU(), Dense(rng.normal(size=(2, 4)), np.zeros(2)))
    model = save_onnx(Network((2,), layers), tmp_path / "m.onnx")
    return model, write_vnnlib(robustness_spec(np.array([0.5, 0.5]), 0, 0.1, 2), tmp_path / "s.vnnlib")


# --- stats: missing files, folders and pipes


def test_stats_wrong_paths_are_one_line(model_and_spec, tmp_path: Path, capsys) -> None:
    model, spec = model_and_spec
    one_line_error(*run(["stats", str(tmp_path), str(spec)], capsys)[::2], str(tmp_path), "folder", "ONNX")
    one_line_error(*run(["stats", str(model), str(tmp_path / "nope.vnnlib")], capsys)[::2], "nope.vnnlib",
                   "no such file")


def test_stats_reads_pipes_and_gives_up_on_a_fifo_nobody_writes(model_and_spec, tmp_path: Path, capsys,
                                                                  monkeypatch) -> None:
    import vfnn.vnnlib

    model, spec = model_and_spec
    fds = []
    for data in (model.read_bytes(), spec.read_bytes()):  # what bash's <(cat m.onnx) <(cat s.vnnlib) hands over
        r, w = os.pipe()
        threading.Thread(target=lambda w=w, data=data: (os.write(w, data), os.close(w)), daemon=True).start()
        fds.append(r)
    try:
        code, out, _ = run(["stats", f"/dev/fd/{fds[0]}", f"/dev/fd/{fds[1]}", "--json"], capsys)
    finally:
        for fd in fds:
            os.close(fd)
    assert code == 0 and json.loads(out)["total_neurons"] == 4
    monkeypatch.setattr(vfnn.vnnlib, "FIFO_WAIT", 0.2)
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    one_line_error(*run(["stats", str(fifo), str(spec)], capsys)[::2], "model.fifo", "nothing was written")


# --- gate: what it did not see, truncated files, thresholds


def rec(spec: str, status: str, onnx: str = "net.onnx", root: Path | None = None) -> dict:
    res = {"status": status, "verifier": "milp", "wall_time": 1.0, "message": ""}
    out = {"schema": 1, "key": f"{onnx}::{spec}::milp", "onnx": onnx, "vnnlib": spec, "verifier": "milp",
           "status": status, "result": res, "model": {"name": "net"}, "meta": {}}
    if root is not None:
        out.update(model_path=str(root / onnx), spec_path=str(root / spec))
    return out


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_gate_with_instances_counts_only_those_rows_and_fails_on_each_missing_one(tmp_path: Path, capsys) -> None:
    other = write(tmp_path / "other.jsonl", [rec(f"o{i}.vnnlib", "unsat" if i < 39 else "timeout") for i in range(48)])
    mine = tmp_path / "mine.csv"
    mine.write_text("".join(f"net.onnx,m{i}.vnnlib,10\n" for i in range(8)))
    code, out, _ = run(["gate", str(other), "--instances", str(mine), "--min-verified", "0.3"], capsys)
    assert code == 1 and "gate: FAILED" in out, out  # main: "verified 39/48", passed
    assert "8 properties: 0 verified" in out and "8 missing" in out
    assert "FAIL missing: 8 of 8 properties of" in out and "ignored: results of 48 properties" in out
    # one of two present and verified: --min-verified 0.5 holds, yet the missing one fails the gate
    write(other, [rec("m0.vnnlib", "unsat"), rec("o1.vnnlib", "unsat")])
    mine.write_text("net.onnx,m0.vnnlib,10\nnet.onnx,m1.vnnlib,10\n")
    code, out, _ = run(["gate", str(other), "--instances", str(mine), "--min-verified", "0.5"], capsys)
    assert code == 1 and "PASS min-verified: verified 1/2" in out and "FAIL missing: 1 of 2" in out, out
    mine.write_text("net.onnx,m0.vnnlib,10\n")
    assert run(["gate", str(other), "--instances", str(mine), "--min-verified", "1"], capsys)[0] == 0


def test_gate_instances_match_the_same_files_named_from_another_folder(tmp_path: Path, capsys) -> None:
    bench = tmp_path / "bench"
    results = write(tmp_path / "r.jsonl", [rec("specs/a.vnnlib", "unsat", "nets/n.onnx", bench)])
    (tmp_path / "mine.csv").write_text("bench/nets/n.onnx,bench/specs/a.vnnlib,10\n")
    code, out, _ = run(["gate", str(results), "--instances", str(tmp_path / "mine.csv"), "--min-verified", "1"],
                       capsys)
    assert code == 0 and "1 properties: 1 verified" in out, out


def test_gate_fails_loudly_on_a_truncated_results_file(tmp_path: Path, capsys) -> None:
    results = write(tmp_path / "results.jsonl", [rec("a.vnnlib", "unsat"), rec("b.vnnlib", "unsat")])
    with open(results, "ab") as f:
        f.write(b'{"schema":1,"key":"net.onnx::c.vnnlib::milp","onnx":"net.on')  # a write cut short by SIGKILL
    code, out, _ = run(["gate", str(results), "--min-verified", "1"], capsys)
    assert code == 1 and "PASS min-verified: verified 2/2" in out, out  # main: passed silently
    assert f"FAIL complete: {results}: the last line is cut off (" in out and "job net.onnx::c.vnnlib::milp" in out


def test_gate_without_a_threshold_is_an_error(tmp_path: Path, capsys) -> None:
    results = write(tmp_path / "results.jsonl", [rec("a.vnnlib", "unsat")])
    one_line_error(*run(["gate", str(results)], capsys)[::2], "no threshold given", "--min-verified")


@pytest.mark.parametrize("option,value", [
    ("--max-mean-time", "-1"), ("--max-mean-time", "nan"), ("--max-mean-time", "inf"), ("--min-verified", "1.5"),
    ("--min-verified", "-0.1"), ("--min-verified", "nan"), ("--max-timeouts", "-1"), ("--max-errors", "-2"),
    ("--max-falsified", "-1"), ("--max-unknown", "-1"),
])
def test_gate_limits_are_validated(tmp_path: Path, capsys, option: str, value: str) -> None:
    results = write(tmp_path / "results.jsonl", [rec("a.vnnlib", "unsat")])
    one_line_error(*run(["gate", str(results), option, value], capsys)[::2], option)


def test_gate_and_report_wrong_paths_are_one_line(tmp_path: Path, capsys) -> None:
    results = write(tmp_path / "results.jsonl", [rec("a.vnnlib", "unsat")])
    for argv, needle in (
        (["gate", str(tmp_path), "--min-verified", "1"], "folder"),
        (["gate", str(tmp_path / "none.jsonl"), "--min-verified", "1"], "none.jsonl"),
        (["gate", str(results), "--min-verified", "1", "--instances", str(tmp_path)], "folder"),
        (["gate", str(results), "--min-verified", "1", "--junit", str(tmp_path)], "--junit"),
        (["report", str(tmp_path)], "folder"),
        (["report", str(results), "--out", str(results)], "--out"),
    ):
        one_line_error(*run(argv, capsys)[::2], needle)


# --- bench: instances files, bad rows, console without a terminal, overhead


def test_bench_refuses_a_wholly_unreadable_instances_file_up_front(tmp_path: Path, capsys) -> None:
    cases = {"two_cols.csv": b"a.onnx,b.vnnlib\nm.onnx,s.vnnlib,abc\n", "latin1.csv": b"n\xe9t.onnx,s.vnnlib,10\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        code, _, err = run(["bench", str(tmp_path / name), "-v", "milp", "--out", str(tmp_path / "out")], capsys)
        one_line_error(code, err, name)
        assert not (tmp_path / "out" / "results.jsonl").exists()  # nothing ran
    one_line_error(*run(["bench", str(tmp_path), "-v", "milp", "--out", str(tmp_path / "o")], capsys)[::2], "folder")
    one_line_error(*run(["bench", str(tmp_path / "latin1.csv"), "-v", "milp", "--out", str(tmp_path / "latin1.csv")],
                        capsys)[::2], "--out")


def test_bench_lists_bad_rows_and_writes_plain_lines_without_a_terminal(model_and_spec, tmp_path: Path) -> None:
    model, spec = model_and_spec
    (tmp_path / "instances.csv").write_text(
        "m.onnx,missing.vnnlib,10\nm.onnx,s.vnnlib\nm.onnx,s3.vnnlib,abc\n" + "".join(
            f"m{i}.onnx,s.vnnlib,10\n" for i in range(30)))  # long enough to need more than 80 columns of progress
    proc = subprocess.run([sys.executable, "-m", "vfnn", "bench", str(tmp_path / "instances.csv"), "-v", "milp",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "33 jobs run (0 already done)" in proc.stdout and "33 error" in proc.stdout
    assert "warning: 33 row(s) of the instances file could not run (recorded as error):" in proc.stderr
    assert "instances.csv line 1: spec file not found" in proc.stderr
    assert "instances.csv line 2: expected 'onnx,vnnlib,timeout'" in proc.stderr
    assert "instances.csv line 3: timeout 'abc'" in proc.stderr and "... and 13 more" in proc.stderr
    assert "…" not in proc.stderr and "━" not in proc.stderr  # no progress bar cut to 80 columns in a log
    assert "[33/33] 0 verified 0 falsified 0 timeout 0 unknown 33 error" in proc.stderr  # plain progress lines


def test_campaign_overhead_never_counts_idle_workers() -> None:
    from vfnn.campaign.cli import campaign_overhead

    # 2 jobs on 16 workers in a 16.6 s campaign: main printed (16.6 * 16 - 10) / 2 = 127.8 s/job
    assert campaign_overhead(16.6, 10.0, 2, 16) == pytest.approx((16.6 * 2 - 10.0) / 2)
    assert campaign_overhead(100.0, 190.0, 100, 2) == pytest.approx(0.1)
    assert campaign_overhead(5.0, 0.0, 0, 2) is None and campaign_overhead(5.0, 1.0, 3, None) is None
    for wall, solve, ran, workers in ((16.6, 10.0, 2, 16), (3.0, 0.0, 1, 8), (16.6, 1.0, 7, 4)):
        assert 0.0 <= campaign_overhead(wall, solve, ran, workers) <= wall  # per job, never more than the campaign


# --- install: no setuptools deprecation warnings


def test_pyproject_license_is_an_spdx_string_that_setuptools_accepts_without_warnings() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert data["project"]["license"] == "MIT"
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in data["build-system"]["requires"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), REPO / "pyproject.toml")
    assert [str(w.message)[:80] for w in caught if "license" in str(w.message).lower()] == []
    assert dist.metadata.license_expression == "MIT"


def test_verify_reads_a_spec_from_a_pipe(tmp_path: Path) -> None:
    """`vfnn verify model <(cat spec)`: the pipe is read once and verified like the file."""
    import shutil

    acas = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "acasxu"
    if not acas.is_dir() or shutil.which("bash") is None:
        pytest.skip("needs the ACAS Xu benchmark and bash")
    model, spec = acas / "onnx" / "ACASXU_run2a_1_2_batch_2000.onnx", acas / "vnnlib" / "prop_2.vnnlib"
    vfnn = f"{sys.executable} -m vfnn verify -v milp --timeout 60"
    proc = subprocess.run(["bash", "-c", f"{vfnn} {model} <(cat {spec})"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stdout.startswith("sat [milp]"), (proc.stdout, proc.stderr)
