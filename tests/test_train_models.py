"""Architecture strings, saved models and the options/schedules parsers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vfnn.errors import ModelError
from vfnn.network import ElementwiseAffineModule, Network
from vfnn.onnx_io import load_onnx, save_onnx
from vfnn.train.config import Phase, TrainConfig, TrainConfigError, parse_reg, parse_schedule
from vfnn.train.models import Arch, build_model, load_model, relu_layer_sizes, save_model_pt
from vfnn.train.schedules import reg_weight, values_at

MNIST = (1, 28, 28)


def test_arch_strings() -> None:
    assert Arch.parse("fc:100x3").hidden == (100, 100, 100)
    assert Arch.parse("fc:256x4").hidden == (256,) * 4
    assert Arch.parse("FC:200,100").hidden == (200, 100)
    for bad in ("fc:100y3", "fc:0x3", "cnn:huge", "resnet", "fc:", "fc:10,,2"):
        with pytest.raises(ModelError, match="bad architecture"):
            Arch.parse(bad)


def test_cnn_small_and_medium_follow_the_literature() -> None:
    small = build_model("cnn:small", MNIST, 10, [0.13], [0.31])
    convs = [m for m in small if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (16, (4, 4), (2, 2), (0, 0)), (32, (4, 4), (1, 1), (0, 0))]
    assert relu_layer_sizes(small, MNIST) == [16 * 13 * 13, 32 * 10 * 10, 100]
    medium = build_model("cnn:medium", MNIST, 10, [0.13], [0.31])
    assert relu_layer_sizes(medium, MNIST) == [32 * 26 * 26, 32 * 12 * 12, 64 * 10 * 10, 64 * 4 * 4, 512, 512]
    assert build_model("cnn:small", (3, 32, 32), 10, [0.5] * 3, [0.25] * 3)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ModelError, match="do not fit"):
        build_model("cnn:medium", (1, 8, 8), 10, [0.5], [0.3])


def test_normalisation_is_the_first_layer_and_folds_on_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("cnn:small", MNIST, 10, [0.1307], [0.3081])
    assert isinstance(model[0], ElementwiseAffineModule)
    x = torch.rand(3, *MNIST)
    assert torch.allclose(model[0](x), (x - 0.1307) / 0.3081, atol=1e-6)
    net = Network.from_torch(model, MNIST)
    assert not any(type(layer).__name__ == "ElementwiseAffine" for layer in net.layers)
    path = save_onnx(net, tmp_path / "m.onnx")
    back = load_onnx(path)
    with torch.no_grad():
        assert np.allclose(back.forward(x.numpy()), model(x).double().numpy(), atol=1e-4)


def test_model_pt_loads_with_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("fc:20x2", (1, 8, 8), 10, [0.3], [0.4])
    path = save_model_pt(tmp_path / "model.pt", model, {"arch": "fc:20x2", "input_shape": [1, 8, 8], "n_classes": 10})
    payload = torch.load(path, weights_only=True)
    assert payload["arch"] == "fc:20x2" and payload["format"] == "vfnn-model-2"
    loaded, meta = load_model(path)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded(x), model(x)) and meta["n_classes"] == 10
    # the same modules (nothing folded), so fine-tuning trains the same parametrisation
    assert [type(m) for m in loaded] == [type(m) for m in model]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(),
                                                  strict=True))
    torch.save({"format": "vfnn-model-1", "layers": []}, tmp_path / "old.pt")
    with pytest.raises(ModelError, match="found vfnn-model-1: written by an older vfnn"):
        load_model(tmp_path / "old.pt")
    net = Network.from_torch(model, (1, 8, 8))
    save_onnx(net, tmp_path / "m.onnx")
    from_onnx, meta2 = load_model(tmp_path / "m.onnx")
    assert meta2["input_shape"] == [1, 8, 8] and meta2["n_classes"] == 10
    assert torch.allclose(from_onnx(x), model(x), atol=1e-5)
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable model"):
        load_model(tmp_path / "junk.pt")


def test_parse_reg_and_schedule() -> None:
    assert parse_reg("nbc") == ("nbc", 15.0)
    assert parse_reg("rs:0.01") == ("rs", 0.01)
    assert parse_reg("l1:1e-5") == ("l1", 1e-5)
    for bad, msg in (("nbd:1", "unknown regulariser"), ("nbc:x", "not a number"), ("rs:-1", ">= 0")):
        with pytest.raises(TrainConfigError, match=msg):
            parse_reg(bad)
    assert parse_schedule("ce:5,ce+nbc:5") == [Phase("ce", (), 5), Phase("ce", ("nbc",), 5)]
    assert parse_schedule("crown-ibp+rs+l1:2") == [Phase("crown-ibp", ("rs", "l1"), 2)]
    for bad in ("ce", "nbc:5", "ce+xyz:2", "ce:0", "ce+nbc+nbc:1"):
        with pytest.raises(TrainConfigError):
            parse_schedule(bad)


def test_multi_radius_weights_must_decrease() -> None:
    ok = TrainConfig(phases=[Phase("ibp", (), 2)], radii=(0.1, 0.2, 0.3)).validate()
    assert ok.radius_weights == (1.0, 0.5, 0.25) and ok.eps == 0.3
    with pytest.raises(TrainConfigError, match="strictly decreasing"):
        TrainConfig(phases=[Phase("ibp", (), 2)], radii=(0.1, 0.2), radius_weights=(1.0, 1.0)).validate()
    with pytest.raises(TrainConfigError, match="increasing"):
        TrainConfig(phases=[Phase("ibp", (), 2)], radii=(0.2, 0.1)).validate()
    with pytest.raises(TrainConfigError, match="certified"):
        TrainConfig(phases=[Phase("ce", (), 2)], radii=(0.1, 0.2)).validate()


def test_schedules() -> None:
    cfg = TrainConfig(phases=[Phase("ce", (), 2), Phase("crown-ibp", ("nbc",), 4), Phase("ce", ("nbc",), 2)],
                      eps=0.2, eps_warmup=1.0, reg_warmup=2.0, reg_weights={"nbc": 0.5}).validate()
    assert values_at(cfg, 0, 0.5).eps == 0.2  # ce phases use the full radius
    # crown-ibp phase starts at epoch 2: 1 epoch warm-up, then a ramp of (4 - 1) / 2 = 1.5 epochs.
    v = values_at(cfg, 2, 0.5)
    assert (v.eps, v.kappa, v.beta) == (0.0, 1.0, 1.0)
    v = values_at(cfg, 3, 0.75)  # 0.75 / 1.5 of the way
    assert v.eps == pytest.approx(0.1) and v.kappa == pytest.approx(0.5) and v.beta == pytest.approx(0.5)
    v = values_at(cfg, 5, 0.0)
    assert (v.eps, v.kappa, v.beta) == (pytest.approx(0.2), 0.0, 0.0)
    # nbc warms up over 2 epochs from the start of its first phase and continues across phases.
    assert reg_weight(cfg, "nbc", 1, 0.5) == 0.0
    assert reg_weight(cfg, "nbc", 2, 0.0) == 0.0
    assert reg_weight(cfg, "nbc", 3, 0.0) == pytest.approx(0.25)
    assert reg_weight(cfg, "nbc", 6, 0.0) == pytest.approx(0.5)
    multi = TrainConfig(phases=[Phase("ibp", (), 2)], radii=(0.1, 0.3), eps_rampup=1.0).validate()
    assert values_at(multi, 0, 0.5).radii == (pytest.approx((0.05, 1.0)), pytest.approx((0.15, 0.5)))


def test_config_roundtrip() -> None:
    cfg = TrainConfig(phases=[Phase("ce", ("nbc",), 3)], reg_weights={"nbc": 0.3},
                      options={"nbc": {"layer_weights": (1.0, 2.0)}},
                      radii=None).validate()
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
