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
disagreeing corner), ``both`` (average of the two kinds), or ``persistent`` (one adversarial
neighbour per training image, kept across epochs and moved one signed-gradient step each time the
image is seen, with the input gradient that the training step computes anyway -- the "free"
adversarial examples of Shafahi et al. 2019 and Zheng et al. 2020, applied to NBC).

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

NEIGHBOUR_KINDS = ("uniform", "adversarial", "both", "persistent")
DEFAULT_WEIGHTS = {"nbc": 15.0, "rs": 0.5, "l1": 1e-5}


@dataclass(frozen=True)
class NBCOptions:
    """How NBC picks neighbours and scales its surrogate (defaults documented in docs/training.md)."""

    neighbours: str = "persistent"
    samples: int = 1  # uniform samples per input (kinds "uniform" and "both")
    steps: int = 3  # signed-gradient steps of the adversarial neighbour
    c: float = 1.0  # scale inside tanh
    layer_weights: tuple[float, ...] | None = None  # lNBC; None = equal weights
    every: int = 4  # NBC on every k-th batch only, with k times the weight

    def __post_init__(self) -> None:
        if self.neighbours not in NEIGHBOUR_KINDS:
            raise ValueError(f"NBC neighbours must be one of {NEIGHBOUR_KINDS}, not {self.neighbours!r}")
        if self.samples < 1 or self.steps < 0 or self.c <= 0 or self.every < 1:
            raise ValueError("NBC needs samples >= 1, steps >= 0, c > 0 and every >= 1")
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
    zx, zn = flat_preacts(z_x), flat_preacts(z_n)
    reps = zn.shape[0] // zx.shape[0]
    if reps > 1:
        zx = zx.repeat(reps, 1)
    return (-torch.tanh(1.0 + c * zx * zn) @ column_weights(z_x, weights)).mean()


def flat_preacts(z: list[torch.Tensor]) -> torch.Tensor:
    """All layers' pre-activations side by side, (rows, neurons): one tensor op per step instead of one per layer."""
    return torch.cat([t.flatten(1) for t in z], dim=1)


def column_weights(z: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """lambda_i / n_i for each neuron of layer i, so that ``terms @ w`` is sum_i lambda_i mean_j (terms of layer i)."""
    parts = [torch.full((t[0].numel(),), w / t[0].numel(), dtype=t.dtype, device=t.device)
             for t, w in zip(z, weights, strict=True)]
    return torch.cat(parts)


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
    """A named penalty with a weight; ``loss`` returns the unweighted value.

    ``state``/``load_state`` carry what a regulariser keeps between steps (saved in checkpoints).
    """

    name: str
    weight: float

    def active(self, batch: Batch) -> bool:
        """Whether the penalty is computed on this batch at all."""
        return True

    def loss(self, model: nn.Sequential, batch: Batch, eps: float) -> torch.Tensor:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"regulariser {self.name} keeps no state, the checkpoint has {sorted(state)}")


@dataclass
class NBC(Regulariser):
    nbc: NBCOptions = field(default_factory=NBCOptions)
    # persistent neighbours: offsets u in [-1, 1]^d per training image, neighbour = clip(x + eps * u)
    offsets: torch.Tensor | None = field(default=None, repr=False)

    def active(self, batch: Batch) -> bool:
        return batch.step % self.nbc.every == 0

    def loss(self, model: nn.Sequential, batch: Batch, eps: float) -> torch.Tensor:
        z_x = batch.clean_preacts(model)
        if eps <= 0:
            return z_x[0].new_zeros(())
        if self.nbc.neighbours == "persistent":
            x_n = self._persistent_neighbours(batch, eps)
        else:
            x_n = nbc_neighbours(model, batch.x, z_x, eps, self.nbc)
        _, z_n = forward_with_preacts(model, x_n)
        weights = layer_weights(len(z_x), self.nbc.layer_weights)
        return self.nbc.every * nbc_surrogate(z_x, z_n, self.nbc.c, weights)

    def _persistent_neighbours(self, batch: Batch, eps: float) -> torch.Tensor:
        """The images' stored neighbours; the backward pass moves each offset one step up its gradient."""
        if batch.index is None:
            raise ValueError("persistent NBC neighbours need the batch's training-set indices")
        if self.offsets is None:  # a uniform start, drawn from the (per-epoch seeded) global stream
            shape = (batch.n_total, *batch.x.shape[1:])
            self.offsets = (torch.rand(shape, device=batch.x.device) * 2 - 1).to(torch.float16)
        idx = batch.index
        u = self.offsets[idx].to(batch.x.dtype)
        x_n = (batch.x + eps * u).clamp(0.0, 1.0).requires_grad_(True)

        def step(grad: torch.Tensor) -> None:  # grad of (CE + w * L_NBC): its sign raises the disagreement
            self.offsets[idx] = (u + grad.sign()).clamp(-1.0, 1.0).to(torch.float16)

        x_n.register_hook(step)
        return x_n

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.offsets is None else {"offsets": self.offsets.detach().cpu()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.offsets = state.get("offsets")


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
