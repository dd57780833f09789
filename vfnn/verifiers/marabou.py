"""Marabou (maraboupy >= 2.0, the ``vfnn[marabou]`` extra) driven through its Python API.

Measured pitfalls this adapter avoids (see the shared tool notes):

* Marabou's ONNX parser computes ``x + c`` for ``Sub`` and rejects ``Div``: it is given vfnn's
  normalised export (Gemm/Conv/Relu/Flatten, normalisation folded away), never the user's file.
* Options are a C++ singleton that leaks between solves: every option is passed to
  ``createOptions`` on every solve, and every query is a fresh InputQuery (the solve runs in a
  fresh child process anyway).
* ``evaluateLocalRobustness`` and the Max encoding are avoided; the unsafe region is one native
  disjunction constraint over the output variables.
* Counterexamples lie exactly on the boundary.  The first query asks the exact unsafe region, so
  its ``unsat`` is sound.  When its counterexample does not replay (it sits on the boundary), the
  case is asked again with a strict margin ``A_i y <= b_i - margin`` to get a point that does; if
  that query is unsat, the only violations are within ``margin`` of the boundary and the answer
  is ``unknown``, never ``unsat``.
"""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from vfnn.errors import ModelError
from vfnn.network import Network
from vfnn.verifiers.base import Availability, Option, Problem, RawOutcome, ToolCrashed, UnsupportedProblem, Verifier
from vfnn.verifiers.replay import SPEC_ATOL

_STATS = {  # tool_stats key -> StatisticsUnsignedAttribute name
    "splits": "NUM_SPLITS",
    "visited_states": "NUM_VISITED_TREE_STATES",
    "pops": "NUM_POPS",
    "max_decision_level": "MAX_DECISION_LEVEL",
    "relu_constraints": "NUM_PL_CONSTRAINTS",
    "precision_restorations": "NUM_PRECISION_RESTORATIONS",
}


def marabou_network(net: Network) -> Network:
    """The same function with only operators Marabou's ONNX parser reads correctly (each layer
    kind's :meth:`~vfnn.layers.base.Layer.for_marabou`: e.g. average pooling becomes a diagonal
    convolution, a flat per-element affine a diagonal Gemm)."""
    try:
        layers = tuple(layer.for_marabou(shape) for layer, shape in zip(net.layers, net.input_shapes(), strict=True))
    except ModelError as exc:
        raise UnsupportedProblem(str(exc)) from None
    return Network(net.input_shape, layers, net.name)


class MarabouError(ToolCrashed):
    """Marabou answered ERROR or something this adapter cannot interpret."""


class MarabouVerifier(Verifier):
    """Marabou's DeepSoI/SMT search on vfnn's normalised ONNX export."""

    name = "marabou"
    description = "Marabou (maraboupy) on vfnn's normalised ONNX export, one native disjunction per input box"
    options = (
        Option("margin", float, 1e-3, "strict margin of the re-query when a boundary counterexample does not replay"),
        Option("num_workers", int, 1, "Marabou worker threads"),
        Option("verbosity", int, 0, "Marabou verbosity"),
        Option("snc", bool, False, "split-and-conquer mode"),
        Option("tightening", str, "deeppoly", "bound tightening strategy", ("deeppoly", "sbt", "none")),
    )

    def availability(self) -> Availability:
        hint = "pip install 'vfnn[marabou]' (maraboupy wheels exist for CPython <= 3.12 on Linux/macOS)"
        try:
            v = version("maraboupy")
        except PackageNotFoundError:
            return Availability(False, reason="maraboupy is not installed", install_hint=hint)
        import importlib.util

        if importlib.util.find_spec("maraboupy.MarabouCore") is None:
            return Availability(False, version=v, reason="maraboupy has no compiled MarabouCore", install_hint=hint)
        return Availability(True, version=f"maraboupy {v}")

    def _solve(self, problem: Problem, options: dict[str, Any]) -> RawOutcome:
        import warnings

        warnings.filterwarnings("ignore", message="Tensorflow parser")

        from vfnn.onnx_io import save_onnx

        onnx_path = save_onnx(marabou_network(problem.network), problem.workdir / "normalised.onnx")
        start = time.monotonic()
        stats: dict[str, Any] = {"queries": 0, "tool_time": 0.0}
        for ci, case in enumerate(problem.spec.cases):
            if not case.unsafe:  # nothing is unsafe for this input region
                continue
            left = problem.time_left()
            if left < 1:
                msg = f"case {ci} not started"
                return RawOutcome("timeout", tool_time=stats["tool_time"], tool_stats=stats, message=msg)
            code, x, y = _solve_case(onnx_path, case, 0.0, left, options, stats)
            if code == "sat" and not case.is_unsafe(problem.network.forward(np.asarray([x]).reshape(
                    1, *problem.network.input_shape))[0], SPEC_ATOL):
                code, x, y = _solve_case(onnx_path, case, options["margin"], problem.time_left(), options, stats)
                if code == "unsat":
                    msg = f"case {ci}: violations exist only within {options['margin']:g} of the boundary"
                    return RawOutcome("unknown", tool_time=stats["tool_time"], tool_stats=stats, message=msg)
            if code == "sat":
                return RawOutcome("sat", x, y, tool_time=stats["tool_time"], tool_stats=stats, message=f"case {ci}")
            if code == "unsat":
                continue
            if code == "TIMEOUT":
                return RawOutcome("timeout", tool_time=stats["tool_time"], tool_stats=stats)
            if code in ("UNKNOWN", "QUIT_REQUESTED"):
                msg = f"Marabou said {code}"
                return RawOutcome("unknown", tool_time=stats["tool_time"], tool_stats=stats, message=msg)
            raise MarabouError(f"Marabou returned {code!r} on case {ci}")
        stats["wall_in_child"] = round(time.monotonic() - start, 4)
        return RawOutcome("unsat", tool_time=stats["tool_time"], tool_stats=stats)


def _solve_case(onnx_path: Any, case: Any, margin: float, left: float, options: dict[str, Any],
                stats: dict[str, Any]) -> tuple[str, list[float] | None, list[float] | None]:
    """One Marabou query: the case's input box and its unsafe disjunction, each row tightened by
    ``margin``.  Returns Marabou's exit code (TIMEOUT also when its statistics say so) and, for
    ``sat``, the input and output values; adds the query's statistics to ``stats``."""
    from maraboupy import Marabou, MarabouCore

    net = Marabou.read_onnx(str(onnx_path))
    xs = np.asarray(net.inputVars[0]).reshape(-1)
    ys = np.asarray(net.outputVars[0]).reshape(-1)
    for j, var in enumerate(xs):
        net.setLowerBound(int(var), float(case.lower[j]))
        net.setUpperBound(int(var), float(case.upper[j]))
    ipq = net.getInputQuery()
    disjuncts = []
    for h in case.unsafe:
        conj = []
        for row, b in zip(h.A, h.b, strict=True):
            eq = MarabouCore.Equation(MarabouCore.Equation.LE)
            for j in np.nonzero(row)[0]:
                eq.addAddend(float(row[j]), int(ys[j]))
            eq.setScalar(float(b) - margin)
            conj.append(eq)
        disjuncts.append(conj)
    MarabouCore.addDisjunctionConstraint(ipq, disjuncts)
    opts = Marabou.createOptions(
        timeoutInSeconds=max(1, int(left)), verbosity=options["verbosity"], numWorkers=options["num_workers"],
        snc=options["snc"], tighteningStrategy=options["tightening"], solveWithMILP=False, initialSplits=0,
    )
    exit_code, values, st = MarabouCore.solve(ipq, opts, "")
    stats["queries"] += 1
    stats["tool_time"] += st.getTotalTimeInMicro() / 1e6
    for key, attr in _STATS.items():
        value = st.getUnsignedAttribute(getattr(MarabouCore.StatisticsUnsignedAttribute, attr))
        stats[key] = stats.get(key, 0) + int(value)
    stats["exit_code"] = exit_code
    if exit_code == "sat":
        return "sat", [float(values[int(v)]) for v in xs], [float(values[int(v)]) for v in ys]
    if exit_code != "unsat" and st.hasTimedOut():
        return "TIMEOUT", None, None
    return exit_code, None, None
