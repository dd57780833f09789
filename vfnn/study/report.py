"""The study report: per dataset x arch x recipe x eps x verifier, training and verification side by side.

Training figures come from each run's ``summary.json``/``metrics.jsonl`` (clean and PGD accuracy
and CROWN-unstable neurons at the training radius, seconds per epoch); verification figures from
the campaigns' ``results.jsonl`` (UNSAT/SAT/timeout shares, times, and the unstable-neuron record
that every result carries, at the property's own radius).  Seeds are pooled.  Written as
``study.md`` with PNG figures, ``study.csv`` and ``study.json``.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console

from vfnn import __version__
from vfnn.campaign.reports import Table
from vfnn.campaign.store import CampaignRecord, load_records
from vfnn.study.config import ModelRun, Study

TRAIN_COLUMNS = ("dataset", "arch", "recipe", "seeds", "clean %", "PGD %", "CROWN-LBP-verified %",
                 "CROWN-verified %", "unstable",
                 "neurons", "s/epoch", "x ce")
VERIFY_COLUMNS = ("dataset", "arch", "recipe", "eps", "verifier", "n", "UNSAT %", "SAT %", "decided %", "timeout",
                  "unknown+error", "mean s", "median s", "unstable", "unstable per layer", "stable %")


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _run_metrics(run: ModelRun) -> dict[str, Any] | None:
    try:
        summary = json.loads((run.run_dir / "summary.json").read_text())
        epochs = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError):
        return None
    final = summary.get("final") or {}
    return {"clean": final.get("clean_acc"), "pgd": final.get("pgd_acc"),
            "lbp": (final.get("verified_acc") or {}).get("crown-lbp"),  # absent in runs before vfnn recorded it
            "crown": (final.get("verified_acc") or {}).get("crown"),
            "unstable": (final.get("unstable") or {}).get("total"), "neurons": summary.get("relu_neurons"),
            "s_epoch": _mean([e["seconds"]["train"] for e in epochs])}


def training_rows(study: Study) -> list[dict[str, Any]]:
    """One row per dataset x arch x recipe: the training-time metrics, means over seeds."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in study.runs:
        m = _run_metrics(run)
        if m is not None:
            groups[(run.dataset, run.arch, run.recipe)].append(m)
    rows = []
    for (dataset, arch, recipe), ms in groups.items():
        row: dict[str, Any] = {"dataset": dataset, "arch": arch, "recipe": recipe, "seeds": len(ms)}
        for key in ("clean", "pgd", "lbp", "crown", "unstable", "neurons", "s_epoch"):
            row[key] = _mean([m[key] for m in ms if m[key] is not None])
        rows.append(row)
    for row in rows:
        ce = next((r for r in rows if r["recipe"] == "ce" and r["dataset"] == row["dataset"]
                   and r["arch"] == row["arch"]), None)
        row["x_ce"] = row["s_epoch"] / ce["s_epoch"] if ce and ce["s_epoch"] and row["s_epoch"] else None
    return rows


def _records_by_run(study: Study) -> dict[ModelRun, list[CampaignRecord]]:
    from vfnn.study.runner import campaign_dir

    runs = {str((r.run_dir / "model.onnx").resolve()): r for r in study.runs}
    out: dict[ModelRun, list[CampaignRecord]] = defaultdict(list)
    for dataset in study.datasets:
        path = campaign_dir(study, dataset) / "results.jsonl"
        if not path.is_file():
            continue
        for rec in load_records([path]):
            run = runs.get(str(Path(rec.model_path or "").resolve()))
            if run is not None:
                out[run].append(rec)
    return out


def verification_rows(study: Study) -> tuple[list[dict[str, Any]], dict[tuple, list[CampaignRecord]]]:
    """One row per dataset x arch x recipe x eps x verifier (seeds pooled), and the records of each row."""
    groups: dict[tuple, list[CampaignRecord]] = defaultdict(list)
    for run, recs in _records_by_run(study).items():
        for rec in recs:
            groups[(run.dataset, run.arch, run.recipe, rec.eps, rec.verifier)].append(rec)
    order = {(r.dataset, r.arch, r.recipe): i for i, r in enumerate(study.runs)}
    keys = sorted(groups, key=lambda k: (order[k[:3]], k[3] if k[3] is not None else -1, k[4]))
    rows = []
    for key in keys:
        recs = groups[key]
        n = len(recs)
        counts: dict[str, int] = defaultdict(int)
        for r in recs:
            counts[r.status] += 1
        times = [r.wall_time for r in recs]
        layers = [u for r in recs if (u := r.unstable_layers) is not None]
        stable = [f for r in recs if (f := r.stable_fraction) is not None]
        rows.append({
            "dataset": key[0], "arch": key[1], "recipe": key[2], "eps": key[3], "verifier": key[4], "n": n,
            "unsat": counts["unsat"] / n, "sat": counts["sat"] / n, "decided": (counts["unsat"] + counts["sat"]) / n,
            "timeout": counts["timeout"], "other": counts["unknown"] + counts["error"],
            "mean_s": statistics.fmean(times), "median_s": statistics.median(times),
            "unstable": _mean([float(sum(u)) for u in layers]),
            "unstable_per_layer": [statistics.fmean(col) for col in zip(*layers, strict=True)] if layers else None,
            "stable": _mean(stable),
        })
    return rows, {k: groups[k] for k in keys}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _num(v: float | None, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def _train_cells(r: dict[str, Any]) -> list[str]:
    return [r["dataset"], r["arch"], r["recipe"], str(r["seeds"]), _pct(r["clean"]), _pct(r["pgd"]), _pct(r["lbp"]),
            _pct(r["crown"]),
            _num(r["unstable"]), _num(r["neurons"], ".0f"), _num(r["s_epoch"], ".2f"), _num(r["x_ce"], ".2f")]


def _verify_cells(r: dict[str, Any]) -> list[str]:
    per_layer = "-" if r["unstable_per_layer"] is None else "/".join(f"{v:.1f}" for v in r["unstable_per_layer"])
    return [r["dataset"], r["arch"], r["recipe"], f"{r['eps']:g}" if r["eps"] is not None else "-", r["verifier"],
            str(r["n"]), _pct(r["unsat"]), _pct(r["sat"]), _pct(r["decided"]), str(r["timeout"]), str(r["other"]),
            _num(r["mean_s"], ".2f"), _num(r["median_s"], ".2f"), _num(r["unstable"]), per_layer, _pct(r["stable"])]


def write_study_report(study: Study, console: Console) -> Path:
    """Write OUT/report/{study.md, study.csv, study.json, figures/*.png}; print the tables; return study.md."""
    from vfnn.study.figures import write_study_figures

    out = study.out / "report"
    out.mkdir(parents=True, exist_ok=True)
    train_rows = training_rows(study)
    verify_rows, groups = verification_rows(study)
    figures = write_study_figures(study, verify_rows, groups, out / "figures")
    console.print(Table("Training (at the training eps, on the run's evaluation images)", TRAIN_COLUMNS,
                        [_train_cells(r) for r in train_rows], left=3).rich())
    console.print(Table("Verification (per property radius; times in seconds per property)", VERIFY_COLUMNS,
                        [_verify_cells(r) for r in verify_rows], left=3).rich())
    with open(out / "study.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*VERIFY_COLUMNS, "clean %", "PGD %", "CROWN-LBP-verified %", "CROWN-verified %", "s/epoch"])
        by_model = {(r["dataset"], r["arch"], r["recipe"]): r for r in train_rows}
        for r in verify_rows:
            t = by_model.get((r["dataset"], r["arch"], r["recipe"]), {})
            w.writerow(_verify_cells(r) + [_pct(t.get(k)) for k in ("clean", "pgd", "lbp", "crown")]
                       + [_num(t.get("s_epoch"), ".3f")])
    (out / "study.json").write_text(json.dumps({"study": str(study.path), "name": study.name, "training": train_rows,
                                                "verification": verify_rows, "environment": _environment()},
                                               indent=1) + "\n")
    path = out / "study.md"
    path.write_text(_markdown(study, train_rows, verify_rows, figures, out))
    return path


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is below it (reports move between machines)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _environment() -> dict[str, Any]:
    import torch

    return {"vfnn": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "system": platform.platform(terse=True)}


def _markdown(study: Study, train_rows: list[dict], verify_rows: list[dict], figures: list[Path], out: Path) -> str:
    from vfnn.study.runner import phase_seconds

    env = _environment()
    seconds = phase_seconds(study)
    times = ", ".join(f"{p} {s / 60:.1f} min" for p, s in seconds.items())
    verifiers = ", ".join(f"{v} ({', '.join(f'{k}={x}' for k, x in o.items()) or 'defaults'})"
                          for v, o in study.verifiers.items())
    parts = [
        f"# Study `{study.name}`", "",
        f"Study file `{_shown(study.path)}`; {len(study.runs)} models; {study.per_class} {study.split} images per "
        "class; "
        f"radii {', '.join(f'{r:g}' for r in study.radii)}; verifiers {verifiers}; {study.timeout:g} s per property.",
        f"vfnn {env['vfnn']}, torch {env['torch']}, Python {env['python']}, {env['machine']}."
        + (f" Wall time (summed over invocations): {times}." if times else ""), "",
        "## Training", "",
        "Clean, PGD, CROWN-LBP- and CROWN-verified accuracy and CROWN-unstable neurons at the training radius on "
        "the run's evaluation images; seconds per training epoch and its ratio to the `ce` recipe of the same "
        "dataset and architecture. Means over seeds.", "",
        Table("", TRAIN_COLUMNS, [_train_cells(r) for r in train_rows], left=3).markdown(), "",
        "## Verification", "",
        "Per property radius: UNSAT = verified, SAT = a counterexample that replayed on the ONNX model, decided = "
        "either; times are the verifier's wall time per property (timeouts count at their full time); unstable = "
        "vfnn's CROWN count of unstable ReLUs over the property's input box (the same for every verifier), "
        "stable % = the share of ReLUs that are stable there.", "",
        Table("", VERIFY_COLUMNS, [_verify_cells(r) for r in verify_rows], left=3).markdown(), "",
    ]
    if figures:
        parts += ["## Figures", ""]
        parts += [f"![{f.stem}]({f.relative_to(out).as_posix()})\n" for f in figures]
    return "\n".join(parts)
