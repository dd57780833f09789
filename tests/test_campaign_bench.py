"""`vfnn bench` with the real built-in MILP verifier on small digits networks.

Proof tests: a campaign killed with SIGKILL and resumed ends with exactly the results of an
uninterrupted run; bad rows become errors while the rest runs; portfolio stops the losers' whole
process trees; a worker crash loses one job; VNN-COMP files; Dask on a loopback LocalCluster.
A tiny fake verifier (registered through a test-only entry point) is used only for the
scheduling mechanics that need a slow or crashing tool.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import alive
from torch import nn

from vfnn.campaign.runner import run_campaign
from vfnn.campaign.specgen import generate_specs
from vfnn.campaign.store import ModelInfo, ResultStore, load_latest
from vfnn.campaign.vnncomp import counterexample_text
from vfnn.network import Network
from vfnn.onnx_io import save_onnx
from vfnn.spec import robustness_spec
from vfnn.train.data import load_dataset
from vfnn.verifiers.abcrown import parse_results
from vfnn.verifiers.replay import validate_counterexample
from vfnn.vnnlib import read_vnnlib, write_vnnlib

REPO = Path(__file__).resolve().parents[1]
# The MILP verifier spends a share of the budget on a PGD attack before it proves unsat; keep it short here.
OPTS = {"milp": {"attack_fraction": "0.02"}}
MILP_CLI = ["-O", "milp.attack_fraction=0.02"]


def _digits_model(path: Path) -> Path:
    torch.manual_seed(0)
    x, y = load_dataset("digits", "train")
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(m(xt), yt).backward()
        opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "config.json").write_text(json.dumps({"phases": [{"method": "ce", "regs": [], "epochs": 1}]}))
    return save_onnx(Network.from_torch(m, (1, 8, 8), "digits"), path)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """24 robustness properties of one small network and an uninterrupted reference campaign."""
    root = tmp_path_factory.mktemp("campaign")
    model = _digits_model(root / "run" / "model.onnx")
    generate_specs("digits", 1, [0.01, 0.04, 0.15], root / "specs", models=[model], timeout=20, seed=3)
    rows = (root / "specs" / "instances.csv").read_text().splitlines()[:24]
    (root / "specs" / "instances.csv").write_text("\n".join(rows) + "\n")
    s = run_campaign(root / "specs" / "instances.csv", ["milp"], root / "ref", jobs=2, options=OPTS,
                     show_progress=False)
    return {"root": root, "model": model, "csv": root / "specs" / "instances.csv", "summary": s,
            "ref": load_latest(root / "ref" / "results.jsonl")}


def _statuses(records: dict) -> dict[str, str]:
    return {k: r.status for k, r in records.items()}


def test_reference_campaign_is_decided_and_sound(bench: dict) -> None:
    ref = bench["ref"]
    assert len(ref) == 24 and bench["summary"].ran == 24
    st = _statuses(ref)
    assert set(st.values()) == {"sat", "unsat"}, st  # a tiny network decides every property
    for r in ref.values():
        assert r.model == ModelInfo("run", "ce") and r.eps in (0.01, 0.04, 0.15)
        assert r.result.unstable.neurons == 16
        if r.status == "sat":  # every reported counterexample really violates the property
            spec = read_vnnlib(r.spec_path, 64, 10)
            ok, _, why = validate_counterexample(r.model_path, spec, r.result.counterexample_input)
            assert ok, why
    rows = list(csv.reader((bench["root"] / "ref" / "milp" / "results.csv").open()))
    instances = list(csv.reader(bench["csv"].open()))
    assert [(r[1], r[2]) for r in rows] == [(i[0], i[1]) for i in instances]  # instance order, as the scorer needs
    assert all(r[0] == "specs" and r[4] in ("sat", "unsat") and float(r[5]) > 0 for r in rows)
    ref_dir = bench["root"] / "ref"
    assert (ref_dir / "results.csv").read_text() == (ref_dir / "milp" / "results.csv").read_text()
    n_sat = sum(r[4] == "sat" for r in rows)
    files = sorted((bench["root"] / "ref" / "milp" / "specs").glob("*.counterexample.gz"))
    assert len(files) == n_sat
    # the same text as `vfnn verify --save-counterexample`, which α,β-CROWN's parser reads back
    sat = next(r for r in ref.values() if r.status == "sat")
    text = gzip.decompress((files[0].parent / f"model_{Path(sat.vnnlib).stem}.counterexample.gz").read_bytes()).decode()
    assert text == counterexample_text(sat.result.counterexample_input, sat.result.counterexample_output)
    assert parse_results("sat\n" + text).x == sat.result.counterexample_input


def _bench_cmd(csv_path: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vfnn", "bench", str(csv_path), "--out", str(out), "-q", *extra]


def test_sigkill_then_resume_gives_the_uninterrupted_results(bench: dict, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    results = out / "results.jsonl"
    proc = subprocess.Popen(_bench_cmd(bench["csv"], out, "-v", "milp", "-j", "2", *MILP_CLI), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"campaign ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = results.read_bytes()
    done_before = load_latest(results)
    assert 3 <= len(done_before) < 24
    # the workers die with their driver (PR_SET_PDEATHSIG): nothing keeps running unrecorded work
    pids = {r.worker_pid for r in done_before.values()}
    t0 = time.monotonic()
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{p}").exists() for p in pids)
    cmd = _bench_cmd(bench["csv"], out, "-v", "milp", "-j", "2", *MILP_CLI)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"({len(done_before)} already done)" in r.stdout
    after = results.read_bytes()
    assert after.startswith(before)  # finished results are never rewritten
    keys = [json.loads(line)["key"] for line in after.splitlines()]
    assert len(keys) == len(set(keys)) == 24  # nothing ran twice, nothing is missing
    assert _statuses(load_latest(results)) == _statuses(bench["ref"])
    # a third run has nothing left to do (and starts no worker)
    s = run_campaign(bench["csv"], ["milp"], out, options=OPTS, show_progress=False)
    assert (s.ran, s.already_done) == (0, 24)
    assert results.read_bytes() == after


def test_bad_rows_become_errors_and_the_campaign_goes_on(bench: dict, tmp_path: Path) -> None:
    good = sorted((bench["root"] / "specs" / "vnnlib").glob("*.vnnlib"))[0]
    (tmp_path / "garbage.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0")
    write_vnnlib(robustness_spec(np.zeros(5), 0, 0.1, 3), tmp_path / "small.vnnlib")
    (tmp_path / "model.onnx").write_bytes(bench["model"].read_bytes())
    (tmp_path / "good.vnnlib").write_bytes(good.read_bytes())
    (tmp_path / "instances.csv").write_text(
        "model.onnx,good.vnnlib,20\n"
        "missing.onnx,good.vnnlib,60\n"
        "model.onnx,missing.vnnlib,60\n"
        "model.onnx,late.vnnlib,soon\n"
        "model.onnx,garbage.vnnlib,60\n"
        "model.onnx,small.vnnlib,60\n"
        "model.onnx\n"
    )
    s = run_campaign(tmp_path / "instances.csv", ["milp"], tmp_path / "out", jobs=2, options=OPTS,
                     show_progress=False)
    recs = list(load_latest(tmp_path / "out" / "results.jsonl").values())
    assert s.ran == 7 and len(recs) == 7
    msgs = {r.key: (r.status, r.result.message) for r in recs}
    good_status = [st for k, (st, _) in msgs.items() if k == "model.onnx::good.vnnlib::milp"]
    assert good_status and good_status[0] in ("sat", "unsat")
    errors = [m for st, m in msgs.values() if st == "error"]
    assert len(errors) == 6, msgs
    joined = "\n".join(errors)
    for needle in ("model file not found", "spec file not found", "timeout 'soon' is not a positive number",
                   "garbage.vnnlib", "5 inputs", "expected 'onnx,vnnlib,timeout'"):
        assert needle in joined, (needle, joined)


FAKE = '''
import os, signal, time
from vfnn.verifiers.base import Availability, Option, RawOutcome, Verifier

class FakeVerifier(Verifier):
    """Test-only: sleeps, records its solve process id, can kill the campaign worker above it."""
    name = "fake"
    options = (Option("sleep", float, 0.0, "seconds"), Option("pidfile", str, "", "append pid here"),
               Option("crash_on", str, "", "kill the worker when the spec path contains this"))

    def availability(self):
        return Availability(True, "0")

    def _solve(self, problem, options):
        if options["pidfile"]:
            with open(options["pidfile"], "a") as f:
                f.write(f"{os.getpid()}\\n")
        if options["crash_on"] and options["crash_on"] in str(problem.spec_path):
            os.kill(os.getppid(), signal.SIGKILL)  # the solve is a plain fork of the campaign worker
        time.sleep(options["sleep"])
        return RawOutcome("unknown", message="fake: gave up")
'''


@pytest.fixture(scope="module")
def fake_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pkg = tmp_path_factory.mktemp("fakepkg")
    (pkg / "vfnn_fake_verifier.py").write_text(FAKE)
    info = pkg / "vfnn_fake_verifier-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vfnn-fake-verifier\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vfnn.verifiers]\nfake = vfnn_fake_verifier:FakeVerifier\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(pkg), str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_portfolio_first_decisive_wins_and_losers_trees_are_killed(bench: dict, fake_env: dict,
                                                                    tmp_path: Path) -> None:
    rows = bench["csv"].read_text().splitlines()[:4]
    (bench["root"] / "specs" / "four.csv").write_text("\n".join(rows) + "\n")
    pidfile = tmp_path / "fake.pids"
    t0 = time.monotonic()
    r = subprocess.run(_bench_cmd(bench["root"] / "specs" / "four.csv", tmp_path / "pf", "-v", "fake", "-v", "milp",
                                  "--portfolio", "-j", "2", "-O", "fake.sleep=120", "-O", f"fake.pidfile={pidfile}",
                                  *MILP_CLI),
                       cwd=REPO, env=fake_env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert elapsed < 100  # the 120 s fake never ran to its end
    recs = load_latest(tmp_path / "pf" / "results.jsonl")
    assert len(recs) == 4
    for rec in recs.values():
        assert rec.verifier == "portfolio(fake,milp)"
        assert rec.portfolio.winner == "milp" and rec.portfolio.results["fake"]["status"] == "stopped"
        assert rec.status == bench["ref"][rec.key.replace("portfolio(fake,milp)", "milp")].status
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) >= 1
    time.sleep(0.5)
    assert not any(alive(p) for p in pids), "a stopped verifier's solve process is still running"
    assert (tmp_path / "pf" / "portfolio" / "results.csv").is_file()
    assert len(list((tmp_path / "pf" / "cache" / "unstable").glob("*.json"))) == 4  # one per (model, spec)


def test_the_unstable_record_is_computed_once_per_model_and_spec(bench: dict, fake_env: dict,
                                                                  tmp_path: Path) -> None:
    """A second verifier of the campaign reads the record the first one left in the cache."""
    import shutil

    rows = bench["csv"].read_text().splitlines()[:4]
    (bench["root"] / "specs" / "four.csv").write_text("\n".join(rows) + "\n")
    cache = tmp_path / "out" / "cache" / "unstable"
    shutil.copytree(bench["root"] / "ref" / "cache" / "unstable", cache)
    entries = sorted(cache.glob("*.json"))
    assert len(entries) == 24  # the reference campaign: one record per property
    for e in entries:  # mark them: a verifier that computed its own record would not have the mark
        e.write_text(json.dumps(json.loads(e.read_text()) | {"output_lower": [123.0]}))
    r = subprocess.run(_bench_cmd(bench["root"] / "specs" / "four.csv", tmp_path / "out", "-v", "fake", "-j", "2"),
                       cwd=REPO, env=fake_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    recs = load_latest(tmp_path / "out" / "results.jsonl")
    assert len(recs) == 4 and all(rec.result.unstable.output_lower == (123.0,) for rec in recs.values())
    assert len(list(cache.glob("*.json"))) == 24


def test_worker_crash_loses_one_job_only(bench: dict, fake_env: dict, tmp_path: Path) -> None:
    rows = bench["csv"].read_text().splitlines()[:3]
    (tmp_path / "model.onnx").write_bytes(bench["model"].read_bytes())
    lines = []
    for i, row in enumerate(rows):
        spec = bench["root"] / "specs" / row.split(",")[1]
        name = f"CRASHME{i}.vnnlib" if i == 1 else f"ok{i}.vnnlib"
        (tmp_path / name).write_bytes(spec.read_bytes())
        lines.append(f"model.onnx,{name},30")
    (tmp_path / "instances.csv").write_text("\n".join(lines) + "\n")
    cmd = _bench_cmd(tmp_path / "instances.csv", tmp_path / "out", "-v", "fake", "-O", "fake.crash_on=CRASHME")
    r = subprocess.run(cmd, cwd=REPO, env=fake_env, capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stderr
    recs = {Path(x.vnnlib).stem: x for x in load_latest(tmp_path / "out" / "results.jsonl").values()}
    assert recs["CRASHME1"].status == "error" and "worker process died" in recs["CRASHME1"].result.message
    why = {k: (v.status, v.result.message) for k, v in recs.items()}
    assert recs["ok0"].status == recs["ok2"].status == "unknown", why  # the fake's honest answer


def test_dask_local_cluster_gives_the_same_results(bench: dict, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    rows = bench["csv"].read_text().splitlines()[:6]
    (bench["root"] / "specs" / "six.csv").write_text("\n".join(rows) + "\n")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        s = run_campaign(bench["root"] / "specs" / "six.csv", ["milp"], tmp_path / "dask",
                         dask=cluster.scheduler_address, jobs=2, options=OPTS, show_progress=False)
    assert s.ran == 6
    got = _statuses(load_latest(tmp_path / "dask" / "results.jsonl"))
    assert got == {k: v for k, v in _statuses(bench["ref"]).items() if k in got} and len(got) == 6


def test_report_on_the_real_campaign_and_disagreement_exits_nonzero(bench: dict, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vfnn.cli import cli

    ref = bench["root"] / "ref" / "results.jsonl"
    r = CliRunner().invoke(cli, ["report", str(ref), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "DISAGREEMENT" not in r.output and "| run | milp | 0.01 |" in (tmp_path / "rep" / "report.md").read_text()
    assert len(list((tmp_path / "rep" / "figures").glob("*.png"))) == 3
    # A second "verifier" claims unsat where milp found (and vfnn replayed) a counterexample.
    sat = next(x for x in bench["ref"].values() if x.status == "sat")
    lie = replace(sat.result, status="unsat", verifier="liar", counterexample_input=None, counterexample_output=None)
    other = tmp_path / "liar.jsonl"
    with ResultStore(other) as store:
        store.open_for_append()
        store.append(replace(sat, verifier="liar", key=sat.key.replace("::milp", "::liar"), result=lie))
    r = CliRunner().invoke(cli, ["report", str(ref), str(other)])
    assert r.exit_code == 1
    assert "DISAGREEMENT" in r.output and "the counterexample replays, so liar answered unsat wrongly" in r.output
    r = CliRunner().invoke(cli, ["gate", str(ref), str(other), "--min-verified", "0"])
    assert r.exit_code == 1 and "FAIL disagreements" in r.output
