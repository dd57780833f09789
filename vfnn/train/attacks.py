"""Inner maximisations over the L-inf ball intersected with the pixel box [0, 1].

All attacks take gradients with respect to the input only (``torch.autograd.grad``), so they
never touch the parameters' ``.grad``; randomness comes from an optional ``torch.Generator`` so
that evaluation does not disturb the training random stream.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip ``x_adv`` into the ball ``|x_adv - x|_inf <= eps`` and into [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def uniform_in_ball(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform sample of the ball around each input, clipped to [0, 1]."""
    noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    return (x + noise).clamp(0.0, 1.0)


def signed_gradient_ascent(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, start: torch.Tensor,
                           eps: float, steps: int, step_size: float | None = None) -> torch.Tensor:
    """Maximise ``objective(x')`` (a scalar sum over the batch) by projected signed-gradient steps.

    The step size defaults to 2.5 * eps / steps (Madry et al. 2018), enough to cross the ball.
    """
    if eps <= 0 or steps <= 0:
        return start.detach()
    alpha = 2.5 * eps / steps if step_size is None else step_size
    x_adv = start.detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x_adv), x_adv)
        x_adv = project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
        step_size: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD with a random start on the cross-entropy (Madry et al. 2018)."""
    start = uniform_in_ball(x, eps, generator)
    return signed_gradient_ascent(lambda xa: F.cross_entropy(model(xa), y, reduction="sum"),
                                  x, start, eps, steps, step_size)


def trades_adversary(model: nn.Module, x: torch.Tensor, eps: float, steps: int,
                     step_size: float | None = None) -> torch.Tensor:
    """TRADES inner maximisation (Zhang et al. 2019): maximise KL(f(x) || f(x')) from x + 0.001 N(0, I)."""
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    start = (x + 0.001 * torch.randn_like(x)).clamp(0.0, 1.0)

    def kl(xa: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(model(xa), dim=1), p_clean, reduction="sum")

    return signed_gradient_ascent(kl, x, start, eps, steps, step_size)
