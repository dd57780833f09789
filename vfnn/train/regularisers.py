"""Regularisers added to the base objective: NBC, RS (ReLU stability), NRS (normalised RS) and L1.

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

RS (Xiao et al. 2019):  L_RS = mean_i mean_j [ -tanh(1 + l_ij * u_ij) ] with (l, u) the IBP (or CROWN)
bounds of the pre-activations over B(x, eps).  NRS (Li et al. 2023): the same with l*u divided by
gamma_c^2 + eps0 for a neuron right after batch-norm channel c (gamma detached), exactly as the
paper's code.  L1: sum of |w| over Linear/Conv weights (not biases).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from vfnn.layers import BatchNorm, activation_modules, leaf_modules
from vfnn.train.attacks import signed_gradient_ascent, uniform_in_ball
from vfnn.train.components import Component, TrainConfigError, TrainOption
from vfnn.train.models import forward_with_preacts
from vfnn.train.objectives import Batch, ScheduleValues, input_box

NEIGHBOUR_KINDS = ("uniform", "adversarial", "both", "persistent")
# Persistent offsets in [-1, 1]: bfloat16 halves float32's memory (94 MB for MNIST) and, unlike
# float16, converts fast on CPU (a batch's gather + update 0.27 ms against 0.75 ms).
OFFSET_DTYPE = torch.bfloat16


def normalised_weights(n_layers: int, weights: tuple[float, ...] | None) -> list[float]:
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


def nbc_neighbours(model: nn.Sequential, x: torch.Tensor, z_x: list[torch.Tensor], eps: float, kind: str, *,
                   samples: int = 1, steps: int = 3, c: float = 1.0, layer_weights: tuple[float, ...] | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Neighbours of ``x`` stacked neighbour-major: ``samples`` uniform ones (``uniform``), an adversarial one
    (``adversarial``: ``steps`` signed-gradient steps up the surrogate with ``c`` and ``layer_weights``), or both."""
    parts = []
    if kind in ("uniform", "both"):
        parts += [uniform_in_ball(x, eps, generator) for _ in range(samples)]
    if kind in ("adversarial", "both"):
        z_fixed = [z.detach() for z in z_x]
        weights = normalised_weights(len(z_x), layer_weights)

        def disagreement(xa: torch.Tensor) -> torch.Tensor:
            return nbc_surrogate(z_fixed, forward_with_preacts(model, xa)[1], c, weights) * xa.shape[0]

        parts.append(signed_gradient_ascent(disagreement, x, uniform_in_ball(x, eps, generator), eps, steps))
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


class Regulariser(Component):
    """A named penalty with a weight; ``loss`` returns the unweighted value.

    ``state``/``load_state`` carry what a regulariser keeps between steps (saved in checkpoints).
    """

    default_weight: ClassVar[float]

    def __init__(self, settings: Mapping[str, Any] | None = None, weight: float | None = None):
        super().__init__(settings)
        self.weight = self.default_weight if weight is None else weight

    def active(self, batch: Batch) -> bool:
        """Whether the penalty is computed on this batch at all."""
        return True

    def loss(self, model: nn.Sequential, batch: Batch, s: ScheduleValues) -> torch.Tensor:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"regulariser {self.name} keeps no state, the checkpoint has {sorted(state)}")


class NBC(Regulariser):
    """neuron behaviour consistency (Liu et al. 2025):
    L = sum_i lambda_i * mean_j -tanh(1 + c * z_ij(x) * z_ij(x'))
    z = ReLU inputs of layer i; x' = neighbours in the eps-ball (and [0,1])
    chosen by --nbc-neighbours: persistent (one adversarial neighbour per
    training image, kept across epochs and moved one signed-gradient step
    by each training step's own input gradient), uniform, adversarial
    (signed-gradient steps maximising L from a uniform start) or both."""

    name = "nbc"
    default_weight = 15.0
    options = (
        TrainOption("neighbours", str, "persistent", "Kind of x' (above).", choices=NEIGHBOUR_KINDS),
        TrainOption("samples", int, 1, "Uniform neighbours per input.", minimum=1),
        TrainOption("steps", int, 3, "Steps of the adversarial neighbour.", minimum=0),
        TrainOption("c", float, 1.0, "c in -tanh(1 + c z(x) z(x')).", minimum=0, strict=True),
        TrainOption("layer_weights", tuple, None, "lNBC: one weight per ReLU layer, e.g. 1,0.5,0.25 "
                    "(normalised to sum 1) [default: equal].", minimum=0),
        TrainOption("every", int, 4, "NBC on every K-th batch only (its weight times K): a K-th of the cost.",
                    minimum=1),
    )

    def __init__(self, settings: Mapping[str, Any] | None = None, weight: float | None = None):
        super().__init__(settings, weight)
        # persistent neighbours: offsets u in [-1, 1]^d per training image, neighbour = clip(x + eps * u)
        self.offsets: torch.Tensor | None = None
        self.drawn = torch.zeros(0, dtype=torch.bool)  # which offsets have had their uniform start

    @classmethod
    def check_options(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        out = super().check_options(values)
        if out["layer_weights"] is not None and sum(out["layer_weights"]) <= 0:
            raise TrainConfigError("--nbc-layer-weights must be non-negative with a positive sum")
        return out

    @classmethod
    def check_model(cls, settings: Mapping[str, Any], relu_layers: int) -> None:
        weights = settings["layer_weights"]
        if weights is not None and len(weights) != relu_layers:
            raise TrainConfigError(f"--nbc-layer-weights has {len(weights)} values, "
                                   f"the model has {relu_layers} ReLU layers")

    def active(self, batch: Batch) -> bool:
        return batch.step % self.settings["every"] == 0

    def loss(self, model: nn.Sequential, batch: Batch, s: ScheduleValues) -> torch.Tensor:
        opts, eps = self.settings, s.target_eps
        z_x = batch.clean_preacts(model)
        if eps <= 0:
            return z_x[0].new_zeros(())
        if opts["neighbours"] == "persistent":
            x_n = self._persistent_neighbours(batch, eps)
        else:
            x_n = nbc_neighbours(model, batch.x, z_x, eps, opts["neighbours"], samples=opts["samples"],
                                 steps=opts["steps"], c=opts["c"], layer_weights=opts["layer_weights"])
        _, z_n = forward_with_preacts(model, x_n)
        weights = normalised_weights(len(z_x), opts["layer_weights"])
        return opts["every"] * nbc_surrogate(z_x, z_n, opts["c"], weights)

    def _persistent_neighbours(self, batch: Batch, eps: float) -> torch.Tensor:
        """The images' stored neighbours; the backward pass moves each offset one step up its gradient.

        An image's offset gets its uniform start when its first NBC batch comes (from the per-epoch
        seeded global stream), not all at once: with ``every`` K only a K-th of the images are seen
        in an epoch, and drawing 60000 MNIST offsets up front cost half a CE epoch."""
        if batch.index is None:
            raise ValueError("persistent NBC neighbours need the batch's training-set indices")
        if self.offsets is None:
            self.offsets = torch.zeros((batch.n_total, *batch.x.shape[1:]), dtype=OFFSET_DTYPE, device=batch.x.device)
            self.drawn = torch.zeros(batch.n_total, dtype=torch.bool, device=batch.x.device)
        idx = batch.index
        u = self.offsets[idx].to(batch.x.dtype)
        new = ~self.drawn[idx]
        if bool(new.any()):
            u[new] = torch.rand((int(new.sum()), *u.shape[1:]), device=u.device) * 2 - 1
            self.offsets[idx[new]] = u[new].to(OFFSET_DTYPE)
            self.drawn[idx] = True
        x_n = (batch.x + eps * u).clamp(0.0, 1.0).requires_grad_(True)

        def step(grad: torch.Tensor) -> None:  # grad of (CE + w * L_NBC): its sign raises the disagreement
            self.offsets[idx] = (u + grad.sign()).clamp(-1.0, 1.0).to(OFFSET_DTYPE)

        x_n.register_hook(step)
        return x_n

    def state(self) -> dict[str, torch.Tensor]:
        if self.offsets is None:
            return {}
        return {"offsets": self.offsets.detach().cpu(), "drawn": self.drawn.cpu()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.offsets = state.get("offsets")
        if self.offsets is not None:  # checkpoints before Dec 2026: float16, every offset drawn
            self.offsets = self.offsets.to(OFFSET_DTYPE)
            self.drawn = state.get("drawn", torch.ones(self.offsets.shape[0], dtype=torch.bool))


class RS(Regulariser):
    """ReLU stability (Xiao et al. 2019): mean over layers and neurons of
    -tanh(1 + l*u), (l,u) = bounds of the ReLU inputs over the eps-ball
    (--rs-bounds: ibp, which is also what CROWN-IBP computes for them, or
    the tighter and dearer crown)."""

    name = "rs"
    default_weight = 0.5
    options = (TrainOption("bounds", str, "ibp", "Bounds of the activation inputs (also nrs's).",
                           choices=("ibp", "crown")),)

    def neuron_terms(self, model: nn.Sequential, x: torch.Tensor, eps: float) -> list[torch.Tensor]:
        """-tanh(1 + l*u / d) per neuron of each activation layer, (B, *layer shape) each; d = 1 for RS."""
        from vfnn.bounds import compute_bounds

        lower, upper = input_box(x, eps)
        pre = compute_bounds(model, lower, upper, None, method=self.settings["bounds"]).pre_activation
        return [-torch.tanh(1.0 + lo * up / d) for (lo, up), d in zip(pre, self.divisors(model), strict=True)]

    def divisors(self, model: nn.Sequential) -> list[float | torch.Tensor]:
        """What divides l*u in each activation layer (1: plain RS)."""
        return [1.0] * len(batchnorm_gains(model))

    def loss(self, model: nn.Sequential, batch: Batch, s: ScheduleValues) -> torch.Tensor:
        return torch.stack([t.mean() for t in self.neuron_terms(model, batch.x, s.target_eps)]).mean()


def batchnorm_gains(model: nn.Sequential) -> list[torch.Tensor | None]:
    """Per activation layer, the gamma of the batch-norm right before it (shaped to broadcast over
    the layer's neurons, detached), or None where no batch-norm precedes it."""
    gains: list[torch.Tensor | None] = []
    prev: nn.Module | None = None
    acts = activation_modules()
    for m in leaf_modules(model):
        if isinstance(m, acts):
            bn = prev if isinstance(prev, BatchNorm.module_types) and prev.weight is not None else None
            gains.append(None if bn is None else
                         bn.weight.detach().reshape(-1, *([1, 1] if isinstance(bn, nn.BatchNorm2d) else [])))
        prev = m
    return gains


class NRS(RS):
    """normalised ReLU stability (Li et al. 2023): RS with l*u divided by
    gamma^2 + eps0, gamma = the (detached) gain of the batch-norm channel
    right before the ReLU; plain RS where none precedes it."""

    name = "nrs"
    default_weight = 0.5
    options = (TrainOption("eps0", float, 1e-8, "eps0 in -tanh(1 + l*u / (gamma^2 + eps0)).", minimum=0,
                           strict=True),)

    def divisors(self, model: nn.Sequential) -> list[float | torch.Tensor]:
        return [1.0 if g is None else g ** 2 + self.settings["eps0"] for g in batchnorm_gains(model)]


class L1(Regulariser):
    """sum of |w| over all weight matrices/kernels (not biases)."""

    name = "l1"
    default_weight = 1e-5

    def loss(self, model: nn.Sequential, batch: Batch, s: ScheduleValues) -> torch.Tensor:
        return sum(m.weight.abs().sum() for m in model if isinstance(m, (nn.Linear, nn.Conv2d)))  # type: ignore[return-value]


REGULARISERS: dict[str, type[Regulariser]] = {cls.name: cls for cls in (NBC, RS, NRS, L1)}
