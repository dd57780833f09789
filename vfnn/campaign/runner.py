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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vfnn import __version__
from vfnn.campaign.analysis import UNDECIDED_ORDER
from vfnn.campaign.backend import Backend, make_backend
from vfnn.campaign.execute import Outcome, Task, make_result
from vfnn.campaign.instances import Instance, read_instances
from vfnn.campaign.jobs import Job, plan_jobs
from vfnn.campaign.meta import model_meta, spec_meta
from vfnn.campaign.specgen import load_sidecar
from vfnn.campaign.store import CampaignRecord, ModelInfo, PortfolioInfo, ResultStore, load_latest
from vfnn.campaign.vnncomp import write_vnncomp
from vfnn.errors import VerifierUnavailable, VfnnError
from vfnn.verifiers.result import STATUSES

#: Under the output folder: the unstable record of each (model, spec), computed by the first
#: verifier that needs it (the others of the campaign, portfolio included, read it).
UNSTABLE_CACHE = Path("cache") / "unstable"


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
    outcomes: dict[str, Outcome] = field(default_factory=dict)


class _Recorder:
    """Turns a finished job into a :class:`CampaignRecord`, appends it, and counts what ran.

    The property and model metadata are read once per instances folder and per model."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self.counts = dict.fromkeys(STATUSES, 0)
        self.solve_time = 0.0
        self.ran = 0
        self._sidecars: dict[Path, dict[str, dict]] = {}
        self._models: dict[Path, ModelInfo] = {}

    def record(self, job: Job, outcome: Outcome, portfolio: PortfolioInfo | None = None) -> None:
        inst = job.instance
        if inst.root not in self._sidecars:
            self._sidecars[inst.root] = load_sidecar(inst.root)
        if inst.model_path not in self._models:
            self._models[inst.model_path] = model_meta(inst.model_path)
        rec = CampaignRecord(
            key=job.key, onnx=inst.onnx, vnnlib=inst.vnnlib, verifier=job.label, result=outcome.result,
            category=inst.category, model_path=str(inst.model_path), spec_path=str(inst.spec_path),
            timeout=job.timeout, prepare_time=outcome.prepare_time, portfolio=portfolio,
            meta=spec_meta(inst.spec_path, self._sidecars[inst.root]), model=self._models[inst.model_path],
            finished_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"), host=outcome.host,
            worker_pid=outcome.pid, vfnn_version=__version__,
        )
        self.store.append(rec)
        self.counts[rec.status] += 1
        self.solve_time += rec.wall_time
        self.ran += 1

    def text(self) -> str:
        n = self.counts
        return (f"[green]{n['unsat']} verified[/] [red]{n['sat']} falsified[/] [yellow]{n['timeout']} timeout[/] "
                f"[cyan]{n['unknown']} unknown[/] [magenta]{n['error']} error[/]")


class _ProgressView:
    """A rich bar on a terminal; on a console that is not one (a CI log) a plain line per tenth of
    the jobs, at most every 10 s; nothing when ``show`` is False."""

    def __init__(self, console: Console, show: bool, total: int, recorder: _Recorder) -> None:
        self.console, self.total, self.recorder, self.done = console, total, recorder, 0
        self.plain = show and not console.is_terminal
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, disable=not show or self.plain,
        )
        self.start = self.last = time.monotonic()

    def __enter__(self) -> _ProgressView:
        self.bar.__enter__()
        self.task = self.bar.add_task("campaign", total=self.total, counts=self.recorder.text())
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def tick(self) -> None:
        self.bar.update(self.task, advance=1, counts=self.recorder.text())
        self.done += 1
        now = time.monotonic()
        step = max(1, self.total // 10)
        if self.plain and (self.done == self.total or (self.done % step == 0 and now - self.last >= 10.0)):
            self.last = now
            self.console.print(f"[{self.done}/{self.total}] {self.recorder.text()}  {now - self.start:.0f} s")


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
    _check_arguments(rerun, jobs)
    plan = plan_jobs(read_instances(instances_csv, category), verifiers, portfolio, timeout)
    options = options or {}
    _check_verifiers(verifiers, options, dask)
    out = Path(out)
    console = console or Console(stderr=True)
    store = ResultStore(out / "results.jsonl")
    done = store.open_for_append()
    todo = [j for j in plan if _should_run(done.get(j.key), rerun)]
    recorder = _Recorder(store)
    interrupted = False
    restore = _install_sigterm()
    workers = None if dask else _local_workers(jobs, portfolio, len(verifiers), console)
    try:
        if len(todo) < len(plan):
            console.print(f"resuming: {len(plan) - len(todo)} of {len(plan)} jobs already in {store.path}")
        with _ProgressView(console, show_progress, len(todo), recorder) as progress:
            runnable = _record_broken_rows(todo, recorder, progress.tick)
            if runnable:
                _run_on_backend(make_backend(workers or jobs, dask), runnable, options, recorder, progress.tick,
                                out / UNSTABLE_CACHE)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        store.close()
        restore()
    csv_files = write_vnncomp(out, plan, load_latest(store.path))
    return CampaignSummary(len(plan), len(plan) - len(todo), recorder.ran, dict(recorder.counts),
                           time.perf_counter() - t_start, recorder.solve_time, store.path, csv_files, interrupted,
                           workers)


def _local_workers(jobs: int | None, portfolio: bool, n_verifiers: int, console: Console) -> int:
    """Worker processes: ``--jobs`` (default 1), raised to one per verifier for a portfolio."""
    if portfolio and (jobs or 1) < n_verifiers:
        console.print(f"portfolio: {n_verifiers} workers (one per verifier) instead of --jobs {jobs or 1}")
        return n_verifiers
    return jobs or 1


def _check_arguments(rerun: tuple[str, ...], jobs: int | None) -> None:
    for s in rerun:
        if s not in STATUSES:
            raise VfnnError(f"--rerun {s!r}: expected one of {', '.join(STATUSES)}")
    if jobs is not None and jobs < 1:
        raise VfnnError(f"--jobs must be at least 1, got {jobs}")


def _record_broken_rows(todo: list[Job], recorder: _Recorder, tick: Callable[[], None]) -> list[Job]:
    """Record an ``error`` for every job whose row is broken or whose files are missing (they never
    reach a worker); return the others."""
    runnable = []
    for job in todo:
        why = _precheck(job)
        if why is None:
            runnable.append(job)
            continue
        inst = job.instance
        result = make_result("error", job.label, job.timeout or 0.0, why, model_path=str(inst.model_path),
                             spec_path=str(inst.spec_path))
        recorder.record(job, Outcome(result))
        tick()
    return runnable


def _run_on_backend(backend: Backend, jobs: list[Job], options: dict[str, dict[str, Any]], recorder: _Recorder,
                    tick: Callable[[], None], cache: Path | None = None) -> None:
    """Start the backend, run every job on it, and stop it whatever happens (Ctrl-C included)."""
    try:
        backend.start()
        _Scheduler(backend, jobs, options, recorder, tick, cache).run()
    finally:
        backend.close()


def _should_run(record: CampaignRecord | None, rerun: tuple[str, ...]) -> bool:
    """A job runs when it has no result, when its status is one of ``rerun``, or when its solver
    never started (start-up used its budget, its worker died first): that is no answer at all."""
    if record is None:
        return True
    return record.status in rerun or record.result.tool_stats.get("solver_started") is False


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


class _Scheduler:
    """Keeps the backend's slots full in job order and records each job when it is complete: at its
    one outcome, or for a portfolio at the first decisive outcome (the others are cancelled) or
    when every verifier has answered."""

    def __init__(self, backend: Backend, jobs: list[Job], options: dict[str, dict[str, Any]], recorder: _Recorder,
                 tick: Callable[[], None], cache: Path | None = None) -> None:
        self.backend, self.options, self.recorder, self.tick = backend, options, recorder, tick
        self.cache = None if cache is None else str(cache.resolve())
        self.queue = deque(_JobState(j, list(j.verifiers)) for j in jobs)
        self.active: dict[int, _JobState] = {}
        self.ids = itertools.count()

    def run(self) -> None:
        while self.queue or self.active:
            self._fill()
            for tid, outcome in self.backend.poll(0.5):
                self._on_outcome(tid, outcome)

    def _fill(self) -> None:
        while self.backend.capacity > 0 and self.queue:
            st = self.queue[0]
            v = st.pending.pop(0)
            inst = st.job.instance
            task = Task(str(inst.model_path), str(inst.spec_path), v, float(st.job.timeout or 0.0),
                        dict(self.options.get(v, {})), self.cache)
            tid = next(self.ids)
            self.backend.submit(tid, task, hard_deadline(task.timeout))
            st.running[tid] = v
            self.active[tid] = st
            if not st.pending:
                self.queue.popleft()

    def _on_outcome(self, tid: int, outcome: Outcome) -> None:
        st = self.active.pop(tid, None)
        if st is None:
            return  # a portfolio loser that finished while being stopped
        v = st.running.pop(tid)
        st.outcomes[v] = outcome
        if st.job.portfolio and outcome.result.decided:
            self._stop_the_others(st)
            self._finish(st, winner=v)
        elif not st.running and not st.pending:
            self._finish(st, winner=None)

    def _stop_the_others(self, st: _JobState) -> None:
        for other in list(st.running):
            self.backend.cancel(other)
            self.active.pop(other, None)
        st.running.clear()
        if st.pending:
            st.pending.clear()
            if self.queue and self.queue[0] is st:
                self.queue.popleft()

    def _finish(self, st: _JobState, winner: str | None) -> None:
        if st.job.portfolio:
            info = _portfolio_info(st, winner)
            self.recorder.record(st.job, st.outcomes[info.chosen], info)
        else:
            self.recorder.record(st.job, next(iter(st.outcomes.values())))
        self.tick()


def _portfolio_info(st: _JobState, winner: str | None) -> PortfolioInfo:
    """Who won; without a winner the most informative other answer is chosen (timeout, unknown, error)."""
    chosen = winner or next((v for s in UNDECIDED_ORDER for v, o in st.outcomes.items()
                             if o.result.status == s), next(iter(st.outcomes)))
    results = {v: ({"status": st.outcomes[v].result.status, "wall_time": st.outcomes[v].result.wall_time}
                   if v in st.outcomes else {"status": "stopped"}) for v in st.job.verifiers}
    return PortfolioInfo(tuple(st.job.verifiers), winner, chosen, results)


def _install_sigterm() -> Any:
    """SIGTERM behaves like Ctrl-C (workers are stopped, finished results are kept)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, old)
