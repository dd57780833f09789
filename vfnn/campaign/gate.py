"""``vfnn gate``: pass/fail a campaign against thresholds, for CI; JUnit XML for CI dashboards.

The gate judges *properties* (instances), not jobs: with several verifiers, a property is
verified when some verifier proved it, falsified when some verifier found a (replayed)
counterexample; both at once is a ``disagreement`` and always fails the gate.  Otherwise its
status is timeout, then unknown, then error.  ``--verifier`` restricts the gate to one verifier's
records.  With ``--instances`` only that csv's properties count, and each one without a result
is ``missing`` and fails the gate; a results file with a cut-off last line fails it too: the gate
never passes on results it did not see.

JUnit mapping (one testcase per property, one testsuite per model): verified = pass;
falsified = ``<failure>``; timeout, unknown, error, missing and disagreement = ``<error type=...>``
-- an unproven property is not a passing test, and ``<skipped>`` would hide it in most CI UIs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import socket
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from vfnn.campaign.analysis import Property, Records, properties
from vfnn.campaign.execute import make_result
from vfnn.campaign.instances import Instance, read_instances
from vfnn.campaign.store import CampaignRecord, ModelInfo


@dataclass(frozen=True)
class Thresholds:
    min_verified: float | None = None  # fraction in [0, 1]
    max_timeouts: int | None = None
    max_mean_time: float | None = None
    max_errors: int | None = None  # error + missing
    max_falsified: int | None = None
    max_unknown: int | None = None


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str


@dataclass(frozen=True)
class GateOutcome:
    props: list[Property]
    counts: dict[str, int]
    checks: list[Check]
    ignored: int = 0  # properties with results that --instances does not list

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)


def truncated_tail(path: Path) -> Check | None:
    """A failing check when ``path`` ends in a line without a newline: a write cut short (the
    campaign was killed), which the readers skip, so that job is not counted."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - (1 << 16)))
        tail = f.read()
    if not tail or tail.endswith(b"\n"):
        return None
    frag = tail.rsplit(b"\n", 1)[-1]
    key = re.search(rb'"key"\s*:\s*"([^"]*)"', frag)
    what = f"job {key[1].decode(errors='replace')}" if key else f"starts {frag[:40].decode(errors='replace')!r}"
    return Check("complete", False, f"{path}: the last line is cut off ({len(frag)} bytes, {what}) and not counted: "
                                    "the campaign stopped while writing it; run the same vfnn bench again to finish")


def _rows(instances: list[Instance]) -> dict[str, Instance]:
    """The csv's properties by identity, first row of each."""
    out: dict[str, Instance] = {}
    for inst in instances:
        out.setdefault(inst.ident, inst)
    return out


def restrict(records: Records, rows: dict[str, Instance]) -> tuple[Records, int]:
    """The records of the csv's properties, renamed to the csv's ``onnx::vnnlib``, and how many other
    properties were dropped.  A record matches by ``onnx::vnnlib`` or by its resolved file paths (the
    same files named from another folder)."""
    by_paths = {(str(i.model_path), str(i.spec_path)): i for i in rows.values()}
    kept, other = [], set()
    for rec in records:
        inst = rows.get(rec.instance) or by_paths.get((rec.model_path, rec.spec_path))
        if inst is None:
            other.add(rec.instance)
        else:
            kept.append(dataclasses.replace(rec, onnx=inst.onnx, vnnlib=inst.vnnlib))
    return kept, len(other)


def missing_properties(rows: dict[str, Instance], props: list[Property]) -> list[Property]:
    have = {p.instance for p in props}
    out = []
    for ident, inst in rows.items():
        if ident not in have:
            rec = CampaignRecord(f"{ident}::-", inst.onnx, inst.vnnlib, "-",
                                 make_result("error", "-", inst.timeout or 0.0, "no result in the campaign"),
                                 model=ModelInfo(Path(inst.onnx).stem))
            out.append(Property(ident, "missing", 0.0, (rec,)))
    return out


def evaluate(
    records: Records,
    th: Thresholds,
    verifier: str | None = None,
    instances_csv: Path | None = None,
    checks: list[Check] | None = None,
) -> GateOutcome:
    """Judge the properties against ``th``; with ``instances_csv`` only its rows count and each one
    without a result fails the gate.  ``checks`` (e.g. :func:`truncated_tail`) come first."""
    if verifier is not None:
        records = [r for r in records if r.verifier == verifier]
    rows, ignored = None, 0
    if instances_csv is not None:
        rows = _rows(read_instances(instances_csv))
        records, ignored = restrict(records, rows)
    props = properties(records)
    missing = missing_properties(rows, props) if rows is not None else []
    props += missing
    checks = list(checks or [])
    counts: dict[str, int] = defaultdict(int)
    for p in props:
        counts[p.status] += 1
    n = len(props)
    if n == 0:
        which = f" for verifier {verifier}" if verifier else ""
        checks.append(Check("results", False, f"no results to gate on{which}"))
        return GateOutcome(props, dict(counts), checks, ignored)
    if missing:
        names = ", ".join(p.instance for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
        checks.append(Check("missing", False, f"{len(missing)} of {n} properties of {instances_csv} have no result "
                                              f"({names})"))
    if counts["disagreement"]:
        checks.append(Check("disagreements", False, f"{counts['disagreement']} properties have both sat and unsat "
                                                    "answers: a verifier is unsound (run vfnn report)"))
    if th.min_verified is not None:
        frac = counts["unsat"] / n
        need = th.min_verified
        short = max(0, math.ceil(need * n - 1e-9) - counts["unsat"])
        checks.append(Check("min-verified", frac >= need - 1e-12,
                            f"verified {counts['unsat']}/{n} = {100 * frac:.1f}% "
                            + (f">= {100 * need:.1f}%" if frac >= need - 1e-12 else
                               f"< {100 * need:.1f}% (short by {100 * (need - frac):.1f} points, "
                               f"{short} more propert{'y' if short == 1 else 'ies'} needed)")))
    for name, value, limit in (
        ("max-timeouts", counts["timeout"], th.max_timeouts),
        ("max-errors", counts["error"] + counts["missing"], th.max_errors),
        ("max-falsified", counts["sat"], th.max_falsified),
        ("max-unknown", counts["unknown"], th.max_unknown),
    ):
        if limit is not None:
            ok = value <= limit
            what = name.removeprefix("max-")
            extra = f" (including {counts['missing']} missing)" if name == "max-errors" and counts["missing"] else ""
            checks.append(Check(name, ok, f"{what}: {value}{extra} " + (f"<= {limit}" if ok else
                                                                          f"> {limit} (over by {value - limit})")))
    if th.max_mean_time is not None:
        mean = sum(p.time for p in props) / n
        ok = mean <= th.max_mean_time
        limit_s = th.max_mean_time
        checks.append(Check("max-mean-time", ok, f"mean time {mean:.3f} s " + (
            f"<= {limit_s:g} s" if ok else f"> {limit_s:g} s (over by {mean - limit_s:.3f} s)")))
    return GateOutcome(props, dict(counts), checks, ignored)


def junit_xml(outcome: GateOutcome, path: Path, suite_name: str = "vfnn gate") -> Path:
    """Write JUnit XML (testsuites > testsuite per model > testcase per property)."""
    by_model: dict[str, list[Property]] = defaultdict(list)
    for p in outcome.props:
        by_model[p.model].append(p)
    root = ET.Element("testsuites", name=suite_name)
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    total_time = 0.0
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    for model, props in sorted(by_model.items()):
        suite = ET.SubElement(root, "testsuite", name=model, timestamp=stamp, hostname=socket.gethostname())
        n = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
        t_suite = 0.0
        for p in sorted(props, key=lambda p: p.instance):
            rec = p.records[0]
            verifiers = ",".join(sorted({r.verifier for r in p.records}))
            eps = rec.eps
            name = Path(rec.vnnlib).name + (f" [eps={eps:g}]" if eps is not None else "")
            case = ET.SubElement(suite, "testcase", classname=f"vfnn.{model}", name=name, time=f"{p.time:.3f}")
            props_el = ET.SubElement(case, "properties")
            for k, v in (("onnx", rec.onnx), ("vnnlib", rec.vnnlib), ("verifiers", verifiers),
                         ("status", p.status)):
                ET.SubElement(props_el, "property", name=k, value=str(v))
            n["tests"] += 1
            t_suite += p.time
            msgs = "; ".join(f"{r.verifier}: {r.status}" + (f" ({r.result.message})" if r.result.message else "")
                             for r in p.records)
            if p.status == "sat":
                n["failures"] += 1
                x = next((r.result.counterexample_input for r in p.records if r.status == "sat"), None)
                el = ET.SubElement(case, "failure", type="falsified",
                                   message="property violated: a counterexample exists (replayed by vfnn)")
                el.text = msgs + ("" if x is None else f"\ncounterexample input: {x}")
            elif p.status != "unsat":
                n["errors"] += 1
                el = ET.SubElement(case, "error", type=p.status, message=f"not verified: {p.status}")
                el.text = msgs
        for k, v in n.items():
            suite.set(k, str(v))
            totals[k] += v
        suite.set("time", f"{t_suite:.3f}")
        total_time += t_suite
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", f"{total_time:.3f}")
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
