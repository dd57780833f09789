"""One verification task, as a campaign worker runs it (locally or on a Dask worker).

``execute`` never raises: a missing file, an unreadable spec, a dimension mismatch, an
unavailable verifier or a bug all become an ``error`` result with the reason, so one bad row
costs one job and the campaign goes on.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vfnn.errors import VfnnError

if TYPE_CHECKING:
    from vfnn.verifiers.result import VerificationResult


@dataclass(frozen=True)
class Task:
    """Everything a worker needs: absolute paths, the verifier's name, its budget and options."""

    model: str
    spec: str
    verifier: str
    timeout: float
    options: dict[str, Any] = field(default_factory=dict)
    unstable_cache: str | None = None  # folder of unstable records: one computation per (model, spec)


@dataclass(frozen=True)
class Outcome:
    """What a worker sends back for one task (picklable: it crosses process and Dask boundaries)."""

    result: VerificationResult
    prepare_time: float = 0.0  # seconds spent loading the model and the spec
    host: str | None = None
    pid: int | None = None  # the worker's process id (None when the worker was lost)


def make_result(
    status: str,
    verifier: str,
    timeout: float,
    message: str,
    wall_time: float = 0.0,
    model_path: str | None = None,
    spec_path: str | None = None,
    tool_stats: dict[str, Any] | None = None,
) -> VerificationResult:
    """The result of an outcome that never reached a verifier (same fields as a real one)."""
    from vfnn.verifiers.result import VerificationResult

    return VerificationResult(
        status=status, verifier=verifier, verifier_version=None, options={}, wall_time=wall_time,
        tool_time=None, timeout=timeout, message=message, model_path=model_path, spec_path=spec_path,
        tool_stats=dict(tool_stats or {}),
    )


def lost(task: Task | None, message: str, elapsed: float, status: str = "error", host: str | None = None,
         solver_started: bool | None = None) -> Outcome:
    """The outcome of a task whose worker died, or that a backend gave up on (no answer came back)."""
    stats = {} if solver_started is None else {"solver_started": solver_started}
    result = make_result(status, task.verifier if task else "?", task.timeout if task else 0.0, message, elapsed,
                         task.model if task else None, task.spec if task else None, stats)
    return Outcome(result, host=host)


@lru_cache(maxsize=8)
def _load(model: str, mtime: float) -> Any:
    from vfnn.onnx_io import load_onnx

    return load_onnx(model)


def prepare(task: Task) -> tuple[Any, Any]:
    """Load the model and the spec and check that they fit (VfnnError with the reason otherwise)."""
    from vfnn.vnnlib import read_vnnlib

    model, spec_path = Path(task.model), Path(task.spec)
    for p, what in ((model, "model"), (spec_path, "spec")):
        if not p.is_file():
            raise VfnnError(f"{what} file not found: {p}")
    net = _load(str(model), model.stat().st_mtime)
    spec = read_vnnlib(spec_path, net.input_size, net.output_size)
    spec.check_fits(net.input_size, net.output_size, model.name)
    return net, spec


def execute(task: Task) -> Outcome:
    """Run one task; never raises.

    The job's deadline is set here, when a worker takes it: loading the model and the spec and the
    unstable-neuron record count against ``task.timeout``.  The model is parsed once per job at
    most (a worker keeps its last few models), and handed to the verifier as a Network."""
    deadline = time.monotonic() + task.timeout
    t0 = time.perf_counter()
    prepare_time = 0.0
    try:
        from vfnn.verifiers.registry import get_verifier

        net, spec = prepare(task)
        prepare_time = time.perf_counter() - t0
        verifier = get_verifier(task.verifier)
        result = verifier.verify(net, spec, task.timeout, dict(task.options), spec_path=task.spec,
                                 model_path=task.model, deadline=deadline, unstable_cache=task.unstable_cache)
    except VfnnError as exc:
        result = make_result("error", task.verifier, task.timeout, str(exc), time.perf_counter() - t0,
                             task.model, task.spec)
    except Exception as exc:  # a bug somewhere below: keep the campaign alive, keep the evidence
        tail = "".join(traceback.format_exception(exc)[-6:])
        result = make_result("error", task.verifier, task.timeout,
                             f"internal error ({type(exc).__name__}: {exc}); traceback tail:\n{tail}",
                             time.perf_counter() - t0, task.model, task.spec)
    return Outcome(result, prepare_time, socket.gethostname(), os.getpid())
