"""``vfnn stats``: unstable-neuron counts and output bounds of a network on a property."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vfnn.bounds import METHODS
from vfnn.errors import ModelError

if TYPE_CHECKING:
    from vfnn.network import Network


@click.command("stats")
@click.argument("model", type=click.Path())  # checked by input_file: one line, not click's usage block
@click.argument("spec", type=click.Path())
@click.option("--bounds", "method", type=click.Choice(METHODS), default="crown",
              show_default=True, help="Bound method for the pre-activation and output bounds.")
@click.option("--json", "as_json", is_flag=True, help="Print the UnstableRecord as JSON instead of a table.")
def stats(model: str, spec: str, method: str, as_json: bool) -> None:
    """Per activation layer: unstable (a kink inside the bounds: l < 0 < u for a ReLU), always-active
    and always-inactive neurons of MODEL (ONNX, or a vfnn model.pt, whose ParamRamp layers are counted
    as trained rather than as their exported ReLUs) over the input region of SPEC (VNN-LIB), and
    bounds of SPEC's output constraints.  ParamRamp layers also get their six states: stable left
    (u <= 0), middle (0 <= l, u <= r), right (l >= r), and unstable left-unstable, right-unstable,
    both (across 0, across r, across both kinks)."""
    from vfnn.stats import unstable_record
    from vfnn.vnnlib import input_file, read_vnnlib

    model_path, spec_path = input_file(model, "the ONNX model or model.pt"), input_file(spec, "the VNN-LIB spec")
    net = _load_model(model_path)
    prop = read_vnnlib(spec_path)
    prop.check_fits(net.input_size, net.output_size, model)
    record = unstable_record(net, prop, method)
    if as_json:
        click.echo(json.dumps(record.to_dict(), indent=2))
        return
    _print_tables(record, prop, model, spec)


def _load_model(path: Path) -> Network:
    """The ONNX model or vfnn model.pt at ``path``; a FIFO (ONNX only) is read through
    ``read_bytes``, which gives up on a pipe that nobody writes to instead of blocking forever."""
    from vfnn.onnx_io import load_onnx, network_from_onnx
    from vfnn.vnnlib import read_bytes

    if path.suffix.lower() == ".pt":
        from vfnn.network import Network as Net
        from vfnn.train.models import load_model

        module, meta = load_model(path)
        return Net.from_torch(module, tuple(meta["input_shape"]), name=path.parent.name or path.stem)
    if not stat.S_ISFIFO(path.stat().st_mode):
        return load_onnx(path)
    import onnx

    data = read_bytes(path, ModelError)
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises several unrelated types for corrupt input
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    return network_from_onnx(model, name=path.stem, where=str(path))


def _print_tables(record, prop, model: str, spec: str) -> None:  # noqa: ANN001 - rich types stay local
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cases = len(prop.cases)
    title = f"{model} on {spec} ({record.method}" + (f", counts summed over {cases} input boxes)" if cases > 1 else ")")
    t = Table(title=title)
    relu_only = all(s.kind in ("", "relu") for s in record.layers)
    for col in ("ReLU layer" if relu_only else "layer", "neurons", "unstable", "active", "inactive", "unstable %"):
        t.add_column(col, justify="right")
    for s in record.layers:
        t.add_row(str(s.layer), str(s.neurons), str(s.unstable), str(s.active), str(s.inactive),
                  f"{100 * s.unstable / max(s.neurons, 1):.1f}")
    act = sum(s.active for s in record.layers)
    ina = sum(s.inactive for s in record.layers)
    t.add_row("total", str(record.neurons), str(record.unstable), str(act), str(ina),
              f"{100 * record.unstable / max(record.neurons, 1):.1f}", style="bold")
    console.print(t)
    _print_states(console, record)

    o = Table(title="output constraints (unsafe iff every row of a disjunct is <= b)")
    for col in ("case", "disjunct", "row", "lower", "upper", "b", "A@y <= b on the box"):
        o.add_column(col, justify="right")
    r = 0
    for ci, case in enumerate(prop.cases):
        for di, h in enumerate(case.unsafe):
            for j in range(h.A.shape[0]):
                lo, up, b = record.output_lower[r], record.output_upper[r], float(h.b[j])
                verdict = "never" if lo > b else "always" if up <= b else "maybe"
                o.add_row(str(ci), str(di), str(j), f"{lo:.6g}", f"{up:.6g}", f"{b:.6g}", verdict)
                r += 1
    console.print(o)


# The states every ReLU-like kind reports; the three columns of the first table show them already.
_PLAIN_STATES = ("inactive", "active", "unstable")


def _print_states(console, record) -> None:  # noqa: ANN001 - rich types stay local
    """A table of the layers whose kind has states of its own (ParamRamp's six), so a neuron
    across both kinks or on the right piece is visible, not folded into unstable/active."""
    from rich.table import Table

    layers = [s for s in record.layers if s.states and tuple(s.states) != _PLAIN_STATES]
    if not layers:
        return
    names = list(dict.fromkeys(name for s in layers for name in s.states))
    kinds = ", ".join(dict.fromkeys(s.kind or "?" for s in layers))
    t = Table(title=f"neuron states ({kinds}; see --help)")
    for col in ("layer", "neurons", *(n.replace("-", "-\n") for n in names)):  # fits 80 columns
        t.add_column(col, justify="right")
    for s in layers:
        t.add_row(str(s.layer), str(s.neurons), *(str(s.states.get(n, 0)) for n in names))
    if len(layers) > 1:
        t.add_row("total", str(sum(s.neurons for s in layers)),
                  *(str(sum(s.states.get(n, 0) for s in layers)) for n in names), style="bold")
    console.print(t)
