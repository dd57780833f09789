"""results.jsonl store, `vfnn gate` thresholds and exit codes, JUnit XML, report tables/figures."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cli_runner import write_records
from click.testing import CliRunner

from vfnn.campaign.gate import Thresholds, evaluate
from vfnn.campaign.store import CampaignRecord, ModelInfo, PropertyMeta, ResultStore, load_latest
from vfnn.cli import cli
from vfnn.errors import VfnnError
from vfnn.stats import LayerStats, UnstableRecord
from vfnn.verifiers.result import VerificationResult


def rec(spec: str, status: str, verifier: str = "milp", t: float = 1.0, model: str = "net", eps: float = 0.1,
        method: str | None = None) -> CampaignRecord:
    """A record as `vfnn bench` writes it, around a real VerificationResult."""
    unstable = UnstableRecord("crown", (LayerStats(0, 8, 3, 4, 1), LayerStats(1, 8, 1, 5, 2)), (0.0,), (1.0,))
    res = VerificationResult(status, verifier, "1", {}, t, None, 10.0, counterexample_input=[0.5] * 4
                             if status == "sat" else None, unstable=unstable, message="")
    onnx = f"{model}.onnx"
    return CampaignRecord(f"{onnx}::{spec}::{verifier}", onnx, spec, verifier, res, category="c", prepare_time=0.01,
                          meta=PropertyMeta(eps=eps), model=ModelInfo(model, method))


def test_store_torn_tail_last_wins_and_lock(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    write_records(path, [rec("a", "timeout"), rec("b", "unsat"), rec("a", "unsat")])
    with open(path, "ab") as f:
        f.write(b'{"key": "c", "resu')  # a write cut short by SIGKILL
    latest = load_latest(path)
    assert sorted(latest) == ["net.onnx::a::milp", "net.onnx::b::milp"]
    assert latest["net.onnx::a::milp"].status == "unsat"
    store = ResultStore(path)
    assert len(store.open_for_append()) == 2
    with pytest.raises(VfnnError, match="another vfnn bench"):
        ResultStore(path).open_for_append()
    store.append(rec("c", "sat"))
    store.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 4 and all(json.loads(x)["key"] for x in lines)  # torn fragment gone, new line whole


def test_gate_thresholds_and_messages(tmp_path: Path) -> None:
    records = [rec(f"p{i}", "unsat", t=2.0) for i in range(8)] + [rec("p8", "timeout", t=10.0), rec("p9", "sat")]
    ok = evaluate(records, Thresholds(min_verified=0.8, max_timeouts=1, max_mean_time=3.5))
    assert ok.passed, ok.checks
    bad = evaluate(records, Thresholds(min_verified=0.9, max_timeouts=0, max_mean_time=2.6, max_errors=0))
    failed = {c.name: c.message for c in bad.checks if not c.ok}
    assert set(failed) == {"min-verified", "max-timeouts", "max-mean-time"}
    assert "short by 10.0 points, 1 more property needed" in failed["min-verified"]
    assert "over by 1" in failed["max-timeouts"] and "over by 0.100 s" in failed["max-mean-time"]
    # Two verifiers: a property counts as verified when one proves it; sat vs unsat fails the gate.
    two = [rec("p0", "timeout", "marabou"), rec("p0", "unsat", "milp"), rec("p1", "sat", "milp"),
           rec("p1", "unsat", "marabou")]
    out = evaluate(two, Thresholds(min_verified=0.5))
    assert {k: v for k, v in out.counts.items() if v} == {"unsat": 1, "disagreement": 1} and not out.passed
    assert evaluate(two, Thresholds(min_verified=0.5), verifier="milp").passed


def test_gate_cli_exit_codes_and_junit(tmp_path: Path) -> None:
    records = [rec("v0.vnnlib", "unsat"), rec("v1.vnnlib", "unsat"), rec("f.vnnlib", "sat"),
               rec("t.vnnlib", "timeout"), rec("u.vnnlib", "unknown"), rec("e.vnnlib", "error", model="other")]
    results = write_records(tmp_path / "results.jsonl", records)
    runner = CliRunner()
    r = runner.invoke(cli, ["gate", str(results), "--min-verified", "0.3", "--junit", str(tmp_path / "j.xml")])
    assert r.exit_code == 0, r.output
    assert "PASS min-verified" in r.output and "gate: passed" in r.output
    r = runner.invoke(cli, ["gate", str(results), "--min-verified", "0.5", "--max-errors", "0"])
    assert r.exit_code == 1
    assert "FAIL min-verified: verified 2/6 = 33.3% < 50.0%" in r.output and "FAIL max-errors" in r.output
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.tag == "testsuites"
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "6", "failures": "1", "errors": "3", "skipped": "0"}
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"net", "other"}
    assert (suites["net"].get("tests"), suites["net"].get("errors")) == ("5", "2")
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["f.vnnlib [eps=0.1]"].find("failure").get("type") == "falsified"
    assert cases["t.vnnlib [eps=0.1]"].find("error").get("type") == "timeout"
    assert cases["u.vnnlib [eps=0.1]"].find("error").get("type") == "unknown"
    assert list(cases["v0.vnnlib [eps=0.1]"]) == [cases["v0.vnnlib [eps=0.1]"].find("properties")]
    assert all(float(c.get("time")) >= 0 for c in cases.values())


def test_gate_counts_missing_properties(tmp_path: Path) -> None:
    results = write_records(tmp_path / "results.jsonl", [rec("a.vnnlib", "unsat")])
    (tmp_path / "instances.csv").write_text("net.onnx,a.vnnlib,10\nnet.onnx,b.vnnlib,10\n")
    r = CliRunner().invoke(cli, ["gate", str(results), "--min-verified", "0.5", "--max-errors", "0",
                                 "--instances", str(tmp_path / "instances.csv")])
    assert r.exit_code == 1 and "1 missing" in r.output
    assert "FAIL max-errors: errors: 1 (including 1 missing)" in r.output


def test_report_tables_figures_markdown(tmp_path: Path) -> None:
    records = [rec(f"s{i}_eps{e}", st, model=m, eps=e, method=meth, t=t)
               for m, meth in (("ce_net", "ce"), ("nbc_net", "ce+nbc"))
               for i, (e, st, t) in enumerate([(0.02, "unsat", 0.5), (0.05, "unsat", 1.5), (0.05, "sat", 0.2),
                                               (0.1, "timeout", 10.0)])]
    results = write_records(tmp_path / "results.jsonl", records)
    r = CliRunner().invoke(cli, ["report", str(results), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "Results per training method" in r.output and "ce+nbc" in r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| ce_net | milp | 0.05 | 2 | 50.0 | 50.0 | 0 | 0 | 0 | 0.850 | 0.850 | 4.0 |" in md
    for name in ("cactus", "verified_vs_eps", "unstable_per_layer"):
        png = tmp_path / "rep" / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"figures/{name}.png" in md
