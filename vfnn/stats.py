"""The unstable-neuron record: how hard a property is for a ReLU verifier.

A ReLU neuron is *unstable* on a property when the bounds of its pre-activation over the input
region straddle zero (l < 0 < u); only those neurons need case splits, so their number is the
figure that verification time follows.  Every verification result carries an
:class:`UnstableRecord` computed by vfnn's own bounds, so the numbers compare across verifiers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LayerStats:
    """Counts for one ReLU layer (``layer`` is its position among the ReLU layers, from 0)."""

    layer: int
    neurons: int
    unstable: int
    active: int  # l >= 0: the ReLU is the identity on the whole region
    inactive: int  # u <= 0: the ReLU outputs 0 on the whole region


@dataclass(frozen=True)
class UnstableRecord:
    """Per-layer neuron states and the bounds of the spec's output functions.

    ``method`` is the bound method (``ibp``, ``crown`` or ``alpha-crown``).  ``output_lower`` and
    ``output_upper`` bound the rows of the spec's output constraints ``A @ y`` (all disjuncts of
    all cases, in file order).  When a spec has several input boxes, counts are summed over them.
    """

    method: str
    layers: tuple[LayerStats, ...]
    output_lower: tuple[float, ...]
    output_upper: tuple[float, ...]

    @property
    def unstable(self) -> int:
        return sum(s.unstable for s in self.layers)

    @property
    def neurons(self) -> int:
        return sum(s.neurons for s in self.layers)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_unstable"] = self.unstable
        d["total_neurons"] = self.neurons
        return d

    @staticmethod
    def from_dict(d: dict) -> UnstableRecord:
        return UnstableRecord(
            d["method"],
            tuple(LayerStats(**s) for s in d["layers"]),
            tuple(d["output_lower"]),
            tuple(d["output_upper"]),
        )
