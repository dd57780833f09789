"""Base training objectives (``--method``): ce, pgd, trades, ibp, crown-ibp, crown-lbp.

Each objective maps a batch and the current schedule values to a scalar loss and a dict of
named terms for the log.  Certified objectives follow CROWN-IBP (Zhang et al. 2020):

    L = kappa * CE(f(x), y) + (1 - kappa) * sum_k w_k * CE(-m_k(x, y), y)

where m_k is a lower bound on the margins f_y - f_j over the ball of radius eps_k (one radius
unless multi-radius training is on; Liang et al. 2023 use several radii with decreasing weights
w_k).  ``ibp`` bounds the margins with IBP; ``crown-ibp`` with beta * CROWN-IBP + (1 - beta) * IBP;
``crown-lbp`` (Lyu et al. 2021) the same with CROWN-LBP in place of CROWN-IBP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vfnn.train.attacks import pgd, trades_adversary
from vfnn.train.components import Component, TrainOption
from vfnn.train.models import forward_with_preacts


def input_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The L-inf ball of radius eps around x, intersected with the pixel box [0, 1]."""
    return (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)


def margin_matrix(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """C with C[b, j] = e_{y_b} - e_j, so C @ f = f_y - f_j (row y is zero)."""
    eye = torch.eye(n_classes, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def margin_lower_bounds(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float, n_classes: int,
                        method: str) -> torch.Tensor:
    """Lower bounds (B, n_classes) of f_y - f_j over the eps-ball (0 at j = y).

    ``method``: any of vfnn.bounds.METHODS.
    """
    from vfnn.bounds import compute_bounds

    lower, upper = input_box(x, eps)
    C = margin_matrix(y, n_classes)

    return compute_bounds(model, lower, upper, C, method=method).lower


@dataclass
class Batch:
    """One mini-batch; the clean forward pass (logits and pre-activations) is computed once and shared."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor | None = None  # positions of the rows in the training set (for per-image state)
    n_total: int = 0  # size of the training set
    step: int = 0  # optimiser steps before this one in the run
    _clean: tuple[torch.Tensor, list[torch.Tensor]] | None = field(default=None, repr=False)

    def clean(self, model: nn.Sequential) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self._clean is None:
            self._clean = forward_with_preacts(model, self.x)
        return self._clean

    def clean_logits(self, model: nn.Sequential) -> torch.Tensor:
        return self.clean(model)[0]

    def clean_preacts(self, model: nn.Sequential) -> list[torch.Tensor]:
        return self.clean(model)[1]

    def n_classes(self, model: nn.Sequential) -> int:
        """The model's number of outputs, from the shared clean pass (so objectives need not be told it)."""
        return int(self.clean_logits(model).shape[1])

    @property
    def clean_logits_if_computed(self) -> torch.Tensor | None:
        """The clean logits if some loss term needed them (for the running training accuracy)."""
        return None if self._clean is None else self._clean[0]


@dataclass(frozen=True)
class ScheduleValues:
    """What the schedules say for the current step: the one argument of every ``loss`` besides model and batch."""

    eps: float  # training radius after ramp-up (the largest radius for multi-radius)
    target_eps: float  # the run's radius, not ramped (regularisers use it: a penalty is not ramped)
    kappa: float = 1.0
    beta: float = 0.0
    radii: tuple[tuple[float, float], ...] = ()  # (ramped radius, weight) pairs for certified methods


class Objective(Component):
    """Base class: ``loss`` returns (total, {term: value}); ``certified`` objectives get the eps/kappa ramp."""

    certified: ClassVar[bool] = False
    kappa_end: ClassVar[float] = 1.0  # the --kappa-end default of a certified objective

    def loss(self, model: nn.Sequential, batch: Batch, s: ScheduleValues) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


class CrossEntropy(Objective):
    """cross-entropy on the clean inputs."""

    name = "ce"

    def loss(self, model, batch, s):
        ce = F.cross_entropy(batch.clean_logits(model), batch.y)
        return ce, {"ce": float(ce.detach())}


class PGDTraining(Objective):
    """Madry et al. 2018: cross-entropy at a PGD point of the eps-ball."""

    name = "pgd"
    options = (
        TrainOption("steps", int, 10, "Attack steps for pgd/trades training.", minimum=1),
        TrainOption("step_size", float, None, "Attack step for pgd/trades training [default: 2.5 eps / steps].",
                    minimum=0, strict=True),
    )

    def loss(self, model, batch, s):
        x_adv = pgd(model, batch.x, batch.y, s.eps, self.settings["steps"], self.settings["step_size"])
        adv = F.cross_entropy(model(x_adv), batch.y)
        return adv, {"ce_adv": float(adv.detach())}


class TRADES(PGDTraining):
    """Zhang et al. 2019: CE(f(x), y) + beta * KL(f(x) || f(x')), x' the
    KL-maximising point found with pgd's steps."""

    name = "trades"
    options = (TrainOption("beta", float, 6.0, "beta of the KL term.", minimum=0),)

    def loss(self, model, batch, s):
        logits = batch.clean_logits(model)
        x_adv = trades_adversary(model, batch.x, s.eps, self.settings["steps"], self.settings["step_size"])
        kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        ce = F.cross_entropy(logits, batch.y)
        return ce + self.settings["beta"] * kl, {"ce": float(ce.detach()), "kl": float(kl.detach())}


class IBPTraining(Objective):
    """Gowal et al. 2018: kappa*CE + (1-kappa)*CE(-m), m = IBP lower bounds of
    the margins f_y - f_j over the eps-ball (kappa 1 -> 0.5)."""

    name = "ibp"
    certified = True
    kappa_end = 0.5

    def robust_ce(self, model: nn.Sequential, batch: Batch, eps: float, s: ScheduleValues) -> torch.Tensor:
        lb = margin_lower_bounds(model, batch.x, batch.y, eps, batch.n_classes(model), "ibp")
        return F.cross_entropy(-lb, batch.y)

    def loss(self, model, batch, s):
        ce = F.cross_entropy(batch.clean_logits(model), batch.y)
        terms = {"ce": float(ce.detach())}
        radii = s.radii or ((s.eps, 1.0),)
        robust = ce.new_zeros(())
        if s.kappa < 1.0:
            for i, (eps, w) in enumerate(radii):
                r = self.robust_ce(model, batch, eps, s)
                terms["robust" if len(radii) == 1 else f"robust_{i}"] = float(r.detach())
                robust = robust + w * r
        return s.kappa * ce + (1.0 - s.kappa) * robust, terms


class CROWNIBPTraining(IBPTraining):
    """Zhang et al. 2020: as ibp with margins bounded by beta * CROWN-IBP +
    (1 - beta) * IBP (kappa 1 -> 0, beta 1 -> 0)."""

    name = "crown-ibp"
    kappa_end = 0.0
    linear_bound = "crown-ibp"  # the bound mixed with IBP's by beta (vfnn.bounds method)

    def robust_ce(self, model, batch, eps, s):
        n_classes = batch.n_classes(model)
        lb = margin_lower_bounds(model, batch.x, batch.y, eps, n_classes, "ibp")
        if s.beta > 0:
            lb_linear = margin_lower_bounds(model, batch.x, batch.y, eps, n_classes, self.linear_bound)
            lb = s.beta * lb_linear + (1.0 - s.beta) * lb
        return F.cross_entropy(-lb, batch.y)


class CROWNLBPTraining(CROWNIBPTraining):
    """Lyu et al. 2021: as crown-ibp with CROWN-LBP margins (LBP pre-activation bounds, tight
    lines, one CROWN pass back), mixed with IBP's by beta (kappa 1 -> 0, beta 1 -> 0)."""

    name = "crown-lbp"
    linear_bound = "crown-lbp"


OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (CrossEntropy, PGDTraining, TRADES, IBPTraining, CROWNIBPTraining, CROWNLBPTraining)
}
