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
from vfnn.stats import UnstableRecord, unstable_record
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
