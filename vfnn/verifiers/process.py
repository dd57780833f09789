"""Run one solve in a child process with a hard deadline, a memory cap and its own process group.

Why a child: Marabou holds the GIL and a crash of it kills its host process; α,β-CROWN overruns
its own timeout.  So every solve runs in a fresh process that leads its own session
(``os.setsid``), so that killing the group at the deadline also kills anything it started.

Why the ``forkserver`` start method: a ``spawn`` child imports torch again (~1-2 s on a busy
2-core machine), a plain ``fork`` of a parent whose torch/onnxruntime thread pools are running is
unsafe.  The fork server is started once per vfnn process with torch and numpy preloaded, and
forks a clean child for every solve (``benchmarks/verifiers.py`` prints the measured overhead).

The child writes everything it prints (C++ output of the tools included) to a log file, whose tail
is returned when it crashes, and its return value (or exception) to a pickle file.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import resource
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

PRELOAD = ["numpy", "torch", "vfnn.network", "vfnn.spec", "vfnn.verifiers.process"]
TAIL_CHARS = 2000


@dataclass(frozen=True)
class ChildOutcome:
    """What became of the child: ``returned`` (value), ``raised`` (exception), ``killed`` at the
    deadline, or ``died`` (non-zero exit or signal without a result)."""

    kind: Literal["returned", "raised", "killed", "died"]
    value: Any = None  # the return value, or the exception for ``raised``
    traceback: str = ""
    exitcode: int | None = None
    output_tail: str = ""
    elapsed: float = 0.0

    def describe_death(self) -> str:
        """One line for a child that died: the signal or exit code, and the output tail."""
        code = self.exitcode
        if code is not None and code < 0:
            try:
                what = f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                what = f"killed by signal {-code}"
        else:
            what = f"exited with code {code} without a result"
        tail = " | ".join(line for line in self.output_tail.strip().splitlines()[-5:])
        return f"verifier process {what}" + (f"; output tail: {tail}" if tail else "")


def _context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _child(fn: Callable[..., Any], args: tuple, result_path: str, log_path: str, memory_mb: int | None) -> None:
    """Child body: new session, output to the log, one thread, memory cap, then ``fn(*args)``."""
    os.setsid()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if memory_mb:
        limit = int(memory_mb) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        payload: tuple = ("returned", fn(*args), "")
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
        tb = traceback.format_exc()
        print(tb, flush=True)
        try:
            pickle.dumps(exc)
        except Exception:
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        payload = ("raised", exc, tb)
    tmp = result_path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(payload, f)
    os.replace(tmp, result_path)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - TAIL_CHARS))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _kill_group(proc: multiprocessing.process.BaseProcess) -> None:
    """SIGKILL the child's process group (it is the group leader after ``setsid``)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.is_alive():  # killed before it reached setsid: its pid is still ours to kill
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_isolated(
    fn: Callable[..., Any],
    args: tuple,
    *,
    limit_s: float,
    workdir: str | Path,
    memory_mb: int | None = None,
) -> ChildOutcome:
    """Call ``fn(*args)`` in a child process; kill its process group after ``limit_s`` seconds.

    ``fn`` and ``args`` must be picklable (``fn`` a module-level function).  Never raises for
    anything the child does; the child's output goes to ``workdir/solver.log``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result_path, log_path = workdir / "result.pkl", workdir / "solver.log"
    for p in (result_path, log_path):
        p.unlink(missing_ok=True)
    start = time.monotonic()
    proc = _context().Process(target=_child, args=(fn, args, str(result_path), str(log_path), memory_mb), daemon=True)
    proc.start()
    killed = False
    try:
        proc.join(max(0.0, limit_s))
        if proc.is_alive():
            killed = True
    finally:
        # Always kill the group: a timed-out solve, or grandchildren a finished solve left behind.
        _kill_group(proc)
        proc.join()
    elapsed = time.monotonic() - start
    tail = _tail(log_path)
    if not killed and result_path.exists():
        with open(result_path, "rb") as f:
            kind, value, tb = pickle.load(f)
        return ChildOutcome(kind, value, tb, proc.exitcode, tail, elapsed)
    return ChildOutcome("killed" if killed else "died", None, "", proc.exitcode, tail, elapsed)
