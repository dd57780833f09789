"""The ``vfnn`` command line.

Each subcommand lives next to the code it drives and is registered here.  ``main`` turns every
:class:`vfnn.errors.VfnnError` (and every OSError: a path that cannot be read or written) into
one line on stderr and exit code 2, so users never see a traceback for a problem that is theirs to fix.
"""

from __future__ import annotations

import sys

import click

from vfnn import __version__
from vfnn.errors import VfnnError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vfnn")
def cli() -> None:
    """Train verification-friendly neural networks and verify them.

    \b
    Typical use:
      vfnn train --dataset mnist --arch fc:100x3 --reg nbc --eps 0.05 --out runs/nbc
      vfnn stats runs/nbc/model.onnx spec.vnnlib
      vfnn verify --verifier milp runs/nbc/model.onnx spec.vnnlib
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="vfnn", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("vfnn: aborted", err=True)
        sys.exit(130)
    except VfnnError as exc:
        click.echo(f"vfnn: error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # an output path that cannot be written, a file that cannot be read
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"vfnn: error: {where}{exc.strerror or exc}", err=True)
        sys.exit(2)


# Each subcommand lives next to the code it drives; torch-heavy imports stay inside the commands.
from vfnn.campaign.cli import bench_cmd, gate_cmd, report_cmd, specs_cmd  # noqa: E402
from vfnn.demo import demo  # noqa: E402
from vfnn.stats_cli import stats  # noqa: E402
from vfnn.train.cli import train  # noqa: E402
from vfnn.verify_cli import verifiers_cmd, verify_cmd  # noqa: E402

for _command in (train, stats, verify_cmd, verifiers_cmd, specs_cmd, bench_cmd, report_cmd, gate_cmd, demo):
    cli.add_command(_command)
