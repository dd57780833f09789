"""A network cut at its ReLU layers: ``chain_0, ReLU, chain_1, ReLU, ..., chain_L``.

Each chain is a (possibly empty) sequence of affine modules, so the pre-activation of ReLU layer
``i`` is the output of ``chains[i]`` and the network output is the output of ``chains[L]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vfnn.bounds.affine import Affine, check_module
from vfnn.errors import ModelError

_SKIPPED = (nn.Identity, nn.Dropout)


def _leaves(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


@dataclass
class Plan:
    """``chains[i]`` ends at ReLU layer ``i`` (the last one at the output); shapes exclude the batch."""

    input_shape: tuple[int, ...]
    chains: list[list[Affine]]
    pre_shapes: list[tuple[int, ...]]  # input shape of each ReLU layer
    output_shape: tuple[int, ...]

    @property
    def n_relu(self) -> int:
        return len(self.pre_shapes)

    def chain_out_shape(self, i: int) -> tuple[int, ...]:
        return self.output_shape if i == self.n_relu else self.pre_shapes[i]


def make_plan(model: nn.Module, input_shape: tuple[int, ...]) -> Plan:
    """Split ``model`` at its ReLUs and record every module's input and output shape."""
    modules = [m for m in _leaves(model) if not isinstance(m, _SKIPPED)]
    for i, m in enumerate(modules):
        check_module(m, i)
    chains: list[list[Affine]] = [[]]
    pre_shapes: list[tuple[int, ...]] = []
    shape = tuple(input_shape)
    p = next(iter(model.parameters()), None)
    x = torch.zeros((1, *shape), device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None else torch.float32)
    with torch.no_grad():
        for i, m in enumerate(modules):
            if isinstance(m, nn.ReLU):
                pre_shapes.append(shape)
                chains.append([])
                continue
            try:
                x = m(x)
            except RuntimeError as e:
                raise ModelError(f"module {i} ({type(m).__name__}) rejects input shape {shape}: {e}") from None
            out = tuple(x.shape[1:])
            chains[-1].append(Affine(m, shape, out))
            shape = out
    return Plan(tuple(input_shape), chains, pre_shapes, shape)
