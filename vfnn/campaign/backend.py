"""Where campaign tasks run: the interface the driver schedules against, and the two that exist.

The driver (:mod:`vfnn.campaign.runner`) only fills free slots, polls for outcomes and cancels
portfolio losers, so a backend is these six operations.  :class:`~vfnn.campaign.localpool.LocalPool`
runs tasks in worker processes on this machine; :class:`~vfnn.campaign.dask_backend.DaskBackend`
on a Dask cluster.  Either must turn a task it lost (a dead worker, a missed hard deadline) into an
:class:`~vfnn.campaign.execute.Outcome` of its own, so every submitted task comes back exactly once.
"""

from __future__ import annotations

from typing import Any, Protocol

from vfnn.campaign.execute import Outcome, Task


class Backend(Protocol):
    """Runs :class:`Task` objects; every submitted task comes back once from :meth:`poll` (or is cancelled)."""

    def start(self) -> None:
        """Start the workers (or connect to the cluster)."""

    @property
    def capacity(self) -> int:
        """How many more tasks :meth:`submit` takes now."""

    def submit(self, task_id: Any, task: Task, hard_deadline_s: float) -> None:
        """Start ``task``; after ``hard_deadline_s`` seconds without an answer it comes back as a timeout."""

    def cancel(self, task_id: Any) -> bool:
        """Stop ``task_id`` (its outcome is never returned); True if it was running."""

    def poll(self, timeout: float) -> list[tuple[Any, Outcome]]:
        """The outcomes that arrived within ``timeout`` seconds."""

    def close(self) -> None:
        """Stop everything; running tasks are abandoned."""


def make_backend(jobs: int | None, dask: str | None) -> Backend:
    """A Dask backend for ``--dask ADDRESS`` (``jobs`` caps the tasks in flight), else ``jobs`` local workers."""
    if dask:
        from vfnn.campaign.dask_backend import DaskBackend

        return DaskBackend(dask, slots=jobs)  # None: as many as the cluster has threads
    from vfnn.campaign.localpool import LocalPool

    return LocalPool(jobs or 1)
