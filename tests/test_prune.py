"""vfnn prune: unit selection, removal from the weights and the ONNX, the nrs order, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.cli_runner import run_cli
from vfnn.layers import BatchNorm, Conv2d, Dense, Flatten, ReLU
from vfnn.network import Network
from vfnn.onnx_io import network_to_onnx
from vfnn.train.config import TrainConfig
from vfnn.train.models import load_model
from vfnn.train.prune import prune_network, select, unit_scores

rng = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


def _bn(c: int, spatial: bool) -> BatchNorm:
    return BatchNorm(rng.uniform(0.5, 2, c).astype(np.float32), _f(c), _f(c), rng.uniform(0.2, 2, c).astype(np.float32),
                     1e-5, spatial)


def _params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def test_select_removes_round_rate_n_lowest_and_keeps_a_unit_per_layer() -> None:
    scores = [rng.random(5), rng.random(7), rng.random(3)]
    keep = select(scores, 0.3)  # 0.3 * 15 = 4.5, rounded half up
    assert sum(len(k) for k in keep) == 15 - 5
    all_scores = np.concatenate(scores)
    removed = np.concatenate([np.setdiff1d(np.arange(len(s)), k) + off
                              for s, k, off in zip(scores, keep, (0, 5, 12), strict=True)])
    assert set(removed) == set(np.argsort(all_scores)[:5])
    keep = select([np.array([-9.0]), np.array([0.0, 1.0, 2.0])], 0.5)  # the lone unit is the lowest: kept
    assert [list(k) for k in keep] == [[0], [2]]


def test_pruned_network_is_smaller_and_computes_the_zeroed_function() -> None:
    """Removing units equals zeroing what they feed forward (ReLU, batch-norm): input channels of
    the next conv, whole blocks of columns of the Dense after the Flatten, columns of a Dense.  The
    ONNX export is smaller and onnxruntime computes the pruned network."""
    net = Network((2, 6, 6), (Conv2d(_f(4, 2, 2, 2), _f(4)), _bn(4, True), ReLU(),
                              Conv2d(_f(3, 4, 2, 2), _f(3)), ReLU(), Flatten(),
                              Dense(_f(5, 48), _f(5)), _bn(5, False), ReLU(), Dense(_f(3, 5), _f(3))))
    keep = [np.array([0, 2, 3]), np.array([0, 2]), np.array([1, 4])]
    pruned = prune_network(net, keep)
    layers = list(net.layers)
    conv = net.layers[3].weight.copy()
    conv[:, 1] = 0
    layers[3] = Conv2d(conv, net.layers[3].bias)
    dense = net.layers[6].weight.reshape(5, 3, 16).copy()
    dense[:, 1] = 0
    layers[6] = Dense(dense.reshape(5, 48), net.layers[6].bias)
    last = net.layers[9].weight.copy()
    last[:, [0, 2, 3]] = 0
    layers[9] = Dense(last, net.layers[9].bias)
    zeroed = Network(net.input_shape, tuple(layers))
    x = rng.uniform(-1, 1, (6, 2, 6, 6))
    assert np.allclose(pruned.forward(x), zeroed.forward(x), atol=1e-5)
    assert pruned.relu_count == 3 * 25 + 2 * 16 + 2
    full, small = network_to_onnx(net.simplified()), network_to_onnx(pruned.simplified())
    assert _params(small) < _params(full)
    sess = ort.InferenceSession(small.SerializeToString(), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"input": xi[None].astype(np.float32)})[0] for xi in x])
    assert np.allclose(got, pruned.forward(x), atol=1e-4)


def test_nrs_criterion_prunes_the_most_unstable_neurons_first() -> None:
    """At x = 0.5 every neuron's pre-activation is 0 + bias; with eps = 0.1 the interval radius is
    0.4 * |w|: neuron 2 (radius 2, l*u = -4) is the most unstable, neuron 3 (radius 0.4) less so,
    neurons 0 and 1 are stable (biases +-5)."""
    w = np.array([[0.1] * 4, [0.1] * 4, [5.0] * 4, [1.0] * 4], np.float32)
    b = np.array([5.0, -5.0, -10.0, -2.0], np.float32)
    net = Network((4,), (Dense(w, b), ReLU(), Dense(_f(2, 4), _f(2))))
    cfg = TrainConfig(eps=0.1).validate()
    x = torch.full((3, 4), 0.5)
    scores = unit_scores("nrs", net, cfg, x)
    assert np.argsort(scores[0]).tolist()[:2] == [2, 3]
    assert [k.tolist() for k in select(scores, 0.25)] == [[0, 1, 3]]
    assert [k.tolist() for k in select(scores, 0.5)] == [[0, 1]]
    magnitude = unit_scores("magnitude", net, cfg, x)
    assert [k.tolist() for k in select(magnitude, 0.5)] == [[2, 3]]


def test_prune_command_rounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--arch", "fc:16x2", "--batch-norm", "--reg", "nrs", "--epochs", "2",
                            "--eval-size", "50", "--eval-pgd-steps", "2", "--out", str(run), "-q"], capsys)
    assert code == 0, err
    out = tmp_path / "pruned"
    code, stdout, err = run_cli(["prune", str(run), "--rate", "0.25", "--rounds", "2", "--rewind-epoch", "2",
                                 "--out", str(out), "-q"], capsys)
    assert code == 0, err
    assert "units kept" in stdout
    rows = json.loads((out / "prune.json").read_text())["rounds_table"]
    assert [r["units"] for r in rows] == [32, 24, 18]  # round(0.25 * 32) = 8, round(0.25 * 24) = 6
    # rewinding to the last epoch replays the run: its weights bit for bit
    original, _ = load_model(run / "model.pt")
    replayed, _ = load_model(out / "rewind" / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), replayed.state_dict().values(),
                                                 strict=True))
    sizes = [_params(onnx.load(str(r / "model.onnx"))) for r in (run, out / "round-1", out / "round-2")]
    assert sizes[0] > sizes[1] > sizes[2]
    model, _ = load_model(out / "round-2" / "model.pt")
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    sess = ort.InferenceSession(str(out / "round-2" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"input": xi[None].numpy()})[0] for xi in x])
    assert np.allclose(got, expected, atol=1e-4)
    summary = json.loads((out / "round-2" / "summary.json").read_text())
    assert summary["relu_neurons"] == 18 and rows[2]["clean_acc"] == summary["final"]["clean_acc"]
    code, _, err = run_cli(["prune", str(run), "--rewind-epoch", "1", "--out", str(out), "-q"], capsys)
    assert code == 2 and "--overwrite" in err


@pytest.mark.parametrize("args, message", [
    (["prune", "{tmp}/nowhere"], "not a finished vfnn run"),
    (["prune", "{run}", "--rate", "1.5"], "--rate 1.5"),
    (["prune", "{run}", "--rate", "0"], "--rate 0"),
    (["prune", "{run}", "--rounds", "0"], "--rounds must be >= 1"),
    (["prune", "{run}", "--criterion", "l2"], "'l2' is not one of"),
])
def test_prune_errors_are_one_line(args: list[str], message: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "model.pt", "summary.json"):
        (run / name).write_text("{}")
    code, _, err = run_cli([a.format(tmp=tmp_path, run=run) for a in args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
