"""Proof that training works: real learning, the regularisers' effect, determinism, resume, fine-tuning.

Runs on the embedded 8x8 digits (and a real MNIST subset) with small nets so the whole file takes
well under a minute on two cores.  Unstable neurons are counted by CROWN at the training eps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vfnn import __version__
from vfnn.train.config import Phase, TrainConfig
from vfnn.train.models import load_model
from vfnn.train.trainer import Trainer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DIGITS = dict(dataset="digits", arch="fc:64x2", eps=0.1, eval_size=359, batch_size=64, lr=5e-3, eval_pgd_steps=10,
              eval_nbc_samples=2)


def train(tmp: Path, name: str, phases: list[Phase], stop_after: int | None = None, resume: bool = False,
          **kw: object) -> dict:
    cfg = TrainConfig(phases=phases, **{**DIGITS, **kw})  # type: ignore[arg-type]
    return Trainer(cfg, tmp / name, resume=resume, argv=["test"]).run(stop_after=stop_after)


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def without_time(ms: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "seconds"} for m in ms]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """ce, ce+nbc, ce+rs and ibp with the same seed and budget (6 epochs of digits)."""
    tmp = tmp_path_factory.mktemp("runs")
    out = {}
    for name, phase in (("ce", Phase("ce", (), 6)), ("nbc", Phase("ce", ("nbc",), 6)),
                        ("rs", Phase("ce", ("rs",), 6)), ("ibp", Phase("ibp", (), 6))):
        out[name] = train(tmp, name, [phase])["final"]
    return out


def test_learns_well_above_chance(runs: dict[str, dict]) -> None:
    for name, final in runs.items():
        assert final["clean_acc"] > 0.85, (name, final["clean_acc"])  # chance is 0.10


def test_nbc_and_rs_reduce_unstable_neurons(runs: dict[str, dict]) -> None:
    ce, nbc, rs = (runs[k]["unstable"] for k in ("ce", "nbc", "rs"))
    assert ce["method"] == "crown" and ce["eps"] == DIGITS["eps"]
    assert nbc["total"] < 0.75 * ce["total"], (nbc["total"], ce["total"])
    assert rs["total"] < 0.75 * ce["total"], (rs["total"], ce["total"])
    # NBC raises the behaviour-consistency metric it is named after (adversarial neighbours).
    assert runs["nbc"]["nbc"]["adversarial"]["overall"] > runs["ce"]["nbc"]["adversarial"]["overall"]


def test_ibp_certifies_more_than_ce(runs: dict[str, dict]) -> None:
    assert runs["ibp"]["verified_acc"]["ibp"] > runs["ce"]["verified_acc"]["ibp"] + 0.3
    assert runs["ibp"]["verified_acc"]["crown"] >= runs["ce"]["verified_acc"]["crown"]
    for run in runs.values():  # per image IBP <= LBP <= CROWN-LBP with tight lines (Lyu et al., Theorem 2)
        assert run["verified_acc"]["crown-lbp"] >= run["verified_acc"]["ibp"]
    assert runs["ibp"]["verified_acc"]["crown-lbp"] > runs["ce"]["verified_acc"]["crown-lbp"] + 0.3


def test_adversarial_methods_raise_pgd_accuracy(tmp_path: Path, runs: dict[str, dict]) -> None:
    for method in ("pgd", "trades"):
        final = train(tmp_path, method, [Phase(method, (), 6)], options={"pgd": {"steps": 5}})["final"]
        assert final["pgd_acc"] > runs["ce"]["pgd_acc"] + 0.1, (method, final["pgd_acc"])


def test_crown_ibp_multi_radius_runs_and_certifies(tmp_path: Path, runs: dict[str, dict]) -> None:
    summary = train(tmp_path, "cibp", [Phase("crown-ibp", (), 6)], radii=(0.05, 0.1), radius_weights=(1.0, 0.5))
    last = metrics(tmp_path / "cibp")[-1]
    assert {"ce", "robust_0", "robust_1"} <= set(last["loss_terms"])
    assert last["kappa"] == 0.0 and last["eps_train"] == pytest.approx(0.1)
    assert summary["final"]["verified_acc"]["crown"] > runs["ce"]["verified_acc"]["crown"] + 0.3


def test_real_mnist_subset(tmp_path: Path) -> None:
    final = train(tmp_path, "mnist", [Phase("ce", ("nbc",), 2)], dataset="mnist", data_dir=str(SHARED_DATA),
                  download=False, train_size=4000, eval_size=300, arch="fc:64x2", lr=2e-3, eps=0.05)["final"]
    assert final["clean_acc"] > 0.85
    assert final["unstable"]["neurons"] == [64, 64]


def test_same_seed_same_metrics_and_run_dir(tmp_path: Path) -> None:
    phases = [Phase("ce", ("nbc",), 2)]
    train(tmp_path, "a", phases)
    train(tmp_path, "b", phases)
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert len(a) == 2 and without_time(a) == without_time(b)
    c = train(tmp_path, "c", phases, seed=1)
    assert c["final"]["loss"] != a[-1]["loss"]
    # The run directory describes itself.
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["seed"] == 0 and cfg["vfnn_version"] == __version__ and cfg["argv"] == ["test"]
    assert cfg["phases"] == [{"method": "ce", "regs": ["nbc"], "epochs": 2}]
    for key in ("loss_terms", "clean_acc", "pgd_acc", "verified_acc", "unstable", "nbc", "seconds"):
        assert key in a[0]
    assert set(a[0]["loss_terms"]) == {"ce", "nbc"}
    payload = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert payload["eps"] == DIGITS["eps"] and payload["input_shape"] == [1, 8, 8]
    model, _ = load_model(tmp_path / "a" / "model.pt")
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    session = ort.InferenceSession(str(tmp_path / "a" / "model.onnx"))
    for row in x:
        onnx_out = session.run(None, {session.get_inputs()[0].name: row[None]})[0]
        assert np.allclose(onnx_out, model(torch.from_numpy(row[None])).detach().numpy(), atol=1e-4)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["complete"] and summary["final"]["epoch"] == 2


def test_resume_gives_the_same_result(tmp_path: Path) -> None:
    phases = [Phase("ce", (), 2), Phase("ce", ("nbc",), 2)]
    train(tmp_path, "full", phases)
    partial = train(tmp_path, "resumed", phases, stop_after=2)
    assert partial == {"complete": False, "epochs_done": 2}
    assert not (tmp_path / "resumed" / "model.pt").exists()
    train(tmp_path, "resumed", phases, resume=True)
    assert without_time(metrics(tmp_path / "resumed")) == without_time(metrics(tmp_path / "full"))
    a, _ = load_model(tmp_path / "full" / "model.pt")
    b, _ = load_model(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_resume_inside_an_nbc_phase_restores_the_persistent_neighbours(tmp_path: Path) -> None:
    phases = [Phase("ce", ("nbc",), 3)]
    train(tmp_path, "full", phases)
    train(tmp_path, "resumed", phases, stop_after=1)
    ckpt = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert ckpt["regularisers"]["nbc"]["offsets"].shape == (1438, 1, 8, 8)
    train(tmp_path, "resumed", phases, resume=True)
    assert without_time(metrics(tmp_path / "resumed")) == without_time(metrics(tmp_path / "full"))


def test_init_from_onnx_fine_tunes(tmp_path: Path) -> None:
    train(tmp_path, "base", [Phase("ce", (), 6)])
    scratch = train(tmp_path, "scratch", [Phase("ce", ("nbc",), 1)], lr=1e-4)["final"]
    tuned = train(tmp_path, "tuned", [Phase("ce", ("nbc",), 1)], lr=1e-4,
                  init=str(tmp_path / "base" / "model.onnx"))["final"]
    assert tuned["clean_acc"] > 0.85 > scratch["clean_acc"]
    cfg = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert cfg["init"].endswith("model.onnx")


@pytest.mark.parametrize("phase", [Phase("ce", ("nbc",), 3), Phase("crown-ibp", (), 3), Phase("crown-lbp", (), 3)],
                         ids=["ce+nbc", "crown-ibp", "crown-lbp"])
def test_paramramp_trains_exports_as_relus_and_resumes(tmp_path: Path, phase: Phase) -> None:
    import onnx

    from vfnn.layers import ParamRampModule

    phases = [phase]
    kw = {"activation": "paramramp", "ramp_slope": 0.01, "ramp_warmup": 1, "arch": "fc:24x2", "eps": 0.05}
    full = train(tmp_path, "full", phases, **kw)["final"]
    assert full["clean_acc"] > 0.5
    model, _ = load_model(tmp_path / "full" / "model.pt")
    ramps = [m for m in model if isinstance(m, ParamRampModule)]
    assert len(ramps) == 2 and all(torch.isfinite(m.bend).all() and (m.bend >= 0).all() for m in ramps)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "full" / "model.onnx")).graph.node}
    assert ops <= {"Gemm", "Relu", "Flatten", "Conv"}  # a plain ReLU graph for external verifiers
    # resuming across the warm-up boundary (bends set after epoch 1) gives the same run
    train(tmp_path, "resumed", phases, stop_after=1, **kw)
    train(tmp_path, "resumed", phases, resume=True, **kw)
    assert without_time(metrics(tmp_path / "resumed")) == without_time(metrics(tmp_path / "full"))


def test_paramramp_slope_schedule_and_bend_noise_resume_identically(tmp_path: Path) -> None:
    from vfnn.train.models import ramp_slope_at

    assert [ramp_slope_at(0.01, 0.0, 1, 5, e) for e in range(5)] == pytest.approx([0.01, 0.01, 0.0067, 0.0033, 0.0],
                                                                                abs=1e-4)
    assert ramp_slope_at(0.01, None, 1, 5, 4) == 0.01
    phases = [Phase("ce", (), 3)]
    kw = {"activation": "paramramp", "ramp_slope": 0.01, "ramp_slope_end": 0.0, "ramp_noise": 0.01,
          "ramp_warmup": 1, "arch": "fc:24x2"}
    train(tmp_path, "full", phases, **kw)
    net = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["network"]
    slopes = [layer["slope"] for layer in net["layers"] if layer["kind"] == "paramramp"]
    assert slopes == [0.0, 0.0]  # the last epoch trained at the schedule's end
    train(tmp_path, "resumed", phases, stop_after=2, **kw)
    train(tmp_path, "resumed", phases, resume=True, **kw)
    assert without_time(metrics(tmp_path / "resumed")) == without_time(metrics(tmp_path / "full"))
