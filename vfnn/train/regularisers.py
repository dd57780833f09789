"""Regularisers added to the base objective: NBC, RS (ReLU stability) and L1.

NBC -- neuron behaviour consistency (Liu et al., AAAI 2025), as implemented here
(docs/training.md explains every choice):

    z_i(x)          pre-activation (ReLU input) of the neurons of ReLU layer i; state = [z > 0]
    x'              neighbours of x in B(x, eps) = {x' : |x' - x|_inf <= eps} intersected with [0, 1]
    L_NBC(x, x')    = sum_i lambda_i * mean_j [ -tanh(1 + c * z_ij(x) * z_ij(x')) ]
    lambda_i        per-layer weights (lNBC), normalised to sum to 1 (default: equal)

The product z(x) z(x') is positive exactly when the neuron has the same state at x and x', so the
loss is the sampled analogue of the RS loss -tanh(1 + l u) (Xiao et al. 2019), with the interval
bounds (l, u) of the ball replaced by two points of it.  Neighbours: ``uniform`` samples of the
ball, ``adversarial`` ones (signed-gradient steps that *maximise* L_NBC from a uniform start,
projected back into the ball: the honest choice, since uniform samples rarely find the
disagreeing corner), or ``both`` (average of the two kinds).

RS (Xiao et al. 2019):  L_RS = mean_i mean_j [ -tanh(1 + l_ij * u_ij) ] with (l, u) the IBP bounds
of the pre-activations over B(x, eps).  L1: sum of |w| over Linear/Conv weights (not biases).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vfnn.train.attacks import signed_gradient_ascent, uniform_in_ball
from vfnn.train.models import forward_with_preacts
from vfnn.train.objectives import Batch, input_box

NEIGHBOUR_KINDS = ("uniform", "adversarial", "both")
DEFAULT_WEIGHTS = {"nbc": 5.0, "rs": 0.5, "l1": 1e-5}


@dataclass(frozen=True)
class NBCOptions:
    """How NBC picks neighbours and scales its surrogate (defaults documented in docs/training.md)."""

    neighbours: str = "both"
    samples: int = 1  # uniform samples per input (kinds "uniform" and "both")
    steps: int = 3  # signed-gradient steps of the adversarial neighbour
    c: float = 1.0  # scale inside tanh
    layer_weights: tuple[float, ...] | None = None  # lNBC; None = equal weights

    def __post_init__(self) -> None:
        if self.neighbours not in NEIGHBOUR_KINDS:
            raise ValueError(f"NBC neighbours must be one of {NEIGHBOUR_KINDS}, not {self.neighbours!r}")
        if self.samples < 1 or self.steps < 0 or self.c <= 0:
            raise ValueError("NBC needs samples >= 1, steps >= 0 and c > 0")
        if self.layer_weights is not None and (min(self.layer_weights) < 0 or sum(self.layer_weights) <= 0):
            raise ValueError("NBC layer weights must be non-negative with a positive sum")


def layer_weights(n_layers: int, weights: tuple[float, ...] | None) -> list[float]:
    """Per-layer weights normalised to sum to 1 (equal when ``weights`` is None)."""
    if weights is None:
        return [1.0 / n_layers] * n_layers
    if len(weights) != n_layers:
        raise ValueError(f"{len(weights)} NBC layer weights given, the model has {n_layers} ReLU layers")
    total = float(sum(weights))
    return [w / total for w in weights]


def nbc_surrogate(z_x: list[torch.Tensor], z_n: list[torch.Tensor], c: float, weights: list[float]) -> torch.Tensor:
    """sum_i lambda_i mean_j -tanh(1 + c z_ij(x) z_ij(x')) (the batch mean is included in mean_j).

    ``z_n`` may hold k neighbours per input stacked along the batch (k * B rows, neighbour-major);
    ``z_x`` is repeated to match.
    """
    total = z_x[0].new_zeros(())
    for zx, zn, w in zip(z_x, z_n, weights, strict=True):
        reps = zn.shape[0] // zx.shape[0]
        zx = zx.repeat(reps, *([1] * (zx.dim() - 1))) if reps > 1 else zx
        total = total + w * (-torch.tanh(1.0 + c * zx * zn)).mean()
    return total


def nbc_neighbours(model: nn.Sequential, x: torch.Tensor, z_x: list[torch.Tensor], eps: float, opts: NBCOptions,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Neighbours of ``x`` stacked neighbour-major: k uniform samples, an adversarial one, or both."""
    parts = []
    if opts.neighbours in ("uniform", "both"):
        parts += [uniform_in_ball(x, eps, generator) for _ in range(opts.samples)]
    if opts.neighbours in ("adversarial", "both"):
        z_fixed = [z.detach() for z in z_x]
        weights = layer_weights(len(z_x), opts.layer_weights)

        def disagreement(xa: torch.Tensor) -> torch.Tensor:
            return nbc_surrogate(z_fixed, forward_with_preacts(model, xa)[1], opts.c, weights) * xa.shape[0]

        parts.append(signed_gradient_ascent(disagreement, x, uniform_in_ball(x, eps, generator), eps, opts.steps))
    return torch.cat(parts)


def nbc_agreement(model: nn.Sequential, x: torch.Tensor, x_n: torch.Tensor) -> tuple[list[float], float]:
    """The NBC metric: fraction of (neuron, neighbour) pairs whose state [z > 0] agrees, per layer and overall."""
    with torch.no_grad():
        _, z_x = forward_with_preacts(model, x)
        _, z_n = forward_with_preacts(model, x_n)
    per_layer, agree, count = [], 0.0, 0
    for zx, zn in zip(z_x, z_n, strict=True):
        reps = zn.shape[0] // zx.shape[0]
        same = ((zx > 0).repeat(reps, *([1] * (zx.dim() - 1))) == (zn > 0))
        per_layer.append(float(same.float().mean()))
        agree += float(same.sum())
        count += same.numel()
    return per_layer, agree / max(count, 1)


@dataclass
class Regulariser:
    """A named penalty with a weight; ``loss`` returns the unweighted value."""

    name: str
    weight: float

    def loss(self, model: nn.Sequential, batch: Batch, eps: float) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class NBC(Regulariser):
    nbc: NBCOptions = field(default_factory=NBCOptions)

    def loss(self, model: nn.Sequential, batch: Batch, eps: float) -> torch.Tensor:
        z_x = batch.clean_preacts(model)
        if eps <= 0:
            return z_x[0].new_zeros(())
        x_n = nbc_neighbours(model, batch.x, z_x, eps, self.nbc)
        _, z_n = forward_with_preacts(model, x_n)
        return nbc_surrogate(z_x, z_n, self.nbc.c, layer_weights(len(z_x), self.nbc.layer_weights))


@dataclass
class RS(Regulariser):
    def loss(self, model: nn.Sequential, batch: Batch, eps: float) -> torch.Tensor:
        from vfnn.bounds import compute_bounds

        lower, upper = input_box(batch.x, eps)
        pre = compute_bounds(model, lower, upper, None, method="ibp").pre_activation
        terms = [(-torch.tanh(1.0 + lo * up)).mean() for lo, up in pre]
        return torch.stack(terms).mean()


@dataclass
class L1(Regulariser):
    def loss(self, model: nn.Sequential, batch: Batch, eps: float) -> torch.Tensor:
        return sum(m.weight.abs().sum() for m in model if isinstance(m, (nn.Linear, nn.Conv2d)))  # type: ignore[return-value]


REGULARISERS: dict[str, type[Regulariser]] = {"nbc": NBC, "rs": RS, "l1": L1}


def make_regulariser(name: str, weight: float, nbc_options: NBCOptions | None = None) -> Regulariser:
    """Factory used by the trainer (``name`` already validated by the CLI parser)."""
    if name == "nbc":
        return NBC(name, weight, nbc=nbc_options or NBCOptions())
    return REGULARISERS[name](name, weight)
