"""The one in-memory model of a feed-forward piecewise-linear network.

A :class:`Network` is an input shape (without the batch dimension) and a sequence of layers.
Everything in vfnn (ONNX import/export, bounds, verifiers, training) speaks this model.  Each
layer kind is one class in :mod:`vfnn.layers` that owns all of its forms (torch, ONNX, bounds,
MILP, Marabou, model.pt); this module only chains them.

Weights are float32 numpy arrays, as in ONNX. ``to_torch`` and ``from_torch`` convert to and
from a ``torch.nn.Sequential`` made only of the modules of the registered kinds (:func:`vfnn.layers.torch_modules`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from vfnn.errors import ModelError
from vfnn.layers import (
    ActivationLayer,
    AvgPool2d,
    Conv2d,
    Dense,
    ElementwiseAffine,
    ElementwiseAffineModule,
    Flatten,
    Layer,
    ReLU,
    layer_from_state,
    layer_of_module,
    leaf_modules,
    per_channel_values,
)
from vfnn.layers.affine import fold_affines

__all__ = [
    "AvgPool2d", "Conv2d", "Dense", "ElementwiseAffine", "ElementwiseAffineModule", "Flatten",
    "Layer", "Network", "ReLU", "per_channel_values",
]


@dataclass(frozen=True, eq=False)
class Network:
    """A feed-forward network: ``input_shape`` (no batch dimension) and ``layers`` in order."""

    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    name: str = field(default="network")

    def __post_init__(self) -> None:
        # One precision everywhere: bounds, MILP, ONNX export and replay must all see the same numbers.
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise ModelError(f"layer {i} ({type(layer).__name__}) is not a vfnn layer")
        object.__setattr__(self, "layers", tuple(layer.as_float32() for layer in self.layers))
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "_shapes", self._layer_shapes())

    def _layer_shapes(self) -> tuple[tuple[int, ...], ...]:
        shapes, shape = [], self.input_shape
        for i, layer in enumerate(self.layers):
            where = f"layer {i} ({type(layer).__name__})"
            if (problem := layer.problem()) is not None:
                raise ModelError(f"{where}: {problem}")
            try:
                shape = tuple(layer.output_shape(shape))
            except ModelError as exc:
                raise ModelError(f"{where}: {exc}") from None
            shapes.append(shape)
        return tuple(shapes)

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def output_shape(self) -> tuple[int, ...]:
        shapes = self._shapes  # type: ignore[attr-defined]
        return shapes[-1] if shapes else self.input_shape

    @property
    def output_size(self) -> int:
        return int(np.prod(self.output_shape))

    def layer_shapes(self) -> list[tuple[int, ...]]:
        """Output shape of every layer, in order."""
        return list(self._shapes)  # type: ignore[attr-defined]

    def input_shapes(self) -> list[tuple[int, ...]]:
        """Input shape of every layer, in order."""
        return [self.input_shape, *self.layer_shapes()[:-1]][: len(self.layers)]

    @property
    def relu_count(self) -> int:
        """Number of activation neurons (the ones that can be unstable)."""
        return sum(int(np.prod(s)) for layer, s in zip(self.layers, self.layer_shapes(), strict=True)
                   if isinstance(layer, ActivationLayer))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Evaluate on a batch ``(N, *input_shape)`` in float64 numpy; returns ``(N, outputs)``."""
        with torch.no_grad():
            module = self.to_torch().double()
            out = module(torch.as_tensor(np.asarray(x, dtype=np.float64)))
        return out.reshape(out.shape[0], -1).numpy()

    def to_torch(self) -> nn.Sequential:
        """A fresh ``nn.Sequential`` computing the same function (float32), one module per layer."""
        return nn.Sequential(*(layer.to_module() for layer in self.layers))

    @staticmethod
    def from_torch(module: nn.Module, input_shape: tuple[int, ...], name: str = "network",
                   simplify: bool = True) -> Network:
        """Read back a ``nn.Sequential`` of the registered kinds' modules (nesting is flattened;
        Identity and Dropout are dropped).  ``simplify=False`` keeps one layer per module, so
        that ``to_torch`` rebuilds the same module structure (what a checkpoint needs)."""
        layers = tuple(layer_of_module(m) for m in leaf_modules(module))
        net = Network(tuple(input_shape), layers, name)
        return net.simplified() if simplify else net

    def simplified(self) -> Network:
        """Fold every ElementwiseAffine into a neighbouring linear layer where that is exact."""
        layers = [layer.for_folding(shape) for layer, shape in zip(self.layers, self.input_shapes(), strict=True)]
        return Network(self.input_shape, fold_affines(layers), self.name)

    def to_state(self) -> dict[str, Any]:
        """Plain data that ``torch.load(weights_only=True)`` reads (the model.pt form)."""
        return {"input_shape": list(self.input_shape), "name": self.name,
                "layers": [layer.to_state() for layer in self.layers]}

    @staticmethod
    def from_state(state: Any) -> Network:
        """Inverse of :meth:`to_state` (ModelError for anything malformed)."""
        if not isinstance(state, dict) or not {"input_shape", "layers"} <= set(state):
            raise ModelError("a saved network needs 'input_shape' and 'layers'")
        layers = state["layers"]
        if not isinstance(layers, list):
            raise ModelError("a saved network's 'layers' is not a list")
        return Network(tuple(state["input_shape"]), tuple(layer_from_state(s) for s in layers),
                       str(state.get("name", "network")))
