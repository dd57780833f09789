"""Layer kinds: one class per kind, each owning every form of itself (see :mod:`vfnn.layers.base`).

:data:`KINDS` is the registry every consumer dispatches through; a new kind is one module here
plus its entry in :data:`KINDS` (``tests/test_layers.py`` then checks it against the contract), or,
outside vfnn, one class passed to :func:`register_kind`.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from vfnn.errors import ModelError
from vfnn.layers.affine import ElementwiseAffine, ElementwiseAffineModule
from vfnn.layers.avgpool import AvgPool2d
from vfnn.layers.base import ActivationLayer, AffineLayer, Layer, Shape, pair, per_channel_values
from vfnn.layers.batchnorm import BatchNorm
from vfnn.layers.conv import Conv2d
from vfnn.layers.dense import Dense
from vfnn.layers.flatten import Flatten
from vfnn.layers.paramramp import ParamRamp, ParamRampModule
from vfnn.layers.relu import Relaxation, ReLU

# The registry: every consumer dispatches through it, so it is the one place a kind is added.
KINDS: list[type[Layer]] = [Dense, Conv2d, ElementwiseAffine, BatchNorm, AvgPool2d, Flatten, ReLU, ParamRamp]
# Modules that compute nothing at inference and are dropped when reading a torch model.
SKIPPED_MODULES: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout)
ONNX_OPS: dict[str, type[Layer]] = {op: k for k in KINDS for op in k.onnx_ops}  # updated in place
PLUGIN_GROUP = "vfnn.layers"

__all__ = [
    "KINDS", "ONNX_OPS", "SKIPPED_MODULES", "ActivationLayer", "AffineLayer", "AvgPool2d", "BatchNorm", "Conv2d",
    "Dense", "ElementwiseAffine", "ElementwiseAffineModule", "Flatten", "Layer", "ParamRamp", "ParamRampModule",
    "ReLU", "Relaxation", "Shape", "activation_modules", "kind_of_module", "layer_from_state", "layer_of_module",
    "leaf_modules", "pair", "per_channel_values", "register_kind", "torch_modules",
]


def register_kind(kind: type[Layer]) -> type[Layer]:
    """Add a layer kind (a plug-in, or a test's toy kind); usable as a class decorator."""
    if any(k.kind == kind.kind for k in KINDS):
        raise ValueError(f"a layer kind named {kind.kind!r} is registered already")
    if clash := sorted(set(kind.onnx_ops) & set(ONNX_OPS)):
        raise ValueError(f"ONNX operators {clash} are imported by another kind already")
    KINDS.append(kind)
    ONNX_OPS.update({op: kind for op in kind.onnx_ops})
    return kind


def _load_plugins() -> None:
    """Kinds that other packages declare under the entry-point group ``vfnn.layers`` (``name =
    "package.module:Class"``): loaded on import, so every process (solver children included) has them."""
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            register_kind(ep.load())
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break vfnn
            warnings.warn(f"layer kind plug-in {ep.name!r} ({ep.value}) not loaded: {exc}", stacklevel=2)


def torch_modules() -> tuple[type[nn.Module], ...]:
    """The torch modules some registered kind reads back."""
    return tuple(t for k in KINDS for t in k.module_types)


def activation_modules() -> tuple[type[nn.Module], ...]:
    """The torch modules whose input is a pre-activation (whose neurons can be unstable)."""
    return tuple(t for k in KINDS if issubclass(k, ActivationLayer) for t in k.module_types)


def kind_of_module(m: nn.Module) -> type[Layer]:
    """The layer kind whose torch form ``m`` is (ModelError naming the supported modules)."""
    for k in KINDS:
        if isinstance(m, k.module_types):
            return k
    supported = ", ".join(t.__name__ for t in (*torch_modules(), *SKIPPED_MODULES))
    raise ModelError(f"torch module {type(m).__name__} is not supported (supported: {supported})")


def layer_of_module(m: nn.Module) -> Layer:
    """The Network form of torch module ``m`` (ModelError for a module or setting vfnn cannot represent)."""
    kind = kind_of_module(m)
    if (problem := kind.module_problem(m)) is not None:
        raise ModelError(f"{type(m).__name__}: {problem}")
    return kind.from_module(m)


def leaf_modules(module: nn.Module) -> list[nn.Module]:
    """The modules of a (possibly nested) ``nn.Sequential`` in order, without the skipped ones."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in leaf_modules(child)]
    return [] if isinstance(module, SKIPPED_MODULES) else [module]


def layer_from_state(state: Any) -> Layer:
    """A layer from its ``model.pt`` state (:meth:`Layer.to_state`)."""
    name = state.get("kind") if isinstance(state, dict) else None
    by_name = {k.kind: k for k in KINDS}
    if name not in by_name:
        raise ModelError(f"unknown layer kind {name!r} in a saved model (known: {', '.join(by_name)})")
    return by_name[name].from_state(state)


_load_plugins()
