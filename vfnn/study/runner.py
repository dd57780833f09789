"""``vfnn study``: train every model of the grid, write the specs, verify them, report.

Each phase calls the code of the command it stands for -- the ``vfnn train`` option parser and
trainer, ``vfnn specs``' generator, ``vfnn bench``'s campaign runner -- so a study is exactly the
commands a user would type, in one folder::

    OUT/runs/<dataset>/<arch>/<recipe>/s<seed>/   vfnn train run directories
    OUT/specs/<dataset>/                          vnnlib/, instances.csv, specs.json
    OUT/campaign/<dataset>/results.jsonl          vfnn bench campaigns (+ VNN-COMP CSVs)
    OUT/report/                                   study.md, study.csv, study.json, figures/

It survives SIGKILL at any point: a finished run has ``summary.json`` and is skipped, a started
one resumes from its last epoch checkpoint, specs are rewritten identically, and the campaigns
skip the jobs already in their (fsynced) results files.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vfnn.study.config import PHASES, ModelRun, Study, StudyError, parse_train_args

if TYPE_CHECKING:
    from vfnn.train.config import TrainConfig

@dataclass
class StudyOutcome:
    trained: int
    reused: int
    report: Path | None
    interrupted: bool = False


def run_study(study: Study, console: Console, phases: tuple[str, ...] = PHASES, show_progress: bool = True
              ) -> StudyOutcome:
    """Run (or resume) the phases of ``study`` (a subset of PHASES); see the module docstring."""
    study.out.mkdir(parents=True, exist_ok=True)
    trained, reused = 0, 0
    if "train" in phases:
        with _timed(study, "train"):
            trained, reused = _train_all(study, console, show_progress)
    missing = [r for r in study.runs if not (r.run_dir / "model.onnx").is_file()]
    if missing and any(p in phases for p in ("specs", "verify")):
        raise StudyError(f"{missing[0].label}: not trained yet ({missing[0].run_dir}); run the train phase first")
    if "specs" in phases:
        with _timed(study, "specs"):
            _write_specs(study, console)
    if "verify" in phases:
        with _timed(study, "verify"):
            interrupted = _verify(study, console, show_progress)
        if interrupted:
            return StudyOutcome(trained, reused, None, interrupted=True)
    report = None
    if "report" in phases:
        from vfnn.study.report import write_study_report

        report = write_study_report(study, console)
    return StudyOutcome(trained, reused, report)


TIMES = "times.jsonl"


@contextmanager
def _timed(study: Study, phase: str) -> Iterator[None]:
    """Append the phase's wall time to OUT/times.jsonl when it ends (the report sums them over invocations)."""
    t0 = time.perf_counter()
    yield
    with open(study.out / TIMES, "a") as f:
        f.write(json.dumps({"phase": phase, "seconds": round(time.perf_counter() - t0, 3),
                            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")


def phase_seconds(study: Study) -> dict[str, float]:
    """Wall seconds per phase, summed over every invocation that finished it (a killed one counts nothing)."""
    out: dict[str, float] = {}
    try:
        lines = (study.out / TIMES).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
            out[rec["phase"]] = out.get(rec["phase"], 0.0) + float(rec["seconds"])
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _train_all(study: Study, console: Console, show_progress: bool) -> tuple[int, int]:
    from vfnn.train.trainer import Trainer

    trained = [r for r in study.runs if r.pruning is None]
    configs = {run: _train_config(study, run) for run in trained}  # parsed (and checked) before any training
    for run, (cfg, _) in configs.items():
        _check_unchanged(run, cfg.to_dict())
    for run in study.runs:
        if run.pruning is not None:
            _check_pruning_unchanged(run)
    done = {r for r in study.runs if (r.run_dir / "summary.json").is_file()
            and (r.pruning is None or (r.prune_dir / "prune.json").is_file())}
    todo = [r for r in study.runs if r not in done]
    reused = len(study.runs) - len(todo)
    if reused:
        console.print(f"train: {reused} of {len(study.runs)} models already trained")
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not show_progress) as progress:
        overall = progress.add_task("train", total=len(todo))
        for run in todo:
            progress.update(overall, description=f"train {run.label}")
            t0 = time.perf_counter()
            if run.pruning is not None:
                _prune(study, run)
                progress.advance(overall)
                console.print(f"pruned {run.label} in {time.perf_counter() - t0:.0f} s -> {run.prune_dir}")
                continue
            cfg, argv = configs[run]
            if cfg.threads is None:  # several torch threads next to other processes slow small-tensor work badly
                cfg.threads = 1
            resume = (run.run_dir / "checkpoint.pt").is_file()
            if not resume and run.run_dir.exists():
                shutil.rmtree(run.run_dir)  # killed before its first epoch ended: nothing to keep
            Trainer(cfg, run.run_dir, resume=resume, argv=argv).run(progress=progress)
            progress.advance(overall)
            console.print(f"trained {run.label} in {time.perf_counter() - t0:.0f} s -> {run.run_dir}")
    return len(todo), reused


def _train_config(study: Study, run: ModelRun) -> tuple[TrainConfig, list[str]]:
    """``vfnn train ARGV --out RUN_DIR``, parsed by the train command itself."""
    args = [*run.argv, *(["--data-dir", study.data_dir] if study.data_dir else []), "--out", str(run.run_dir),
            "--quiet"]
    return parse_train_args(args)


def _prune(study: Study, run: ModelRun) -> None:
    """``vfnn prune`` of the base run, from the start (a killed pruning's rounds are redone)."""
    from vfnn.train.prune import prune_run

    assert run.pruning is not None and run.base is not None
    p = run.pruning
    overrides: dict = {"threads": 1, **({"data_dir": study.data_dir} if study.data_dir else {})}
    prune_run(run.base.run_dir, p.criterion, p.rate, p.rounds, p.rewind_epoch, run.prune_dir, overwrite=True,
              overrides=overrides, argv=run.command)


def _check_pruning_unchanged(run: ModelRun) -> None:
    """As :func:`_check_unchanged`, for a pruned run: its prune.json must say what the study says."""
    try:
        have = json.loads((run.prune_dir / "prune.json").read_text())
    except (OSError, ValueError):
        return
    assert run.pruning is not None and run.base is not None
    p = run.pruning
    wanted = {"criterion": p.criterion, "rate": p.rate, "rounds": p.rounds, "rewind_epoch": p.rewind_epoch}
    for key, value in wanted.items():
        if have.get(key) != value:
            raise StudyError(f"{run.prune_dir} was pruned with {key}={have.get(key)!r}, the study file now says "
                             f"{value!r}; delete that folder and the study's campaign/ results, or restore the file")
    if Path(have.get("run_dir", "")).resolve() != run.base.run_dir.resolve():
        raise StudyError(f"{run.prune_dir} was pruned from {have.get('run_dir')}, the study file now says "
                         f"{run.base.run_dir}; delete that folder and the study's campaign/ results")


IGNORED_KEYS = ("data_dir", "device", "threads", "download")


def _check_unchanged(run: ModelRun, wanted: dict) -> None:
    """A run directory started with other options than the study now gives is an error, never reused or
    silently replaced: its verification results would describe another model."""
    try:
        raw = json.loads((run.run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return  # not started (or killed before config.json was complete)
    from vfnn.errors import VfnnError
    from vfnn.train.config import TrainConfig

    try:  # read as this version would write it: options added since then take their defaults
        have = json.loads(json.dumps(TrainConfig.from_dict(raw).to_dict()))
    except (VfnnError, KeyError, TypeError, ValueError):
        have = raw
    wanted = json.loads(json.dumps(wanted))
    for key, value in wanted.items():
        if key not in IGNORED_KEYS and have.get(key) != value:
            raise StudyError(f"{run.run_dir} was trained with {key}={have.get(key)!r}, the study file now says "
                             f"{value!r}; delete that folder and the study's campaign/ results, or restore the file")


def spec_dir(study: Study, dataset: str) -> Path:
    return study.out / "specs" / dataset


def campaign_dir(study: Study, dataset: str) -> Path:
    return study.out / "campaign" / dataset


def _write_specs(study: Study, console: Console) -> None:
    """One ``vfnn specs`` per dataset, over every model of it: all recipes are verified on the same images."""
    from vfnn.campaign.specgen import generate_specs

    for dataset in study.datasets:
        models = [r.run_dir / "model.onnx" for r in study.runs if r.dataset == dataset]
        s = generate_specs(dataset, study.per_class, study.radii, spec_dir(study, dataset), models,
                           study.correct_only, study.timeout, study.split, None, study.data_dir)
        console.print(f"specs: {dataset}: {s.n_specs} properties of {s.n_images} images x {len(models)} models "
                      f"= {s.n_rows} instances")
        for c, k in s.short_classes.items():
            console.print(f"warning: {dataset} class {c} has only {k} usable images (asked for {study.per_class})")


def _verify(study: Study, console: Console, show_progress: bool) -> bool:
    """``vfnn bench`` per dataset; returns True when interrupted."""
    from vfnn.campaign.runner import run_campaign

    for dataset in study.datasets:
        instances = spec_dir(study, dataset) / "instances.csv"
        if not instances.is_file():
            raise StudyError(f"{instances}: missing; run the specs phase first")
        console.print(f"verify: {dataset} with {', '.join(study.verifiers)} ({study.timeout:g} s per job, "
                      f"{study.jobs} at a time)")
        s = run_campaign(instances, list(study.verifiers), campaign_dir(study, dataset), jobs=study.jobs,
                         timeout=study.timeout, options=study.verifiers, console=console, show_progress=show_progress)
        c = s.counts
        console.print(f"verify: {dataset}: {s.ran} jobs run ({s.already_done} already done): {c['unsat']} verified, "
                      f"{c['sat']} falsified, {c['timeout']} timeout, {c['unknown']} unknown, {c['error']} error "
                      f"in {s.wall_time:.0f} s")
        if s.interrupted:
            return True
    return False
