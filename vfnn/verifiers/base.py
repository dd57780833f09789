"""The :class:`Verifier` contract.

The base class owns everything that every verifier needs (after DNNV's design): loading and
normalising the network, checking that the spec fits it, trivial cases, the unstable-neuron
record (vfnn's own bounds, the same method for every tool, computed once per (model, spec) when a
cache is given), running the tool isolated with a hard deadline and a memory cap
(:mod:`vfnn.verifiers.process`), and replaying every counterexample on the original ONNX file.
An adapter declares ``name`` and ``options`` and implements:

* :meth:`Verifier.availability` -- is the tool installed, which version, how to install it;
* :meth:`Verifier.translate` (optional) -- in the calling process, cheap: turn the problem into
  the tool's input; raising :class:`UnsupportedProblem` here stops before anything runs;
* then either :meth:`Verifier._solve` -- runs *in an isolated child process* (the in-process
  executor: a Python library such as HiGHS or Marabou) and returns a :class:`RawOutcome` --
  or :meth:`Verifier.command` and :meth:`Verifier.parse` -- the command-line executor: the base
  runs the program (own session, deadline, kill of its tree, output files) and ``parse`` reads
  its output.  A command-line adapter sets ``needs_network = False``: then ``verify()`` imports
  neither torch nor onnx (sizes come from onnxruntime), and the unstable record is computed in a
  child of its own while the tool runs.

``per_case = True`` makes the base call the tool once per input region of the spec and merge the
answers (``sat`` if any case is sat, ``unsat`` if all are, else timeout, unknown, error).

A ``sat`` from a hook is only a claim: :meth:`Verifier.verify` turns it into ``sat`` when the
counterexample replays with onnxruntime, and into ``error`` (with the reason) when it does not.
"""

from __future__ import annotations

import fcntl
import hashlib
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
from vfnn.verifiers.process import CommandRun, Isolated, run_command, run_isolated
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

    network: Network | None  # None for a verifier with ``needs_network = False`` given a path
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


@dataclass(frozen=True)
class ToolCommand:
    """An external program to run for one solve: ``argv`` in ``cwd``; killed ``kill_after``
    seconds after it starts (None: the deadline plus 0.8 x ``grace``)."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] | None = None
    kill_after: float | None = None


@dataclass(frozen=True)
class UnstableCache:
    """Where the unstable record of one (model file, spec file, method) is kept, so that every
    verifier of a campaign gets the record computed by the first (a file lock makes a second,
    concurrent job wait for it rather than compute it again)."""

    directory: Path
    key: str

    @staticmethod
    def make(directory: str | Path | None, model_path: str | Path | None, spec_path: str | Path | None,
             method: str | None) -> UnstableCache | None:
        """A cache entry, or None when anything needed to name it is missing."""
        if not (directory and model_path and spec_path and method):
            return None
        try:
            stamp = [f"{Path(q).resolve()}:{st.st_mtime_ns}:{st.st_size}"
                     for q, st in ((q, Path(q).stat()) for q in (model_path, spec_path))]
        except OSError:
            return None
        key = hashlib.sha1("\n".join([*stamp, method]).encode()).hexdigest()[:20]
        return UnstableCache(Path(directory), key)

    def get_or_compute(self, compute: Callable[[], UnstableRecord], deadline: float) -> UnstableRecord | None:
        """The cached record, else ``compute()`` under the lock; None if the lock is still held at ``deadline``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.key}.json"
        with open(self.directory / f"{self.key}.lock", "a+") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        return None
                    time.sleep(0.02)
            try:
                return UnstableRecord.from_dict(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                pass
            record = compute()
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record.to_dict()))
            os.replace(tmp, path)
            return record


def _unstable(problem: Problem, method: str, cache: UnstableCache | None) -> UnstableRecord | None:
    """The unstable-neuron record of ``problem`` (from the cache when there is one)."""
    from vfnn.stats import unstable_record

    def compute() -> UnstableRecord:
        network = problem.network
        if network is None:
            from vfnn.onnx_io import load_onnx

            network = load_onnx(problem.onnx_path)
        return unstable_record(network, problem.spec, method=method)

    return compute() if cache is None else cache.get_or_compute(compute, problem.deadline)


def _record_in_child(problem: Problem, method: str, cache: UnstableCache | None) -> UnstableRecord | None:
    """Child body for a command-line tool: the record only, while the tool runs."""
    return _unstable(problem, method, cache)


def _solve_in_child(verifier: Verifier, problem: Problem, options: dict[str, Any], trivial: RawOutcome | None,
                    unstable_method: str | None, translated: Any = None, cache: UnstableCache | None = None,
                    ) -> tuple[RawOutcome | None, UnstableRecord | None]:
    """Child body: the unstable record first (inside the deadline and the memory cap), saved before
    the tool starts so that a kill keeps it; then the tool, unless the budget is spent (None)."""
    unstable = _unstable(problem, unstable_method, cache) if unstable_method else None
    if trivial is not None:
        return trivial, unstable
    if problem.time_left() <= 0:
        return None, unstable
    (problem.workdir / STARTED_FILE).write_text(json.dumps(None if unstable is None else unstable.to_dict()))
    return verifier._solve_translated(problem, options, translated), unstable


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


UNDECIDED_ORDER: tuple[Status, ...] = ("timeout", "unknown", "error")


def merge_cases(outcomes: list[RawOutcome]) -> RawOutcome:
    """One answer for a spec from one answer per input region (in order; a ``sat`` ends the list):
    sat if one is, unsat if all are, else the first timeout, then unknown, then error."""
    times = [o.tool_time for o in outcomes if o.tool_time is not None]
    total = sum(times) if times else None
    cases = [o.status for o in outcomes]
    pick = next((o for o in outcomes if o.status == "sat"), None)
    if pick is None and all(o.status == "unsat" for o in outcomes):
        return RawOutcome("unsat", tool_time=total, tool_stats={"cases": cases})
    if pick is None:
        pick = next(o for s in UNDECIDED_ORDER for o in outcomes if o.status == s)
    i = outcomes.index(pick)
    message = f"case {i}: {pick.message}" if pick.message else ""
    return replace(pick, tool_time=total, tool_stats={**pick.tool_stats, "cases": cases, "deciding_case": i},
                   message=message)


def _io_sizes(onnx_path: Path) -> tuple[int, int]:
    """Flat input and output sizes of an ONNX file, read with onnxruntime (no torch, no onnx import)."""
    from vfnn.errors import ModelError
    from vfnn.verifiers.replay import onnx_io_sizes

    try:
        return onnx_io_sizes(onnx_path)
    except Exception as exc:  # onnxruntime's own exception types
        raise ModelError(f"{onnx_path}: cannot read the ONNX model: {exc}") from None


class Verifier(ABC):
    """Base class of every adapter (register it under the ``vfnn.verifiers`` entry-point group)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    #: False for a tool that reads the ONNX file itself: verify() then loads no vfnn Network.
    needs_network: ClassVar[bool] = True
    #: True: the base solves each input region of the spec on its own and merges the answers.
    per_case: ClassVar[bool] = False

    # -- to implement ---------------------------------------------------------------------------
    @abstractmethod
    def availability(self) -> Availability:
        """Check (cheaply, without solving) whether the tool can run here."""

    def translate(self, problem: Problem, options: dict[str, Any]) -> Any:
        """Build the tool's input in the calling process (cheap); raise :class:`UnsupportedProblem`
        to stop before anything runs.  The value is passed on to the solve (picklable)."""
        return None

    def _solve(self, problem: Problem, options: dict[str, Any]) -> RawOutcome:
        """Solve ``problem`` before ``problem.deadline``; runs in an isolated child process.
        Raise :class:`UnsupportedProblem` / :class:`ToolCrashed` (or subclasses) on failure."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _solve nor command")

    def _solve_translated(self, problem: Problem, options: dict[str, Any], translated: Any) -> RawOutcome:
        """The in-process executor's call; an adapter whose ``translate`` returns something reads
        it by overriding this (the default ignores it and calls :meth:`_solve`)."""
        return self._solve(problem, options)

    def command(self, problem: Problem, options: dict[str, Any], translated: Any) -> ToolCommand | None:
        """The program to run (the command-line executor), or None for an in-process ``_solve``."""
        return None

    def parse(self, problem: Problem, options: dict[str, Any], translated: Any, run: CommandRun) -> RawOutcome:
        """Turn the finished (or killed: ``run.killed``) program's output into a RawOutcome."""
        raise NotImplementedError(f"{type(self).__name__} returns a command but does not parse its output")

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
        unstable_cache: str | Path | None = None,
    ) -> VerificationResult:
        """Decide ``spec`` (a Spec or a VNN-LIB path) on ``network`` (an ONNX path, or a Network:
        loaded from ``model_path``, or else exported for replay).

        ``deadline`` (a ``time.monotonic()`` value, default now + ``timeout``) bounds the whole call,
        start-up and the unstable-neuron record included: a command or a campaign job passes the
        deadline it set when it started, so that its own start-up counts too.  ``on_wait`` is
        called about every 0.1 s while the tool runs.  ``unstable_cache`` (a folder) keeps the
        unstable record per (model file, spec file, method) for the next verifier.  Raises
        VfnnError for user problems (unreadable model, spec that does not fit, tool not
        available, bad option); every problem of the tool itself becomes an ``error`` result.
        """
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
            net: Network | None
            if isinstance(network, (str, Path)):  # a file: parsed once, here (or not at all)
                model_path = network
                if self.needs_network:
                    from vfnn.onnx_io import load_onnx

                    net = load_onnx(network)
                    n_in, n_out = net.input_size, net.output_size
                else:
                    from vfnn.vnnlib import input_file

                    net, (n_in, n_out) = None, _io_sizes(input_file(network, "the ONNX model"))
            else:
                net, n_in, n_out = network, network.input_size, network.output_size
            if model_path:
                onnx_path = Path(model_path)
            else:
                from vfnn.onnx_io import save_onnx

                onnx_path = save_onnx(net, workdir / "original.onnx")
            if not isinstance(spec, Spec):
                from vfnn.vnnlib import read_vnnlib

                spec_path = spec if spec_path is None else spec_path
                spec = read_vnnlib(spec, n_in, n_out)
            name = str(model_path or (net.name if net is not None else onnx_path))
            spec.check_fits(n_in, n_out, model=name)
            problem = Problem(net, onnx_path, spec, None if spec_path is None else Path(spec_path), deadline,
                              float(timeout), workdir)
            cache = UnstableCache.make(unstable_cache, model_path, spec_path, unstable_method)
            raw, unstable = self._run(problem, opts, unstable_method, on_wait, cache)

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
             on_wait: Callable[[], None] | None, cache: UnstableCache | None = None,
             ) -> tuple[RawOutcome, UnstableRecord | None]:
        """Trivial answers, then the tool (per case when ``per_case``); every way it can end
        becomes a RawOutcome."""
        trivial = self._trivial(problem.spec)
        if trivial is not None and not unstable_method:
            return trivial, None
        if problem.time_left() <= 0:
            return trivial or not_started(problem.timeout, "vfnn's start-up (loading the model and the spec)"), None
        if trivial is not None or not self.per_case or len(problem.spec.cases) == 1:
            return self._run_one(problem, opts, unstable_method, on_wait, cache, trivial)
        unstable = None
        if unstable_method:  # the whole spec's record, before the first case runs
            out = run_isolated(_record_in_child, (problem, unstable_method, cache),
                               limit_s=problem.time_left() + float(opts["grace"]),
                               workdir=problem.workdir / "record", memory_mb=int(opts["memory_mb"]) or None)
            unstable = out.value if out.kind == "returned" else None
        outcomes: list[RawOutcome] = []
        for i, case in enumerate(problem.spec.cases):
            if outcomes and problem.time_left() <= 0:
                outcomes.append(RawOutcome("timeout", message="no time was left for the remaining input regions"))
                break
            sub = replace(problem, spec=replace(problem.spec, cases=(case,), name=f"{problem.spec.name}[{i}]"))
            raw, _ = self._run_one(sub, opts, None, on_wait, None, None)
            outcomes.append(raw)
            if raw.status == "sat":
                break
        return merge_cases(outcomes), unstable

    def _run_one(self, problem: Problem, opts: dict[str, Any], unstable_method: str | None,
                 on_wait: Callable[[], None] | None, cache: UnstableCache | None, trivial: RawOutcome | None,
                 ) -> tuple[RawOutcome, UnstableRecord | None]:
        translated = None
        if trivial is None:
            try:
                translated = self.translate(problem, opts)
            except UnsupportedProblem as exc:  # nothing has run: no record either
                return RawOutcome("error", message=f"unsupported: {exc}"), None
            cmd = self.command(problem, opts, translated)
            if cmd is not None:
                return self._run_command(problem, opts, translated, cmd, unstable_method, on_wait, cache)
        limit = problem.time_left() + float(opts["grace"])
        out = run_isolated(_solve_in_child, (self, problem, opts, trivial, unstable_method, translated, cache),
                           limit_s=limit, workdir=problem.workdir / "child", memory_mb=int(opts["memory_mb"]) or None,
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
            return self._failure(out.value, out.traceback, opts, tail), unstable
        return RawOutcome("error", message=out.describe_death(), tool_stats=tail), unstable

    def _failure(self, exc: BaseException, tb: str, opts: dict[str, Any], tail: dict[str, Any]) -> RawOutcome:
        """The ``error`` outcome of an exception raised by an adapter hook."""
        if isinstance(exc, MemoryError):
            msg = f"out of memory (cap {opts['memory_mb']} MiB)"
        elif isinstance(exc, UnsupportedProblem):
            msg = f"unsupported: {exc}"
        elif isinstance(exc, VerifierFailure):
            msg = f"{self.name} failed: {exc}"
        else:
            last = tb.strip().splitlines()[-3:]
            msg = f"{self.name} adapter raised {type(exc).__name__}: {exc} ({' | '.join(last)})"
        return RawOutcome("error", message=msg, tool_stats=tail)

    def _record_child(self, problem: Problem, opts: dict[str, Any], unstable_method: str | None,
                      cache: UnstableCache | None) -> Isolated | None:
        if not unstable_method:
            return None
        return Isolated(_record_in_child, (problem, unstable_method, cache), workdir=problem.workdir / "record",
                        memory_mb=int(opts["memory_mb"]) or None)

    @staticmethod
    def _record_result(child: Isolated | None, until: float) -> UnstableRecord | None:
        """The record child's answer, waiting for it until ``until`` at most (then it is killed)."""
        if child is None:
            return None
        child.wait(until)
        out = child.finish()
        return out.value if out.kind == "returned" else None

    def _run_command(self, problem: Problem, opts: dict[str, Any], translated: Any, cmd: ToolCommand,
                     unstable_method: str | None, on_wait: Callable[[], None] | None, cache: UnstableCache | None,
                     ) -> tuple[RawOutcome, UnstableRecord | None]:
        """The command-line executor: the record in a child of its own while the tool runs here
        (no torch in this process), the tool killed at its deadline, then ``parse``."""
        grace = float(opts["grace"])
        record = self._record_child(problem, opts, unstable_method, cache)
        try:
            (problem.workdir / STARTED_FILE).write_text("null")
            kill_after = problem.time_left() + 0.8 * grace if cmd.kill_after is None else cmd.kill_after
            run = run_command(cmd.argv, cwd=cmd.cwd, env=cmd.env, limit_s=kill_after, on_wait=on_wait,
                              memory_mb=int(opts["memory_mb"]) or None)
            try:
                raw = self.parse(problem, opts, translated, run)
            except Exception as exc:  # noqa: BLE001 - a parser bug is this adapter's error, not the user's
                import traceback

                raw = self._failure(exc, traceback.format_exc(), opts, {"output_tail": run.tail(500)})
            raw = replace(raw, tool_stats={**raw.tool_stats, "process_time": round(run.elapsed, 3)})
        finally:
            unstable = self._record_result(record, max(time.monotonic(), problem.deadline + grace))
        return raw, unstable

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
