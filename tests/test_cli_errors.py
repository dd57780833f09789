"""Errors are for people: paths that cannot be written and corrupt results give one line, exit 2,
and never lose what was already computed."""

import json
import subprocess
import sys

import numpy as np

from vfnn.network import Dense, Network, ReLU
from vfnn.onnx_io import save_onnx
from vfnn.spec import robustness_spec
from vfnn.vnnlib import write_vnnlib


def vfnn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfnn", *args], capture_output=True, text=True, timeout=300)


def test_unwritable_counterexample_path_keeps_the_verdict(tmp_path):
    rng = np.random.default_rng(0)
    layers = (Dense(rng.normal(size=(4, 2)), rng.normal(size=4)), ReLU(), Dense(rng.normal(size=(2, 4)), np.zeros(2)))
    net = Network((2,), layers)
    model = save_onnx(net, tmp_path / "m.onnx")
    x = np.array([0.5, 0.5])
    wrong = 1 - int(np.argmax(net.forward(x[None])[0]))  # "robust as the wrong class": x itself violates it
    spec = write_vnnlib(robustness_spec(x, wrong, 0.1, 2), tmp_path / "s.vnnlib")
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = vfnn("verify", str(model), str(spec), "--json", "--save-counterexample", str(blocker / "cex.txt"))
    assert json.loads(proc.stdout)["status"] == "sat"  # printed before the write failed
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("vfnn: error: ") and str(blocker) in line


def test_corrupt_results_line_is_named_not_skipped(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text('{"broken\n')
    for command in (["gate", str(results), "--min-verified", "0.5"], ["report", str(results)]):
        proc = vfnn(*command)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"{results}:1: not a vfnn result record" in proc.stderr


def test_init_and_arch_exclude_each_other(tmp_path):
    model = save_onnx(Network((64,), (Dense(np.zeros((10, 64)), np.zeros(10)),)), tmp_path / "init.onnx")
    proc = vfnn("train", "--init", str(model), "--arch", "fc:16x3", "--epochs", "1", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--arch and --init exclude each other" in proc.stderr
