"""``vfnn verify`` and ``vfnn verifiers``.

Exit codes of ``vfnn verify``: 0 unsat (property holds), 1 sat (counterexample found and
replayed), 2 user error (bad file, unknown or unavailable verifier, spec does not fit), 3 unknown,
4 timeout, 5 verifier error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vfnn.errors import ModelError, SpecError, VfnnError


def _parse_opts(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise VfnnError(f"--opt expects key=value, got {p!r}")
        out[key.strip()] = value.strip()
    return out


def counterexample_text(x: list[float], y: list[float]) -> str:
    """The VNN-COMP counterexample format: ``((X_0 v) ... (Y_0 v) ...)``, one pair per line."""
    lines = [f"(X_{i} {v!r})" for i, v in enumerate(x)] + [f"(Y_{i} {v!r})" for i, v in enumerate(y)]
    return "(" + "\n".join(lines) + ")\n"


@click.command("verify")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--verifier", "-v", "verifier_name", default="milp", show_default=True,
              help="verifier name (see `vfnn verifiers`)")
@click.option("--timeout", "-t", type=float, default=300.0, show_default=True, help="seconds")
@click.option("--opt", "-o", "opts", multiple=True, metavar="KEY=VALUE",
              help="verifier option (repeatable); `vfnn verifiers --options` lists them")
@click.option("--bounds", "bound_method", default="crown", show_default=True,
              type=click.Choice(["ibp", "crown", "alpha-crown", "none"]),
              help="vfnn's bound method for the unstable-neuron record (same for every verifier)")
@click.option("--json", "as_json", is_flag=True, help="print the full result as JSON")
@click.option("--save-counterexample", type=click.Path(dir_okay=False, path_type=Path),
              help="write a counterexample in VNN-COMP format here (only when sat)")
def verify_cmd(model: Path, spec: Path, verifier_name: str, timeout: float, opts: tuple[str, ...],
               bound_method: str, as_json: bool, save_counterexample: Path | None) -> None:
    """Decide whether MODEL (ONNX) satisfies SPEC (VNN-LIB; sat = violated).

    Exit code: 0 unsat, 1 sat, 2 input error, 3 unknown, 4 timeout, 5 verifier error.
    """
    from vfnn.onnx_io import load_onnx
    from vfnn.verifiers.registry import get_verifier
    from vfnn.vnnlib import read_vnnlib

    verifier = get_verifier(verifier_name)
    options = verifier.resolve_options(_parse_opts(opts))
    if not model.is_file():
        raise ModelError(f"{model}: no such file")
    if not spec.is_file():
        raise SpecError(f"{spec}: no such file")
    net = load_onnx(model)
    prop = read_vnnlib(spec, n_inputs=net.input_size, n_outputs=net.output_size)
    result = verifier.verify(model, prop, timeout, options, spec_path=spec,
                             unstable_method=None if bound_method == "none" else bound_method)
    if as_json:
        click.echo(result.to_json(indent=2))
    else:
        unstable = "" if result.unstable is None else (
            f", {result.unstable.unstable}/{result.unstable.neurons} unstable ({result.unstable.method})")
        tool = "" if result.tool_time is None else f", tool {result.tool_time:.2f}s"
        line = f"{result.status} [{result.verifier}] in {result.wall_time:.2f}s{tool}{unstable}"
        if result.status == "sat":
            where = f"saved to {save_counterexample}" if save_counterexample else "use --save-counterexample F"
            line += f"; counterexample in case {result.case_index} ({where})"
        elif result.message:
            line += f": {result.message}"
        click.echo(line)
    # The verdict is printed first, so an unwritable counterexample path cannot lose it.
    if save_counterexample is not None and result.status == "sat":
        save_counterexample.parent.mkdir(parents=True, exist_ok=True)
        save_counterexample.write_text(counterexample_text(result.counterexample_input, result.counterexample_output))
    sys.exit(result.exit_code)


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
