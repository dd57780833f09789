"""Specifications: where the inputs may lie and which outputs are unsafe.

VNN-LIB semantics throughout: a spec describes the *unsafe* set, so ``sat`` means a
counterexample exists (the property is violated) and ``unsat`` means the property holds.

A :class:`Spec` is a disjunction of :class:`SpecCase` s.  Each case is an input box and an
unsafe output region in disjunctive normal form: the output ``y`` is unsafe when, for some
:class:`Halfspaces` ``h`` in ``case.unsafe``, every row of ``h.A @ y <= h.b`` holds.  This is
the shape VNN-COMP files have after the ``(assert (or (and X.. Y..) ...))`` statements are
expanded, so one type covers plain boxes, input disjunctions and mixed ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vfnn.errors import SpecError


@dataclass(frozen=True, eq=False)
class Halfspaces:
    """A conjunction of linear constraints ``A @ y <= b`` over the flat output vector."""

    A: np.ndarray  # (k, n_outputs), float64
    b: np.ndarray  # (k,), float64

    def holds(self, y: np.ndarray, tol: float = 0.0) -> bool:
        """True when every constraint holds at ``y`` up to ``tol``."""
        return bool(np.all(self.A @ np.asarray(y, np.float64).reshape(-1) <= self.b + tol))


@dataclass(frozen=True, eq=False)
class SpecCase:
    """An input box and the DNF of unsafe output regions that go with it."""

    lower: np.ndarray  # (n_inputs,), float64
    upper: np.ndarray  # (n_inputs,), float64
    unsafe: tuple[Halfspaces, ...]

    def contains_input(self, x: np.ndarray, tol: float = 0.0) -> bool:
        x = np.asarray(x, np.float64).reshape(-1)
        return bool(np.all(x >= self.lower - tol) and np.all(x <= self.upper + tol))

    def is_unsafe(self, y: np.ndarray, tol: float = 0.0) -> bool:
        return any(h.holds(y, tol) for h in self.unsafe)


@dataclass(frozen=True, eq=False)
class Spec:
    """A property in VNN-LIB semantics: unsafe iff some case has an input in its box whose
    output is in that case's unsafe region."""

    cases: tuple[SpecCase, ...]
    n_inputs: int
    n_outputs: int
    name: str = "spec"

    def __post_init__(self) -> None:
        if not self.cases:
            raise SpecError(f"{self.name}: the specification has no input region")
        for i, c in enumerate(self.cases):
            if c.lower.shape != (self.n_inputs,) or c.upper.shape != (self.n_inputs,):
                raise SpecError(f"{self.name}: case {i} box does not have {self.n_inputs} inputs")
            if not (np.all(np.isfinite(c.lower)) and np.all(np.isfinite(c.upper))):
                raise SpecError(f"{self.name}: case {i} has an infinite or NaN input bound (inputs need a finite box)")
            if np.any(c.lower > c.upper):
                j = int(np.argmax(c.lower > c.upper))
                raise SpecError(f"{self.name}: empty input box, X_{j} has lower {c.lower[j]} > upper {c.upper[j]}")
            for h in c.unsafe:
                if h.A.ndim != 2 or h.A.shape[1] != self.n_outputs or h.b.shape != (h.A.shape[0],):
                    raise SpecError(f"{self.name}: case {i} has an output constraint of the wrong size")
                if not (np.all(np.isfinite(h.A)) and np.all(np.isfinite(h.b))):
                    raise SpecError(f"{self.name}: case {i} has an infinite or NaN output constraint")

    def check_fits(self, n_inputs: int, n_outputs: int, model: str = "the model") -> None:
        """Raise a one-line SpecError unless the spec's variables match the network's."""
        if (self.n_inputs, self.n_outputs) != (n_inputs, n_outputs):
            raise SpecError(
                f"{self.name} declares {self.n_inputs} inputs and {self.n_outputs} outputs, "
                f"but {model} has {n_inputs} inputs and {n_outputs} outputs"
            )

    def find_violation(self, x: np.ndarray, y: np.ndarray, tol: float = 0.0) -> int | None:
        """Index of a case whose box holds ``x`` and whose unsafe region holds ``y``, else None."""
        for i, c in enumerate(self.cases):
            if c.contains_input(x, tol) and c.is_unsafe(y, tol):
                return i
        return None


def robustness_spec(
    x: np.ndarray,
    label: int,
    eps: float,
    n_classes: int,
    clip: tuple[float, float] | None = (0.0, 1.0),
    name: str | None = None,
) -> Spec:
    """L-infinity local robustness of ``x`` (flattened) with radius ``eps``.

    Unsafe when some other class scores at least as high as ``label``:
    one disjunct ``y_label - y_j <= 0`` per ``j != label``.
    """
    x = np.asarray(x, np.float64).reshape(-1)
    lower, upper = x - eps, x + eps
    if clip is not None:
        lower, upper = np.clip(lower, *clip), np.clip(upper, *clip)
    unsafe = []
    for j in range(n_classes):
        if j == label:
            continue
        row = np.zeros((1, n_classes))
        row[0, label], row[0, j] = 1.0, -1.0
        unsafe.append(Halfspaces(row, np.zeros(1)))
    return Spec((SpecCase(lower, upper, tuple(unsafe)),), x.size, n_classes, name or f"robust_label{label}_eps{eps:g}")
