"""``vfnn report``: tables, figures and a Markdown report from ``results.jsonl``.

Tables: one row per model x verifier x eps, and (when the models carry a training config) per
training method x verifier x eps, so "NBC vs CE vs RS vs PGD" is one table.  Cross-verifier
disagreements (sat with a counterexample vs unsat on the same property) are printed first and in
red: they mean some verifier is unsound, and ``vfnn report`` then exits non-zero.  Which tables
and figures exist is :mod:`vfnn.campaign.reports`' registry; the built-in tables are here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from vfnn.campaign.analysis import Disagreement, GroupStats, Records, find_disagreements, group_by, group_stats
from vfnn.campaign.reports import Table, make_figures, make_tables, select, table

COLUMNS = ("n", "verified %", "falsified %", "timeout", "unknown", "error", "mean s", "median s", "mean unstable")


@dataclass
class Report:
    """Everything ``vfnn report`` computes."""

    tables: list[Table]
    disagreements: list[Disagreement]
    n_records: int
    figures: list[Path] = field(default_factory=list)
    markdown: Path | None = None


def _fmt_eps(e: float | None) -> str:
    return "-" if e is None else f"{e:g}"


def _cells(s: GroupStats) -> list[str]:
    c = s.counts
    return [str(s.n), f"{100 * s.verified:.1f}", f"{100 * s.falsified:.1f}", str(c["timeout"]), str(c["unknown"]),
            str(c["error"]), f"{s.mean_time:.3f}", f"{s.median_time:.3f}",
            "-" if s.mean_unstable is None else f"{s.mean_unstable:.1f}"]


def _grouped(title: str, first: str, records: Records) -> Table:
    rows = [[str(a), str(v), _fmt_eps(e), *_cells(group_stats(recs))]
            for (a, v, e), recs in group_by(records, first, "verifier", "eps").items()]
    return Table(title, (first, "verifier", "eps", *COLUMNS), rows)


@table("per_model")
def per_model(records: Records) -> Table:
    """Jobs, verdict shares, times and unstable neurons per model x verifier x eps."""
    return _grouped(f"Results per model ({len(records)} jobs)", "model", records)


@table("per_method")
def per_method(records: Records) -> Table | None:
    """The same per training method x verifier x eps, for models whose config.json names the method."""
    with_method = [r for r in records if r.method is not None]
    return _grouped("Results per training method", "method", with_method) if with_method else None


def build_report(records: Records, replay: bool = True, only: Sequence[str] = ()) -> Report:
    """The disagreements and the tables named ``only`` (all when empty); figures come with :func:`write_report`."""
    return Report(make_tables(select(only), records), find_disagreements(records, replay), len(records))


def print_report(rep: Report, console: Console) -> None:
    """Disagreements first (loud), then the tables."""
    for d in rep.disagreements:
        console.print(f"[bold red]DISAGREEMENT (a verifier is unsound):[/] {d.describe()}", soft_wrap=True)
    for t in rep.tables:
        console.print(t.rich())


def write_report(rep: Report, records: Records, out: Path, sources: list[Path], only: Sequence[str] = ()) -> Path:
    """``out/figures/<name>.png`` for the chosen figures, then ``out/report.md``; returns report.md."""
    out.mkdir(parents=True, exist_ok=True)
    rep.figures = make_figures(select(only), records, out / "figures")
    rep.markdown = write_markdown(rep, out, sources)
    return rep.markdown


def write_markdown(rep: Report, out: Path, sources: list[Path]) -> Path:
    """``out/report.md`` with the tables, the disagreements and the figures (relative links)."""
    parts = ["# Verification campaign report", "",
             f"Source: {', '.join(f'`{s}`' for s in sources)} ({rep.n_records} jobs).", "",
             "Times are verifier wall times in seconds over every job of the group (timeouts count at "
             "their full time); unstable neurons are vfnn's own bound-propagation counts.", ""]
    if rep.disagreements:
        parts += ["## Disagreements between verifiers", "",
                  "**A verifier is unsound on these properties.**", ""]
        parts += [f"- {d.describe()}" for d in rep.disagreements] + [""]
    for t in rep.tables:
        parts += [f"## {t.title}", "", t.markdown(), ""]
    if rep.figures:
        parts += ["## Figures", ""]
        for f in rep.figures:
            parts += [f"![{f.stem}]({f.relative_to(out).as_posix()})", ""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
