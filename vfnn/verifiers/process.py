"""The isolation layer: every process vfnn starts to solve, and how it is stopped.

One module for ``vfnn verify``, ``vfnn bench`` (its pool workers) and the portfolio, so that
deadlines and kills mean the same everywhere:

* :func:`run_isolated` / :class:`Isolated` -- call a Python function in a child process that leads
  its own session (``os.setsid``), with a memory cap, one thread, its output in a log file whose
  tail is kept, and a hard deadline after which its whole process tree is SIGKILLed.
* :func:`run_command` -- the same for an external program (α,β-CROWN): own session,
  parent-death signal, kill of its process tree at the deadline, stdout/stderr to files, tails kept.
* :func:`kill_tree` -- freeze and kill a process and every process below it (found through
  ``/proc``; a solve's own session would escape a process-group kill).
* :func:`worker_init` -- what a long-lived worker process (a campaign pool worker, the child of
  ``vfnn verify``) does first: die with its parent, one thread, plain-fork solves.

How a child is started: a ``spawn`` child imports torch again (~1-2 s on a busy 2-core machine),
and a plain ``fork`` of a parent whose torch thread pools are running is unsafe.  So a process
that has not imported torch, or that promises to run no multi-threaded torch code itself
(:func:`allow_plain_fork`: ``vfnn verify``'s child, a campaign worker), forks its solves directly:
no second torch import, and the solver is its direct child, so that it dies with it
(``PR_SET_PDEATHSIG`` is relative to the direct parent only).  Any other process (a user's script
that has run torch code) gets a ``forkserver``, started once per process with torch preloaded.
No fork server is ever started inside a pool worker.

The child writes everything it prints (C++ output of the tools included) to a log file, whose tail
is returned when it crashes, and its return value (or exception) to a pickle file.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

PRELOAD = ["numpy", "torch", "vfnn.network", "vfnn.spec", "vfnn.verifiers.process"]
TAIL_CHARS = 2000
PR_SET_PDEATHSIG = 1
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_plain_fork = False


# -- process trees ----------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads), empty when it is gone."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for t in tasks:
        try:
            out.extend(int(c) for c in (t / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before children."""
    seen: list[int] = []
    stack = children(pid)
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.append(p)
        stack.extend(children(p))
    return seen


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(pid: int, include_root: bool = True) -> list[int]:
    """SIGKILL ``pid`` (unless ``include_root`` is False) and all its descendants, each frozen with
    SIGSTOP first so that nothing forks a new child while the tree is walked; returns the pids."""
    frozen: list[int] = [pid] if include_root else []
    if include_root:
        _signal(pid, signal.SIGSTOP)
    for _ in range(100):  # freeze level by level until no new process appears
        new = [p for p in descendants(pid) if p not in frozen]
        if not new:
            break
        for p in new:
            _signal(p, signal.SIGSTOP)
        frozen.extend(new)
    for p in frozen:
        _signal(p, signal.SIGKILL)
    return frozen


# -- how children start -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChildOutcome:
    """What became of the child: ``returned`` (value), ``raised`` (exception), ``killed`` at the
    deadline, or ``died`` (non-zero exit or signal without a result)."""

    kind: Literal["returned", "raised", "killed", "died"]
    value: Any = None  # the return value, or the exception for ``raised``
    traceback: str = ""
    exitcode: int | None = None
    output_tail: str = ""

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


def plain_fork_allowed() -> bool:
    """True when solves are plain forks: promised by :func:`allow_plain_fork`, or torch not loaded
    (nothing can be running a thread pool then)."""
    return _plain_fork or "torch" not in sys.modules


def _context() -> multiprocessing.context.BaseContext:
    if plain_fork_allowed():
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


def one_thread() -> None:
    """One OpenMP/BLAS/torch thread: on 2 shared cores a second thread makes small ops ~1000x slower."""
    for var in THREAD_VARS:
        os.environ[var] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def worker_init(parent_pid: int | None = None) -> None:
    """Set up a long-lived process that runs solves (a campaign pool worker, ``vfnn verify``'s
    child): it dies with its parent, uses one thread, and forks its solves directly."""
    die_with_parent(parent_pid)
    one_thread()
    allow_plain_fork()


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
    one_thread()
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


def _tail(path: Path, chars: int = TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _kill_group_and_tree(pid: int | None, alive: bool) -> None:
    """SIGKILL the child's process group (it leads one after ``setsid``) and, while it is alive,
    the child and every process below it, wherever its session (a tool in a session of its own).
    A child that has ended is not signalled by pid: it may have been reaped, and its pid reused."""
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if alive:
        kill_tree(pid)  # killed before it reached setsid, or descendants in other sessions


class Isolated:
    """A function running in an isolated child (see :func:`run_isolated`); started at once, so
    that the caller can do other work (run a tool) while it runs."""

    def __init__(self, fn: Callable[..., Any], args: tuple, *, workdir: str | Path,
                 memory_mb: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.result_path, self.log_path = self.workdir / "result.pkl", self.workdir / "solver.log"
        for p in (self.result_path, self.log_path):
            p.unlink(missing_ok=True)
        self.start = time.monotonic()
        ctx = _context()
        parent = os.getpid() if ctx.get_start_method() == "fork" else None
        # Not a daemon: a solve may start processes of its own; we always reap it in finish().
        self.proc = ctx.Process(target=_child, args=(fn, args, str(self.result_path), str(self.log_path),
                                                     memory_mb, parent))
        self.proc.start()
        self._outcome: ChildOutcome | None = None

    def wait(self, until: float, on_wait: Callable[[], None] | None = None) -> bool:
        """Join until the monotonic time ``until`` (``on_wait`` between short joins); True if it ended."""
        while self.proc.is_alive():
            left = until - time.monotonic()
            if left <= 0:
                return False
            self.proc.join(min(left, 0.1) if on_wait else left)
            if on_wait and self.proc.is_alive():
                on_wait()
        return True

    def finish(self) -> ChildOutcome:
        """Kill what is left of the child's tree (all of it, if it still runs) and read its outcome."""
        if self._outcome is not None:
            return self._outcome
        killed = self.proc.is_alive()
        _kill_group_and_tree(self.proc.pid, killed)  # a timed-out solve, or what a finished one left
        self.proc.join()
        self._outcome = read_outcome(killed, self.result_path, self.log_path, self.proc.exitcode)
        return self._outcome


def read_outcome(killed: bool, result_path: Path, log_path: Path, exitcode: int | None) -> ChildOutcome:
    """The outcome of an ended child from the files :func:`_child` writes."""
    tail = _tail(log_path)
    if not killed and result_path.exists():
        with open(result_path, "rb") as f:
            kind, value, tb = pickle.load(f)
        return ChildOutcome(kind, value, tb, exitcode, tail)
    return ChildOutcome("killed" if killed else "died", None, "", exitcode, tail)


def run_isolated(
    fn: Callable[..., Any],
    args: tuple,
    *,
    limit_s: float,
    workdir: str | Path,
    memory_mb: int | None = None,
    on_wait: Callable[[], None] | None = None,
    starter: Callable[..., Any] = Isolated,
) -> ChildOutcome:
    """Call ``fn(*args)`` in a child process; kill its process tree after ``limit_s`` seconds.

    ``fn`` and ``args`` must be picklable (``fn`` a module-level function).  Never raises for
    anything the child does; the child's output goes to ``workdir/solver.log``.  ``on_wait`` is
    called about every 0.1 s while the child runs (a progress display).  ``starter`` makes the
    child: :class:`Isolated`, or a warm server's (:class:`vfnn.verifiers.warm.Served`).
    """
    child = starter(fn, args, workdir=workdir, memory_mb=memory_mb)
    try:
        child.wait(child.start + max(0.0, limit_s), on_wait)
    finally:
        out = child.finish()
    return out


# -- external programs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CommandRun:
    """How an external program ended: ``returncode`` None when it was killed at its deadline;
    ``elapsed`` is the program's own wall time; the full output is in the two files."""

    returncode: int | None
    elapsed: float
    stdout_path: Path
    stderr_path: Path

    @property
    def killed(self) -> bool:
        return self.returncode is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def tail(self, chars: int = TAIL_CHARS) -> str:
        """The end of stderr, else of stdout (a crash's explanation)."""
        return _tail(self.stderr_path, chars).strip() or _tail(self.stdout_path, chars).strip()


def run_command(
    argv: Sequence[str],
    *,
    cwd: str | Path,
    limit_s: float,
    env: Mapping[str, str] | None = None,
    on_wait: Callable[[], None] | None = None,
    memory_mb: int | None = None,
) -> CommandRun:
    """Run ``argv`` in its own session with stdout/stderr in ``cwd``; at ``limit_s`` seconds kill
    its whole process tree.  It gets a parent-death signal, so a SIGKILL of the caller takes it too,
    and ``RLIMIT_AS`` = ``memory_mb`` MiB when given."""
    cwd = Path(cwd)

    def setup() -> None:
        die_with_parent()
        if memory_mb:
            limit = int(memory_mb) * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    out_path, err_path = cwd / "stdout.txt", cwd / "stderr.txt"
    start = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(list(argv), cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=None if env is None else dict(env), start_new_session=True,
                                preexec_fn=setup)
    code: int | None = None
    try:
        until = start + max(0.1, limit_s)
        while True:
            left = until - time.monotonic()
            if left <= 0:
                break
            try:
                code = proc.wait(timeout=min(left, 0.1) if on_wait else left)
                break
            except subprocess.TimeoutExpired:
                if on_wait:
                    on_wait()
    finally:
        if code is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            kill_tree(proc.pid)
            proc.wait()
        else:  # whatever it left behind in its session
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return CommandRun(code, time.monotonic() - start, out_path, err_path)
