"""`vfnn specs`: image choice, VNN-LIB files that read back to the right boxes, instances.csv."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vfnn.campaign.instances import read_instances
from vfnn.campaign.specgen import generate_specs, select_images
from vfnn.network import Dense, Network
from vfnn.onnx_io import save_onnx
from vfnn.train.data import load_dataset
from vfnn.vnnlib import read_vnnlib

SHARED = Path(__file__).resolve().parents[2] / "shared"
MNIST = SHARED / "datasets" / "mnist"


def _digits_model(path: Path, steps: int) -> Path:
    """A small digits classifier; few steps give a model that still misclassifies some images."""
    torch.manual_seed(0)
    x, y = load_dataset("digits", "train")
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(m(xt), yt).backward()
        opt.step()
    return save_onnx(Network.from_torch(m, (1, 8, 8), "digits"), path)


def test_select_images_first_k_per_class_in_dataset_order() -> None:
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1])
    chosen, skipped = select_images(labels, 2, 3)
    assert chosen == [1, 3, 2, 5, 0, 4] and skipped == 0
    correct = np.array([True, False, True, True, True, True, True, True, True])
    chosen, skipped = select_images(labels, 2, 3, correct=correct)
    assert chosen == [3, 6, 2, 5, 0, 4] and skipped == 1
    a, _ = select_images(labels, 1, 3, seed=7)
    b, _ = select_images(labels, 1, 3, seed=7)
    assert a == b and sorted(labels[a].tolist()) == [0, 1, 2]


def test_specs_files_read_back_with_clipped_boxes(tmp_path: Path) -> None:
    model = _digits_model(tmp_path / "run" / "model.onnx", steps=60)
    out = tmp_path / "bench"
    s = generate_specs("digits", 2, [0.05, 0.3], out, models=[model], timeout=12.5)
    assert (s.n_images, s.n_specs, s.n_rows, s.skipped_misclassified) == (20, 40, 40, 0)
    x, y = load_dataset("digits", "test")
    meta = json.loads((out / "specs.json").read_text())["specs"]
    rows = read_instances(out / "instances.csv")
    assert len(rows) == 40 and all(r.problem is None and r.timeout == 12.5 for r in rows)
    assert all(r.model_path == model.resolve() for r in rows)
    assert rows[0].onnx == "../run/model.onnx"  # relative to the csv's folder, as VNN-COMP does
    per_class = np.bincount([meta[r.vnnlib]["label"] for r in rows[::2]], minlength=10)
    assert per_class.tolist() == [2] * 10
    for r in rows:
        m = meta[r.vnnlib]
        spec = read_vnnlib(r.spec_path, 64, 10)
        (case,) = spec.cases
        img = x[m["index"]].reshape(-1).astype(np.float64)
        assert y[m["index"]] == m["label"]
        np.testing.assert_allclose(case.lower, np.clip(img - m["eps"], 0, 1), atol=1e-12)
        np.testing.assert_allclose(case.upper, np.clip(img + m["eps"], 0, 1), atol=1e-12)
        assert case.lower.min() >= 0.0 and case.upper.max() <= 1.0
        # unsafe iff some other class scores >= the label: 9 disjuncts, y_label - y_j <= 0
        assert len(case.unsafe) == 9
        logits = np.zeros(10)
        logits[m["label"]] = 1.0
        assert not case.is_unsafe(logits)
        logits[(m["label"] + 1) % 10] = 1.0
        assert case.is_unsafe(logits)


def test_correct_only_counts_misclassified(tmp_path: Path) -> None:
    model = _digits_model(tmp_path / "weak.onnx", steps=3)  # barely trained: many mistakes
    from vfnn.onnx_io import load_onnx

    x, y = load_dataset("digits", "test")
    correct = load_onnx(model).forward(x).argmax(1) == y
    expected, skipped = select_images(y, 3, 10, correct=correct)
    assert skipped > 0
    s = generate_specs("digits", 3, [0.1], tmp_path / "out", models=[model], correct_only=True)
    assert s.skipped_misclassified == skipped
    meta = json.loads((tmp_path / "out" / "specs.json").read_text())
    assert sorted(v["index"] for v in meta["specs"].values()) == sorted(expected)
    assert all(correct[v["index"]] for v in meta["specs"].values())


def test_specs_cli_errors_and_no_model(tmp_path: Path) -> None:
    vfnn = [sys.executable, "-m", "vfnn"]
    r = subprocess.run([*vfnn, "specs", "--dataset", "digits", "--per-class", "1", "--eps", "0.1", "--correct-only",
                        "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert r.returncode == 2 and "--correct-only needs" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*vfnn, "specs", "--dataset", "digits", "--per-class", "1", "--eps", "0.1",
                        "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "b" / "vnnlib").glob("*.vnnlib"))) == 10
    assert not (tmp_path / "b" / "instances.csv").exists() and "not written" in r.stdout
    bad = tmp_path / "wrong.onnx"
    save_onnx(Network((5,), (Dense(np.ones((10, 5), np.float32), np.zeros(10, np.float32)),), "wrong"), bad)
    r = subprocess.run([*vfnn, "specs", "--dataset", "digits", "--per-class", "1", "--eps", "0.1", "--model", str(bad),
                        "--out", str(tmp_path / "c")], capture_output=True, text=True)
    assert r.returncode == 2 and "5 inputs" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST not found at {MNIST}")
def test_specs_on_real_mnist(tmp_path: Path) -> None:
    s = generate_specs("mnist", 1, [0.02], tmp_path, data_dir=MNIST.parent)
    assert s.n_specs == 10 and s.instances is None
    meta = json.loads((tmp_path / "specs.json").read_text())["specs"]
    x, y = load_dataset("mnist", "test", MNIST.parent)
    for rel, m in meta.items():
        spec = read_vnnlib(tmp_path / rel, 784, 10)
        assert y[m["index"]] == m["label"]
        # the first image of each class in test-set order
        assert m["index"] == int(np.flatnonzero(y == m["label"])[0])
        np.testing.assert_allclose(spec.cases[0].upper, np.clip(x[m["index"]].reshape(-1) + 0.02, 0, 1), atol=1e-12)
