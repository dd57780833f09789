"""A pool of worker processes on this machine that can lose a worker without losing the campaign.

``concurrent.futures.ProcessPoolExecutor`` marks the whole pool broken when one worker dies, and
cannot stop one running task.  Here each worker is a long-lived process (started from a
``forkserver`` that has already imported vfnn, so a replacement costs milliseconds) with its own
pipe; the driver waits on all pipes and process sentinels at once.  A task is lost only when its
own worker dies or passes its hard deadline; then that worker's whole process tree is killed
(:func:`vfnn.campaign.proctree.kill_tree`) and a fresh worker takes its place.

Workers die with the driver.  Their parent is the fork server, which outlives the driver while
any worker holds its pipe, so ``PR_SET_PDEATHSIG`` alone would fire too late: each worker also
watches a *lifeline* pipe whose only writer is the driver, and when it reads end-of-file (the
driver is gone, even after SIGKILL) kills its own process tree (the solve) and exits.  A solve is a
plain fork of its worker with a parent-death signal (:func:`vfnn.verifiers.process.allow_plain_fork`),
so no second fork server runs inside a worker.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from vfnn.campaign.execute import Outcome, Task, execute, lost
from vfnn.verifiers.process import children, kill_tree

_ctx: Any = None


def _context() -> Any:
    """One forkserver per driver process, preloaded with what every task imports."""
    global _ctx
    if _ctx is None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, "1")  # before the fork server starts: it inherits this environment
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["vfnn.campaign.worker_preload"])
        _ctx = ctx
    return _ctx


def _watch_lifeline(lifeline: Connection, server: int) -> None:
    """Block until the driver is gone (end of file: it held the only writer), then kill what this
    worker started, and the fork server above it (left alone it would take seconds to tear down
    torch), and exit at once."""
    try:
        while True:
            lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    for pid in children(os.getpid()):
        kill_tree(pid)
    try:
        if b"multiprocessing.forkserver" in Path(f"/proc/{server}/cmdline").read_bytes():
            os.kill(server, signal.SIGKILL)
    except OSError:
        pass
    os._exit(1)


def worker_main(conn: Connection, lifeline: Connection) -> None:
    """Loop: receive ``(task_id, Task)``, send back ``(task_id, outcome)``; stop on None or EOF.

    The job's deadline starts when the worker receives it (:func:`execute`)."""
    from vfnn.verifiers.process import one_thread, worker_init

    worker_init()  # dies with its parent, one thread; it runs no torch code itself: each solve is a direct child
    threading.Thread(target=_watch_lifeline, args=(lifeline, os.getppid()), daemon=True, name="lifeline").start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    import vfnn.campaign.worker_preload  # noqa: F401  (a no-op unless the fork server was started by other code)

    one_thread()  # again, in case torch was only imported just now
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, task = msg
        out = execute(task)
        try:
            conn.send((task_id, out))
        except (BrokenPipeError, OSError):
            return


@dataclass
class _Worker:
    proc: Any
    conn: Connection
    task_id: Any = None
    task: Task | None = None
    started: float = 0.0
    deadline: float = 0.0


class LocalPool:
    """``n`` worker processes; ``submit`` a task to an idle one, ``poll`` for finished ones
    (a :class:`vfnn.campaign.backend.Backend`)."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError("a pool needs at least one worker")
        self.n = n
        self._workers: list[_Worker] = []
        self._ready: list[tuple[Any, Outcome]] = []
        self._lifeline: tuple[Connection, Connection] | None = None

    def start(self) -> None:
        self._lifeline = _context().Pipe(duplex=False)  # (reader for the workers, writer kept here)
        self._workers = [self._spawn() for _ in range(self.n)]

    def _spawn(self, tries: int = 5) -> _Worker:
        """Start a worker.  If the fork server itself was just killed (a solve can kill anything),
        multiprocessing restarts it only once the dead one is reaped: retry for a moment."""
        ctx = _context()
        assert self._lifeline is not None, "start() the pool first"
        attempt = 0
        while True:
            attempt += 1
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, self._lifeline[0]), daemon=False,
                               name="vfnn-campaign-worker")
            try:
                proc.start()
            except (OSError, EOFError):
                parent.close()
                child.close()
                if attempt == tries:
                    raise
                time.sleep(0.2)
            else:
                child.close()
                return _Worker(proc, parent)

    @property
    def capacity(self) -> int:
        return sum(w.task_id is None for w in self._workers)

    def submit(self, task_id: Any, task: Task, hard_deadline_s: float) -> None:
        """Send ``task`` to an idle worker; the worker is killed if it is not back by the deadline."""
        w = next(w for w in self._workers if w.task_id is None)
        w.task_id, w.task, w.started = task_id, task, time.monotonic()
        w.deadline = w.started + hard_deadline_s
        try:
            w.conn.send((task_id, task))
        except (BrokenPipeError, OSError):
            self._replace(w, _lost(task, "the solver never started: the worker process had died before the task "
                                         "was sent", 0.0, solver_started=False))

    def cancel(self, task_id: Any) -> bool:
        """Kill the worker (and everything it started) that runs ``task_id``; True if it was running."""
        for w in self._workers:
            if w.task_id == task_id:
                self._kill(w)
                self._workers[self._workers.index(w)] = self._spawn()
                return True
        return False

    def poll(self, timeout: float) -> list[tuple[Any, Outcome]]:
        """Outcomes that arrived within ``timeout`` seconds (crashed or overdue tasks included)."""
        busy = [w for w in self._workers if w.task_id is not None]
        if busy and not self._ready:
            now = time.monotonic()
            wait_s = max(0.0, min([timeout] + [w.deadline - now for w in busy]))
            wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], wait_s)
        for w in list(busy):
            self._collect(w)
        out, self._ready = self._ready, []
        return out

    def _collect(self, w: _Worker) -> None:
        try:
            if w.conn.poll():
                task_id, outcome = w.conn.recv()
                if task_id == w.task_id:
                    self._ready.append((task_id, outcome))
                    w.task_id = w.task = None
                return
        except (EOFError, OSError):
            pass  # the pipe broke: the worker died; handled below
        elapsed = time.monotonic() - w.started
        if not w.proc.is_alive():
            w.proc.join(0)
            code = w.proc.exitcode
            why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            self._replace(w, _lost(w.task, f"the worker process died ({why}) while running this job", elapsed))
        elif time.monotonic() > w.deadline:
            self._kill(w)
            self._replace(w, _lost(w.task, f"killed by the campaign after {elapsed:.1f} s: the verifier did not "
                                           "return by its hard deadline", elapsed, status="timeout"), kill=False)

    def _replace(self, w: _Worker, outcome: Outcome, kill: bool = True) -> None:
        self._ready.append((w.task_id, outcome))
        if kill:
            self._kill(w)
        self._workers[self._workers.index(w)] = self._spawn()

    def _kill(self, w: _Worker) -> None:
        if w.proc.pid is not None and w.proc.is_alive():
            kill_tree(w.proc.pid)
        w.proc.join(5)
        w.conn.close()

    def close(self) -> None:
        """Stop every worker (running tasks are abandoned: they were not recorded)."""
        for w in self._workers:
            if w.task_id is None:
                try:
                    w.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + 2.0
        for w in self._workers:
            if w.task_id is None:
                w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                kill_tree(w.proc.pid)
                w.proc.join(5)
            w.conn.close()
        self._workers = []
        if self._lifeline is not None:
            for end in self._lifeline:
                end.close()
            self._lifeline = None


def _lost(task: Task | None, message: str, elapsed: float, status: str = "error",
          solver_started: bool | None = None) -> Outcome:
    return lost(task, message, elapsed, status, os.uname().nodename, solver_started)
