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

import json
import math
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vfnn.errors import VerifierUnavailable, VfnnError
from vfnn.spec import Spec
from vfnn.stats import UnstableRecord
from vfnn.verifiers.process import run_isolated
from vfnn.verifiers.replay import SPEC_ATOL, validate_counterexample
from vfnn.verifiers.result import Status, VerificationResult

if TYPE_CHECKING:  # importing vfnn.network imports torch: a command that only supervises must not pay for it
    from vfnn.network import Network


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
    Option("grace", float, 1.0, "seconds past the deadline before the solver's process group is killed"),
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


STARTED_FILE = "solver-started.json"  # in the workdir: the solver was called (holds the unstable record)


def _solve_in_child(verifier: Verifier, problem: Problem, options: dict[str, Any], trivial: RawOutcome | None,
                    unstable_method: str | None) -> tuple[RawOutcome | None, UnstableRecord | None]:
    """Child body: the unstable record first (inside the deadline and the memory cap), saved before
    the tool starts so that a kill keeps it; then the tool, unless the budget is spent (None)."""
    unstable = None
    if unstable_method:
        from vfnn.stats import unstable_record

        unstable = unstable_record(problem.network, problem.spec, method=unstable_method)
    if trivial is not None:
        return trivial, unstable
    if problem.time_left() <= 0:
        return None, unstable
    (problem.workdir / STARTED_FILE).write_text(json.dumps(None if unstable is None else unstable.to_dict()))
    return verifier._solve(problem, options), unstable


def _started(workdir: Path) -> tuple[bool, UnstableRecord | None]:
    """Whether the child called the tool, and the unstable record it saved before doing so."""
    try:
        saved = json.loads((workdir / STARTED_FILE).read_text())
    except (OSError, ValueError):
        return False, None
    return True, None if saved is None else UnstableRecord.from_dict(saved)


def not_started(timeout: float, why: str) -> RawOutcome:
    """The ``error`` of a solve whose tool never ran; campaigns run such jobs again on resume."""
    return RawOutcome("error", tool_stats={"solver_started": False},
                      message=f"the solver never started: {why} used the whole {timeout:g} s budget")


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
        spec: Spec | str | Path,
        timeout: float,
        options: Mapping[str, Any] | None = None,
        *,
        spec_path: str | Path | None = None,
        unstable_method: str | None = "crown",
        deadline: float | None = None,
        model_path: str | Path | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> VerificationResult:
        """Decide ``spec`` (a Spec or a VNN-LIB path) on ``network`` (an ONNX path, or a Network:
        loaded from ``model_path``, or else exported for replay).

        ``deadline`` (a ``time.monotonic()`` value, default now + ``timeout``) bounds the whole call,
        start-up and the unstable-neuron record included: a command or a campaign job passes the
        deadline it set when it started, so that its own start-up counts too.  ``on_wait`` is
        called about every 0.1 s while the tool runs.  Raises VfnnError for user problems
        (unreadable model, spec that does not fit, tool not available, bad option); every problem
        of the tool itself becomes an ``error`` result.
        """
        from vfnn.network import Network
        from vfnn.onnx_io import load_onnx, save_onnx

        if not (timeout > 0 and math.isfinite(timeout)):
            raise OptionError(f"timeout must be a positive number of seconds, got {timeout}")
        deadline = time.monotonic() + timeout if deadline is None else deadline
        start = deadline - timeout
        opts = self.resolve_options(options)
        avail = self.availability()
        if not avail.available:
            hint = f" ({avail.install_hint})" if avail.install_hint else ""
            raise VerifierUnavailable(f"verifier {self.name} is not available: {avail.reason}{hint}")
        with tempfile.TemporaryDirectory(prefix=f"vfnn-{self.name}-") as tmp:
            workdir = Path(tmp)
            if not isinstance(network, Network):
                model_path, network = network, load_onnx(network)
            onnx_path = Path(model_path) if model_path else save_onnx(network, workdir / "original.onnx")
            if not isinstance(spec, Spec):
                from vfnn.vnnlib import read_vnnlib

                spec_path = spec if spec_path is None else spec_path
                spec = read_vnnlib(spec, network.input_size, network.output_size)
            spec.check_fits(network.input_size, network.output_size, model=str(model_path or network.name))
            problem = Problem(network, onnx_path, spec, None if spec_path is None else Path(spec_path), deadline,
                              float(timeout), workdir)
            raw, unstable = self._run(problem, opts, unstable_method, on_wait)

            def finish(raw: RawOutcome, x: list[float] | None = None, y: list[float] | None = None,
                       case: int | None = None) -> VerificationResult:
                return VerificationResult(
                    status=raw.status, verifier=self.name, verifier_version=avail.version, options=opts,
                    wall_time=time.monotonic() - start, tool_time=raw.tool_time, timeout=float(timeout),
                    counterexample_input=x, counterexample_output=y, case_index=case, unstable=unstable,
                    tool_stats=dict(raw.tool_stats), message=raw.message,
                    model_path=None if model_path is None else str(model_path),
                    spec_path=None if spec_path is None else str(spec_path),
                )

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

    def _run(self, problem: Problem, opts: dict[str, Any], unstable_method: str | None,
             on_wait: Callable[[], None] | None) -> tuple[RawOutcome, UnstableRecord | None]:
        """Run the hook in a child process and translate every way it can end into a RawOutcome;
        the child is killed ``grace`` seconds after the deadline."""
        trivial = self._trivial(problem.spec)
        if trivial is not None and not unstable_method:
            return trivial, None
        if problem.time_left() <= 0:
            return trivial or not_started(problem.timeout, "vfnn's start-up (loading the model and the spec)"), None
        limit = problem.time_left() + float(opts["grace"])
        out = run_isolated(_solve_in_child, (self, problem, opts, trivial, unstable_method), limit_s=limit,
                           workdir=problem.workdir / "child", memory_mb=int(opts["memory_mb"]) or None,
                           on_wait=on_wait)
        started, unstable = _started(problem.workdir)
        if out.kind == "returned":
            raw, unstable = out.value
            if raw is None:
                return not_started(problem.timeout, "start-up and the unstable-neuron record"), unstable
            if not isinstance(raw, RawOutcome):
                return RawOutcome("error", message=f"{self.name} adapter returned {type(raw).__name__}"), unstable
            return raw, unstable
        if trivial is not None:  # the unstable record failed or ran out of time: the answer stands
            return trivial, None
        tail = {"output_tail": out.output_tail[-500:]}
        if out.kind == "killed":
            if not started:
                return not_started(problem.timeout, "start-up and the unstable-neuron record"), None
            return RawOutcome("timeout", tool_stats=tail, message=f"killed at the hard deadline (timeout + grace "
                              f"= {problem.timeout + float(opts['grace']):g} s after the start)"), unstable
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
            return RawOutcome("error", message=msg, tool_stats=tail), unstable
        return RawOutcome("error", message=out.describe_death(), tool_stats=tail), unstable

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
