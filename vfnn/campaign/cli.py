"""The campaign commands: ``vfnn specs``, ``vfnn bench``, ``vfnn report``, ``vfnn gate``."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click
from rich.console import Console

from vfnn.campaign.instances import Instance
from vfnn.errors import VfnnError


def _floats(text: str) -> list[float]:
    """Radii for --eps: comma-separated numbers in (0, 1] (inputs live in [0, 1] pixel space)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint="--eps") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise click.BadParameter(f"radii must lie in (0, 1] (pixel space), got {text!r}", param_hint="--eps")
    return values


@click.command("specs")
@click.option("--dataset", default="mnist", show_default=True, help="mnist, fashion-mnist, cifar10 or digits.")
@click.option("--per-class", "per_class", type=int, required=True, help="Images per class (K).")
@click.option("--eps", "eps", required=True, help="Comma-separated L-infinity radii, e.g. 0.02,0.05,0.1.")
@click.option("--model", "models", multiple=True, type=click.Path(),
              help="ONNX model for the instances.csv onnx column (repeatable: one row per model and spec).")
@click.option("--correct-only", is_flag=True, help="Only images that every --model classifies correctly.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds, the instances.csv column.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "train"]))
@click.option("--seed", type=int, default=None, help="Choose images in a seeded random order (default: dataset order).")
@click.option("--data-dir", type=click.Path(), default=None, help="Dataset folder (default $VFNN_DATA).")
@click.option("--out", "out", required=True, type=click.Path(), help="Output folder.")
def specs_cmd(dataset: str, per_class: int, eps: str, models: tuple[str, ...], correct_only: bool, timeout: float,
              split: str, seed: int | None, data_dir: str | None, out: str) -> None:
    """Write local-robustness specs for K images per class (VNN-LIB + instances.csv + specs.json).

    Images are the first K of each class in the split's order (or in a seeded random order with
    --seed); each (image, eps) gives one file vnnlib/<dataset>_<split>_<index>_label<y>_eps<eps>.vnnlib
    whose input box is clipped to [0, 1].  Models are referenced by relative path, not copied.
    """
    from vfnn.campaign.specgen import generate_specs

    for m in models:
        _out_file(m, "--model")
    _folder(data_dir, "--data-dir")
    _folder(out, "--out")
    s = generate_specs(dataset, per_class, _floats(eps), out, list(models), correct_only, timeout, split, seed,
                       data_dir)
    click.echo(f"wrote {s.n_specs} specs for {s.n_images} images to {s.out / 'vnnlib'}")
    if s.instances is not None:
        click.echo(f"wrote {s.n_rows} instances to {s.instances}")
    else:
        click.echo("no --model given: instances.csv needs an onnx column, so it was not written")
    if correct_only:
        click.echo(f"skipped {s.skipped_misclassified} misclassified images")
    for c, k in s.short_classes.items():
        click.echo(f"warning: class {c} has only {k} usable images (asked for {per_class})", err=True)


def _folder(path: str | None, option: str) -> str | None:
    """An output folder: an existing file there is one line (exit 2), not click's usage block."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise VfnnError(f"{option} {path}: is a file, expected a folder")
    return path


def _out_file(path: str | None, option: str) -> str | None:
    """An output file: an existing folder there is one line (exit 2), not click's usage block."""
    if path is not None and Path(path).is_dir():
        raise VfnnError(f"{option} {path}: is a folder, expected a file name")
    return path


def _options(items: tuple[str, ...]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        name, dot, rest = item.partition(".")
        key, eq, value = rest.partition("=")
        if not dot or not eq or not name or not key:
            raise click.BadParameter(f"expected VERIFIER.KEY=VALUE, got {item!r}", param_hint="--option")
        out.setdefault(name, {})[key] = value
    return out


@click.command("bench")
@click.argument("instances", type=click.Path())
@click.option("--verifier", "-v", "verifiers", multiple=True, required=True, help="Verifier name (repeatable).")
@click.option("--out", "-o", "out", required=True, type=click.Path(), help="Campaign folder.")
@click.option("--timeout", type=float, default=None, help="Seconds per job (default: the instances.csv column).")
@click.option("--jobs", "-j", type=int, default=None,
              help="Jobs at a time: worker processes (default 1); with --dask, tasks in flight (default: its threads).")
@click.option("--portfolio", is_flag=True, help="Race the verifiers on each instance; the first sat/unsat wins.")
@click.option("--dask", "dask", default=None, metavar="ADDRESS",
              help="Run on a Dask cluster: tcp://host:port, a scheduler file (.json), or local[:N].")
@click.option("--option", "-O", "option_items", multiple=True, metavar="VERIFIER.KEY=VALUE",
              help="Verifier option, e.g. milp.threads=1 (repeatable).")
@click.option("--rerun", multiple=True, metavar="STATUS",
              help="Run again the jobs whose recorded result has this status, e.g. timeout (repeatable).")
@click.option("--category", default=None, help="VNN-COMP category (default: the instances.csv folder name).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def bench_cmd(instances: str, verifiers: tuple[str, ...], out: str, timeout: float | None, jobs: int | None,
              portfolio: bool, dask: str | None, option_items: tuple[str, ...], rerun: tuple[str, ...],
              category: str | None, quiet: bool) -> None:
    """Run every (model, spec, verifier) job of INSTANCES (a VNN-COMP instances.csv).

    Each job's result is appended to OUT/results.jsonl as soon as it finishes (flushed and
    fsynced); running the same command again skips the jobs already there.  Also writes
    OUT/<verifier>/results.csv in VNN-COMP format (and OUT/results.csv for a single verifier).
    """
    from vfnn.campaign.instances import read_instances
    from vfnn.campaign.runner import run_campaign
    from vfnn.vnnlib import input_file

    _folder(out, "--out")
    rows = read_instances(input_file(instances, "the instances csv"), category)  # unreadable: exit 2 up front
    console = _console()
    s = run_campaign(instances, list(verifiers), out, jobs=jobs, timeout=timeout, portfolio=portfolio, dask=dask,
                     options=_options(option_items), rerun=tuple(rerun), category=category, console=console,
                     show_progress=not quiet)
    c = s.counts
    line = (f"{s.ran} jobs run ({s.already_done} already done): {c['unsat']} verified, {c['sat']} falsified, "
            f"{c['timeout']} timeout, {c['unknown']} unknown, {c['error']} error in {s.wall_time:.1f} s")
    overhead = campaign_overhead(s.wall_time, s.solve_time, s.ran, s.workers)
    if overhead is not None:
        line += f" (start-up and scheduling ~{overhead:.2f} s/job)"
    click.echo(line)
    click.echo(f"results: {s.results}")
    _list_bad_rows(rows, Path(instances).name)
    if s.interrupted:
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)


def _console() -> Console:
    """stderr's console; without a terminal (a CI log, a pipe) plain lines: no wrapping at 80
    columns, no progress bar whose redraws would be cut ("0:… ETA 0:0…")."""
    console = Console(stderr=True)
    return console if console.is_terminal else Console(stderr=True, soft_wrap=True, highlight=False)


def campaign_overhead(wall: float, solve: float, ran: int, workers: int | None) -> float | None:
    """Seconds per job that the workers holding a job spent not solving: wall time x the workers
    that had something to do (never more than the jobs run), minus the verifiers' time."""
    if not ran or not workers:
        return None
    return max(0.0, wall * min(workers, ran) - solve) / ran


def _missing_file(inst: Instance, csv_name: str) -> str | None:
    for what, path in (("model", inst.model_path), ("spec", inst.spec_path)):
        if not path.exists():
            return f"{csv_name} line {inst.row}: {what} file not found: {path}"
    return None


def _list_bad_rows(rows: list[Instance], csv_name: str, limit: int = 20) -> None:
    """The rows that could not run (recorded as ``error``), so a broken csv is not a silent exit 0."""
    bad = [why for r in rows if (why := r.problem or _missing_file(r, csv_name))]
    if not bad:
        return
    click.echo(f"warning: {len(bad)} row(s) of the instances file could not run (recorded as error):", err=True)
    for why in bad[:limit]:
        click.echo(f"  {why}", err=True)
    if len(bad) > limit:
        click.echo(f"  ... and {len(bad) - limit} more", err=True)


def _list_reports(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``--list``: the registered tables and figures, one per line (before RESULTS is required)."""
    if not value or ctx.resilient_parsing:
        return
    from vfnn.campaign.reports import entries

    for e in entries():
        click.echo(f"{e.name:20} {e.kind:7} {e.summary}")
    ctx.exit(0)


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", "out", type=click.Path(), default=None,
              help="Write report.md and figures/*.png here.")
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="Only this table or figure (repeatable; default: all, see --list).")
@click.option("--list", "list_", is_flag=True, is_eager=True, expose_value=False, callback=_list_reports,
              help="List the tables and figures by name and exit.")
@click.option("--no-replay", is_flag=True, help="Do not replay counterexamples of disagreeing properties.")
def report_cmd(results: tuple[str, ...], out: str | None, only: tuple[str, ...], no_replay: bool) -> None:
    """Tables per model x verifier x eps (and per training method), disagreements, figures.

    Exits 1 when two verifiers disagree (sat vs unsat) on a property: one of them is unsound.
    """
    from vfnn.campaign.report import build_report, print_report, write_report
    from vfnn.campaign.reports import select
    from vfnn.campaign.store import load_records
    from vfnn.vnnlib import input_file

    select(only)  # an unknown name: one line, before any file is read
    _folder(out, "--out")
    records = load_records([input_file(r, "a results.jsonl") for r in results])
    if not records:
        raise VfnnError(f"{', '.join(results)}: no results")
    rep = build_report(records, replay=not no_replay, only=only)
    print_report(rep, Console() if sys.stdout.isatty() else Console(width=160))  # CI logs: never truncate
    if out is not None:
        click.echo(f"report: {write_report(rep, records, Path(out), [Path(r) for r in results], only)}")
    if rep.disagreements:
        click.echo(f"error: {len(rep.disagreements)} disagreement(s) between verifiers", err=True)
        sys.exit(1)


_LIMITS = {  # option: (minimum, maximum, what a value means)
    "--min-verified": (0.0, 1.0, "a fraction of the properties, 0..1 (0.9 = 90%)"),
    "--max-timeouts": (0, None, "a count of properties, >= 0"),
    "--max-errors": (0, None, "a count of properties, >= 0"),
    "--max-falsified": (0, None, "a count of properties, >= 0"),
    "--max-unknown": (0, None, "a count of properties, >= 0"),
    "--max-mean-time": (0.0, None, "seconds, a finite number >= 0"),
}


def _check_limits(values: dict[str, float | int | None]) -> None:
    """Every given limit in range, and at least one given: a gate that checks nothing must not pass."""
    for option, value in values.items():
        lo, hi, what = _LIMITS[option]
        if value is not None and not (math.isfinite(value) and lo <= value and (hi is None or value <= hi)):
            raise VfnnError(f"{option} {value:g}: expected {what}")
    if all(v is None for v in values.values()):
        raise VfnnError(f"no threshold given, so there is nothing to gate on: use {', '.join(_LIMITS)}")


@click.command("gate")
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--min-verified", type=float, default=None, help="Minimum verified fraction of properties (0..1).")
@click.option("--max-timeouts", type=int, default=None, help="Timeouts allowed (>= 0).")
@click.option("--max-errors", type=int, default=None,
              help="Errors allowed (>= 0), missing properties with --instances included.")
@click.option("--max-falsified", type=int, default=None, help="Falsified properties allowed (>= 0).")
@click.option("--max-unknown", type=int, default=None, help="Unknown results allowed (>= 0).")
@click.option("--max-mean-time", type=float, default=None, help="Seconds (>= 0), mean over properties.")
@click.option("--verifier", default=None, help="Gate on this verifier's results only.")
@click.option("--instances", type=click.Path(), default=None,
              help="instances.csv: only its properties count, and each one without a result fails the gate.")
@click.option("--junit", type=click.Path(), default=None, help="Write JUnit XML here.")
def gate_cmd(results: tuple[str, ...], min_verified: float | None, max_timeouts: int | None, max_errors: int | None,
             max_falsified: int | None, max_unknown: int | None, max_mean_time: float | None, verifier: str | None,
             instances: str | None, junit: str | None) -> None:
    """Exit 0 when every threshold holds, 1 otherwise (saying which failed and by how much).

    At least one threshold is required.  A results file whose last line is cut off (a campaign
    killed while writing) fails the gate: that job is not counted.
    """
    from vfnn.campaign.gate import Thresholds, evaluate, junit_xml, truncated_tail
    from vfnn.campaign.store import load_records
    from vfnn.vnnlib import input_file

    _check_limits({"--min-verified": min_verified, "--max-timeouts": max_timeouts, "--max-errors": max_errors,
                   "--max-falsified": max_falsified, "--max-unknown": max_unknown, "--max-mean-time": max_mean_time})
    paths = [input_file(r, "a results.jsonl") for r in results]
    csv_path = input_file(instances, "the instances csv") if instances else None
    _out_file(junit, "--junit")
    th = Thresholds(min_verified, max_timeouts, max_mean_time, max_errors, max_falsified, max_unknown)
    cut = [c for c in map(truncated_tail, paths) if c is not None]
    outcome = evaluate(load_records(paths), th, verifier, csv_path, cut)
    c = outcome.counts
    click.echo(f"{len(outcome.props)} properties: {c.get('unsat', 0)} verified, {c.get('sat', 0)} falsified, "
               f"{c.get('timeout', 0)} timeout, {c.get('unknown', 0)} unknown, {c.get('error', 0)} error"
               + (f", {c['missing']} missing" if c.get("missing") else "")
               + (f", {c['disagreement']} DISAGREEMENT" if c.get("disagreement") else ""))
    if outcome.ignored:
        click.echo(f"ignored: results of {outcome.ignored} properties that {instances} does not list")
    for chk in outcome.checks:
        click.echo(f"{'PASS' if chk.ok else 'FAIL'} {chk.name}: {chk.message}")
    click.echo("gate: passed" if outcome.passed else "gate: FAILED")
    if junit:
        click.echo(f"junit: {junit_xml(outcome, Path(junit))}")
    sys.exit(0 if outcome.passed else 1)
