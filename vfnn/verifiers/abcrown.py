"""α,β-CROWN adapter: drives the user's own α,β-CROWN installation as a separate program.

α,β-CROWN is not on PyPI and its environment (a torch < 2.9 with torchvision, gurobipy,
onnx2pytorch) conflicts with vfnn's, so vfnn never imports it.  The user points vfnn at
``complete_verifier/abcrown.py`` (``VFNN_ABCROWN`` or option ``abcrown_path``) and at the Python
interpreter of its environment (``VFNN_ABCROWN_PYTHON`` or option ``python``); see
``verifiers/abcrown/README.md``.

One solve, as the base's command-line executor runs it: ``translate`` writes a config for the
chosen mode and the spec into a scratch directory in the VNN-LIB subset α,β-CROWN's reader accepts
(it writes ``<spec>.compiled`` next to it; and vfnn's parse of the spec is what the counterexample
is replayed against); ``command`` is the tool's command line with ``--timeout``, run by
:func:`vfnn.verifiers.process.run_command` (own session, killed a little after the deadline,
since it overruns); ``parse`` reads the results file and stdout.  vfnn loads no Network and
imports no torch for it (``needs_network = False``): the unstable-neuron record is computed in a
child of its own while the tool runs.

Reading the verdict (α,β-CROWN 0.7.0, Dec 2025; see ``tests/data/abcrown`` for real outputs):

* results file line 1: ``unsat`` | ``sat`` | ``timeout``; a ``sat`` is followed by
  ``((X_0 v) ... (Y_0 v) ...)`` with ``--save_adv_example``;
* the tool writes ``timeout`` both when its time ran out and when it gave up early (incomplete
  verification only, ``max_domains`` reached): vfnn reports ``timeout`` only when stdout says
  ``Time out!`` or the tool's own ``Time:`` reached the budget, ``unknown`` otherwise;
* statistics from stdout: ``# of unstable neurons: N``, per layer ``Node /14 input 0: size
  torch.Size([32]) unstable 8``, ``N domains visited`` (cumulative, the last one counts), ``Time: T``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vfnn.spec import Spec
from vfnn.verifiers.base import (
    Availability,
    Option,
    Problem,
    RawOutcome,
    ToolCommand,
    ToolCrashed,
    UnsupportedProblem,
    Verifier,
)
from vfnn.verifiers.process import CommandRun

ENV_PATH = "VFNN_ABCROWN"
ENV_PYTHON = "VFNN_ABCROWN_PYTHON"
INSTALL_HINT = (
    f"install α,β-CROWN in its own environment (see verifiers/abcrown/README.md), then set "
    f"{ENV_PATH}=/path/to/alpha-beta-CROWN/complete_verifier/abcrown.py and "
    f"{ENV_PYTHON}=/path/to/its/venv/bin/python"
)
#: Inputs up to this many use input-space splitting in ``mode=auto`` (ACAS Xu has 5).
INPUT_SPLIT_MAX_INPUTS = 20
TAIL_LINES = 8


# -- configuration ----------------------------------------------------------------------------------

def build_config(mode: str, device: str = "cpu") -> dict[str, Any]:
    """The α,β-CROWN config vfnn writes for ``mode`` (``bab`` or ``input-split``).

    ``input-split`` follows the tool's own ACAS Xu config (``exp_configs/vnncomp21/acasxu.yaml``:
    naive input branching with reordered BaB, input-domain clipping, PGD after the bounds) with a
    CPU-sized batch.  ``bab`` is the tool's default ReLU branch and bound (α-CROWN + β-CROWN).
    """
    if mode == "input-split":
        return {
            "general": {"device": device, "complete_verifier": "bab"},
            "solver": {"batch_size": 4096, "bound_prop_method": "crown"},
            "bab": {
                "branching": {"method": "naive", "input_split": {"enable": True, "reorder_bab": True}},
                "clip_n_verify": {"clip_input_domain": {"enabled": True}},
            },
            "attack": {"pgd_order": "after", "pgd_restarts": 10000, "pgd_restart_when_stuck": True},
        }
    if mode == "bab":
        return {"general": {"device": device, "complete_verifier": "bab"}}
    raise ValueError(f"unknown α,β-CROWN mode {mode!r}")


def choose_mode(mode: str, n_inputs: int) -> str:
    """Resolve ``auto``: input splitting pays off only for low-dimensional inputs."""
    if mode != "auto":
        return mode
    return "input-split" if n_inputs <= INPUT_SPLIT_MAX_INPUTS else "bab"


def to_yaml(data: dict[str, Any], indent: int = 0) -> str:
    """Block YAML for a nested dict of str/int/float/bool (enough for configs; vfnn has no yaml dep)."""
    lines = []
    for key, value in data.items():
        pad = "  " * indent
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:\n{to_yaml(value, indent + 1)}")
        elif isinstance(value, bool):
            lines.append(f"{pad}{key}: {'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            lines.append(f"{pad}{key}: {value!r}")
        else:
            lines.append(f"{pad}{key}: {str(value)!r}")
    return "\n".join(lines)


# -- the spec, in the VNN-LIB subset α,β-CROWN reads -------------------------------------------------

def _comparison(a: np.ndarray, b: float) -> str | bool:
    """One row ``a @ y <= b`` as ``(op Y_i c)`` or ``(<= Y_i Y_j)``; True/False for a constant row.

    α,β-CROWN's reader (``read_vnnlib.py``) accepts only comparisons of two operands that are
    variables or numbers -- no ``+`` or ``*`` -- so every other row is refused, never approximated.
    """
    nz = np.flatnonzero(a)
    if len(nz) == 0:
        return bool(0.0 <= b)
    if len(nz) == 1:
        j, c = int(nz[0]), float(a[nz[0]])
        return f"({'<=' if c > 0 else '>='} Y_{j} {float(b) / c!r})"
    if len(nz) == 2 and b == 0 and a[nz[0]] == -a[nz[1]]:
        p, m = (nz[0], nz[1]) if a[nz[0]] > 0 else (nz[1], nz[0])
        return f"(<= Y_{p} Y_{m})"
    terms = " + ".join(f"{a[j]:g}*Y_{j}" for j in nz)
    raise UnsupportedProblem(f"α,β-CROWN's VNN-LIB reader cannot express the output constraint {terms} <= {b:g} "
                             "(only Y_i <= c, Y_i >= c and Y_i <= Y_j)")


def write_abcrown_vnnlib(spec: Spec, path: Path) -> Path:
    """Write ``spec`` as VNN-LIB 1.0 restricted to what α,β-CROWN parses (floats round-trip)."""
    disjuncts: list[tuple[int, list[str]]] = []
    for i, case in enumerate(spec.cases):
        for h in case.unsafe:
            rows = [_comparison(a, float(b)) for a, b in zip(h.A, h.b, strict=True)]
            if False in rows:
                continue  # a constant row that never holds: this disjunct is empty
            terms = [r for r in rows if isinstance(r, str)]
            if not terms:
                raise UnsupportedProblem("an unsafe disjunct constrains no output; α,β-CROWN cannot state that")
            disjuncts.append((i, terms))
    if not disjuncts:
        raise UnsupportedProblem("no satisfiable unsafe disjunct; α,β-CROWN cannot state an empty property")

    def box(i: int) -> list[str]:
        c = spec.cases[i]  # finite: Spec refuses infinite bounds
        bounds = zip(c.lower.tolist(), c.upper.tolist(), strict=True)
        return [f"({op} X_{k} {v!r})" for k, (lo, hi) in enumerate(bounds) for op, v in (("<=", hi), (">=", lo))]

    out = [f"; {spec.name}: written by vfnn for α,β-CROWN"]
    out += [f"(declare-const X_{k} Real)" for k in range(spec.n_inputs)]
    out += [f"(declare-const Y_{j} Real)" for j in range(spec.n_outputs)]
    if len(spec.cases) == 1:
        out += [f"(assert {t})" for t in box(0)]
        ands = [terms for _, terms in disjuncts]
    else:
        ands = [box(i) + terms for i, terms in disjuncts]
    out += ["(assert (or"] + [f"    (and {' '.join(a)})" for a in ands] + ["))"]
    path.write_text("\n".join(out) + "\n")
    return path


# -- parsing ------------------------------------------------------------------------------------------

_ASSIGN = re.compile(r"\(\s*([XY])_(\d+)\s+([-+0-9.eEinfINFa]+)\s*\)")
_TIME = re.compile(r"^Time:\s*([-+0-9.eE]+)\s*$", re.M)
_RESULT = re.compile(r"^Result:\s*(\S+)\s*$", re.M)
_UNSTABLE = re.compile(r"^# of unstable neurons:\s*(\d+)\s*$", re.M)
_LAYER = re.compile(r"^Node (\S+) input \d+: size torch\.Size\(\[([\d, ]*)\]\) unstable (\d+)\s*$", re.M)
_DOMAINS = re.compile(r"^(\d+) domains visited\s*$", re.M)
_BATCH = re.compile(r"^Activation BaB batch \d+/\d+", re.M)


@dataclass(frozen=True)
class ResultsFile:
    """The results file: the verdict word and, for ``sat``, the assignment it lists."""

    verdict: str
    x: list[float] | None = None
    y: list[float] | None = None


def parse_results(text: str) -> ResultsFile:
    """Parse ``unsat``/``sat``/``timeout`` and the ``((X_i v) ... (Y_j v))`` assignment."""
    lines = text.strip().splitlines()
    if not lines or lines[0].strip() not in ("unsat", "sat", "timeout"):
        head = lines[0].strip()[:80] if lines else "an empty file"
        raise ToolCrashed(f"unexpected α,β-CROWN results file: starts with {head!r}")
    verdict = lines[0].strip()
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for var, idx, val in _ASSIGN.findall("\n".join(lines[1:])):
        values[var][int(idx)] = float(val)

    def dense(d: dict[int, float]) -> list[float] | None:
        if not d:
            return None
        if sorted(d) != list(range(len(d))):
            raise ToolCrashed(f"α,β-CROWN counterexample has gaps in its indices: {sorted(d)}")
        return [d[i] for i in range(len(d))]

    return ResultsFile(verdict, dense(values["X"]), dense(values["Y"]))


@dataclass(frozen=True)
class StdoutStats:
    """What α,β-CROWN's stdout says beyond the verdict."""

    result: str | None = None
    time: float | None = None
    unstable_neurons: int | None = None
    unstable_per_layer: list[dict[str, Any]] = field(default_factory=list)
    domains_visited: int | None = None
    time_out: bool = False  # "Time out!" (input split) or "Time out!!!!!!!!" (ReLU BaB)
    max_domains_reached: bool = False

    def as_tool_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.unstable_neurons is not None:
            out["unstable_neurons"] = self.unstable_neurons
        if self.unstable_per_layer:
            out["unstable_per_layer"] = self.unstable_per_layer
        if self.domains_visited is not None:
            out["domains_visited"] = self.domains_visited
        return out


def _layer_block(text: str) -> list[dict[str, Any]]:
    """The per-layer lines printed right before the last ``# of unstable neurons`` line."""
    marks = list(_UNSTABLE.finditer(text))
    if not marks:
        return []
    start = marks[-2].end() if len(marks) > 1 else 0
    layers = []
    for name, size, n in _LAYER.findall(text[start:marks[-1].start()]):
        total = 1
        for d in (int(d) for d in size.replace(" ", "").split(",") if d):
            total *= d
        layers.append({"layer": name, "neurons": total, "unstable": int(n)})
    return layers


def _domains(text: str) -> int | None:
    """Domains visited: the counter is cumulative within one BaB run and restarts for each
    ``Activation BaB batch``, so sum the last value of every batch."""
    found = [_DOMAINS.findall(part) for part in _BATCH.split(text)]
    found = [int(f[-1]) for f in found if f]
    return sum(found) if found else None


def parse_stdout(text: str) -> StdoutStats:
    """Extract the verdict line, the tool time and the BaB statistics from α,β-CROWN's stdout."""
    result = _RESULT.findall(text)
    times = _TIME.findall(text)
    unstable = _UNSTABLE.findall(text)
    return StdoutStats(
        result=result[-1] if result else None,
        time=float(times[-1]) if times else None,
        unstable_neurons=int(unstable[-1]) if unstable else None,
        unstable_per_layer=_layer_block(text),
        domains_visited=_domains(text),
        time_out=re.search(r"^Time out!", text, re.M) is not None,
        max_domains_reached="Maximum number of visited domains has reached." in text,
    )


def classify(results: ResultsFile, stats: StdoutStats, budget: float) -> tuple[str, str]:
    """Map the tool's verdict to vfnn's status and a message; tells a real timeout from giving up."""
    if results.verdict in ("sat", "unsat"):
        return results.verdict, ""
    if stats.time_out:
        return "timeout", "α,β-CROWN ran out of time"
    if stats.time is not None and stats.time >= 0.98 * budget:
        return "timeout", f"α,β-CROWN used its whole budget ({stats.time:.1f} of {budget:g} s)"
    if stats.max_domains_reached:
        return "unknown", "α,β-CROWN gave up: maximum number of BaB domains reached"
    used = "" if stats.time is None else f" after {stats.time:.2f} of {budget:g} s"
    return "unknown", f"α,β-CROWN gave up{used} (it reports 'timeout' without running out of time)"


def outcome_from_output(results_text: str, stdout_text: str, budget: float, n_inputs: int, n_outputs: int
                        ) -> RawOutcome:
    """Turn a finished run's results file and stdout into a RawOutcome (pure; tested on real outputs)."""
    results = parse_results(results_text)
    stats = parse_stdout(stdout_text)
    status, message = classify(results, stats, budget)
    tool_stats = stats.as_tool_stats()
    tool_stats["tool_verdict"] = results.verdict
    if status != "sat":
        return RawOutcome(status, tool_time=stats.time, tool_stats=tool_stats, message=message)
    if results.x is None:
        raise ToolCrashed("α,β-CROWN said sat but wrote no counterexample")
    if len(results.x) != n_inputs:
        raise ToolCrashed(f"α,β-CROWN counterexample has {len(results.x)} inputs, expected {n_inputs}")
    y = results.y if results.y is not None and len(results.y) == n_outputs else None
    return RawOutcome("sat", results.x, y, tool_time=stats.time, tool_stats=tool_stats, message=message)


# -- the adapter ------------------------------------------------------------------------------------------

def _tail(text: str, n: int = TAIL_LINES) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


def _version(abcrown_path: Path) -> str:
    """``__version__`` of ``complete_verifier/__init__.py``, plus the git commit when there is one."""
    version = "unknown version"
    init = abcrown_path.parent / "__init__.py"
    try:
        m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", init.read_text(), re.M)
        if m:
            version = m.group(1)
    except OSError:
        pass
    git = abcrown_path.parent.parent / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        commit = (git / head[5:]).read_text().strip() if head.startswith("ref: ") else head
        version += f" (git {commit[:10]})"
    except OSError:
        pass
    return version


class AbcrownVerifier(Verifier):
    """α,β-CROWN (Verified-Intelligence/alpha-beta-CROWN) run as an external program."""

    name = "abcrown"
    needs_network = False  # the tool reads the user's ONNX file: vfnn loads no Network, imports no torch
    description = "α,β-CROWN (GPU/CPU bound propagation + branch and bound), the user's own installation"
    options = (
        Option("abcrown_path", str, None, f"path to complete_verifier/abcrown.py (default: ${ENV_PATH})"),
        Option("python", str, None, f"Python interpreter of α,β-CROWN's environment (default: ${ENV_PYTHON})"),
        Option("mode", str, "auto", "auto: input-split for <= 20 inputs, else bab",
               choices=("auto", "bab", "input-split")),
        Option("device", str, "cpu", "torch device for α,β-CROWN", choices=("cpu", "cuda")),
        Option("config_file", str, None, "use this α,β-CROWN YAML config instead of the generated one"),
        Option("startup_s", float, 4.0, "seconds reserved for α,β-CROWN's start-up (not counted by its --timeout)"),
        Option("keep_files", str, None, "copy config, stdout, stderr and results of the run into this directory"),
    )

    @classmethod
    def resolve_options(cls, given: Any) -> dict[str, Any]:
        """As the base, then fill the two paths from the environment (read when the options are
        resolved, so that the value used is the one the caller saw)."""
        out = super().resolve_options(given)
        out["abcrown_path"] = out["abcrown_path"] or os.environ.get(ENV_PATH) or None
        out["python"] = out["python"] or os.environ.get(ENV_PYTHON) or None
        return out

    def __init__(self, abcrown_path: str | None = None, python: str | None = None) -> None:
        self._paths = {"abcrown_path": abcrown_path, "python": python}

    def verify(self, network: Any, spec: Any, timeout: float, options: Any = None, **kwargs: Any) -> Any:
        """As :meth:`Verifier.verify`; paths given to the constructor act as option defaults."""
        opts = {k: v for k, v in self._paths.items() if v is not None}
        opts.update(options or {})
        return super().verify(network, spec, timeout, opts, **kwargs)

    def _configured(self) -> tuple[str | None, str | None]:
        opts = self.resolve_options({k: v for k, v in self._paths.items() if v is not None})
        return opts["abcrown_path"], opts["python"]

    def availability(self) -> Availability:
        path, python = self._configured()
        if not path:
            return Availability(False, reason=f"α,β-CROWN is not configured (${ENV_PATH} is not set)",
                                install_hint=INSTALL_HINT)
        script = Path(path).expanduser()
        if script.is_dir():
            for cand in (script / "abcrown.py", script / "complete_verifier" / "abcrown.py"):
                if cand.is_file():
                    script = cand
                    break
        if not script.is_file():
            return Availability(False, reason=f"α,β-CROWN script not found: {script}", install_hint=INSTALL_HINT)
        if not python:
            return Availability(False, reason=f"the Python of α,β-CROWN's environment is not configured "
                                              f"(${ENV_PYTHON} is not set)", install_hint=INSTALL_HINT)
        exe = Path(python).expanduser()
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            return Availability(False, reason=f"α,β-CROWN's Python interpreter not found or not executable: {exe}",
                                install_hint=INSTALL_HINT)
        return Availability(True, version=_version(script.resolve()))

    def translate(self, problem: Problem, options: dict[str, Any]) -> Translated:
        """Config, spec and model link in a scratch folder (here, before anything runs: a property
        the tool's reader cannot express is refused at once)."""
        script = Path(options["abcrown_path"]).expanduser()
        if script.is_dir():
            script = next((c for c in (script / "abcrown.py", script / "complete_verifier" / "abcrown.py")
                           if c.is_file()), script / "abcrown.py")
        run_dir = problem.workdir / "abcrown"
        run_dir.mkdir(parents=True, exist_ok=True)
        mode = choose_mode(options["mode"], problem.spec.n_inputs)
        spec_path = write_abcrown_vnnlib(problem.spec, run_dir / "spec.vnnlib")
        if options["config_file"]:
            config_path = Path(options["config_file"]).expanduser().resolve()
            if not config_path.is_file():
                raise UnsupportedProblem(f"α,β-CROWN config file not found: {config_path}")
        else:
            config_path = run_dir / "config.yaml"
            header = f"# written by vfnn for α,β-CROWN, mode {mode}\n"
            config_path.write_text(header + to_yaml(build_config(mode, options["device"])) + "\n")
        model_path = run_dir / "model.onnx"  # a link: the tool writes <model>.optimized next to it
        model_path.symlink_to(Path(problem.onnx_path).resolve())
        return Translated(script.resolve(), run_dir, mode, config_path, spec_path, model_path)

    def command(self, problem: Problem, options: dict[str, Any], translated: Translated) -> ToolCommand:
        """The tool's command line; it is killed a little after the deadline (it overruns ``--timeout``)."""
        t = translated
        budget = max(1.0, problem.time_left() - float(options["startup_s"]))
        t.budget = budget
        argv = (
            str(Path(options["python"]).expanduser()), str(t.script),
            "--config", str(t.config_path), "--onnx_path", str(t.model_path), "--vnnlib_path", str(t.spec_path),
            "--device", options["device"], "--timeout", f"{budget:.3f}",
            "--results_file", str(t.run_dir / "results.txt"), "--save_adv_example", "--cex_path",
            str(t.run_dir / "cex.txt"),
        )
        t.argv = argv
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        return ToolCommand(argv, t.run_dir, env)

    def parse(self, problem: Problem, options: dict[str, Any], translated: Translated, run: CommandRun
              ) -> RawOutcome:
        """The results file (or, when killed while writing up, the stdout verdict) and stdout's statistics."""
        t = translated
        results_path, cex_path = t.run_dir / "results.txt", t.run_dir / "cex.txt"
        stdout = run.stdout()
        if options["keep_files"]:
            _keep(t.run_dir, Path(options["keep_files"]).expanduser(), t.config_path, list(t.argv), t.mode, t.budget)
        results_text = results_path.read_text(errors="replace") if results_path.is_file() else None
        if results_text is None and run.killed:
            # Killed while writing up: its stdout verdict (and cex file) say the same as the results file.
            results_text = _results_from_stdout(stdout, cex_path)
        if run.killed and results_text is None:
            stats = parse_stdout(stdout).as_tool_stats()
            stats.update(mode=t.mode, abcrown_timeout=t.budget)
            return RawOutcome("timeout", tool_stats=stats, message=f"α,β-CROWN overran its {t.budget:.1f} s budget "
                              f"and was killed after {run.elapsed:.1f} s (start-up included)")
        if results_text is None or run.returncode not in (0, None):
            why = f"exit code {run.returncode}" + ("" if results_path.is_file() else ", no results file")
            raise ToolCrashed(f"α,β-CROWN failed ({why}): {_tail(run.stderr()) or _tail(stdout)}")
        raw = outcome_from_output(results_text, stdout, t.budget, problem.spec.n_inputs, problem.spec.n_outputs)
        raw.tool_stats.update(mode=t.mode, abcrown_timeout=t.budget)
        return raw


@dataclass
class Translated:
    """The files of one α,β-CROWN run (made by ``translate``); ``command`` adds the budget and argv."""

    script: Path
    run_dir: Path
    mode: str
    config_path: Path
    spec_path: Path
    model_path: Path
    budget: float = 0.0
    argv: tuple[str, ...] = ()


def _results_from_stdout(stdout: str, cex_path: Path) -> str | None:
    """Rebuild the results file from ``Result:`` on stdout plus the cex file, or None."""
    verdict = parse_stdout(stdout).result
    if verdict not in ("sat", "unsat", "timeout"):
        return None
    if verdict == "sat":
        if not cex_path.is_file():
            return None
        return "sat\n" + cex_path.read_text(errors="replace")
    return verdict


def _keep(run_dir: Path, dest: Path, config: Path, cmd: list[str], mode: str, budget: float) -> None:
    """Copy the run's text files to ``dest`` (for debugging and for capturing test fixtures)."""
    import json
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, dest / "config.yaml")
    for name in ("spec.vnnlib", "stdout.txt", "stderr.txt", "results.txt"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, dest / name)
    (dest / "command.json").write_text(json.dumps({"command": cmd, "mode": mode, "timeout": budget}, indent=1))
