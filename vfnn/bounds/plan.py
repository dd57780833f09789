"""A network cut at its activation layers: ``chain_0, act_0, chain_1, act_1, ..., chain_L``.

Each chain is a (possibly empty) sequence of affine modules, so the pre-activation of activation
layer ``i`` is the output of ``chains[i]`` and the network output is the output of ``chains[L]``.
Every module carries its layer kind (:mod:`vfnn.layers`), which supplies the bound maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vfnn.errors import ModelError
from vfnn.layers import ActivationLayer, AffineLayer, Relaxation, Shape, kind_of_module, leaf_modules


@dataclass
class Affine:
    """One affine module, its kind, and the shapes (no batch dimension) of its input and output."""

    kind: type[AffineLayer]
    module: nn.Module
    in_shape: Shape
    out_shape: Shape

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kind.interval(self.module, lo, hi)

    def backward(self, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``A`` (..., *out_shape) holds linear functions of the output; return the same functions
        of the input (..., *in_shape) and the constant term (...), None when there is none."""
        return self.kind.backward(self.module, A, self.in_shape, self.out_shape)


@dataclass
class Activation:
    """One activation module and its kind."""

    kind: type[ActivationLayer]
    module: nn.Module

    def relax(self, lower: torch.Tensor, upper: torch.Tensor, tight: bool = False) -> Relaxation:
        return self.kind.relax(self.module, lower, upper, tight)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kind.interval(self.module, lo, hi)


@dataclass
class Plan:
    """``chains[i]`` ends at activation ``i`` (the last one at the output); shapes exclude the batch."""

    input_shape: Shape
    chains: list[list[Affine]]
    activations: list[Activation]
    pre_shapes: list[Shape]  # input shape of each activation layer
    output_shape: Shape

    @property
    def n_relu(self) -> int:
        return len(self.pre_shapes)

    def chain_out_shape(self, i: int) -> Shape:
        return self.output_shape if i == self.n_relu else self.pre_shapes[i]

    def relax(self, i: int, lower: torch.Tensor, upper: torch.Tensor) -> Relaxation:
        return self.activations[i].relax(lower, upper)


def _kind(m: nn.Module, index: int) -> type:
    where = f"module {index} ({type(m).__name__})"
    try:
        kind = kind_of_module(m)
    except ModelError:
        raise ModelError(f"{where}: not supported by bound propagation") from None
    if (problem := kind.module_problem(m)) is not None:
        raise ModelError(f"{where}: {problem}")
    return kind


def make_plan(model: nn.Module, input_shape: Shape) -> Plan:
    """Split ``model`` at its activations and record every module's input and output shape."""
    modules = leaf_modules(model)
    kinds = [_kind(m, i) for i, m in enumerate(modules)]
    chains: list[list[Affine]] = [[]]
    activations: list[Activation] = []
    pre_shapes: list[Shape] = []
    shape = tuple(input_shape)
    p = next(iter(model.parameters()), None)
    x = torch.zeros((1, *shape), device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None else torch.float32)
    with torch.no_grad():
        for i, (m, kind) in enumerate(zip(modules, kinds, strict=True)):
            if issubclass(kind, ActivationLayer):
                activations.append(Activation(kind, m))
                pre_shapes.append(shape)
                chains.append([])
                continue
            try:  # the bound map, not forward(): batch-norm in training mode would use and update batch statistics
                x = kind.center(m, x)
            except RuntimeError as e:
                raise ModelError(f"module {i} ({type(m).__name__}) rejects input shape {shape}: {e}") from None
            out = tuple(x.shape[1:])
            chains[-1].append(Affine(kind, m, shape, out))
            shape = out
    return Plan(tuple(input_shape), chains, activations, pre_shapes, shape)
