"""The campaign driver: schedule jobs on a backend, record each result the moment it exists.

One driver process owns ``results.jsonl``.  It hands tasks to a backend (a local pool of worker
processes, or a Dask cluster), and appends one line per finished job (flushed and fsynced), so a
campaign killed at any point -- even with SIGKILL -- keeps every finished job, and running the
same command again resumes it.

Portfolio mode runs the verifiers of one instance at the same time; the first decisive answer
(``sat``/``unsat``) wins, the others are stopped (their process trees killed) and the record says
who won.  Without a decisive answer the job's result is the most informative of the others
(timeout, then unknown, then error).
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vfnn import __version__
from vfnn.campaign.execute import Task, make_result
from vfnn.campaign.instances import Instance, read_instances
from vfnn.campaign.jobs import DECISIVE, Job, plan_jobs
from vfnn.campaign.meta import model_meta, spec_meta
from vfnn.campaign.specgen import load_sidecar
from vfnn.campaign.store import SCHEMA, ResultStore, load_latest
from vfnn.campaign.vnncomp import write_vnncomp
from vfnn.errors import VerifierUnavailable, VfnnError

STATUS_ORDER = ("unsat", "sat", "timeout", "unknown", "error")
NON_DECISIVE_PREFERENCE = ("timeout", "unknown", "error")


def hard_deadline(timeout: float) -> float:
    """When the driver gives up on a task: well after the verifier layer's own deadline and grace."""
    return timeout * 1.1 + 30.0


@dataclass
class CampaignSummary:
    """What one ``run_campaign`` call did."""

    planned: int
    already_done: int
    ran: int
    counts: dict[str, int]  # statuses of the jobs run now
    wall_time: float
    solve_time: float  # sum of the verifiers' wall times over the jobs run now
    results: Path
    csv_files: list[Path] = field(default_factory=list)
    interrupted: bool = False
    workers: int | None = None  # local worker processes (None with --dask)


@dataclass
class _JobState:
    job: Job
    pending: list[str]
    running: dict[int, str] = field(default_factory=dict)
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: float = 0.0


def _make_backend(jobs: int | None, dask: str | None) -> Any:
    if dask:
        from vfnn.campaign.dask_backend import DaskBackend

        return DaskBackend(dask, slots=jobs)  # None: as many as the cluster has threads
    from vfnn.campaign.localpool import LocalPool

    return LocalPool(jobs or 1)


class _Counts:
    def __init__(self) -> None:
        self.n = dict.fromkeys(STATUS_ORDER, 0)

    def text(self) -> str:
        n = self.n
        return (f"[green]{n['unsat']} verified[/] [red]{n['sat']} falsified[/] [yellow]{n['timeout']} timeout[/] "
                f"[cyan]{n['unknown']} unknown[/] [magenta]{n['error']} error[/]")


def run_campaign(
    instances_csv: str | Path,
    verifiers: list[str],
    out: str | Path,
    *,
    jobs: int | None = None,
    timeout: float | None = None,
    portfolio: bool = False,
    dask: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    rerun: tuple[str, ...] = (),
    category: str | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> CampaignSummary:
    """Run (or resume) every job of ``instances_csv`` x ``verifiers``; see the module docstring."""
    t_start = time.perf_counter()
    for s in rerun:
        if s not in STATUS_ORDER:
            raise VfnnError(f"--rerun {s!r}: expected one of {', '.join(STATUS_ORDER)}")
    if jobs is not None and jobs < 1:
        raise VfnnError(f"--jobs must be at least 1, got {jobs}")
    instances = read_instances(instances_csv, category)
    plan = plan_jobs(instances, verifiers, portfolio, timeout)
    _check_verifiers(verifiers, options or {}, dask)
    out = Path(out)
    console = console or Console(stderr=True)
    store = ResultStore(out / "results.jsonl")
    done = store.open_for_append()
    todo = [j for j in plan if _should_run(done.get(j.key), rerun)]
    counts = _Counts()
    sidecars: dict[Path, dict[str, dict]] = {}
    models: dict[Path, dict[str, Any]] = {}
    solve_time = 0.0
    ran = 0
    interrupted = False

    def record(job: Job, outcome: dict[str, Any], portfolio_info: dict[str, Any] | None) -> None:
        nonlocal solve_time, ran
        inst = job.instance
        if inst.root not in sidecars:
            sidecars[inst.root] = load_sidecar(inst.root)
        model_path = inst.model_path
        if model_path not in models:
            models[model_path] = model_meta(model_path)
        res = outcome["result"]
        rec = {
            "schema": SCHEMA,
            "key": job.key,
            "category": inst.category,
            "onnx": inst.onnx,
            "vnnlib": inst.vnnlib,
            "model_path": str(model_path),
            "spec_path": str(inst.spec_path),
            "timeout": job.timeout,
            "verifier": job.label,
            "status": res["status"],
            "result": res,
            "prepare_time": outcome.get("prepare_time", 0.0),
            "portfolio": portfolio_info,
            "meta": spec_meta(inst.spec_path, sidecars[inst.root]),
            "model": models[model_path],
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "host": outcome.get("host"),
            "worker_pid": outcome.get("pid"),
            "vfnn_version": __version__,
        }
        store.append(rec)
        counts.n[res["status"]] += 1
        solve_time += float(res.get("wall_time") or 0.0)
        ran += 1

    plain = show_progress and not console.is_terminal  # a CI log: a line now and then instead of a bar
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
        disable=not show_progress or plain,
    )
    log_line = _PlainProgress(console, len(todo)) if plain else None
    backend = None
    restore = _install_sigterm()
    try:
        if portfolio and not dask and (jobs or 1) < len(verifiers):
            console.print(f"portfolio: {len(verifiers)} workers (one per verifier) instead of --jobs {jobs or 1}")
            jobs = len(verifiers)
        if len(todo) < len(plan):
            console.print(f"resuming: {len(plan) - len(todo)} of {len(plan)} jobs already in {store.path}")
        with progress:
            bar = progress.add_task("campaign", total=len(todo), counts=counts.text())
            runnable = []
            for job in todo:  # broken rows and missing files never reach a worker
                why = _precheck(job)
                if why is None:
                    runnable.append(job)
                    continue
                record(job, {"result": make_result("error", job.label, job.timeout or 0.0, why,
                                                   model_path=str(job.instance.model_path),
                                                   spec_path=str(job.instance.spec_path))}, None)
                progress.update(bar, advance=1, counts=counts.text())
                if log_line:
                    log_line.tick(counts)
            if runnable:
                backend = _make_backend(jobs, dask)
                backend.start()

                def tick() -> None:
                    progress.update(bar, advance=1, counts=counts.text())
                    if log_line:
                        log_line.tick(counts)

                _drive(backend, runnable, options or {}, record, tick)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if backend is not None:
            backend.close()
        store.close()
        restore()
    csv_files = write_vnncomp(out, plan, load_latest(store.path))
    return CampaignSummary(len(plan), len(plan) - len(todo), ran, dict(counts.n), time.perf_counter() - t_start,
                           solve_time, store.path, csv_files, interrupted, None if dask else (jobs or 1))


def _should_run(record: dict[str, Any] | None, rerun: tuple[str, ...]) -> bool:
    """A job runs when it has no result, when its status is one of ``rerun``, or when its solver
    never started (start-up used its budget, its worker died first): that is no answer at all."""
    if record is None:
        return True
    result = record["result"]
    return result["status"] in rerun or (result.get("tool_stats") or {}).get("solver_started") is False


class _PlainProgress:
    """Progress for a console that is not a terminal: one line per tenth of the jobs, at most every 10 s."""

    def __init__(self, console: Console, total: int) -> None:
        self.console, self.total, self.done = console, total, 0
        self.start = self.last = time.monotonic()

    def tick(self, counts: _Counts) -> None:
        self.done += 1
        now = time.monotonic()
        step = max(1, self.total // 10)
        if self.done == self.total or (self.done % step == 0 and now - self.last >= 10.0):
            self.last = now
            self.console.print(f"[{self.done}/{self.total}] {counts.text()}  {now - self.start:.0f} s")


def _precheck(job: Job) -> str | None:
    inst: Instance = job.instance
    if inst.problem:
        return inst.problem
    if not inst.model_path.is_file():
        return f"row {inst.row}: model file not found: {inst.model_path}"
    if not inst.spec_path.is_file():
        return f"row {inst.row}: spec file not found: {inst.spec_path}"
    return None


def _check_verifiers(names: list[str], options: dict[str, dict[str, Any]], dask: str | None) -> None:
    """Stop before the first job when a name, an option or (locally) the tool itself is wrong:
    a typo should not become hundreds of error rows."""
    from vfnn.verifiers.registry import get_verifier, load_verifier_class

    for extra in set(options) - set(names):
        raise VfnnError(f"options given for {extra!r}, which is not one of the campaign's verifiers")
    for name in names:
        cls = load_verifier_class(name)  # VerifierUnavailable (a VfnnError) for an unknown name
        cls.resolve_options(options.get(name))
        if dask:
            continue  # the workers' machines may have tools this one lacks
        avail = get_verifier(name).availability()
        if not avail.available:
            hint = f" ({avail.install_hint})" if avail.install_hint else ""
            raise VerifierUnavailable(f"verifier {name} is not available: {avail.reason}{hint}")


def _drive(backend: Any, jobs: list[Job], options: dict[str, dict[str, Any]], record: Any, tick: Any) -> None:
    queue = deque(_JobState(j, list(j.verifiers)) for j in jobs)
    active: dict[int, _JobState] = {}
    ids = itertools.count()

    def finish(st: _JobState, winner: str | None) -> None:
        if st.job.portfolio:
            chosen = winner or next((v for s in NON_DECISIVE_PREFERENCE for v, o in st.outcomes.items()
                                     if o["result"]["status"] == s), next(iter(st.outcomes)))
            info = {
                "verifiers": list(st.job.verifiers),
                "winner": winner,
                "chosen": chosen,
                "results": {v: ({"status": st.outcomes[v]["result"]["status"],
                                 "wall_time": st.outcomes[v]["result"].get("wall_time")}
                                if v in st.outcomes else {"status": "stopped"}) for v in st.job.verifiers},
            }
            record(st.job, st.outcomes[chosen], info)
        else:
            record(st.job, next(iter(st.outcomes.values())), None)
        tick()

    while queue or active:
        while backend.capacity > 0 and queue:
            st = queue[0]
            v = st.pending.pop(0)
            if not st.running and not st.outcomes:
                st.started = time.monotonic()
            tid = next(ids)
            inst = st.job.instance
            task = Task(str(inst.model_path), str(inst.spec_path), v, float(st.job.timeout), dict(options.get(v, {})))
            backend.submit(tid, task, hard_deadline(task.timeout))
            st.running[tid] = v
            active[tid] = st
            if not st.pending:
                queue.popleft()
        for tid, outcome in backend.poll(0.5):
            st = active.pop(tid, None)
            if st is None:
                continue  # a portfolio loser that finished while being stopped
            v = st.running.pop(tid)
            st.outcomes[v] = outcome
            if st.job.portfolio and outcome["result"]["status"] in DECISIVE:
                for other in list(st.running):
                    backend.cancel(other)
                    active.pop(other, None)
                st.running.clear()
                if st.pending:
                    st.pending.clear()
                    if queue and queue[0] is st:
                        queue.popleft()
                finish(st, v)
            elif not st.running and not st.pending:
                finish(st, None)


def _install_sigterm() -> Any:
    """SIGTERM behaves like Ctrl-C (workers are stopped, finished results are kept)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, old)
