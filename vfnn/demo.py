"""``vfnn demo``: the whole story on the embedded digits data, in a few minutes on a laptop CPU.

It runs the same commands a user would type (train CE and NBC models, generate robustness
specs, verify them in a campaign, report), so the demo also shows how to use the tool.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from rich.console import Console

from vfnn.errors import VfnnError


def _run(console: Console, args: list[str], ok_codes: tuple[int, ...] = (0,)) -> int:
    """Run one vfnn command in-process, echoing it as a user would type it."""
    from vfnn.cli import cli

    console.rule(f"[bold]$ vfnn {shlex.join(args)}")
    try:
        cli.main(args=args, prog_name="vfnn", standalone_mode=False)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    if code not in ok_codes:
        raise VfnnError(f"demo step 'vfnn {shlex.join(args)}' failed with exit code {code}")
    return code


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"),
              show_default=True, help="Folder for the runs, specs, campaign and report.")
@click.option("--epochs", type=int, default=12, show_default=True, help="Training epochs per model.")
@click.option("--per-class", type=int, default=2, show_default=True, help="Test images per class for the specs.")
@click.option("--eps", default="0.02,0.05", show_default=True, help="Robustness radii (pixel space).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per verification job.")
@click.option("-v", "--verifier", "verifiers", multiple=True,
              help="Verifiers to run (default: milp, plus marabou when it is installed).")
@click.option("--jobs", type=int, default=2, show_default=True, help="Verification jobs at a time.")
def demo(out: Path, epochs: int, per_class: int, eps: str, timeout: float, verifiers: tuple[str, ...],
         jobs: int) -> None:
    """Train CE and NBC networks on the embedded 8x8 digits, verify their robustness, compare.

    Re-running continues where it stopped: finished training runs and verification jobs are kept.
    """
    from vfnn.verifiers.registry import get_verifier

    console = Console()
    if not verifiers:
        verifiers = ("milp",) + (("marabou",) if get_verifier("marabou").availability().available else ())
    # NBC at weight 1: the default weight (5, tuned on MNIST) costs this 32x2 digits net ~14 points of accuracy.
    models = {"ce": [], "nbc": ["--reg", "nbc:1"]}
    onnx_paths = []
    for label, extra in models.items():
        run = out / "runs" / label
        if (run / "model.onnx").exists():
            console.print(f"[dim]{run} exists, reusing it")
        else:
            _run(console, ["train", "--dataset", "digits", "--arch", "fc:32x2", "--epochs", str(epochs),
                           "--eps", "0.05", "--seed", "0", "--quiet", "--overwrite", "--out", str(run), *extra])
        onnx_paths += ["--model", str(run / "model.onnx")]
    specs = out / "specs"
    _run(console, ["specs", "--dataset", "digits", "--per-class", str(per_class), "--eps", eps,
                   *onnx_paths, "--correct-only", "--timeout", str(timeout), "--out", str(specs)])
    campaign = out / "campaign"
    _run(console, ["bench", str(specs / "instances.csv"), *[a for v in verifiers for a in ("-v", v)],
                   "--jobs", str(jobs), "--out", str(campaign)])
    _run(console, ["report", str(campaign / "results.jsonl"), "--out", str(out)])
    _run(console, ["gate", str(campaign / "results.jsonl"), "--min-verified", "0", "--max-errors", "0",
                   "--junit", str(out / "junit.xml")])
    console.print(f"\n[bold green]Done.[/] Report: {out / 'report.md'}   JUnit: {out / 'junit.xml'}")
