"""Shared reading of campaign records: group keys, per-property verdicts, disagreements.

Every figure and table of ``vfnn report`` and every threshold of ``vfnn gate`` is computed here
from the ``results.jsonl`` records alone (see docs/campaigns.md for the record schema).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfnn.campaign.store import CampaignRecord
from vfnn.verifiers.result import STATUSES

Records = list[CampaignRecord]
#: Undecided statuses, most informative first: a property nobody decided gets the first one present.
UNDECIDED_ORDER = ("timeout", "unknown", "error")

#: The group keys of :func:`group_by`.
GROUP_KEYS: dict[str, Callable[[CampaignRecord], Any]] = {
    "model": lambda r: r.model_name,
    "method": lambda r: r.method or "?",
    "verifier": lambda r: r.verifier,
    "eps": lambda r: r.eps,
    "category": lambda r: r.category,
}


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


def group_stats(records: Records) -> GroupStats:
    counts = dict.fromkeys(STATUSES, 0)
    for r in records:
        counts[r.status] += 1
    times = [r.wall_time for r in records]
    unstable = [u for r in records if (u := r.unstable_total) is not None]
    return GroupStats(
        len(records), counts,
        statistics.fmean(times) if times else 0.0,
        statistics.median(times) if times else 0.0,
        statistics.fmean(unstable) if unstable else None,
    )


def group_by(records: Records, *keys: str) -> dict[tuple, Records]:
    """Group records by named keys of :data:`GROUP_KEYS`, groups in key order (None last)."""
    out: dict[tuple, Records] = defaultdict(list)
    for r in records:
        out[tuple(GROUP_KEYS[k](r) for k in keys)].append(r)
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


def by_instance(records: Records) -> dict[str, Records]:
    """Records per property (``onnx::vnnlib``), in first-seen order."""
    out: dict[str, Records] = defaultdict(list)
    for r in records:
        out[r.instance].append(r)
    return dict(out)


def find_disagreements(records: Records, replay: bool = True) -> list[Disagreement]:
    """Properties with both a sat and an unsat answer; the sat's counterexample is replayed again."""
    out = []
    for inst, recs in by_instance(records).items():
        sats = [r for r in recs if r.status == "sat"]
        unsats = [r for r in recs if r.status == "unsat"]
        if not sats or not unsats:
            continue
        replays, detail = (None, "replay skipped") if not replay else _replay(sats[0])
        out.append(Disagreement(inst, sorted({r.verifier for r in sats}), sorted({r.verifier for r in unsats}),
                                replays, detail))
    return out


def _replay(rec: CampaignRecord) -> tuple[bool | None, str]:
    x = rec.result.counterexample_input
    model, spec_path = Path(rec.model_path or ""), Path(rec.spec_path or "")
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
    status: str  # one of STATUSES, "disagreement", or (gate --instances) "missing"
    time: float  # fastest decisive answer, else the longest attempt
    records: tuple[CampaignRecord, ...]

    @property
    def model(self) -> str:
        return self.records[0].model_name


def properties(records: Records) -> list[Property]:
    """One verdict per property: sat/unsat if any verifier decided (both: ``disagreement``);
    otherwise timeout, then unknown, then error."""
    out = []
    for inst, recs in by_instance(records).items():
        sts = {r.status for r in recs}
        decided = [r for r in recs if r.decided]
        if "sat" in sts and "unsat" in sts:
            st = "disagreement"
        elif decided:
            st = decided[0].status
        else:
            st = next(s for s in UNDECIDED_ORDER if s in sts)
        t = min(r.wall_time for r in decided) if decided else max(r.wall_time for r in recs)
        out.append(Property(inst, st, t, tuple(recs)))
    return out
