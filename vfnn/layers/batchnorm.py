"""BatchNorm: batch normalisation kept in a trained network (torch BatchNorm1d/2d).

In eval mode a batch-norm layer is the per-channel affine ``y = gamma (x - mean) / sqrt(var +
eps) + beta`` with the *running* statistics.  That affine is what this kind's MILP map, ONNX export
and folding compute, and what its bound maps compute outside training: bounds describe the
network that is exported and verified.  Within a training step (:func:`batch_statistics`) the
bound maps of a module in training mode use the clean batch's statistics instead, the ones its
forward pass normalises by, so that bound-based losses and cross-entropy train the same network.
``Network.simplified()`` turns it into an
:class:`ElementwiseAffine`, which folds into the preceding Dense/Conv2d, so ``model.onnx`` holds
no batch-norm at all.  The ONNX operator BatchNormalization is imported by ElementwiseAffine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from vfnn.errors import ModelError
from vfnn.layers.affine import ElementwiseAffine
from vfnn.layers.base import AffineLayer, Layer, OnnxPart, Shape, numpy_of, tensor_of
from vfnn.layers.dense import Dense

if TYPE_CHECKING:
    from vfnn.bounds.patches import Patches


BATCH_STATS = "_vfnn_batch_stats"  # attribute a training step's clean batch statistics live in


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Within one training step: the first forward pass of each batch-norm module in training mode
    (the clean batch) records its batch mean and (biased) variance, and the bounds use them, as
    auto_LiRPA does in training.  Otherwise a bound-based loss would train the running-statistics
    network while cross-entropy trains the batch-statistics one, and the optimiser can make the
    first stable by breaking it (measured: NRS-pruned nets at 97 % train and 31 % eval accuracy)."""
    def record(m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if m.training and getattr(m, BATCH_STATS, None) is None:
            x = args[0]
            dims = [0, 2, 3] if x.dim() == 4 else [0]
            setattr(m, BATCH_STATS, (x.mean(dims), x.var(dims, unbiased=False)))

    norms = [m for m in model.modules() if isinstance(m, BatchNorm.module_types)]
    hooks = [m.register_forward_pre_hook(record) for m in norms]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for m in norms:
            setattr(m, BATCH_STATS, None)


def eval_affine(m: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of a torch batch-norm, shaped to broadcast over a tensor whose
    trailing axes are the layer's input (C,) or (C, H, W): with the running statistics (eval mode,
    the exported network), or in training mode with the batch statistics that
    :func:`batch_statistics` recorded; gamma and beta (and batch statistics) keep their gradients."""
    c = m.num_features
    gamma = m.weight if m.weight is not None else torch.ones(c, device=like.device)
    beta = m.bias if m.bias is not None else torch.zeros(c, device=like.device)
    stats = getattr(m, BATCH_STATS, None) if m.training else None
    mean, var = (m.running_mean, m.running_var) if stats is None else stats
    scale = gamma.to(like.dtype) / torch.sqrt(var.to(like.dtype) + m.eps)
    shift = beta.to(like.dtype) - mean.to(like.dtype) * scale
    extra = (1, 1) if isinstance(m, nn.BatchNorm2d) else ()
    return scale.reshape(c, *extra), shift.reshape(c, *extra)


@dataclass(frozen=True, eq=False)
class BatchNorm(AffineLayer):
    """Batch-norm over channel axis 0: ``gamma``, ``beta``, running ``mean`` and ``var`` (each of
    length C), ``eps``; ``spatial`` for (C, H, W) inputs (BatchNorm2d), else (C,) (BatchNorm1d)."""

    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float = 1e-5
    spatial: bool = False

    kind: ClassVar[str] = "batchnorm"
    module_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.BatchNorm1d, nn.BatchNorm2d)
    onnx_ops: ClassVar[tuple[str, ...]] = ()  # BatchNormalization imports as ElementwiseAffine

    def __repr__(self) -> str:
        return f"BatchNorm({self.gamma.size}, spatial={self.spatial})"

    def problem(self) -> str | None:
        c = self.gamma.shape
        if len(c) != 1 or any(a.shape != c for a in (self.beta, self.mean, self.var)):
            return "gamma, beta, mean and var must be vectors of one length"
        if not self.eps > 0 or not np.all(self.var >= 0):
            return "eps must be > 0 and the running variances >= 0"
        return None

    def output_shape(self, shape: Shape) -> Shape:
        want = "(C, H, W)" if self.spatial else "(C,)"
        if len(shape) != (3 if self.spatial else 1) or shape[0] != self.gamma.size:
            raise ModelError(f"expects a {want} input with C = {self.gamma.size}, gets {shape}")
        return shape

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """The eval-mode affine per channel (float64)."""
        scale = self.gamma.astype(np.float64) / np.sqrt(self.var.astype(np.float64) + self.eps)
        return scale, self.beta.astype(np.float64) - self.mean.astype(np.float64) * scale

    def for_folding(self, shape: Shape) -> Layer:
        s, t = self.scale_shift()
        extra = (1,) * (len(shape) - 1)
        return ElementwiseAffine(np.broadcast_to(s.reshape(-1, *extra), shape).astype(np.float32),
                                 np.broadcast_to(t.reshape(-1, *extra), shape).astype(np.float32))

    # -- torch
    def to_module(self) -> nn.Module:
        """The torch module in eval mode (it computes this layer); training switches it with ``train()``."""
        m = (nn.BatchNorm2d if self.spatial else nn.BatchNorm1d)(self.gamma.size, eps=self.eps)
        m.weight.data, m.bias.data = tensor_of(self.gamma), tensor_of(self.beta)
        m.running_mean.copy_(tensor_of(self.mean))
        m.running_var.copy_(tensor_of(self.var))
        return m.eval()

    @classmethod
    def module_problem(cls, m: nn.Module) -> str | None:
        if not m.track_running_stats or m.running_mean is None:
            return "batch-norm without running statistics has no eval-mode affine"
        return None

    @classmethod
    def from_module(cls, m: nn.Module) -> BatchNorm:
        c = m.num_features
        gamma = np.ones(c, np.float32) if m.weight is None else numpy_of(m.weight)
        return cls(gamma, numpy_of(m.bias, c), numpy_of(m.running_mean), numpy_of(m.running_var), float(m.eps),
                   isinstance(m, nn.BatchNorm2d))

    # -- bounds (the eval-mode affine, see the module docstring)
    @classmethod
    def center(cls, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        scale, shift = eval_affine(m, x)
        return x * scale + shift

    @classmethod
    def radius(cls, m: nn.Module, d: torch.Tensor) -> torch.Tensor:
        return d * eval_affine(m, d)[0].abs()

    @classmethod
    def backward(cls, m: nn.Module, A: torch.Tensor, in_shape: Shape, out_shape: Shape
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        scale, shift = eval_affine(m, A)
        return A * scale, (A * shift).flatten(-len(in_shape)).sum(-1)

    @classmethod
    def backward_patches(cls, m: nn.Module, p: Patches, in_shape: Shape) -> Patches:
        return p.through_elementwise(*eval_affine(m, p.A))

    # -- verifiers
    def linear_map(self, shape: Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s, t = self.scale_shift()
        per = int(np.prod(shape[1:]))
        idx = np.arange(int(np.prod(shape)))
        return idx, idx, np.repeat(s, per), np.repeat(t, per)

    # -- ONNX: a diagonal 1x1 Conv (images) or Gemm (vectors), the operators every verifier reads
    def to_onnx(self, index: int, x: str, y: str) -> OnnxPart:
        s, t = (v.astype(np.float32) for v in self.scale_shift())
        if self.spatial:
            return ElementwiseAffine(s[:, None, None], t[:, None, None]).to_onnx(index, x, y)
        return Dense(np.diag(s), t).to_onnx(index, x, y)
