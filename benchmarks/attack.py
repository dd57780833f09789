"""Attack benchmark: how many known-sat instances the falsification attack finds, and how fast,
against the attack it replaced (run in the same process, on the same instances, same budget).

* ACAS Xu: the 47 instances of ``expected.csv`` whose verdict is ``sat``, and a few ``unsat`` ones
  as a soundness check (any counterexample there would be a bug; every point is replayed anyway).
* MNIST: a small MLP (``vfnn train``, cached under ``runs/bench-attack/``), robustness specs at a
  large radius (``vfnn specs``); an instance counts as sat when either attack with a long budget
  (5 s), or else the MILP *without any attack* (``attack_steps=0``), finds a replayed counterexample.

``old`` is the attack milp used before ``vfnn/verifiers/attack.py`` (kept here only, verbatim:
16 random starts per disjunct, 50 signed-gradient steps, 4 rounds, float64, no replay); its
points are replayed here, and one that does not replay counts as a miss.  ``new`` is
:func:`vfnn.verifiers.attack.find_counterexample` with milp's default settings.  Times are to the
first replayed counterexample; a miss counts the whole budget in the totals.

Usage::

    python benchmarks/attack.py                       # budgets 0.25 and 1 s, ACAS Xu and MNIST (eps 0.1)
    python benchmarks/attack.py --budgets 0.5 --seeds 0,1,2 --no-mnist
    python benchmarks/attack.py --no-acas --mnist-eps 0.05 --mnist-per-class 5
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfnn.network import Network
from vfnn.onnx_io import load_onnx
from vfnn.spec import Halfspaces, Spec
from vfnn.verifiers.attack import AttackConfig, Replayer, find_counterexample
from vfnn.vnnlib import read_vnnlib

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ACASXU = SHARED / "benchmarks" / "acasxu"
RUNS = ROOT / "runs" / "bench-attack"


# -- the old attack (vfnn/verifiers/milp.py before attack.py), verbatim ----------------------------
def _old_margin(y: Any, disjunct: Halfspaces) -> Any:
    A = torch.as_tensor(disjunct.A, dtype=y.dtype)
    b = torch.as_tensor(disjunct.b, dtype=y.dtype)
    return (y @ A.T - b).max(dim=1).values


def old_attack(net: Network, spec: Spec, steps: int, restarts: int, deadline: float, rounds: int = 1
               ) -> np.ndarray | None:
    model = net.to_torch().double()
    for k in range(max(1, rounds)):
        if k and time.monotonic() >= deadline:
            break
        x = _old_round(model, net, spec, steps, restarts, deadline)
        if x is not None:
            return x
    return None


def _old_round(model: Any, net: Network, spec: Spec, steps: int, restarts: int, deadline: float) -> np.ndarray | None:
    for case in spec.cases:
        lo = torch.as_tensor(case.lower, dtype=torch.float64)
        hi = torch.as_tensor(case.upper, dtype=torch.float64)
        step = (hi - lo) / 8
        for disjunct in case.unsafe:
            x = lo + (hi - lo) * torch.rand(restarts, lo.numel(), dtype=torch.float64)
            x[0] = (lo + hi) / 2
            for k in range(steps + 1):
                x.requires_grad_(True)
                y = model(x.reshape(restarts, *net.input_shape)).reshape(restarts, -1)
                m = _old_margin(y, disjunct)
                hit = torch.nonzero(m <= 0)
                if hit.numel():
                    return x[hit[0, 0]].detach().numpy().copy()
                if k == steps or time.monotonic() > deadline:
                    break
                (g,) = torch.autograd.grad(m.sum(), x)
                with torch.no_grad():
                    decay = 1.0 - k / steps
                    x = torch.clamp(x - step * decay * g.sign(), lo, hi)
            if time.monotonic() > deadline:
                return None
    return None
# -------------------------------------------------------------------------------------------------


def run_old(net: Network, spec: Spec, onnx: Path, budget: float, seed: int) -> tuple[bool, float, bool]:
    """(found and replayed, seconds, found but not replayed)."""
    torch.manual_seed(seed)
    t0 = time.monotonic()
    x = old_attack(net, spec, 50, 16, t0 + budget, 4)
    dt = time.monotonic() - t0
    if x is None:
        return False, dt, False
    replay = Replayer(onnx, spec)
    ok = any(replay.check(x, i) is not None for i, c in enumerate(spec.cases) if c.contains_input(x, 1e-4))
    return ok, dt, not ok


def run_new(net: Network, spec: Spec, onnx: Path, budget: float, seed: int) -> tuple[bool, float, bool]:
    t0 = time.monotonic()
    res = find_counterexample(net, spec, t0 + budget, Replayer(onnx, spec), AttackConfig(seed=seed))
    return res.x is not None, res.time, False


def compare(title: str, instances: list[tuple[str, Network, Spec, Path]], budgets: list[float],
            seeds: list[int]) -> None:
    print(f"\n## {title}: {len(instances)} known-sat instances, seeds {seeds}")
    print("| budget s | attack | found (per seed) | unreplayed | median s to cex (found) | total s (miss = budget) |")
    print("|---:|---|---|---:|---:|---:|")
    for budget in budgets:
        totals, missed_by = {}, {}
        for name, run in (("old", run_old), ("new", run_new)):
            found, times, unreplayed, total = [], [], 0, 0.0
            missed = set()
            for seed in seeds:
                n = 0
                for key, net, spec, onnx in instances:
                    ok, dt, bad = run(net, spec, onnx, budget, seed)
                    n += ok
                    unreplayed += bad
                    total += dt if ok else budget
                    if ok:
                        times.append(dt)
                    else:
                        missed.add(key)
                found.append(n)
            totals[name], missed_by[name] = total, missed
            med = f"{statistics.median(times):.3f}" if times else "-"
            print(f"| {budget:g} | {name} | {'/'.join(map(str, found))} of {len(instances)} | {unreplayed} | {med} | "
                  f"{total:.2f} |", flush=True)
        print(f"| {budget:g} | old/new total time | {totals['old'] / max(totals['new'], 1e-9):.1f}x | | | |")
        for name in ("old", "new"):
            if missed_by[name]:
                print(f"  missed by {name} at {budget:g} s (some seed): {', '.join(sorted(missed_by[name]))}")


def acas_instances(verdict: str) -> list[tuple[str, Network, Spec, Path]]:
    out = []
    for r in csv.DictReader(open(ACASXU / "expected.csv")):
        if r["expected"] == verdict:
            onnx = ACASXU / "onnx" / r["network"]
            spec = read_vnnlib(ACASXU / "vnnlib" / r["property"], 5, 5)
            out.append((f"{r['network'][13:16]}/{Path(r['property']).stem}", load_onnx(onnx), spec, onnx))
    return out


def unsat_check(instances: list[tuple[str, Network, Spec, Path]], budget: float) -> None:
    false = sum(find_counterexample(net, spec, time.monotonic() + budget, Replayer(onnx, spec)).x is not None
                for _, net, spec, onnx in instances)
    print(f"\nACAS Xu unsat instances: new attack on {len(instances)} at {budget:g} s: {false} counterexamples "
          f"(must be 0)")


def mnist_instances(eps: str, per_class: int, confirm_timeout: float) -> list[tuple[str, Network, Spec, Path]]:
    from vfnn.verifiers import get_verifier

    model = RUNS / "mnist-fc100x2" / "model.onnx"
    vfnn = [sys.executable, "-m", "vfnn"]
    if not model.is_file():
        subprocess.run(vfnn + ["train", "--dataset", "mnist", "--data-dir", str(SHARED / "datasets"), "--no-download",
                               "--arch", "fc:100x2", "--epochs", "2", "--train-size", "20000", "--eval-size", "200",
                               "--overwrite", "--out", str(model.parent)], check=True)
    specs = RUNS / f"specs-eps{eps}-k{per_class}"
    if not (specs / "instances.csv").is_file():
        subprocess.run(vfnn + ["specs", "--dataset", "mnist", "--data-dir", str(SHARED / "datasets"), "--per-class",
                               str(per_class), "--eps", eps, "--model", str(model), "--correct-only", "--out",
                               str(specs)], check=True)
    net = load_onnx(model)
    out, counts = [], {"sat": 0, "unsat": 0, "undecided": 0}
    milp = get_verifier("milp")
    for row in csv.reader(open(specs / "instances.csv")):
        path = specs / row[1]
        spec = read_vnnlib(path, net.input_size, net.output_size)
        status = "sat" if any(run(net, spec, model, 5.0, 0)[0] for run in (run_old, run_new)) else ""
        if not status:  # neither long attack: let the MILP decide it
            status = milp.verify(model, spec, confirm_timeout, {"attack_steps": 0}, unstable_method=None).status
        key = status if status in ("sat", "unsat") else "undecided"
        sat = key == "sat"
        counts[key] += 1
        if sat:
            out.append((path.stem, net, spec, model))
    print(f"\nMNIST fc:100x2 (CE, 2 epochs), eps {eps}, {per_class} per class: {counts} "
          f"(sat: a replayed counterexample from either attack with 5 s, else from the MILP without attack, "
          f"{confirm_timeout:g} s)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", default="0.25,1", help="attack budgets in seconds, comma-separated")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--no-mnist", action="store_true")
    ap.add_argument("--no-acas", action="store_true")
    ap.add_argument("--mnist-eps", default="0.1", help="radius (or radii, comma-separated) of the MNIST specs")
    ap.add_argument("--mnist-per-class", type=int, default=2)
    ap.add_argument("--confirm-timeout", type=float, default=10.0)
    ap.add_argument("--unsat", type=int, default=10, help="unsat ACAS Xu instances for the soundness check")
    args = ap.parse_args()
    torch.set_num_threads(1)
    budgets = [float(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.no_acas:
        compare("ACAS Xu", acas_instances("sat"), budgets, seeds)
    if args.unsat and not args.no_acas:
        unsat_check(acas_instances("unsat")[:: max(1, 139 // args.unsat)][: args.unsat], max(budgets))
    if not args.no_mnist:
        inst = mnist_instances(args.mnist_eps, args.mnist_per_class, args.confirm_timeout)
        if inst:
            compare("MNIST", inst, budgets, seeds)


if __name__ == "__main__":
    main()
