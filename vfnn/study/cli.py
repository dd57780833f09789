"""``vfnn study STUDY.toml``: the whole train -> specs -> verify -> report grid in one resumable command."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from rich.console import Console

from vfnn.study.config import PHASES


@click.command("study")
@click.argument("study_file", metavar="STUDY")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Study folder [default: study-out/<name>].")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="VFNN_DATA", default=None,
              help="Folder with <dataset>/ files [env VFNN_DATA; default ~/.cache/vfnn].")
@click.option("--phase", "phases", multiple=True, type=click.Choice(PHASES),
              help="Run only these phases (repeatable) [default: all, in order].")
@click.option("--check", is_flag=True, help="Validate the study file and print the plan; run nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def study_cmd(study_file: str, out: str | None, data_dir: str | None, phases: tuple[str, ...], check: bool,
              quiet: bool) -> None:
    """Train every dataset x arch x recipe x seed of STUDY (a .toml file, or the name of a shipped
    study: quick, nbc-mnist, nbc-mnist-fc, nbc-mnist-cnn, nbc-fashion, seed-methods-mnist-fc), verify each
    model's robustness at every radius, and write a report (tables, CSV/JSON, figures) to OUT/report.

    Every step is the command a user would type (vfnn train, specs, bench) and keeps its files in
    OUT; running the same command again skips what is done, also after a kill.  See
    docs/studies.md for the file format.
    """
    from vfnn.study.config import load_study
    from vfnn.study.runner import run_study

    study = load_study(study_file, out, data_dir)
    console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)
    click.echo(f"study {study.name}: {len(study.runs)} models x {len(study.radii)} radii x {study.per_class} images "
               f"per class, verifiers {', '.join(study.verifiers)}, {study.timeout:g} s per job -> {study.out}")
    if check:
        for run in study.runs:
            click.echo(f"  {run.label}: {shlex.join(run.command)}")
        return
    outcome = run_study(study, console, tuple(p for p in PHASES if not phases or p in phases), not quiet)
    if outcome.interrupted:
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)
    if outcome.report is not None:
        click.echo(f"report: {outcome.report}")
        click.echo(f"tables: {Path(outcome.report).with_suffix('.csv')}, {Path(outcome.report).with_suffix('.json')}")
