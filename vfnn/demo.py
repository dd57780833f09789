"""``vfnn demo``: the whole story on the embedded digits data, in a few minutes on a laptop CPU.

It runs the commands a user would type -- ``vfnn study quick`` (train CE and CE+NBC networks,
write robustness specs at several radii, verify them with the MILP verifier, report) and a
``vfnn gate`` on the results -- and ends with the comparison the project exists for: how many
properties each network lets a complete verifier prove, radius by radius.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from vfnn.errors import VfnnError


def _run(console: Console, command: click.Command, args: list[str], ok_codes: tuple[int, ...] = (0,)) -> int:
    """Run one vfnn subcommand in-process, echoing it as a user would type it."""
    console.rule(f"[bold]$ vfnn {command.name} {shlex.join(args)}")
    try:
        command.main(args=args, prog_name=f"vfnn {command.name}", standalone_mode=False)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    if code not in ok_codes:
        raise VfnnError(f"demo step 'vfnn {command.name} {shlex.join(args)}' failed with exit code {code}")
    return code


def comparison_table(report: dict) -> Table:
    """UNSAT % (and timeouts) per radius, one column per recipe: the demo's conclusion."""
    rows = report["verification"]
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    table = Table()
    table.add_column("eps", justify="right")
    for recipe in recipes:
        table.add_column(recipe, justify="right")
    for eps in sorted({r["eps"] for r in rows}):
        cells = []
        for recipe in recipes:
            r = next((r for r in rows if r["eps"] == eps and r["recipe"] == recipe), None)
            cells.append("-" if r is None else f"{100 * r['unsat']:.0f}% ({r['timeout']})")
        table.add_row(f"{eps:g}", *cells)
    return table


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"),
              show_default=True, help="Folder for the runs, specs, campaign and report.")
@click.option("--study", "study_name", default="quick", show_default=True,
              help="The study to run: a shipped study's name or a .toml file.")
def demo(out: Path, study_name: str) -> None:
    """Train CE and CE+NBC networks on the embedded 8x8 digits, verify their robustness at
    several radii with a complete verifier, and compare.

    Re-running continues where it stopped: finished training runs and verification jobs are kept.
    """
    from vfnn.campaign.cli import gate_cmd
    from vfnn.study.cli import study_cmd

    console = Console() if sys.stdout.isatty() else Console(width=160)  # logs: never wrap the tables
    _run(console, study_cmd, [study_name, "--out", str(out)])
    results = sorted(str(p) for p in (out / "campaign").glob("*/results.jsonl"))
    _run(console, gate_cmd, [*results, "--min-verified", "0", "--max-errors", "0", "--junit", str(out / "junit.xml")])
    report = json.loads((out / "report" / "study.json").read_text())
    console.print("\n[bold]Properties proved (UNSAT %) by radius; timeouts in brackets")  # a table title would wrap
    console.print(comparison_table(report))
    figures = sorted((out / "report" / "figures").glob("unsat_vs_eps_*.png"))
    console.print(f"\n[bold green]Done.[/] Report: {out / 'report' / 'study.md'}   "
                  f"UNSAT vs eps: {', '.join(map(str, figures))}   JUnit: {out / 'junit.xml'}")
