"""What a `vfnn verify` call costs beyond its solve: wall time as a user sees it minus the tool's time.

Usage:  python benchmarks/overhead.py [--runs 5] [--verifier milp] [--server] [--root DIR] [--keep DIR]

Builds two networks with fixed seeds -- a small MLP (5-50-50-5) and a 784-input MLP
(784-256-256-10) -- and an L-infinity robustness spec for each that milp proves quickly, then runs
``python -m vfnn verify --json`` on each ``--runs`` times as a subprocess, as a user runs it, and
prints per network the median (and min-max) of:

* ``wall``: the subprocess's wall time, interpreter start and exit included;
* ``tool``: the ``tool_time`` the result reports (the solver's own time);
* ``wall - tool``: the overhead (issue 11 target: <= 1.0 s for milp on the small net);
* ``result wall``: ``wall_time`` of the result (from the command's start to its answer).

``--abcrown`` adds the α,β-CROWN adapter (α,β-CROWN itself is not needed): a stand-in script
with α,β-CROWN's command line plays back a captured run (``tests/data/abcrown/mlp_bab_unsat``,
24-input MLP), taking ``--tool-s`` seconds like a tool would, and records its own process wall
time; the adapter's overhead is the command's wall time minus that (issue 11 target: <= 1 s).

``--server`` also runs each milp call through a warm ``vfnn server`` (started for this run on a
socket of its own, stopped at the end), alternating with the fresh-process calls, so both rows come
from the same run; the fresh rows never use a server.

``--root DIR`` runs the command from another checkout of vfnn (``PYTHONPATH=DIR``), so a baseline
is measured in the same run: ``git worktree add /tmp/vfnn-base <commit>`` and
``python benchmarks/overhead.py --root /tmp/vfnn-base``.  The networks are built with this
checkout either way.  ``--phases`` also prints where the time goes inside the command (one run,
``python -X importtime`` totals of the slowest imports).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOCKET_ENV = "VFNN_SERVER_SOCKET"


def build(root: Path) -> dict[str, tuple[Path, Path]]:
    """The two (model, spec) pairs: random MLPs, spec around a random point at a radius milp proves."""
    import numpy as np
    import torch
    from torch import nn

    from vfnn.network import Network
    from vfnn.onnx_io import save_onnx
    from vfnn.spec import robustness_spec
    from vfnn.vnnlib import write_vnnlib

    torch.manual_seed(0)
    out = {}
    for name, sizes, eps in (("small 5-50-50-5", (5, 50, 50, 5), 0.01), ("mlp 784-256-256-10", (784, 256, 256, 10),
                                                                         0.002)):
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU()]
        m = nn.Sequential(*layers[:-1])
        x = np.random.default_rng(0).uniform(0.2, 0.8, sizes[0]).astype(np.float32)
        with torch.no_grad():
            label = int(m(torch.as_tensor(x)).argmax())
        stem = name.split()[0]
        model = save_onnx(Network.from_torch(m, (sizes[0],), stem), root / f"{stem}.onnx")
        spec = write_vnnlib(robustness_spec(x, label, eps, sizes[-1]), root / f"{stem}.vnnlib")
        out[name] = (model, spec)
    return out


STAND_IN = """\
import argparse, pathlib, shutil, sys, time
t0 = time.monotonic()
p = argparse.ArgumentParser()
for a in ("--config", "--onnx_path", "--vnnlib_path", "--device", "--timeout", "--results_file", "--cex_path"):
    p.add_argument(a)
p.add_argument("--save_adv_example", action="store_true")
args = p.parse_args()
case = pathlib.Path({case!r})
time.sleep({tool_s})
sys.stdout.write((case / "stdout.txt").read_text())
shutil.copyfile(case / "results.txt", args.results_file)
pathlib.Path({clock!r}).write_text(repr(time.monotonic() - t0))
"""


def abcrown_stand_in(root: Path, tool_s: float) -> tuple[dict[str, str], Path, Path, Path]:
    """Environment for the stand-in α,β-CROWN, the captured run's model and spec, and its clock file."""
    case = ROOT / "tests" / "data" / "abcrown" / "mlp_bab_unsat"
    cv = root / "abcrown" / "complete_verifier"
    cv.mkdir(parents=True, exist_ok=True)
    (cv / "__init__.py").write_text("__version__ = 'stand-in'\n")
    clock = root / "abcrown" / "process_wall.txt"
    (cv / "abcrown.py").write_text(STAND_IN.format(case=str(case), tool_s=tool_s, clock=str(clock)))
    env = {"VFNN_ABCROWN": str(cv / "abcrown.py"), "VFNN_ABCROWN_PYTHON": sys.executable}
    return env, ROOT / "tests" / "data" / "abcrown" / "mlp24.onnx", case / "spec.vnnlib", clock


def run_once(model: Path, spec: Path, verifier: str, vfnn_root: Path, extra_env: dict[str, str] | None = None
             ) -> tuple[float, dict]:
    """One ``vfnn verify --json`` as a subprocess: its wall time and its result."""
    env = dict(os.environ, PYTHONPATH=str(vfnn_root), **(extra_env or {}))
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "vfnn", "verify", "-v", verifier, "-t", "120", "--json", str(model),
                        str(spec)], capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t
    if p.returncode not in (0, 1):
        raise SystemExit(f"vfnn verify exited {p.returncode}: {p.stdout[-500:]} {p.stderr[-500:]}")
    return wall, json.loads(p.stdout)


def start_server(vfnn_root: Path) -> Path:
    """A warm server of the checkout ``vfnn_root`` on a socket of its own; the socket path."""
    sock = Path(tempfile.mkdtemp(prefix="vfnn-bench-")) / "s.sock"  # short: AF_UNIX paths are limited
    env = dict(os.environ, PYTHONPATH=str(vfnn_root), **{SOCKET_ENV: str(sock)})
    p = subprocess.run([sys.executable, "-m", "vfnn", "server", "start", "--idle", "30"], capture_output=True,
                       text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"vfnn server start failed: {p.stdout[-500:]} {p.stderr[-500:]}")
    return sock


def import_profile(vfnn_root: Path, top: int = 8) -> list[tuple[float, str]]:
    """The slowest top-level imports of ``vfnn verify --help``'s process (what the parent pays)."""
    env = dict(os.environ, PYTHONPATH=str(vfnn_root))
    p = subprocess.run([sys.executable, "-X", "importtime", "-c",
                        "import vfnn.cli, vfnn.verify_cli, vfnn.verifiers.process, vfnn.verifiers.base"],
                       capture_output=True, text=True, env=env)
    rows = []
    for line in p.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
            rows.append((int(parts[1]) / 1e6, parts[2].strip()))
    return sorted(rows, reverse=True)[:top]


def _fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--verifier", default="milp")
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout of vfnn whose `vfnn verify` runs")
    ap.add_argument("--keep", type=Path, default=None, help="write the networks here (default: a temp folder)")
    ap.add_argument("--phases", action="store_true", help="also print the parent's slowest imports")
    ap.add_argument("--abcrown", action="store_true", help="also measure the α,β-CROWN adapter on a stand-in")
    ap.add_argument("--tool-s", type=float, default=2.0, help="seconds the stand-in α,β-CROWN takes")
    ap.add_argument("--only-abcrown", action="store_true", help="skip the milp rows")
    ap.add_argument("--server", action="store_true", help="also run each milp call through a warm vfnn server")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vfnn-overhead-") as tmp:
        root = a.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        pairs = build(root)
        print(f"vfnn verify -v {a.verifier} from {a.root}, {a.runs} runs each, load {os.getloadavg()[0]:.1f}")
        print(f"{'network':28} {'status':7} {'wall s':>18} {'tool s':>18} {'wall - tool s':>18} {'result wall s':>18}")
        modes = {"": {SOCKET_ENV: str(root / "no-server.sock")}}  # a fresh process per call
        if a.server:
            modes["  via server"] = {SOCKET_ENV: str(start_server(a.root))}
        try:
            for name, (model, spec) in ({} if a.only_abcrown else pairs).items():
                rows: dict[str, tuple[list[float], list[float], list[float], set[str]]] = {
                    m: ([], [], [], set()) for m in modes}
                for env in modes.values():
                    run_once(model, spec, a.verifier, a.root, env)  # warm the page cache; not counted
                for _ in range(a.runs):
                    for mode, env in modes.items():
                        wall, res = run_once(model, spec, a.verifier, a.root, env)
                        walls, tools, inner, status = rows[mode]
                        walls.append(wall)
                        tools.append(float(res["tool_time"] or 0.0))
                        inner.append(float(res["wall_time"]))
                        status.add(res["status"])
                for mode, (walls, tools, inner, status) in rows.items():
                    diff = [w - t for w, t in zip(walls, tools, strict=True)]
                    print(f"{name + mode:28} {','.join(sorted(status)):7} {_fmt(walls):>18} {_fmt(tools):>18} "
                          f"{_fmt(diff):>18} {_fmt(inner):>18}")
        finally:
            if a.server:
                subprocess.run([sys.executable, "-m", "vfnn", "server", "stop"], capture_output=True,
                               env=dict(os.environ, PYTHONPATH=str(a.root), **modes["  via server"]))
        if a.abcrown or a.only_abcrown:
            env, model, spec, clock = abcrown_stand_in(root, a.tool_s)
            walls, procs, status = [], [], set()
            run_once(model, spec, "abcrown", a.root, env)
            for _ in range(a.runs):
                wall, res = run_once(model, spec, "abcrown", a.root, env)
                walls.append(wall)
                procs.append(float(clock.read_text()))
                status.add(res["status"])
            diff = [w - t for w, t in zip(walls, procs, strict=True)]
            print(f"{'abcrown stand-in 24-in':28} {','.join(sorted(status)):7} {_fmt(walls):>18} {_fmt(procs):>18} "
                  f"{_fmt(diff):>18}   (tool s = the stand-in's own process wall time, {a.tool_s:g} s of it sleep)")
        if a.phases:
            print("slowest imports of the command's own process (s):")
            for s, mod in import_profile(a.root):
                print(f"  {s:6.3f} {mod}")


if __name__ == "__main__":
    main()
