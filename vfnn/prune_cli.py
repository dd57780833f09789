"""``vfnn prune``: iterative structured pruning of a trained run (Li et al., TMLR 2023)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("prune", context_settings={"max_content_width": 100})
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--criterion", type=click.Choice(["nrs", "magnitude", "random"]), default="nrs", show_default=True,
              help="nrs: most unstable units first (-mean NRS over the training images at the run's eps); "
                   "magnitude: smallest mean |incoming weight| first; random.")
@click.option("--rate", type=float, default=0.11, show_default=True,
              help="Fraction of the remaining neurons/channels removed per round (global over layers).")
@click.option("--rounds", type=int, default=12, show_default=True, help="Prune-and-retrain rounds.")
@click.option("--rewind-epoch", type=int, default=8, show_default=True,
              help="Each round retrains from the run's weights after this epoch (0: its initial weights).")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [default: RUN_DIR-prune-CRITERION].")
@click.option("--overwrite", is_flag=True, help="Replace the rounds already in --out.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="[default: the run's]")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="VFNN_DATA", help="[default: the run's]")
@click.option("-q", "--quiet", is_flag=True, help="Only the summary table.")
def prune_cmd(run_dir: str, criterion: str, rate: float, rounds: int, rewind_epoch: int, out: str | None,
              overwrite: bool, device: str | None, threads: int | None, data_dir: str | None, quiet: bool) -> None:
    """Prune whole neurons (fc) and channels (conv) of the finished run RUN_DIR, round by round,
    each round retrained with the run's own recipe from the rewind epoch's weights (lottery-ticket
    rewinding).  Every round is a run directory (OUT/round-R: model.pt, model.onnx with the pruned
    units removed, metrics.jsonl), so vfnn specs/bench/study take it as any other run."""
    import sys

    from rich.console import Console
    from rich.table import Table

    from vfnn.train.prune import prune_run

    console = Console(stderr=True)

    def log(message: str) -> None:
        if not quiet:
            console.print(message, markup=False, highlight=False, soft_wrap=True)

    overrides = {k: v for k, v in (("device", device), ("threads", threads), ("data_dir", data_dir)) if v is not None}
    rows = prune_run(Path(run_dir), criterion, rate, rounds, rewind_epoch, out, overwrite=overwrite,
                     overrides=overrides, argv=["vfnn", "prune", *sys.argv[2:]], log=log)
    table = Table(title=f"{run_dir}: {criterion} pruning, rate {rate:g}, rewind to epoch {rewind_epoch}")
    for col in ("round", "units kept", "ReLU neurons", "clean %", "verified (crown) %", "unstable"):
        table.add_column(col, justify="right")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    for r in rows:
        unstable = "-" if r["unstable"] is None else f"{r['unstable']:.1f}"
        table.add_row(str(r["round"]), str(r["units"]), str(r["relu_neurons"]), pct(r["clean_acc"]),
                      pct(r["verified_crown"]), unstable)
    Console().print(table)
    click.echo(f"rounds: {Path(rows[-1]['run_dir']).parent}/round-1..{len(rows) - 1} (table: prune.json there)")
