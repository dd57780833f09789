"""The :class:`Verifier` contract.

The base class owns everything that every verifier needs (after DNNV's design): loading and
normalising the network, checking that the spec fits it, trivial cases, the unstable-neuron
record (vfnn's own bounds, the same method for every tool), running the tool in an isolated child
process with a hard deadline and a memory cap, and replaying every counterexample on the original
ONNX file.  An adapter declares ``name`` and ``options`` and implements two methods:

* :meth:`Verifier.availability` -- is the tool installed, which version, how to install it;
* :meth:`Verifier._solve` -- runs *in the child process*: turn a :class:`Problem` into the tool's
  input, run it until ``problem.deadline``, and parse the answer into a :class:`RawOutcome`.

A ``sat`` from a hook is only a claim: :meth:`Verifier.verify` turns it into ``sat`` when the
counterexample replays with onnxruntime, and into ``error`` (with the reason) when it does not.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vfnn.errors import VerifierUnavailable, VfnnError
from vfnn.network import Network
from vfnn.spec import Spec
from vfnn.verifiers.process import run_isolated
from vfnn.verifiers.replay import SPEC_ATOL, validate_counterexample
from vfnn.verifiers.result import Status, VerificationResult


class VerifierFailure(Exception):
    """Raised by a hook (in the child) when a solve cannot give an answer; becomes ``error``."""


class UnsupportedProblem(VerifierFailure):
    """The tool cannot express this network or property (not a crash: nothing was run)."""


class ToolCrashed(VerifierFailure):
    """The tool ran and failed (bad exit code, unparsable output)."""


class OptionError(VfnnError):
    """An unknown option name or a value of the wrong type (a user error: one line)."""


@dataclass(frozen=True)
class Option:
    """One tunable parameter of a verifier, declared as data so the CLI can list and parse it."""

    name: str
    type: type  # int, float, str or bool
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None

    def parse(self, value: Any, verifier: str) -> Any:
        """Convert a CLI string (or a Python value) to ``type``; raise OptionError otherwise."""
        try:
            if self.type is bool and isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                out: Any = value.lower() in ("1", "true", "yes", "on")
            elif value is None:
                out = None
            else:
                out = self.type(value)
        except (TypeError, ValueError):
            raise OptionError(
                f"{verifier}: option {self.name}={value!r} is not a valid {self.type.__name__}"
            ) from None
        if self.choices is not None and out not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise OptionError(f"{verifier}: option {self.name}={value!r} must be one of {allowed}")
        return out


def _default_memory_mb() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError):
        return 8192
    return int(total * 0.75)


#: Options every verifier accepts (they configure the isolation, not the tool).
COMMON_OPTIONS: tuple[Option, ...] = (
    Option("memory_mb", int, _default_memory_mb(), "address-space cap of the solver process in MiB (0: none)"),
    Option("grace", float, 5.0, "seconds past the timeout before the solver's process group is killed"),
)


@dataclass(frozen=True)
class Availability:
    """Whether a verifier can run here; ``reason`` and ``install_hint`` say why not and what to do."""

    available: bool
    version: str | None = None
    reason: str | None = None
    install_hint: str | None = None


@dataclass(frozen=True)
class Problem:
    """Everything a hook gets (picklable: it crosses into the child process).

    ``onnx_path`` is the original model file (for tools that must read the user's file);
    tools that are confused by unnormalised graphs should write ``network`` with
    :func:`vfnn.onnx_io.save_onnx` into ``workdir`` instead.  ``deadline`` is a
    ``time.monotonic()`` value (the clock is shared between processes on Linux).
    """

    network: Network
    onnx_path: Path
    spec: Spec
    spec_path: Path | None
    deadline: float
    timeout: float
    workdir: Path

    def time_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


@dataclass(frozen=True)
class RawOutcome:
    """A hook's answer before vfnn checks it.  ``counterexample`` is a flat input in the spec's
    ``X_i`` order; ``output`` the tool's own output there (checked against onnxruntime if given)."""

    status: Status
    counterexample: list[float] | None = None
    output: list[float] | None = None
    tool_time: float | None = None
    tool_stats: dict[str, Any] = field(default_factory=dict)
    message: str = ""


def _solve_in_child(verifier: Verifier, problem: Problem, options: dict[str, Any]) -> RawOutcome:
    return verifier._solve(problem, options)


class Verifier(ABC):
    """Base class of every adapter (register it under the ``vfnn.verifiers`` entry-point group)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()

    # -- to implement ---------------------------------------------------------------------------
    @abstractmethod
    def availability(self) -> Availability:
        """Check (cheaply, without solving) whether the tool can run here."""

    @abstractmethod
    def _solve(self, problem: Problem, options: dict[str, Any]) -> RawOutcome:
        """Solve ``problem`` before ``problem.deadline``; runs in an isolated child process.
        Raise :class:`UnsupportedProblem` / :class:`ToolCrashed` (or subclasses) on failure."""

    # -- provided -------------------------------------------------------------------------------
    @classmethod
    def all_options(cls) -> tuple[Option, ...]:
        return cls.options + COMMON_OPTIONS

    @classmethod
    def resolve_options(cls, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with ``given`` (strings are parsed); unknown names raise OptionError."""
        table = {o.name: o for o in cls.all_options()}
        out = {name: o.default for name, o in table.items()}
        for key, value in (given or {}).items():
            if key not in table:
                raise OptionError(f"{cls.name}: unknown option {key!r} (known: {', '.join(sorted(table))})")
            out[key] = table[key].parse(value, cls.name)
        return out

    def verify(
        self,
        network: Network | str | Path,
        spec: Spec,
        timeout: float,
        options: Mapping[str, Any] | None = None,
        *,
        spec_path: str | Path | None = None,
        unstable_method: str | None = "crown",
    ) -> VerificationResult:
        """Decide ``spec`` on ``network`` (an ONNX path, or a Network that is exported for replay).

        Raises VfnnError for user problems (unreadable model, spec that does not fit, tool not
        available, bad option); every problem of the tool itself becomes an ``error`` result.
        """
        from vfnn.onnx_io import load_onnx, save_onnx

        start = time.monotonic()
        opts = self.resolve_options(options)
        avail = self.availability()
        if not avail.available:
            hint = f" ({avail.install_hint})" if avail.install_hint else ""
            raise VerifierUnavailable(f"verifier {self.name} is not available: {avail.reason}{hint}")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise OptionError(f"timeout must be a positive number of seconds, got {timeout}")
        with tempfile.TemporaryDirectory(prefix=f"vfnn-{self.name}-") as tmp:
            workdir = Path(tmp)
            if isinstance(network, Network):
                net, onnx_path, model_path = network, save_onnx(network, workdir / "original.onnx"), None
            else:
                onnx_path = Path(network)
                net, model_path = load_onnx(onnx_path), str(onnx_path)
            spec.check_fits(net.input_size, net.output_size, model=model_path or net.name)
            unstable = None
            if unstable_method:
                from vfnn.stats import unstable_record

                unstable = unstable_record(net, spec, method=unstable_method)

            def finish(raw: RawOutcome, x: list[float] | None = None, y: list[float] | None = None,
                       case: int | None = None) -> VerificationResult:
                return VerificationResult(
                    status=raw.status, verifier=self.name, verifier_version=avail.version, options=opts,
                    wall_time=time.monotonic() - start, tool_time=raw.tool_time, timeout=float(timeout),
                    counterexample_input=x, counterexample_output=y, case_index=case, unstable=unstable,
                    tool_stats=dict(raw.tool_stats), message=raw.message, model_path=model_path,
                    spec_path=None if spec_path is None else str(spec_path),
                )

            raw = self._trivial(spec)
            if raw is None:
                problem = Problem(net, onnx_path, spec, None if spec_path is None else Path(spec_path),
                                  time.monotonic() + timeout, float(timeout), workdir)
                raw = self._run(problem, opts)
            if raw.status != "sat":
                return finish(raw)
            ok, x, y, case, reason = self._replay(onnx_path, spec, raw)
            if not ok:
                bad = RawOutcome("error", tool_time=raw.tool_time, tool_stats=raw.tool_stats,
                                 message=f"counterexample rejected by replay: {reason}")
                return finish(bad)
            if "differs" in reason:  # keep the tool/onnxruntime mismatch visible to the user
                raw = replace(raw, message="; ".join(m for m in (raw.message, reason) if m))
            return finish(raw, x, y, case)

    # -- internals ------------------------------------------------------------------------------
    @staticmethod
    def _trivial(spec: Spec) -> RawOutcome | None:
        """Answer specs that need no tool: nothing unsafe at all, or an unconstrained disjunct."""
        if all(not c.unsafe for c in spec.cases):
            return RawOutcome("unsat", tool_time=0.0, message="trivially unsat: the spec has no unsafe output region")
        for c in spec.cases:
            if any(h.A.shape[0] == 0 for h in c.unsafe):
                x = ((c.lower + c.upper) / 2).tolist()
                msg = "trivially sat: an unsafe disjunct has no constraint"
                return RawOutcome("sat", x, tool_time=0.0, message=msg)
        return None

    def _run(self, problem: Problem, opts: dict[str, Any]) -> RawOutcome:
        """Run the hook in a child process and translate every way it can end into a RawOutcome."""
        limit = problem.timeout + float(opts["grace"])
        out = run_isolated(_solve_in_child, (self, problem, opts), limit_s=limit, workdir=problem.workdir / "child",
                           memory_mb=int(opts["memory_mb"]) or None)
        if out.kind == "returned":
            if not isinstance(out.value, RawOutcome):
                return RawOutcome("error", message=f"{self.name} adapter returned {type(out.value).__name__}")
            return out.value
        if out.kind == "killed":
            return RawOutcome("timeout", message=f"killed at the hard deadline ({limit:g} s = timeout + grace)",
                              tool_stats={"output_tail": out.output_tail[-500:]})
        if out.kind == "raised":
            exc = out.value
            if isinstance(exc, MemoryError):
                msg = f"out of memory (cap {opts['memory_mb']} MiB)"
            elif isinstance(exc, UnsupportedProblem):
                msg = f"unsupported: {exc}"
            elif isinstance(exc, VerifierFailure):
                msg = f"{self.name} failed: {exc}"
            else:
                last = out.traceback.strip().splitlines()[-3:]
                msg = f"{self.name} adapter raised {type(exc).__name__}: {exc} ({' | '.join(last)})"
            return RawOutcome("error", message=msg, tool_stats={"output_tail": out.output_tail[-500:]})
        return RawOutcome("error", message=out.describe_death(), tool_stats={"output_tail": out.output_tail[-500:]})

    @staticmethod
    def _replay(onnx_path: Path, spec: Spec, raw: RawOutcome
                ) -> tuple[bool, list[float] | None, list[float] | None, int | None, str]:
        """Replay a claimed counterexample, clipped into each box it is within 1e-4 of."""
        x = np.asarray(raw.counterexample, np.float64).reshape(-1)
        if x.size != spec.n_inputs:
            return False, None, None, None, f"counterexample has {x.size} values, expected {spec.n_inputs}"
        reason = "the point lies in no input region that has unsafe outputs"
        for c in spec.cases:
            if not c.unsafe or not c.contains_input(x, SPEC_ATOL):
                continue
            xc = np.clip(x, c.lower, c.upper)
            ok, y, why = validate_counterexample(onnx_path, spec, xc, raw.output)
            if ok:
                return True, xc.tolist(), y.tolist(), spec.find_violation(xc, y, SPEC_ATOL), why
            reason = why
        if not any(c.contains_input(x, SPEC_ATOL) for c in spec.cases):
            _, _, reason = validate_counterexample(onnx_path, spec, x, None)
        return False, None, None, None, reason
