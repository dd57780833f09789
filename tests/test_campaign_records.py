"""The typed campaign record: the store's round trip, results files of the earlier code, strict
reading, model metadata from config.json, the backends' interface and the report registry."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from cli_runner import run_cli, write_records

from vfnn.campaign import reports
from vfnn.campaign.backend import Backend
from vfnn.campaign.dask_backend import DaskBackend
from vfnn.campaign.localpool import LocalPool
from vfnn.campaign.meta import model_meta
from vfnn.campaign.store import (
    CampaignRecord,
    ModelInfo,
    PortfolioInfo,
    PropertyMeta,
    ResultStore,
    load_latest,
    load_records,
)
from vfnn.errors import VfnnError
from vfnn.stats import LayerStats, UnstableRecord
from vfnn.verifiers.result import VerificationResult

OLD = Path(__file__).parent / "data" / "campaign" / "results-before-typed-records.jsonl"


def _record(**changes: object) -> CampaignRecord:
    unstable = UnstableRecord("crown", (LayerStats(1, 6, 2, 3, 1), LayerStats(0, 6, 3, 2, 1)), (-1.5,), (2.0,))
    res = VerificationResult("sat", "milp", "highspy 1", {"threads": 1}, 0.25, 0.2, 10.0, [0.1, 0.2], [1.0, -1.0],
                             0, unstable, {"nodes": 3}, "", "/m/model.onnx", "/s/p.vnnlib")
    rec = CampaignRecord(
        "m.onnx::p.vnnlib::portfolio(milp,marabou)", "m.onnx", "p.vnnlib", "portfolio(milp,marabou)", res,
        category="cat", model_path="/m/model.onnx", spec_path="/s/p.vnnlib", timeout=10.0, prepare_time=0.05,
        portfolio=PortfolioInfo(("milp", "marabou"), "milp", "milp",
                                {"milp": {"status": "sat", "wall_time": 0.25}, "marabou": {"status": "stopped"}}),
        meta=PropertyMeta(eps=0.05, label=3, index=17, dataset="digits", split="test"),
        model=ModelInfo("run", "ce+nbc", 0.05, "fc:6", "digits", 0), finished_at="2026-12-02T00:00:00.000+00:00",
        host="h", worker_pid=123, vfnn_version="0.1.0")
    return replace(rec, **changes)


def test_a_record_comes_back_from_the_store_unchanged(tmp_path: Path) -> None:
    rec = _record()
    path = write_records(tmp_path / "results.jsonl", [rec])
    (back,) = load_records(path)
    assert back == rec
    assert (back.status, back.decided, back.eps, back.model_name, back.method) == ("sat", True, 0.05, "run", "ce+nbc")
    assert back.unstable_layers == [3, 2] and back.unstable_total == 5 and back.stable_fraction == pytest.approx(7 / 12)
    line = json.loads(path.read_text())
    assert line["schema"] == 1 and line["status"] == "sat" and line["result"] == rec.result.to_dict() | {
        "unstable": json.loads(json.dumps(rec.result.unstable.to_dict()))}


def test_non_finite_numbers_are_null_in_the_file_and_read_back(tmp_path: Path) -> None:
    res = replace(_record().result, status="timeout", timeout=math.inf, counterexample_input=None,
                  unstable=replace(_record().result.unstable, output_lower=(-math.inf,)))
    path = write_records(tmp_path / "results.jsonl", [_record(result=res)])
    text = path.read_text()
    assert "Infinity" not in text and json.loads(text)["result"]["timeout"] is None
    (back,) = load_records(path)
    assert back.result.timeout == math.inf and back.result.unstable.output_lower == (None,)


def test_results_written_by_the_code_before_typed_records_still_load_and_rewrite_the_same(tmp_path: Path) -> None:
    recs = list(load_latest(OLD).values())
    assert [r.status for r in recs] == ["error", "sat", "sat"]
    error, sat, pf = recs
    assert error.model == ModelInfo("missing") and error.meta == PropertyMeta() and error.wall_time == 0.0
    assert sat.meta == PropertyMeta(0.05, 0, 307, "digits", "test") and sat.method == "ce+nbc"
    assert sat.model.train_arch == "fc:6" and sat.result.counterexample_input and sat.unstable_total == 1
    assert pf.portfolio.winner == "milp" and pf.portfolio.results["marabou"] == {"status": "stopped"}
    # The store writes these records back as the very same JSON objects: the file format did not change.
    again = write_records(tmp_path / "again.jsonl", recs)
    old_lines = [json.loads(x) for x in OLD.read_text().splitlines()]
    assert [json.loads(x) for x in again.read_text().splitlines()] == old_lines


def test_resume_appends_to_a_file_of_the_earlier_code(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    shutil.copy(OLD, path)
    with ResultStore(path) as store:
        done = store.open_for_append()
        assert len(done) == 3
        store.append(_record())
    assert len(load_latest(path)) == 4 and path.read_bytes().startswith(OLD.read_bytes())


@pytest.mark.parametrize("change, problem", [
    (lambda d: d["result"].update(counterexample_input=None), "a sat result needs a counterexample"),
    (lambda d: d["result"].update(status="maybe"), "'result.status' is not one of unsat, sat, timeout"),
    (lambda d: d.pop("key"), "no 'key'"),
    (lambda d: d["portfolio"].pop("chosen"), "KeyError"),
])
def test_a_line_that_is_not_a_record_names_file_and_line(tmp_path: Path, change, problem: str) -> None:
    lines = OLD.read_text().splitlines()
    d = json.loads(lines[2])
    change(d)
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join([*lines[:2], json.dumps(d)]) + "\n")
    with pytest.raises(VfnnError, match="results.jsonl:3: not a vfnn result record") as e:
        load_records(path)
    assert problem in str(e.value)


@pytest.mark.parametrize("config, method", [
    ({"phases": [{"method": "ce", "regs": ["nbc"], "epochs": 3}], "arch": "fc:8", "seed": 2}, "ce+nbc"),
    ({"phases": [{"method": "ce", "regs": [], "epochs": 5}, {"method": "ce", "regs": ["nbc"], "epochs": 5}]},
     "ce:5,ce+nbc:5"),
    ({"method": "pgd", "regs": ["rs:0.5"], "arch": "fc:8"}, "pgd+rs"),  # before phases existed
    ({"config": {"method": "ce", "reg": "nbc", "seed": 2}}, "ce+nbc"),  # options nested under "config"
    ({"argv": ["x"]}, None),
])
def test_model_meta_reads_config_json_through_train_config(tmp_path: Path, config: dict, method: str | None) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    info = model_meta(tmp_path / "run" / "model.onnx")
    assert (info.name, info.method) == ("run", method)
    stated = config.get("config", config)
    assert info.train_arch == (stated.get("arch") if method else None)  # only what the file states
    assert info.train_seed == (stated.get("seed") if method else None)


def test_both_backends_have_the_interface_the_driver_uses() -> None:
    members = [m for m in vars(Backend) if not m.startswith("_")]
    assert set(members) == {"start", "capacity", "submit", "cancel", "poll", "close"}
    for cls in (LocalPool, DaskBackend):
        assert all(m in vars(cls) for m in members), cls


def test_report_names_come_from_the_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_records(tmp_path / "results.jsonl", [_record()])
    code, out, _ = run_cli(["report", "--list"], capsys)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == [e.name for e in reports.entries()]
    code, out, err = run_cli(["report", str(path), "--only", "cactuss"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not out
    assert "unknown report 'cactuss'" in err and "cactus" in err
    code, out, err = run_cli(["report", str(path), "--only", "per_method", "--only", "cactus",
                              "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "Results per training method" in out and "Results per model" not in out
    assert [p.name for p in (tmp_path / "o" / "figures").iterdir()] == ["cactus.png"]


def test_a_new_table_is_one_registered_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(reports, "_REGISTRY", dict(reports._REGISTRY))

    @reports.table("hosts")
    def hosts(records: list[CampaignRecord]) -> reports.Table:
        """Jobs per host."""
        return reports.Table("Jobs per host", ("host", "jobs"), [[r.host or "-", "1"] for r in records], left=1)

    path = write_records(tmp_path / "results.jsonl", [_record()])
    code, out, err = run_cli(["report", str(path), "--only", "hosts", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "Jobs per host" in out
    assert "| host | jobs |\n|---|---:|\n| h | 1 |" in (tmp_path / "o" / "report.md").read_text()
