"""Run campaign tasks on a Dask distributed cluster (``vfnn bench --dask ADDRESS``).

The driver keeps the schedule and is the only writer of ``results.jsonl``; workers only run
:func:`vfnn.campaign.execute.execute` and send its Outcome back.  So a cluster behind
dask-jobqueue (SLURM, PBS...) gives the same files as a local run, and resuming works the same.

``ADDRESS`` is a scheduler address (``tcp://host:8786``), a scheduler file (``*.json``, as
written by ``dask scheduler --scheduler-file``), or ``local[:N]`` for a LocalCluster of N
single-threaded worker processes on this machine.  Workers must have vfnn installed and see the
model and spec files at the same paths (a shared file system).  A running Dask task cannot be
killed: a cancelled portfolio loser or an overdue task is abandoned (its result is ignored) and
its worker frees itself at the verifier's own hard deadline.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from vfnn.campaign.execute import Outcome, Task, execute, lost
from vfnn.errors import VfnnError


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise VfnnError("--dask needs dask.distributed: pip install 'vfnn[dask]'") from None
    return distributed


class DaskBackend:
    """A :class:`vfnn.campaign.backend.Backend` whose slots are the cluster's threads (or ``slots``)."""

    def __init__(self, address: str, slots: int | None = None):
        self.address = address
        self.slots = slots
        self._client: Any = None
        self._cluster: Any = None
        self._futures: dict[Any, tuple[Any, Task, float, float]] = {}  # task_id -> (future, task, start, deadline)

    def start(self) -> None:
        distributed = _import_distributed()
        try:
            if self.address == "local" or self.address.startswith("local:"):
                n = int(self.address.partition(":")[2] or 2)
                import dask

                # Workers must be allowed to start children: the verifier layer isolates every solve.
                dask.config.set({"distributed.worker.daemon": False})
                self._cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                         dashboard_address=None, host="127.0.0.1")
                self._client = distributed.Client(self._cluster)
            elif self.address.endswith(".json"):
                self._client = distributed.Client(scheduler_file=self.address, timeout="30s")
            else:
                self._client = distributed.Client(self.address, timeout="30s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise VfnnError(f"cannot connect to the Dask scheduler at {self.address}: {exc}") from None
        if self.slots is None:
            threads = self._client.nthreads()
            self.slots = max(1, sum(threads.values()))

    @property
    def capacity(self) -> int:
        return max(0, (self.slots or 1) - len(self._futures))

    def submit(self, task_id: Any, task: Task, hard_deadline_s: float) -> None:
        fut = self._client.submit(execute, task, pure=False, key=f"vfnn-{uuid.uuid4().hex}")
        now = time.monotonic()
        self._futures[task_id] = (fut, task, now, now + hard_deadline_s)

    def cancel(self, task_id: Any) -> bool:
        entry = self._futures.pop(task_id, None)
        if entry is None:
            return False
        entry[0].cancel()
        return True

    def poll(self, timeout: float) -> list[tuple[Any, Outcome]]:
        distributed = _import_distributed()
        if not self._futures:
            return []
        now = time.monotonic()
        wait_s = max(0.0, min([timeout] + [d - now for _, _, _, d in self._futures.values()]))
        try:
            futures = [f for f, _, _, _ in self._futures.values()]
            distributed.wait(futures, timeout=wait_s, return_when="FIRST_COMPLETED")
        except (TimeoutError, distributed.TimeoutError):
            pass
        out = []
        for task_id, (fut, task, start, deadline) in list(self._futures.items()):
            elapsed = time.monotonic() - start
            if fut.done():
                del self._futures[task_id]
                try:
                    out.append((task_id, fut.result()))
                except Exception as exc:  # the task raised on the worker, or the worker was lost
                    out.append((task_id, lost(task, f"Dask task failed: {type(exc).__name__}: {exc}", elapsed)))
            elif time.monotonic() > deadline:
                del self._futures[task_id]
                fut.cancel()
                out.append((task_id, lost(task, f"abandoned by the campaign after {elapsed:.1f} s: no answer from the "
                                             "Dask worker by the hard deadline", elapsed, "timeout")))
        return out

    def close(self) -> None:
        for fut, _, _, _ in self._futures.values():
            fut.cancel()
        self._futures.clear()
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

