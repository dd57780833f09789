"""NRS (Li et al. 2023): RS divided by the squared batch-norm gain; batch-norm nets train and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tests.cli_runner import run_cli
from vfnn.train.models import build_model, load_model
from vfnn.train.objectives import Batch, ScheduleValues
from vfnn.train.regularisers import NRS, RS, batchnorm_gains

AT_01 = ScheduleValues(eps=0.1, target_eps=0.1)


def _bn_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = build_model("fc:12x2", (1, 8, 8), 10, [0.3], [0.3], batch_norm=True)
    with torch.no_grad():  # non-trivial running statistics and gains
        for m in model:
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.3, 3.0)
    return model.train()


def _batch(n: int = 16) -> Batch:
    torch.manual_seed(1)
    return Batch(torch.rand(n, 1, 8, 8), torch.randint(0, 10, (n,)), None, n, 0)


def test_nrs_is_rs_without_batch_norm() -> None:
    torch.manual_seed(0)
    model = build_model("fc:12x2", (1, 8, 8), 10, [0.3], [0.3])
    assert batchnorm_gains(model) == [None, None]
    batch = _batch()
    assert torch.equal(NRS().loss(model, batch, AT_01), RS().loss(model, batch, AT_01))


def test_nrs_divides_by_the_squared_gain() -> None:
    """Scaling a batch-norm's gamma and beta by a > 0 scales its output bounds l, u by a: RS's l*u
    grows by a^2 and NRS, which divides by gamma^2, stays the same.  A wrong power of gamma (or no
    gamma) breaks the invariance."""
    model, batch = _bn_net(), _batch()
    scaled = _bn_net()
    with torch.no_grad():
        for m in scaled:
            if isinstance(m, nn.BatchNorm1d):
                m.weight.mul_(3.0)
                m.bias.mul_(3.0)
    nrs, rs = NRS({"eps0": 1e-12}), RS()
    a, b = nrs.neuron_terms(model, batch.x, 0.1)[0], nrs.neuron_terms(scaled, batch.x, 0.1)[0]
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(rs.neuron_terms(model, batch.x, 0.1)[0], rs.neuron_terms(scaled, batch.x, 0.1)[0],
                              atol=1e-3)
    # and per neuron it is exactly RS's formula with l*u / (gamma^2 + eps0), gamma detached
    from vfnn.bounds import compute_bounds

    lo, up = compute_bounds(model, (batch.x - 0.1).clamp(0, 1), (batch.x + 0.1).clamp(0, 1), None,
                            method="ibp").pre_activation[1]
    gamma = model[6].weight.detach()
    assert torch.allclose(nrs.neuron_terms(model, batch.x, 0.1)[1], -torch.tanh(1 + lo * up / (gamma ** 2 + 1e-12)))
    loss = NRS().loss(model, batch, AT_01)
    loss.backward()
    assert torch.isfinite(loss) and model[2].weight.grad is not None


def test_batch_norm_bounds_use_running_statistics_in_training_mode() -> None:
    from vfnn.bounds import compute_bounds

    model, batch = _bn_net(), _batch()
    bn = model[3]
    before = bn.running_mean.clone()
    lo, hi = (batch.x - 0.05).clamp(0, 1), (batch.x + 0.05).clamp(0, 1)
    train = compute_bounds(model, lo, hi, None, method="crown")
    assert torch.equal(bn.running_mean, before)  # bounding never touches the statistics
    ev = compute_bounds(model.eval(), lo, hi, None, method="crown")
    assert torch.equal(train.lower, ev.lower) and torch.equal(train.upper, ev.upper)
    with torch.no_grad():
        y = model(batch.x)
    assert (train.lower <= y + 1e-5).all() and (y <= train.upper + 1e-5).all()


def test_batch_norm_net_trains_with_nrs_and_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bn"
    code, _, err = run_cli(["train", "--arch", "fc:16x2", "--batch-norm", "--reg", "nrs", "--nrs-eps0", "1e-6",
                            "--rs-bounds", "crown", "--epochs", "2", "--eval-size", "50", "--eval-pgd-steps", "2",
                            "--out", str(out), "-q"], capsys)
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["batch_norm"] is True and cfg["options"]["nrs"] == {"eps0": 1e-6}
    assert cfg["options"]["rs"] == {"bounds": "crown"}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["loss_terms"]["nrs"]) for m in metrics)
    model, _ = load_model(out / "model.pt")
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model) == 2
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [n.op_type for n in graph.node] == ["Flatten", "Gemm", "Relu", "Gemm", "Relu", "Gemm"]  # folded
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"input": xi[None].numpy()})[0] for xi in x])
    assert np.allclose(got, expected, atol=1e-4)


def test_cnn_batch_norm_gains_and_export() -> None:
    torch.manual_seed(0)
    model = build_model("cnn:small", (1, 28, 28), 10, [0.1], [0.3], batch_norm=True)
    assert [type(m) for m in model].count(nn.BatchNorm2d) == 2 and [type(m) for m in model].count(nn.BatchNorm1d) == 1
    gains = batchnorm_gains(model)
    assert [tuple(g.shape) for g in gains] == [(16, 1, 1), (32, 1, 1), (100,)]
    from vfnn.network import Network

    x = torch.rand(3, 1, 28, 28)
    model(x)  # one training step's statistics, so the running ones are not the identity
    net = Network.from_torch(model.eval(), (1, 28, 28))
    assert not any(type(layer).__name__ == "BatchNorm" for layer in net.layers)
    with torch.no_grad():
        assert np.allclose(net.forward(x.numpy()), model(x).numpy(), atol=1e-4)


def test_bounds_in_a_training_step_use_the_clean_batch_statistics() -> None:
    """Within ``batch_statistics`` (one training step) the bounds of a batch-norm net in training mode
    describe the network the clean batch is normalised by: a point box's bounds equal the train-mode
    forward pass, not the running-statistics network; outside it (and in eval mode) they describe the
    exported, running-statistics network.  Later forward passes (attacks, neighbours) record nothing."""
    from vfnn.bounds import compute_bounds
    from vfnn.layers.batchnorm import batch_statistics
    from vfnn.train.models import build_model

    torch.manual_seed(0)
    model = build_model("fc:16x2", (1, 4, 4), 3, [0.0], [1.0], batch_norm=True).double().train()
    x = torch.rand(32, 1, 4, 4, dtype=torch.float64) * 3 + 1  # far from the running statistics (0, 1)
    with batch_statistics(model):
        train_out = model(x)
        model(x + 5)  # a second forward (an attack) must not replace the clean batch's statistics
        point = compute_bounds(model, x, x, method="ibp")
    assert torch.allclose(point.lower, train_out, atol=1e-9) and torch.allclose(point.upper, train_out, atol=1e-9)
    outside = compute_bounds(model, x, x, method="ibp")
    with torch.no_grad():
        exported = model.eval()(x)
    assert torch.allclose(outside.lower, exported, atol=1e-9)
    assert not torch.allclose(exported, train_out, atol=1e-3)
