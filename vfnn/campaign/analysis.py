"""Shared reading of campaign records: group keys, per-property verdicts, disagreements.

Every figure and table of ``vfnn report`` and every threshold of ``vfnn gate`` is computed here
from the ``results.jsonl`` records alone (see docs/campaigns.md for the record schema).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("unsat", "sat", "timeout", "unknown", "error")


def status(rec: dict[str, Any]) -> str:
    return rec["result"]["status"]


def wall_time(rec: dict[str, Any]) -> float:
    return float(rec["result"].get("wall_time") or 0.0)


def unstable_total(rec: dict[str, Any]) -> int | None:
    u = rec["result"].get("unstable")
    if not u:
        return None
    if "total_unstable" in u:
        return int(u["total_unstable"])
    return sum(int(layer["unstable"]) for layer in u.get("layers", []))


def unstable_layers(rec: dict[str, Any]) -> list[int] | None:
    u = rec["result"].get("unstable")
    if not u or not u.get("layers"):
        return None
    return [int(layer["unstable"]) for layer in sorted(u["layers"], key=lambda s: s["layer"])]


def model_of(rec: dict[str, Any]) -> str:
    return (rec.get("model") or {}).get("name") or Path(rec.get("onnx", "?")).stem


def method_of(rec: dict[str, Any]) -> str | None:
    return (rec.get("model") or {}).get("method")


def eps_of(rec: dict[str, Any]) -> float | None:
    e = (rec.get("meta") or {}).get("eps")
    return None if e is None else float(e)


def instance_of(rec: dict[str, Any]) -> str:
    """The property's identity across verifiers: ``onnx::vnnlib`` as written in instances.csv."""
    return f"{rec['onnx']}::{rec['vnnlib']}"


@dataclass(frozen=True)
class GroupStats:
    """Counts and times of one group of jobs (times over every job of the group, timeouts included)."""

    n: int
    counts: dict[str, int]
    mean_time: float
    median_time: float
    mean_unstable: float | None

    @property
    def verified(self) -> float:
        return self.counts["unsat"] / self.n if self.n else 0.0

    @property
    def falsified(self) -> float:
        return self.counts["sat"] / self.n if self.n else 0.0


def group_stats(records: list[dict[str, Any]]) -> GroupStats:
    counts = dict.fromkeys(STATUSES, 0)
    for r in records:
        counts[status(r)] = counts.get(status(r), 0) + 1
    times = [wall_time(r) for r in records]
    unstable = [u for r in records if (u := unstable_total(r)) is not None]
    return GroupStats(
        len(records), counts,
        statistics.fmean(times) if times else 0.0,
        statistics.median(times) if times else 0.0,
        statistics.fmean(unstable) if unstable else None,
    )


def group_by(records: list[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    """Group records by named keys among ``model``, ``method``, ``verifier``, ``eps``, ``category``."""
    getters = {
        "model": model_of,
        "method": lambda r: method_of(r) or "?",
        "verifier": lambda r: r["verifier"],
        "eps": eps_of,
        "category": lambda r: r.get("category", ""),
    }
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[tuple(getters[k](r) for k in keys)].append(r)
    return dict(sorted(out.items(), key=lambda kv: tuple((v is None, "" if v is None else v) for v in kv[0])))


@dataclass(frozen=True)
class Disagreement:
    """One property on which one verifier says sat and another unsat."""

    instance: str
    sat_by: list[str]
    unsat_by: list[str]
    counterexample_replays: bool | None  # None when the files are gone or there is no counterexample
    detail: str

    def describe(self) -> str:
        if self.counterexample_replays is True:
            verdict = f"the counterexample replays, so {', '.join(self.unsat_by)} answered unsat wrongly"
        elif self.counterexample_replays is False:
            verdict = f"the counterexample does NOT replay, so {', '.join(self.sat_by)} answered sat wrongly"
        else:
            verdict = "the counterexample could not be replayed here"
        return (f"{self.instance}: sat by {', '.join(self.sat_by)}, unsat by {', '.join(self.unsat_by)}; "
                f"{verdict} ({self.detail})")


def find_disagreements(records: list[dict[str, Any]], replay: bool = True) -> list[Disagreement]:
    """Properties with both a sat and an unsat answer; the sat's counterexample is replayed again."""
    by_inst: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_inst[instance_of(r)].append(r)
    out = []
    for inst, recs in by_inst.items():
        sats = [r for r in recs if status(r) == "sat"]
        unsats = [r for r in recs if status(r) == "unsat"]
        if not sats or not unsats:
            continue
        replays, detail = (None, "replay skipped") if not replay else _replay(sats[0])
        out.append(Disagreement(inst, sorted({r["verifier"] for r in sats}), sorted({r["verifier"] for r in unsats}),
                                replays, detail))
    return out


def _replay(rec: dict[str, Any]) -> tuple[bool | None, str]:
    x = rec["result"].get("counterexample_input")
    model, spec_path = Path(rec.get("model_path", "")), Path(rec.get("spec_path", ""))
    if x is None:
        return None, "the sat result carries no counterexample"
    if not model.is_file() or not spec_path.is_file():
        return None, "model or spec file not found"
    try:
        from vfnn.verifiers.replay import validate_counterexample
        from vfnn.vnnlib import read_vnnlib

        spec = read_vnnlib(spec_path)
        ok, _, why = validate_counterexample(model, spec, x)
    except Exception as exc:  # noqa: BLE001 - a report must still be written
        return None, f"replay failed: {type(exc).__name__}: {exc}"
    return ok, why


@dataclass(frozen=True)
class Property:
    """The campaign's verdict on one property, over the verifiers considered."""

    instance: str
    status: str  # one of STATUSES, or "disagreement"
    time: float  # fastest decisive answer, else the longest attempt
    records: tuple[dict[str, Any], ...]

    @property
    def model(self) -> str:
        return model_of(self.records[0])


def properties(records: list[dict[str, Any]]) -> list[Property]:
    """One verdict per property: sat/unsat if any verifier decided (both: ``disagreement``);
    otherwise timeout, then unknown, then error."""
    by_inst: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_inst[instance_of(r)].append(r)
    out = []
    for inst, recs in by_inst.items():
        sts = {status(r) for r in recs}
        decided = [r for r in recs if status(r) in ("sat", "unsat")]
        if "sat" in sts and "unsat" in sts:
            st = "disagreement"
        elif decided:
            st = status(decided[0])
        else:
            st = next(s for s in ("timeout", "unknown", "error") if s in sts)
        t = min(wall_time(r) for r in decided) if decided else max(wall_time(r) for r in recs)
        out.append(Property(inst, st, t, tuple(recs)))
    return out
