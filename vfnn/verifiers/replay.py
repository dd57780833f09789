"""Counterexample replay: the check that stands between a tool's ``sat`` and the user.

A counterexample is accepted only when running the *original* ONNX file with onnxruntime at that
input gives an output in the unsafe region.  Tolerances follow the VNN-COMP scoring scripts
(``SCORING/counterexamples.py``: ``COUNTEREXAMPLE_ATOL = 1e-4`` "used to check if CE satisfies
spec (is inside input box and violates output property)", ``COUNTEREXAMPLE_RTOL = 1e-3`` "used to
check if CE matches execution"):

* the input must lie in some case's box up to ``SPEC_ATOL`` = 1e-4 per coordinate;
* the *executed* output must satisfy every row of one unsafe disjunct of that case up to 1e-4;
* when a tool also reports the output it computed, that output must match onnxruntime's with
  ``np.allclose(rtol=1e-3, atol=1e-4)`` -- a mismatch means the tool saw a different network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vfnn.spec import Spec

SPEC_ATOL = 1e-4
EXEC_RTOL = 1e-3


def _session(onnx_path: str | Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def _flat(shape: list) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else 1 for d in shape]


def onnx_io_sizes(onnx_path: str | Path) -> tuple[int, int]:
    """Flat sizes of the model's first input and first output: what a tool that reads the file
    itself needs checked, without importing torch or onnx (onnxruntime loads in ~0.15 s)."""
    sess = _session(onnx_path)
    sizes = [int(np.prod(_flat(io[0].shape))) for io in (sess.get_inputs(), sess.get_outputs())]
    return sizes[0], sizes[1]


def run_onnx(onnx_path: str | Path, x: np.ndarray) -> np.ndarray:
    """Evaluate the ONNX model at one flat input ``x`` with onnxruntime; returns the flat output."""
    sess = _session(onnx_path)
    inp = sess.get_inputs()[0]
    shape = _flat(inp.shape)
    x32 = np.asarray(x, dtype=np.float32).reshape(shape)
    out = sess.run(None, {inp.name: x32})[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def validate_counterexample(
    onnx_path: str | Path,
    spec: Spec,
    x: np.ndarray | list[float],
    reported_y: np.ndarray | list[float] | None = None,
) -> tuple[bool, np.ndarray | None, str]:
    """Replay ``x`` on the original ONNX file.

    Returns ``(ok, y, reason)``: ``y`` is onnxruntime's output (None when it could not run) and
    ``reason`` says why a counterexample was rejected, or which case it violates.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size != spec.n_inputs:
        return False, None, f"counterexample has {x.size} values, the spec has {spec.n_inputs} inputs"
    if not np.all(np.isfinite(x)):
        return False, None, "counterexample contains NaN or infinity"
    try:
        y = run_onnx(onnx_path, x)
    except Exception as exc:  # onnxruntime raises its own exception types
        return False, None, f"onnxruntime could not evaluate the model: {type(exc).__name__}: {exc}"
    if y.size != spec.n_outputs:
        return False, y, f"model gives {y.size} outputs, the spec has {spec.n_outputs}"
    mismatch = ""
    if reported_y is not None:
        ry = np.asarray(reported_y, dtype=np.float64).reshape(-1)
        if ry.shape != y.shape or not np.allclose(ry, y, rtol=EXEC_RTOL, atol=SPEC_ATOL):
            mismatch = f"the tool's output {ry.tolist()} differs from onnxruntime's {y.tolist()}"
    in_box = [i for i, c in enumerate(spec.cases) if c.contains_input(x, SPEC_ATOL)]
    if not in_box:
        c0 = spec.cases[0]
        j = int(np.argmax(np.maximum(c0.lower - x, x - c0.upper)))
        where = f"X_{j} = {x[j]!r}, case 0 box [{c0.lower[j]}, {c0.upper[j]}]"
        return False, y, f"input lies outside every input box ({where})"
    for i in in_box:
        if spec.cases[i].is_unsafe(y, SPEC_ATOL):
            # Execution decides: a point whose executed output is unsafe is a counterexample even
            # when the tool computed the output differently (the note says so).
            return True, y, f"violates case {i}" + (f" ({mismatch})" if mismatch else "")
    if mismatch:
        return False, y, mismatch
    return False, y, f"output {y.tolist()} is not in the unsafe region of the input box(es) {in_box}"

