"""Per-step schedules: eps ramp-up, kappa, beta and regulariser warm-up.

Positions are measured in (fractional) epochs, updated every batch.  For certified phases
(ibp, crown-ibp) the window starts at the phase's start: ``eps_warmup`` epochs at eps = 0 (plain
training), then ``eps_rampup`` epochs over which eps grows linearly to its target while kappa goes
from kappa_start to kappa_end and beta from beta_start to beta_end (CROWN-IBP, Zhang et al. 2020);
after the window every value stays at its end value.  A regulariser's weight grows linearly from 0
over ``reg_warmup`` epochs counted from the start of the run of consecutive phases that use it.
"""

from __future__ import annotations

from vfnn.train.config import Phase, TrainConfig
from vfnn.train.objectives import OBJECTIVES, ScheduleValues


def ramp(pos: float, start: float, length: float, v0: float, v1: float) -> float:
    """v0 before ``start``, v1 after ``start + length``, linear in between."""
    if pos <= start:
        return v0
    if length <= 0 or pos >= start + length:
        return v1
    return v0 + (v1 - v0) * (pos - start) / length


def phase_at(cfg: TrainConfig, epoch: int) -> tuple[int, Phase, int]:
    """(phase index, phase, first epoch of the phase) for a global epoch index."""
    first = 0
    for i, p in enumerate(cfg.phases):
        if epoch < first + p.epochs:
            return i, p, first
        first += p.epochs
    raise IndexError(f"epoch {epoch} is past the schedule ({cfg.epochs} epochs)")


def rampup_length(cfg: TrainConfig, phase: Phase) -> float:
    """eps ramp-up in epochs: ``--eps-rampup`` or half of the phase after the warm-up."""
    if cfg.eps_rampup is not None:
        return cfg.eps_rampup
    return max(phase.epochs - cfg.eps_warmup, 0.0) / 2


def values_at(cfg: TrainConfig, epoch: int, frac: float) -> ScheduleValues:
    """Schedule values at batch fraction ``frac`` in [0, 1) of global ``epoch``."""
    _, phase, first = phase_at(cfg, epoch)
    assert cfg.eps is not None
    if not OBJECTIVES[phase.method].certified:
        return ScheduleValues(eps=cfg.eps, target_eps=cfg.eps)
    pos = epoch - first + frac
    start, length = cfg.eps_warmup, rampup_length(cfg, phase)
    factor = ramp(pos, start, length, 0.0, 1.0)
    radii = tuple((r * factor, w) for r, w in zip(cfg.radii or (), cfg.radius_weights or (), strict=True))
    return ScheduleValues(
        eps=cfg.eps * factor,
        target_eps=cfg.eps,
        kappa=ramp(pos, start, length, cfg.kappa_start, cfg.kappa_end_for(phase.method)),
        beta=ramp(pos, start, length, cfg.beta_start, cfg.beta_end),
        radii=radii,
    )


def reg_weight(cfg: TrainConfig, reg: str, epoch: int, frac: float) -> float:
    """Weight of ``reg`` now: 0 if the current phase does not use it, else its warmed-up weight."""
    index, phase, first = phase_at(cfg, epoch)
    if reg not in phase.regs:
        return 0.0
    while index > 0 and reg in cfg.phases[index - 1].regs:
        index -= 1
        first -= cfg.phases[index].epochs
    return cfg.weight(reg) * ramp(epoch - first + frac, 0.0, cfg.reg_warmup, 0.0, 1.0)
