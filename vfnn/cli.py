"""The ``vfnn`` command line.

Each subcommand lives next to the code it drives and is registered here.  ``main`` is the one
place that decides how a command ends, because CI reads exit codes as verdicts:

- a :class:`vfnn.errors.VfnnError`, an OSError (a path that cannot be read or written) or a click
  usage error is the user's to fix: one line on stderr, exit code 2;
- any other exception is a bug in vfnn: one line ``vfnn: internal error: ...``, exit code 5, and
  the traceback only with ``vfnn --debug`` or ``VFNN_DEBUG=1``;
- exit code 1 means a verdict and is let through only from the commands that document it
  (``verify``: sat with a replayed counterexample; ``gate``: a threshold failed; ``report``: two
  verifiers disagree); anywhere else it becomes an internal error;
- 130: interrupted.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from vfnn import __version__
from vfnn.errors import VfnnError

VERDICT_COMMANDS = ("verify", "gate", "report")  # the only commands whose exit code 1 is a verdict
_session = {"debug": False, "command": None}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vfnn")
@click.option("--debug", is_flag=True, help="Print the traceback of an internal error (also: VFNN_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Train verification-friendly neural networks and verify them.

    \b
    Typical use:
      vfnn train --dataset mnist --arch fc:100x3 --reg nbc --eps 0.05 --out runs/nbc
      vfnn stats runs/nbc/model.onnx spec.vnnlib
      vfnn verify --verifier milp runs/nbc/model.onnx spec.vnnlib
    """
    _session["debug"] = _session["debug"] or debug
    _session["command"] = ctx.invoked_subcommand


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs one command and maps how it ended to an exit code (see above)."""
    _session.update(debug=os.environ.get("VFNN_DEBUG", "") not in ("", "0"), command=None)
    stdout = sys.stdout
    try:
        rv = cli.main(args=argv, prog_name="vfnn", standalone_mode=False)
    except SystemExit as exc:
        if sys.stdout is not stdout:  # click swapped stdout: a closed pipe (EPIPE), which it exits 1 for
            sys.exit(2)
        sys.exit(_checked_exit_code(exc.code))
    except click.UsageError as exc:  # one line, not click's usage block: CI logs and people read the first line
        where = exc.ctx.command_path if exc.ctx is not None else "vfnn"
        click.echo(f"vfnn: error: {exc.format_message()} (see '{where} --help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)  # click uses 1 for some of its own errors (a file it cannot open): still the user's
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
    except Exception as exc:  # noqa: BLE001 - a bug in vfnn must never read as a verdict
        _internal_error(f"{type(exc).__name__}: {exc}")
    if isinstance(rv, int) and not isinstance(rv, bool):  # ctx.exit(code) returns its code here
        sys.exit(_checked_exit_code(rv))


def _checked_exit_code(code: object) -> int:
    """``code`` as an exit status; 1 only from a command whose 1 is a documented verdict."""
    if code is None:
        return 0
    if not isinstance(code, int):  # sys.exit("message") would print it and exit 1
        _internal_error(f"exit with message {code!r}", traceback_too=False)
    if code == 1 and _session["command"] not in VERDICT_COMMANDS:
        _internal_error(f"'vfnn {_session['command']}' ended with exit code 1, which only a verdict may use",
                        traceback_too=False)
    return code  # type: ignore[return-value]


def _internal_error(what: str, traceback_too: bool = True) -> None:
    """One line and exit 5; the traceback first when --debug or VFNN_DEBUG=1 asks for it."""
    if _session["debug"] and traceback_too:
        traceback.print_exc()
    line = " ".join(what.split())
    hint = "" if _session["debug"] else " (run with --debug for the traceback)"
    click.echo(f"vfnn: internal error: {line[:500]}{hint}", err=True)
    sys.exit(5)


# Each subcommand lives next to the code it drives; torch-heavy imports stay inside the commands.
from vfnn.campaign.cli import bench_cmd, gate_cmd, report_cmd, specs_cmd  # noqa: E402
from vfnn.demo import demo  # noqa: E402
from vfnn.prune_cli import prune_cmd  # noqa: E402
from vfnn.server_cli import server_cmd  # noqa: E402
from vfnn.stats_cli import stats  # noqa: E402
from vfnn.study.cli import study_cmd  # noqa: E402
from vfnn.train.cli import train  # noqa: E402
from vfnn.verify_cli import verifiers_cmd, verify_cmd  # noqa: E402

for _command in (train, prune_cmd, stats, verify_cmd, verifiers_cmd, specs_cmd, bench_cmd, report_cmd, gate_cmd,
                 study_cmd, server_cmd, demo):
    cli.add_command(_command)
