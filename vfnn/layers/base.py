"""The contract every layer kind fulfils, and the small helpers kinds share.

A layer kind is one frozen dataclass (the :class:`~vfnn.network.Network` form: float32 numpy
arrays and plain hyper-parameters) that also knows every other form of itself: its torch module,
its ONNX nodes, its maps for bound propagation, its MILP encoding, its Marabou-readable form and
its ``model.pt`` state.  Consumers (network, onnx_io, bounds, milp, marabou, train) call these
methods and never switch on layer types, so a new kind is one class in one file of this package.

Two families: :class:`AffineLayer` (a linear map plus a constant, bounded exactly by interval
and back-substitution) and :class:`ActivationLayer` (elementwise, relaxed by linear bounds).
The abstract methods are the contract; ``tests/test_layers.py`` checks every registered kind
implements them and round-trips through every form.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from vfnn.errors import ModelError

if TYPE_CHECKING:
    import onnx

    from vfnn.bounds.patches import Patches
    from vfnn.onnx_io import Importer
    from vfnn.verifiers.milp import Encoding

Shape = tuple[int, ...]
OnnxPart = tuple[list["onnx.NodeProto"], list["onnx.TensorProto"]]  # nodes and initializers


def pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    """torch's int-or-pair hyper-parameters as a pair."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def tensor_of(a: np.ndarray) -> torch.Tensor:
    """A float32 torch copy of a numpy array (modules must not share memory with the Network)."""
    return torch.from_numpy(f32(a).copy())


def numpy_of(t: torch.Tensor | None, n: int = 0) -> np.ndarray:
    """A module's parameter as float32 numpy (zeros of length ``n`` for a missing bias)."""
    return np.zeros(n, np.float32) if t is None else t.detach().cpu().float().numpy().copy()


def per_channel_values(a: np.ndarray) -> np.ndarray | None:
    """The per-channel values of a (C, H, W) array that is constant over H and W, else None."""
    flat = a.reshape(a.shape[0], -1)
    return flat[:, 0] if np.all(flat == flat[:, :1]) else None


@dataclasses.dataclass(frozen=True, eq=False)
class Layer(ABC):
    """One layer of a :class:`~vfnn.network.Network`."""

    kind: ClassVar[str]  # the name in model.pt
    module_types: ClassVar[tuple[type[nn.Module], ...]]  # torch modules this kind reads back
    onnx_ops: ClassVar[tuple[str, ...]]  # ONNX operators whose import this kind owns
    # Capabilities that consumers ask for instead of testing a layer's class:
    reshape_only: ClassVar[bool] = False  # moves no value (Flatten): nothing to relax or fold
    exact_under_ibp: ClassVar[bool] = False  # one affine map of the input box: IBP gives the exact interval
    spec_mergeable: ClassVar[bool] = False  # a (out, in) ``weight`` matrix that spec rows C can absorb (C @ W)

    # -- the Network form ---------------------------------------------------------------------
    @abstractmethod
    def output_shape(self, shape: Shape) -> Shape:
        """The output shape for input ``shape`` (no batch axis); ModelError if it does not fit."""

    def problem(self) -> str | None:
        """What is malformed in the arrays or hyper-parameters (ranks, sizes, strides), else None."""
        return None

    def arrays(self) -> dict[str, np.ndarray]:
        """The layer's numpy arrays by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}

    def as_float32(self) -> Layer:
        """The same layer with float32 arrays and tuple hyper-parameters."""
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            changes[f.name] = f32(v) if isinstance(v, np.ndarray) else tuple(v) if isinstance(v, list) else v
        return dataclasses.replace(self, **changes)

    def nonfinite_part(self) -> str | None:
        """The name of the first array holding NaN or inf, else None.

        Bounds and solvers silently produce nonsense (0 unstable neurons, "HiGHS Empty") on such
        weights, so importers refuse them with the layer named."""
        return next((name for name, a in self.arrays().items() if not np.all(np.isfinite(a))), None)

    def fold_after(self, aff: Any) -> Layer | None:
        """This layer followed by the ElementwiseAffine ``aff`` as one layer, or None when not exact."""
        return None

    def fold_before(self, aff: Any) -> Layer | None:
        """The ElementwiseAffine ``aff`` followed by this layer as one layer, or None when not exact."""
        return None

    def for_folding(self, shape: Shape) -> Layer:
        """The layer as :meth:`Network.simplified` folds it, for input ``shape`` (default: itself;
        batch-norm becomes its eval-mode ElementwiseAffine)."""
        return self

    # -- torch ----------------------------------------------------------------------------------
    @abstractmethod
    def to_module(self) -> nn.Module:
        """A fresh float32 torch module computing this layer."""

    @classmethod
    @abstractmethod
    def from_module(cls, m: nn.Module) -> Layer:
        """Read back one of :attr:`module_types` whose :meth:`module_problem` is None
        (:func:`vfnn.layers.layer_of_module` checks that first)."""

    @classmethod
    def module_problem(cls, m: nn.Module) -> str | None:
        """What bound propagation cannot handle in module ``m`` (settings the class allows), else None."""
        return None

    # -- ONNX -------------------------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, imp: Importer, node: onnx.NodeProto) -> None:
        """Import ``node`` (one of :attr:`onnx_ops`), pushing layers onto the importer.  Kinds
        that export as other operators (ParamRamp) own none and keep this default."""
        raise imp.fail(node, f"{cls.__name__} imports no ONNX operator")

    @abstractmethod
    def to_onnx(self, index: int, x: str, y: str) -> OnnxPart:
        """Nodes computing ``y`` from ``x`` (initializer names end in ``index``)."""

    def export_form(self, shape: Shape) -> tuple[Layer, ...]:
        """The layers that stand for this one in an exported graph, for input ``shape``: itself,
        or (a kind ONNX has no operator for) plain layers computing the same function, whose added
        linear maps the export merges into the neighbouring layers (:mod:`vfnn.layers.merge`)."""
        return (self,)

    # -- verifiers --------------------------------------------------------------------------------
    @abstractmethod
    def encode_milp(self, enc: Encoding, v: np.ndarray, shape: Shape, bounds: tuple[np.ndarray, np.ndarray]
                    ) -> np.ndarray:
        """MILP variables of the output, given the input variables ``v`` (flat; -1 is the constant
        0) and the input ``shape``.  ``bounds`` (flat, possibly infinite) are pre-activation
        bounds: of the input for an activation, of the output for a layer feeding one."""

    def permute_input(self, perm: np.ndarray) -> tuple[Layer, np.ndarray | None] | None:
        """This layer reading its flat input through ``perm`` (a pending ONNX Transpose): the new
        layer and the permutation still pending after it, or None when it cannot absorb one."""
        return None

    def for_marabou(self, shape: Shape) -> Layer:
        """The same function in operators Marabou's ONNX parser reads correctly (default: itself)."""
        return self

    # -- model.pt -----------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Plain data (tensors, ints, lists) that ``torch.load(weights_only=True)`` reads back."""
        state: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            state[f.name] = tensor_of(v) if isinstance(v, np.ndarray) else list(v) if isinstance(v, tuple) else v
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Layer:
        """Inverse of :meth:`to_state` (ModelError when fields are missing or unknown)."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = set(state) - {"kind"}
        if given != names:
            raise ModelError(f"a saved {cls.kind} layer has fields {sorted(given)}, expected {sorted(names)}")
        values = {k: v.numpy().copy() if isinstance(v, torch.Tensor) else tuple(v) if isinstance(v, list) else v
                  for k, v in state.items() if k != "kind"}
        return cls(**values)


class AffineLayer(Layer):
    """An affine map: bounds propagate through it exactly.

    The bound maps are class methods on the torch module, because training bounds modules whose
    parameters carry gradients (the Network form is a float32 copy)."""

    @classmethod
    @abstractmethod
    def center(cls, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The module applied to ``x``, in the dtype of ``x``."""

    @classmethod
    @abstractmethod
    def radius(cls, m: nn.Module, d: torch.Tensor) -> torch.Tensor:
        """The linear part with ``|W|``: maps an interval radius to the output radius."""

    @classmethod
    def interval(cls, m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval arithmetic in centre/radius form (as auto_LiRPA's IBP)."""
        mid, diff = (hi + lo) / 2.0, (hi - lo) / 2.0
        c, r = cls.center(m, mid), cls.radius(m, diff)
        return c - r, c + r

    @classmethod
    @abstractmethod
    def backward(cls, m: nn.Module, A: torch.Tensor, in_shape: Shape, out_shape: Shape
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``A`` (..., *out_shape) holds linear functions of the output; return the same functions
        of the input (..., *in_shape) and the constant term (...), None when there is none."""

    @classmethod
    def backward_patches(cls, m: nn.Module, p: Patches, in_shape: Shape) -> Patches | None:
        """:meth:`backward` for rows kept as patches (:mod:`vfnn.bounds.patches`), or None when
        the kind has no patches form (the rows then continue densely)."""
        return None

    @abstractmethod
    def linear_map(self, shape: Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The map on the flat input (C order) as sparse triples (rows, cols, vals) and its bias."""

    def encode_milp(self, enc: Encoding, v: np.ndarray, shape: Shape, bounds: tuple[np.ndarray, np.ndarray]
                    ) -> np.ndarray:
        rows, cols, vals, bias = self.linear_map(shape)
        return enc.linear(v, rows, cols, vals, bias, len(bias), *bounds)


class ActivationLayer(Layer):
    """An elementwise piecewise-linear activation: bounds relax it, verifiers split on it.

    As for :class:`AffineLayer`, the bound maps take the torch module (a trainable activation's
    parameters carry gradients in training)."""

    slope_optimisable: ClassVar[bool] = False  # alpha-CROWN may optimise its lower slopes (ReLU)
    # The relaxation bound methods use when none is asked for: a network with a kind whose
    # default is "tight" is bounded with tight lines (see vfnn.bounds.compute_bounds).
    default_relaxation: ClassVar[str] = "adaptive"

    @classmethod
    @abstractmethod
    def relax(cls, m: nn.Module, lower: torch.Tensor, upper: torch.Tensor, tight: bool = False) -> Any:
        """CROWN's linear lower and upper bounds of the activation over [lower, upper]; ``tight``:
        Lyu et al.'s lines, which meet IBP's bounds at both ends (CROWN/LBP never looser than IBP)."""

    @classmethod
    @abstractmethod
    def interval(cls, m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact interval of the output (the activation is monotone)."""

    @classmethod
    @abstractmethod
    def unstable(cls, m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Which neurons are unstable over pre-activation bounds [lo, hi]: a kink lies strictly inside."""

    # The names :meth:`states` returns, in display order, and those of them that are unstable
    # (their union is :meth:`unstable`); a kind with more pieces than ReLU overrides all three.
    state_names: ClassVar[tuple[str, ...]] = ("inactive", "active", "unstable")
    unstable_states: ClassVar[tuple[str, ...]] = ("unstable",)

    @classmethod
    def states(cls, m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> dict[str, torch.Tensor]:
        """Boolean masks, one per name of :attr:`state_names`, that partition the neurons by where
        [lo, hi] lies relative to the kinks, so statistics can count each piece of a
        multi-kink activation without knowing the kind.  Default (ReLU): unstable, active
        (stable with ``lo >= 0``) and inactive (the other stable ones)."""
        unstable = cls.unstable(m, lo, hi)
        active = ~unstable & (lo >= 0)
        return {"inactive": ~unstable & ~active, "active": active, "unstable": unstable}

    def output_shape(self, shape: Shape) -> Shape:
        return shape
