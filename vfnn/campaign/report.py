"""``vfnn report``: tables, figures and a Markdown report from ``results.jsonl``.

Tables: one row per model x verifier x eps, and (when the models carry a training config) per
training method x verifier x eps, so "NBC vs CE vs RS vs PGD" is one table.  Cross-verifier
disagreements (sat with a counterexample vs unsat on the same property) are printed first and in
red: they mean some verifier is unsound, and ``vfnn report`` then exits non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vfnn.campaign.analysis import Disagreement, GroupStats, find_disagreements, group_by, group_stats, method_of

COLUMNS = ("n", "verified %", "falsified %", "timeout", "unknown", "error", "mean s", "median s", "mean unstable")


@dataclass
class Report:
    """Everything ``vfnn report`` computes (tables as rows of strings, for terminal and Markdown)."""

    by_model: list[tuple[tuple, GroupStats]]
    by_method: list[tuple[tuple, GroupStats]]
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


def build_report(records: list[dict[str, Any]], replay: bool = True) -> Report:
    by_model = [(k, group_stats(v)) for k, v in group_by(records, "model", "verifier", "eps").items()]
    with_method = [r for r in records if method_of(r) is not None]
    by_method = [(k, group_stats(v)) for k, v in group_by(with_method, "method", "verifier", "eps").items()]
    return Report(by_model, by_method, find_disagreements(records, replay), len(records))


def _rich_table(title: str, first: str, rows: list[tuple[tuple, GroupStats]]) -> Table:
    t = Table(title=title, title_justify="left")
    for name in (first, "verifier", "eps", *COLUMNS):
        t.add_column(name, justify="left" if name in (first, "verifier") else "right")
    for (a, v, e), s in rows:
        t.add_row(str(a), str(v), _fmt_eps(e), *_cells(s))
    return t


def print_report(rep: Report, console: Console) -> None:
    """Disagreements first (loud), then the tables."""
    for d in rep.disagreements:
        console.print(f"[bold red]DISAGREEMENT (a verifier is unsound):[/] {d.describe()}", soft_wrap=True)
    console.print(_rich_table(f"Results per model ({rep.n_records} jobs)", "model", rep.by_model))
    if rep.by_method:
        console.print(_rich_table("Results per training method", "method", rep.by_method))


def _md_table(first: str, rows: list[tuple[tuple, GroupStats]]) -> str:
    head = (first, "verifier", "eps", *COLUMNS)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    for (a, v, e), s in rows:
        lines.append("| " + " | ".join([str(a), str(v), _fmt_eps(e), *_cells(s)]) + " |")
    return "\n".join(lines)


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
    parts += ["## Per model", "", _md_table("model", rep.by_model), ""]
    if rep.by_method:
        parts += ["## Per training method", "", _md_table("method", rep.by_method), ""]
    if rep.figures:
        parts += ["## Figures", ""]
        for f in rep.figures:
            parts += [f"![{f.stem}]({f.relative_to(out).as_posix()})", ""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
