"""``vfnn verify`` and ``vfnn verifiers``.

Exit codes of ``vfnn verify``: 0 unsat (property holds), 1 sat (counterexample found and
replayed), 2 user error (bad file, unknown or unavailable verifier, spec does not fit), 3 unknown,
4 timeout, 5 verifier error.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vfnn.bounds import METHODS
from vfnn.campaign.vnncomp import counterexample_text
from vfnn.errors import ModelError, SpecError, VfnnError

if TYPE_CHECKING:
    from vfnn.verifiers.result import VerificationResult


def _parse_opts(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise VfnnError(f"--opt expects key=value, got {p!r}")
        out[key.strip()] = value.strip()
    return out


class Spinner:
    """An elapsed-time line on stderr while the tool runs, only when stderr is a terminal (CI logs stay clean)."""

    FRAMES = "|/-\\"

    def __init__(self, label: str, start: float, timeout: float) -> None:
        self.label, self.start, self.timeout, self.n = label, start, timeout, 0
        self.active = sys.stderr.isatty()

    def __call__(self) -> None:
        if self.active:
            self.n += 1
            elapsed = time.monotonic() - self.start
            frame = self.FRAMES[self.n % len(self.FRAMES)]
            sys.stderr.write(f"\r{frame} {self.label}: {elapsed:.1f} s of {self.timeout:g} s")
            sys.stderr.flush()

    def clear(self) -> None:
        if self.active and self.n:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _check_output_path(path: Path | None) -> None:
    """Refuse a --save-counterexample that can never be written before spending the budget."""
    if path is not None and path.is_dir():
        raise VfnnError(f"--save-counterexample {path}: is a directory (give a file name)")


def _save(path: Path, result: VerificationResult) -> str | None:
    """Write the counterexample; the reason it could not be written, or None."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(counterexample_text(result.counterexample_input, result.counterexample_output))
    except OSError as exc:
        return f"{exc.filename or path}: {exc.strerror or exc}"
    return None


@click.command("verify")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--verifier", "-v", "verifier_name", default="milp", show_default=True,
              help="verifier name (see `vfnn verifiers`)")
@click.option("--timeout", "-t", type=float, default=300.0, show_default=True,
              help="seconds for the whole command, start-up included")
@click.option("--opt", "-o", "opts", multiple=True, metavar="KEY=VALUE",
              help="verifier option (repeatable); `vfnn verifiers --options` lists them")
@click.option("--bounds", "bound_method", default="crown", show_default=True,
              type=click.Choice([*METHODS, "none"]),
              help="vfnn's bound method for the unstable-neuron record (same for every verifier)")
@click.option("--json", "as_json", is_flag=True, help="print the full result as JSON")
@click.option("--save-counterexample", type=click.Path(path_type=Path),
              help="write a counterexample in VNN-COMP format here (only when sat)")
@click.option("--no-server", is_flag=True,
              help="solve in a fresh process even when a `vfnn server` is running")
def verify_cmd(model: Path, spec: Path, verifier_name: str, timeout: float, opts: tuple[str, ...],
               bound_method: str, as_json: bool, save_counterexample: Path | None, no_server: bool) -> None:
    """Decide whether MODEL (ONNX) satisfies SPEC (VNN-LIB; sat = violated).

    The solve runs in a fresh, isolated process; when `vfnn server start` has started a warm
    server (of this same code), in a child of that server instead, which saves the start-up
    (`import torch`: about a second) and changes nothing else.

    Exit code: 0 unsat, 1 sat, 2 input error (also: a sat whose counterexample could not be
    saved, after the verdict), 3 unknown, 4 timeout, 5 verifier error.
    """
    start = time.monotonic()  # the deadline counts from here: start-up is part of the budget
    options = _parse_opts(opts)
    if not (timeout > 0 and math.isfinite(timeout)):
        raise VfnnError(f"--timeout must be a positive number of seconds, got {timeout}")
    from vfnn.vnnlib import input_file

    model, spec = input_file(model, "the ONNX model"), input_file(spec, "the VNN-LIB spec")
    _check_output_path(save_counterexample)
    with tempfile.TemporaryDirectory(prefix="vfnn-verify-") as pipes:
        model = _from_pipe(model, Path(pipes) / "model.onnx", ModelError)
        spec = _from_pipe(spec, Path(pipes) / "spec.vnnlib", SpecError)
        result = _supervise(model, spec, verifier_name, options, timeout,
                            None if bound_method == "none" else bound_method, start, not no_server)
    not_saved = None
    if save_counterexample is not None and result.status == "sat":
        not_saved = _save(save_counterexample, result)
    if as_json:
        click.echo(result.to_json(indent=2))
    else:
        click.echo(_verdict_line(result, save_counterexample, not_saved))
    if not_saved:  # the verdict is printed first, so an unwritable path cannot lose it
        raise VfnnError(f"counterexample not saved: {not_saved}")
    sys.exit(result.exit_code)


def _from_pipe(path: Path, copy: Path, error: type[VfnnError]) -> Path:
    """A FIFO or ``<(cmd)`` can be read only once, and the solve reads its inputs more than once:
    such an input is read here into ``copy`` (``.gz`` added for gzip data); a file is used as it is."""
    import stat

    from vfnn.vnnlib import read_bytes

    if not stat.S_ISFIFO(path.stat().st_mode):
        return path
    data = read_bytes(path, error)
    copy = copy.with_name(copy.name + ".gz") if data[:2] == b"\x1f\x8b" else copy
    copy.write_bytes(data)
    return copy


def _verify_job(model: Path, spec: Path, verifier_name: str, options: dict[str, str], timeout: float,
                unstable_method: str | None, deadline: float, scratch: str) -> VerificationResult:
    """The command's child: everything that imports torch, and the solve (in a child of its own)."""
    import tempfile

    from vfnn.verifiers.registry import get_verifier

    tempfile.tempdir = scratch  # verify()'s work directory goes where the command can see and remove it
    verifier = get_verifier(verifier_name)
    return verifier.verify(model, spec, timeout, verifier.resolve_options(options), unstable_method=unstable_method,
                           deadline=deadline)


def _supervise(model: Path, spec: Path, verifier_name: str, options: dict[str, str], timeout: float,
               unstable_method: str | None, start: float, use_server: bool) -> VerificationResult:
    """Run :func:`_verify_job` in a child (of this process, or of a running warm server) and stop it
    at the deadline whatever it is doing (importing torch, loading the model, replaying), so that the
    command ends within timeout + grace + 0.5 s.  This process imports no torch: it starts the child
    at once and exits quickly."""
    import tempfile

    from vfnn.verifiers import warm
    from vfnn.verifiers.base import STARTED_FILE
    from vfnn.verifiers.process import Isolated, allow_plain_fork, run_isolated
    from vfnn.verifiers.result import VerificationResult

    spinner = Spinner(f"verifying with {verifier_name}", start, timeout)
    conn = warm.connect() if use_server else None
    starter = Isolated if conn is None else warm.starter(conn)  # a server that fails to take it: Isolated
    previous = allow_plain_fork()  # neither this process nor its child runs torch code: no fork server needed
    with tempfile.TemporaryDirectory(prefix="vfnn-verify-") as tmp:
        args = (model, spec, verifier_name, options, timeout, unstable_method, start + timeout, tmp)
        try:
            out = run_isolated(_verify_job, args, limit_s=start + timeout + _grace(options) + 0.5 - time.monotonic(),
                               workdir=tmp, on_wait=spinner, starter=starter)
        finally:
            allow_plain_fork(previous)
            spinner.clear()
        started = any(Path(tmp).glob(f"*/{STARTED_FILE}"))
    if out.kind == "returned":
        return out.value
    if out.kind == "raised" and isinstance(out.value, (VfnnError, OSError)):
        raise out.value  # a user error: one line, exit 2
    if out.kind == "killed":
        status, message = ("timeout", "stopped at the command's hard deadline") if started else (
            "error", f"the solver never started: start-up used the whole {timeout:g} s budget")
    elif out.kind == "raised":
        status, message = "error", f"internal error: {type(out.value).__name__}: {out.value}"
    else:
        status, message = "error", out.describe_death()
    return VerificationResult(status, verifier_name, None, dict(options), time.monotonic() - start, None, timeout,
                              message=message, model_path=str(model), spec_path=str(spec),
                              tool_stats={} if started else {"solver_started": False})


def _grace(options: dict[str, str]) -> float:
    """The ``grace`` option as the child will read it (a bad value is the child's error to report)."""
    from vfnn.verifiers.base import COMMON_OPTIONS

    default = next(o.default for o in COMMON_OPTIONS if o.name == "grace")
    try:
        return max(0.0, float(options.get("grace", default)))
    except ValueError:
        return default


def _verdict_line(result: VerificationResult, saved_to: Path | None, not_saved: str | None) -> str:
    unstable = "" if result.unstable is None else (
        f", {result.unstable.unstable}/{result.unstable.neurons} unstable ({result.unstable.method})")
    tool = "" if result.tool_time is None else f", tool {result.tool_time:.2f}s"
    line = f"{result.status} [{result.verifier}] in {result.wall_time:.2f}s{tool}{unstable}"
    if result.status == "sat":
        if saved_to is None:
            where = "use --save-counterexample F"
        else:
            where = "not saved" if not_saved else f"saved to {saved_to}"
        line += f"; counterexample in case {result.case_index} ({where})"
    elif result.message:
        line += f": {result.message}"
    return line


@click.command("verifiers")
@click.option("--options", "show_options", is_flag=True, help="also list every verifier's options")
def verifiers_cmd(show_options: bool) -> None:
    """List the registered verifiers, whether they can run here, and why not."""
    from rich.console import Console
    from rich.table import Table

    from vfnn.verifiers.registry import load_verifier_class, verifier_status

    table = Table(title="vfnn verifiers")
    for col in ("name", "available", "version"):
        table.add_column(col, no_wrap=True)
    table.add_column("reason / install hint", overflow="fold")  # paths must stay whole to be copied
    rows = verifier_status()
    for name, _target, a in rows:
        note = " ".join(s for s in (a.reason, f"({a.install_hint})" if a.install_hint else None) if s)
        table.add_row(name, "yes" if a.available else "no", a.version or "", note)
    console = Console()
    console.print(table)
    if show_options:
        for name, _target, _a in rows:
            try:
                cls = load_verifier_class(name)
            except VfnnError:
                continue
            console.print(f"[bold]{name}[/bold] options (--opt key=value):")
            for o in cls.all_options():
                choices = f" {{{', '.join(map(str, o.choices))}}}" if o.choices else ""
                console.print(f"  {o.name} ({o.type.__name__}, default {o.default}){choices}: {o.help}")
