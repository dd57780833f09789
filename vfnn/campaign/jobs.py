"""Campaign jobs: which (model, spec, verifier) runs a campaign is made of, and how each is named.

A job's key is ``<onnx>::<vnnlib>::<verifier>`` with the paths exactly as written in
``instances.csv`` (so a benchmark folder can move) and ``<verifier>`` the verifier's name, or
``portfolio(a,b)`` when several verifiers race on the instance.  Resuming skips every key that
``results.jsonl`` already holds; ``--rerun STATUS`` runs again the keys whose latest result has
that status (for example ``timeout`` after raising ``--timeout``).
"""

from __future__ import annotations

from dataclasses import dataclass

from vfnn.campaign.instances import Instance
from vfnn.errors import VfnnError


@dataclass(frozen=True)
class Job:
    """One entry of a campaign: an instance and the verifier(s) that run on it."""

    instance: Instance
    verifiers: tuple[str, ...]
    timeout: float | None  # None when the instance row itself is broken

    @property
    def portfolio(self) -> bool:
        return len(self.verifiers) > 1

    @property
    def label(self) -> str:
        return self.verifiers[0] if not self.portfolio else f"portfolio({','.join(self.verifiers)})"

    @property
    def key(self) -> str:
        return f"{self.instance.ident}::{self.label}"


def plan_jobs(
    instances: list[Instance],
    verifiers: list[str],
    portfolio: bool = False,
    timeout: float | None = None,
) -> list[Job]:
    """Jobs in instance order (and verifier order within an instance); duplicate rows run once."""
    if not verifiers:
        raise VfnnError("name at least one --verifier")
    if len(set(verifiers)) != len(verifiers):
        raise VfnnError(f"a verifier is named twice: {', '.join(verifiers)}")
    if portfolio and len(verifiers) < 2:
        raise VfnnError("--portfolio needs at least two --verifier")
    if timeout is not None and not timeout > 0:
        raise VfnnError(f"--timeout must be positive, got {timeout}")
    groups = [tuple(verifiers)] if portfolio else [(v,) for v in verifiers]
    jobs: list[Job] = []
    seen: set[str] = set()
    for inst in instances:
        t = None if inst.problem else (timeout if timeout is not None else inst.timeout)
        for g in groups:
            job = Job(inst, g, t)
            if job.key not in seen:
                seen.add(job.key)
                jobs.append(job)
    return jobs
