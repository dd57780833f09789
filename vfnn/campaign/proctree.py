"""Stop a process and every process it started, wherever they live.

The verifier layer starts each solve in a child with its own session/process group, so killing a
campaign worker's process group would miss them.  The process tree is found through
``/proc/<pid>/task/*/children`` (Linux); every member is first frozen with SIGSTOP (so nothing
can fork a new child while the tree is being walked), then killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


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


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and all its descendants; return the pids that were signalled."""
    frozen: list[int] = [pid]
    _signal(pid, signal.SIGSTOP)
    # Freeze level by level until no new process appears (a child may fork while we walk).
    for _ in range(100):
        new = [p for p in descendants(pid) if p not in frozen]
        if not new:
            break
        for p in new:
            _signal(p, signal.SIGSTOP)
        frozen.extend(new)
    for p in frozen:
        _signal(p, signal.SIGKILL)
    return frozen
