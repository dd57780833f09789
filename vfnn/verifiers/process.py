"""Run one solve in a child process with a hard deadline, a memory cap and its own process group.

Why a child: Marabou holds the GIL and a crash of it kills its host process; α,β-CROWN overruns
its own timeout.  So every solve runs in a fresh process that leads its own session
(``os.setsid``), so that killing the group at the deadline also kills anything it started.

How the child is started: a ``spawn`` child imports torch again (~1-2 s on a busy 2-core
machine), a plain ``fork`` of a parent whose torch thread pools are running is unsafe.  So by
default a ``forkserver`` (started once per process, torch preloaded) forks a clean child for every
solve.  A process that promises to run no multi-threaded torch code itself -- the ``vfnn verify``
command, a campaign worker -- calls :func:`allow_plain_fork`: its solves are then plain forks of
itself, which costs no second torch import and makes the solver its direct child, so that the
solver dies with it (``PR_SET_PDEATHSIG`` is relative to the direct parent only).

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
PR_SET_PDEATHSIG = 1
_plain_fork = False


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


def allow_plain_fork(allowed: bool = True) -> bool:
    """Solve in plain forks of this process (see the module docstring); only for a process that
    runs no multi-threaded torch code of its own.  Returns the previous setting."""
    global _plain_fork
    previous, _plain_fork = _plain_fork, allowed
    return previous


def _context() -> multiprocessing.context.BaseContext:
    if _plain_fork:
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask the kernel for SIGKILL when this process's parent exits; exit at once if the parent
    ``parent_pid`` is already gone (the death signal is not sent for a death before the request)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def _child(fn: Callable[..., Any], args: tuple, result_path: str, log_path: str, memory_mb: int | None,
           parent_pid: int | None) -> None:
    """Child body: new session, output to the log, one thread, memory cap, then ``fn(*args)``."""
    if parent_pid is not None:  # a plain fork: we are the caller's direct child
        die_with_parent(parent_pid)
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


def _wait(proc: multiprocessing.process.BaseProcess, until: float, on_wait: Callable[[], None] | None) -> None:
    """Join ``proc`` until the monotonic time ``until``, calling ``on_wait`` between short joins."""
    while proc.is_alive():
        left = until - time.monotonic()
        if left <= 0:
            return
        proc.join(min(left, 0.1) if on_wait else left)
        if on_wait and proc.is_alive():
            on_wait()


def run_isolated(
    fn: Callable[..., Any],
    args: tuple,
    *,
    limit_s: float,
    workdir: str | Path,
    memory_mb: int | None = None,
    on_wait: Callable[[], None] | None = None,
) -> ChildOutcome:
    """Call ``fn(*args)`` in a child process; kill its process group after ``limit_s`` seconds.

    ``fn`` and ``args`` must be picklable (``fn`` a module-level function).  Never raises for
    anything the child does; the child's output goes to ``workdir/solver.log``.  ``on_wait`` is
    called about every 0.1 s while the child runs (a progress display).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result_path, log_path = workdir / "result.pkl", workdir / "solver.log"
    for p in (result_path, log_path):
        p.unlink(missing_ok=True)
    start = time.monotonic()
    ctx = _context()
    parent = os.getpid() if ctx.get_start_method() == "fork" else None
    # Not a daemon: a solve may start processes of its own (``vfnn verify`` nests two); we always reap it below.
    proc = ctx.Process(target=_child, args=(fn, args, str(result_path), str(log_path), memory_mb, parent))
    proc.start()
    killed = False
    try:
        _wait(proc, start + max(0.0, limit_s), on_wait)
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
