"""Unstable-neuron record: counts against the bounds, several input boxes, and ``vfnn stats``."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vfnn.bounds import compute_bounds
from vfnn.cli import cli
from vfnn.errors import SpecError
from vfnn.network import Conv2d, Dense, Flatten, Network, ReLU
from vfnn.onnx_io import save_onnx
from vfnn.spec import Halfspaces, Spec, SpecCase, robustness_spec
from vfnn.stats import LayerStats, UnstableRecord, unstable_record
from vfnn.vnnlib import write_vnnlib


def _net(seed: int = 0) -> Network:
    rng = np.random.default_rng(seed)
    f = np.float32
    return Network((1, 6, 6), (
        Conv2d(rng.normal(size=(3, 1, 3, 3)).astype(f), (rng.normal(size=3) * 0.1).astype(f), (1, 1), (1, 1, 1, 1)),
        ReLU(), Flatten(),
        Dense((rng.normal(size=(10, 108)) * 0.2).astype(f), (rng.normal(size=10) * 0.1).astype(f)), ReLU(),
        Dense(rng.normal(size=(4, 10)).astype(f), np.zeros(4, f))), name="tiny")


def test_counts_match_the_bounds_and_add_up() -> None:
    net = _net()
    x = np.random.default_rng(1).uniform(size=36)
    spec = robustness_spec(x, 2, 0.1, 4)
    rec = unstable_record(net, spec, "crown")
    lo = torch.as_tensor(spec.cases[0].lower).reshape(1, 1, 6, 6)
    hi = torch.as_tensor(spec.cases[0].upper).reshape(1, 1, 6, 6)
    C = torch.as_tensor(np.concatenate([h.A for h in spec.cases[0].unsafe]))
    b = compute_bounds(net.to_torch().double(), lo, hi, C)
    assert [s.neurons for s in rec.layers] == [108, 10]
    for s, (lo_, hi_) in zip(rec.layers, b.pre_activation, strict=True):
        assert s.unstable == int(((lo_ < 0) & (hi_ > 0)).sum())
        assert s.active == int((lo_ >= 0).sum())
        assert s.unstable + s.active + s.inactive == s.neurons
    assert rec.unstable > 0  # the example is not trivial
    np.testing.assert_allclose(rec.output_lower, b.lower[0].detach().numpy())
    np.testing.assert_allclose(rec.output_upper, b.upper[0].detach().numpy())
    assert UnstableRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


def test_tighter_methods_never_count_more_unstable_neurons() -> None:
    net = _net(3)
    spec = robustness_spec(np.random.default_rng(2).uniform(size=36), 0, 0.15, 4)
    ibp, crown, alpha = (unstable_record(net, spec, m) for m in ("ibp", "crown", "alpha-crown"))
    assert ibp.layers[0].unstable == crown.layers[0].unstable  # first layer: IBP is exact
    assert crown.unstable <= ibp.unstable
    assert alpha.unstable <= crown.unstable  # alpha-CROWN intermediate bounds are at least as tight
    assert all(a >= c - 1e-12 for a, c in zip(alpha.output_lower, crown.output_lower, strict=True))


def test_several_boxes_with_different_row_counts_are_summed_in_order() -> None:
    net = _net(4)
    rng = np.random.default_rng(5)
    x1, x2 = rng.uniform(size=36), rng.uniform(size=36)
    row = np.array([[1.0, -1.0, 0.0, 0.0]])
    c1 = SpecCase(x1 - 0.05, x1 + 0.05, (Halfspaces(row, np.zeros(1)),))
    two = (Halfspaces(np.vstack([row, -row]), np.zeros(2)), Halfspaces(row * 2, np.ones(1)))
    c2 = SpecCase(x2 - 0.1, x2 + 0.1, two)
    rec = unstable_record(net, Spec((c1, c2), 36, 4))
    one = [unstable_record(net, Spec((c,), 36, 4)) for c in (c1, c2)]
    assert len(rec.output_lower) == 1 + 3
    np.testing.assert_allclose(rec.output_lower, one[0].output_lower + one[1].output_lower, rtol=1e-12)
    for i, s in enumerate(rec.layers):
        assert s.unstable == one[0].layers[i].unstable + one[1].layers[i].unstable
        assert s.neurons == 2 * one[0].layers[i].neurons


def test_spec_of_the_wrong_size_is_rejected() -> None:
    with pytest.raises(SpecError, match="inputs"):
        unstable_record(_net(), robustness_spec(np.zeros(10), 0, 0.1, 4))


@pytest.fixture
def files(tmp_path):
    net = _net(6)
    spec = robustness_spec(np.random.default_rng(7).uniform(size=36), 1, 0.05, 4)
    save_onnx(net, tmp_path / "m.onnx")
    write_vnnlib(spec, tmp_path / "s.vnnlib")
    return net, spec, tmp_path


def test_cli_table_and_json(files) -> None:
    net, spec, d = files
    res = CliRunner().invoke(cli, ["stats", str(d / "m.onnx"), str(d / "s.vnnlib")])
    assert res.exit_code == 0, res.output
    assert "unstable" in res.output and "total" in res.output
    res = CliRunner().invoke(cli, ["stats", str(d / "m.onnx"), str(d / "s.vnnlib"), "--json", "--bounds", "ibp"])
    assert res.exit_code == 0, res.output
    got = UnstableRecord.from_dict(json.loads(res.output))
    assert got.method == "ibp" and got.neurons == net.relu_count
    want = unstable_record(net, spec, "ibp")
    assert [s.unstable for s in got.layers] == [s.unstable for s in want.layers]
    np.testing.assert_allclose(got.output_lower, want.output_lower, rtol=1e-6, atol=1e-6)


def test_cli_size_mismatch_is_one_line_exit_2(files, tmp_path) -> None:
    _, _, d = files
    write_vnnlib(robustness_spec(np.zeros(5), 0, 0.1, 4), tmp_path / "bad.vnnlib")
    p = subprocess.run([sys.executable, "-m", "vfnn", "stats", str(d / "m.onnx"), str(tmp_path / "bad.vnnlib")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "inputs" in p.stderr and "Traceback" not in p.stderr


def test_cli_reads_a_model_pt_and_counts_paramramp_neurons_as_trained(tmp_path) -> None:
    """model.pt keeps ParamRamp layers (16 neurons each); its model.onnx form has 3 ReLUs per neuron."""
    from vfnn.layers import ParamRampModule
    from vfnn.train.models import build_model, save_model_pt, set_ramp_bends

    torch.manual_seed(0)
    model = build_model("fc:16x2", (1, 8, 8), 10, [0.3], [0.3], "paramramp", 0.01)
    set_ramp_bends(model, torch.rand(32, 1, 8, 8))
    assert sum(isinstance(m, ParamRampModule) for m in model) == 2
    pt = save_model_pt(tmp_path / "model.pt", model, {"input_shape": [1, 8, 8], "n_classes": 10})
    spec = write_vnnlib(robustness_spec(np.full(64, 0.5), 3, 0.05, 10), tmp_path / "s.vnnlib")
    out = CliRunner().invoke(cli, ["stats", str(pt), str(spec), "--json"])
    assert out.exit_code == 0, out.output
    layers = json.loads(out.output)["layers"]
    assert [layer["neurons"] for layer in layers] == [16, 16]
    onnx_path = save_onnx(Network.from_torch(model, (1, 8, 8)), tmp_path / "model.onnx")
    out = CliRunner().invoke(cli, ["stats", str(onnx_path), str(spec), "--json"])
    assert [layer["neurons"] for layer in json.loads(out.output)["layers"]] == [48, 48]


def test_a_record_written_before_the_state_counts_still_loads() -> None:
    """Results files of old campaigns hold layers without ``kind``/``states``; they load with
    those empty, and a record round-trips with them."""
    old = {"method": "crown", "layers": [{"layer": 0, "neurons": 10, "unstable": 3, "active": 5, "inactive": 2}],
           "output_lower": [-1.0], "output_upper": [2.0], "total_unstable": 3, "total_neurons": 10}
    rec = UnstableRecord.from_dict(old)
    assert rec.layers[0] == LayerStats(0, 10, 3, 5, 2) and rec.layers[0].states == {} and rec.layers[0].kind == ""
    assert rec.unstable == 3 and rec.state_totals() == {}
    new = unstable_record(_net(), robustness_spec(np.random.default_rng(1).uniform(size=36), 2, 0.1, 4))
    assert [s.kind for s in new.layers] == ["relu", "relu"]
    assert all(s.states == {"inactive": s.inactive, "active": s.active, "unstable": s.unstable} for s in new.layers)
    assert UnstableRecord.from_dict(json.loads(json.dumps(new.to_dict()))) == new


def _ramp_model_pt(tmp_path):  # noqa: ANN001, ANN202 - a fixture-like helper
    """A 6-8-5-3 ParamRamp net saved as model.pt, with a spec whose box leaves neurons in several states."""
    from vfnn.layers import ParamRamp
    from vfnn.train.models import save_model_pt

    g, f = np.random.default_rng(0), np.float32
    net = Network((6,), (Dense(g.normal(0, 1, (8, 6)).astype(f), g.normal(0, 0.3, 8).astype(f)),
                         ParamRamp(g.uniform(0, 0.6, 8).astype(f), 0.01),
                         Dense(g.normal(0, 1, (5, 8)).astype(f), np.zeros(5, f)),
                         ParamRamp(g.uniform(0, 0.6, 5).astype(f), 0.0), Dense(g.normal(0, 1, (3, 5)).astype(f),
                                                                                np.zeros(3, f))))
    pt = save_model_pt(tmp_path / "model.pt", net.to_torch(), {"input_shape": [6], "n_classes": 3})
    spec = robustness_spec(np.full(6, 0.5), 0, 0.2, 3)
    return net, spec, pt, write_vnnlib(spec, tmp_path / "s.vnnlib")


def test_cli_prints_the_paramramp_states_in_the_table_and_the_json(tmp_path) -> None:
    net, spec, pt, vnnlib = _ramp_model_pt(tmp_path)
    want = unstable_record(net, spec, "crown")
    states = ("left", "middle", "right", "left-unstable", "right-unstable", "both")
    assert all(tuple(s.states) == states for s in want.layers)
    assert sum(n > 0 for n in want.state_totals().values()) >= 4  # a box with several states
    out = CliRunner().invoke(cli, ["stats", str(pt), str(vnnlib), "--json"])
    assert out.exit_code == 0, out.output
    got = UnstableRecord.from_dict(json.loads(out.output))
    assert [s.states for s in got.layers] == [s.states for s in want.layers]
    assert [s.kind for s in got.layers] == ["paramramp", "paramramp"]
    out = CliRunner().invoke(cli, ["stats", str(pt), str(vnnlib)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    top = next(i for i, line in enumerate(lines) if "neuron states (paramramp" in line)
    header = " ".join(lines[top: top + 4])
    assert all(w in header for w in ("left", "middle", "right", "left-", "right-", "unstable", "both"))
    rows = [line for line in lines[top:] if line.strip("│ ").startswith(("0 ", "1 ", "total "))][:3]
    for row, s in zip(rows, [*want.layers, None], strict=True):
        cells = [c.strip() for c in row.strip("│").split("│")]
        counts = [sum(x.states[n] for x in want.layers) for n in states] if s is None else [s.states[n] for n in states]
        assert cells[2:] == [str(c) for c in counts], row
