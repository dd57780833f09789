"""The unstable-neuron record: how hard a property is for a ReLU verifier.

A ReLU neuron is *unstable* on a property when the bounds of its pre-activation over the input
region straddle zero (l < 0 < u); only those neurons need case splits, so their number is the
figure that verification time follows.  Every verification result carries an
:class:`UnstableRecord` computed by vfnn's own bounds, so the numbers compare across verifiers.
Activations with more kinks (ParamRamp: at 0 and at its bend r) are counted by their layer kind's
own states as well (:meth:`vfnn.layers.ActivationLayer.states`), since a neuron crossing both
kinks costs a verifier two splits and one crossing neither may sit on either stable piece.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vfnn.network import Network
    from vfnn.spec import Spec


@dataclass(frozen=True)
class LayerStats:
    """Counts for one activation layer (``layer`` is its position among them, from 0).

    ``states`` counts the layer kind's own partition of its neurons (its ``state_names`` in
    order: ReLU's ``inactive``/``active``/``unstable``; ParamRamp's six, ``left``, ``middle``,
    ``right``, ``left-unstable``, ``right-unstable``, ``both``), which the three figures above
    cannot tell apart for an activation with two kinks.  ``kind`` is the layer kind's name.
    Records written before these existed load with ``kind`` "" and ``states`` empty."""

    layer: int
    neurons: int
    unstable: int  # a kink lies strictly inside the bounds
    active: int  # stable with l >= 0 (a ReLU is the identity on the whole region)
    inactive: int  # stable with l < 0, i.e. u <= 0 (a ReLU outputs 0 on the whole region)
    kind: str = ""
    states: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def from_dict(d: dict) -> LayerStats:
        """Inverse of ``asdict``; keys it does not know (a later version's) are left out."""
        known = {f.name for f in fields(LayerStats)}
        s = {k: v for k, v in d.items() if k in known}
        if "states" in s:
            s["states"] = {str(k): int(v) for k, v in s["states"].items()}
        return LayerStats(**s)


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

    def state_totals(self) -> dict[str, int]:
        """Per-state counts summed over the layers (names in first-seen order)."""
        totals: dict[str, int] = {}
        for s in self.layers:
            for name, n in s.states.items():
                totals[name] = totals.get(name, 0) + n
        return totals

    def to_dict(self) -> dict:
        d = asdict(self)
        for layer in d["layers"]:  # a record read from before kind/states existed is written back unchanged
            if not layer["kind"] and not layer["states"]:
                del layer["kind"], layer["states"]
        d["total_unstable"] = self.unstable
        d["total_neurons"] = self.neurons
        return d

    @staticmethod
    def from_dict(d: dict) -> UnstableRecord:
        return UnstableRecord(
            d["method"],
            tuple(LayerStats.from_dict(s) for s in d["layers"]),
            tuple(d["output_lower"]),
            tuple(d["output_upper"]),
        )


def unstable_record(network: Network, spec: Spec, method: str = "crown") -> UnstableRecord:
    """Bound ``network`` over every input box of ``spec`` and count neuron states per activation layer.

    Each case is bounded on its own (float64, on the CPU).  ``C`` for a case is the stack of
    the A rows of all its unsafe disjuncts, so ``output_lower``/``output_upper`` bound every row
    of ``A @ y`` (cases in order, disjuncts in order, rows in order).  Per-layer counts are summed
    over the cases: with two boxes a neuron unstable on both counts twice, so ``neurons`` is the
    layer width times the number of cases.
    """
    import torch

    from vfnn.bounds import compute_bounds

    spec.check_fits(network.input_size, network.output_size, network.name)
    cases = spec.cases
    lower = torch.as_tensor(np.stack([c.lower for c in cases]), dtype=torch.float64)
    upper = torch.as_tensor(np.stack([c.upper for c in cases]), dtype=torch.float64)
    lower, upper = lower.reshape(len(cases), *network.input_shape), upper.reshape(len(cases), *network.input_shape)
    rows = [np.concatenate([h.A for h in c.unsafe], 0) if c.unsafe else np.zeros((0, spec.n_outputs)) for c in cases]
    k = max(r.shape[0] for r in rows)
    C = np.zeros((len(cases), max(k, 1), spec.n_outputs))
    for i, r in enumerate(rows):
        C[i, : r.shape[0]] = r
    model = network.to_torch().double()
    # One box at a time, so that a record never depends on how cases are grouped, whatever
    # ``intermediate`` rule compute_bounds is asked for (its default is per box already).
    pre: list[tuple[torch.Tensor, torch.Tensor]] = []
    out_lo, out_hi = [], []
    with torch.no_grad():
        for i in range(len(cases)):
            b = compute_bounds(model, lower[i: i + 1], upper[i: i + 1], torch.as_tensor(C[i: i + 1]),
                               method=method)  # type: ignore[arg-type]
            pre = [(torch.cat([p[0], lo]), torch.cat([p[1], hi])) for p, (lo, hi) in zip(pre, b.pre_activation,
                                                                                          strict=True)] \
                if pre else list(b.pre_activation)
            out_lo.append(b.lower[0])
            out_hi.append(b.upper[0])
    from vfnn.layers import activation_modules, kind_of_module

    acts = [m for m in model if isinstance(m, activation_modules())]
    layers = []
    for i, ((lo, up), act) in enumerate(zip(pre, acts, strict=True)):
        kind = kind_of_module(act)
        # unstable: a kink of the activation lies inside the bounds (ReLU: l < 0 < u; ParamRamp also l < r < u)
        unstable = kind.unstable(act, lo, up)
        masks = kind.states(act, lo, up)
        active = ~unstable & (lo >= 0)
        layers.append(LayerStats(i, int(lo.numel()), int(unstable.sum()), int(active.sum()),
                                 int((~unstable & ~active).sum()), kind.kind,
                                 {name: int(masks[name].sum()) for name in kind.state_names}))
    out_l = [float(v) for i, r in enumerate(rows) for v in out_lo[i][: r.shape[0]].tolist()]
    out_u = [float(v) for i, r in enumerate(rows) for v in out_hi[i][: r.shape[0]].tolist()]
    return UnstableRecord(method, tuple(layers), tuple(out_l), tuple(out_u))
