"""Verifier benchmark: correctness and speed of every available verifier, measured in one run.

Three parts, each printed as a table:

1. ``instances``: every available verifier (or ``--verifiers``) over a VNN-COMP ``instances.csv``
   (default: the shared ACAS Xu set), checked against ``expected.csv`` when given:
   solved / wrong / timeout / unknown / error counts and median / total wall time of solved ones.
2. ``small nets``: the built-in MILP against Marabou on robustness properties of small random
   ReLU networks (same properties, same timeout); prints the ratio of their times.
3. ``overhead``: the cost of the isolated child process (a hook that returns at once).

Usage::

    python benchmarks/verifiers.py --timeout 60                     # full ACAS Xu set
    python benchmarks/verifiers.py --limit 20 --small-nets 10       # a quick subset
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from vfnn.verifiers import Availability, Problem, RawOutcome, Verifier

ROOT = Path(__file__).resolve().parents[1]
ACASXU = ROOT.parent / "shared" / "benchmarks" / "acasxu"


def run_instances(args: argparse.Namespace, names: list[str]) -> None:
    from vfnn.onnx_io import load_onnx
    from vfnn.verifiers import get_verifier
    from vfnn.vnnlib import read_vnnlib

    base = args.instances.parent
    rows = [r for r in csv.reader(open(args.instances)) if r]
    expected = {}
    if args.expected and args.expected.is_file():
        for r in csv.DictReader(open(args.expected)):
            expected[(Path(r["network"]).name, Path(r["property"]).name)] = r["expected"]
    if args.filter:
        rows = [r for r in rows if args.filter in ",".join(r)]
    rows = rows[args.skip::args.every]
    rows = rows[: args.limit or None]
    tally: dict[str, dict] = {n: defaultdict(int, times=[], total=0.0) for n in names}
    for onnx, prop, *rest in rows:
        timeout = args.timeout or float(rest[0])
        net = load_onnx(base / onnx)
        spec = read_vnnlib(base / prop, n_inputs=net.input_size, n_outputs=net.output_size)
        want = expected.get((Path(onnx).name, Path(prop).name))
        line = [f"{Path(onnx).stem[:28]:28s} {Path(prop).stem:8s} want={want or '?':5s}"]
        for name in names:
            r = get_verifier(name).verify(base / onnx, spec, timeout, dict(args.opt.get(name, {})),
                                          spec_path=base / prop, unstable_method=None)
            t = tally[name]
            t["total"] += r.wall_time
            if r.decided and want and r.status != want:
                t["wrong"] += 1
                verdict = "WRONG"
            elif r.decided:
                t["solved"] += 1
                t["times"].append(r.wall_time)
                verdict = r.status
            else:
                t[r.status] += 1
                verdict = r.status
            line.append(f"{name}={verdict}:{r.wall_time:.1f}s")
        print("  ".join(line), flush=True)
    print(f"\n== instances: {len(rows)} from {args.instances} (timeout {args.timeout or 'per instance'}) ==")
    print(f"{'verifier':10s} {'solved':>6s} {'wrong':>5s} {'timeout':>7s} {'unknown':>7s} {'error':>5s} "
          f"{'median_s':>8s} {'solved_total_s':>14s} {'all_total_s':>11s}")
    for name, t in tally.items():
        med = statistics.median(t["times"]) if t["times"] else float("nan")
        print(f"{name:10s} {t['solved']:6d} {t['wrong']:5d} {t['timeout']:7d} {t['unknown']:7d} {t['error']:5d} "
              f"{med:8.2f} {sum(t['times']):14.1f} {t['total']:11.1f}")


def random_net(rng: np.random.Generator, n_in: int, hidden: list[int], n_out: int):
    from vfnn.network import Dense, Network, ReLU

    layers, prev = [], n_in
    for h in hidden + [n_out]:
        W = rng.normal(0, np.sqrt(2.0 / prev), (h, prev)).astype(np.float32)
        b = rng.normal(0, 0.1, h).astype(np.float32)
        layers += [Dense(W, b), ReLU()]
        prev = h
    return Network((n_in,), tuple(layers[:-1]), f"rand_{n_in}_{'x'.join(map(str, hidden))}_{n_out}")


def run_small_nets(args: argparse.Namespace) -> None:
    from vfnn.spec import robustness_spec
    from vfnn.verifiers import get_verifier

    rng = np.random.default_rng(args.seed)
    shapes = [(5, [20, 20], 5), (8, [30, 30], 5), (10, [50, 50], 10), (5, [40, 40, 40], 5)]
    times: dict[str, list[float]] = {"milp": [], "marabou": []}
    statuses: dict[str, list[str]] = {"milp": [], "marabou": []}
    wrong = 0
    for k in range(args.small_nets):
        n_in, hidden, n_out = shapes[k % len(shapes)]
        net = random_net(rng, n_in, hidden, n_out)
        x = rng.uniform(0.2, 0.8, n_in)
        label = int(np.argmax(net.forward(x[None])[0]))
        eps = args.eps[k % len(args.eps)]
        spec = robustness_spec(x, label, eps, n_out)
        res = {}
        for name in ("milp", "marabou"):
            r = get_verifier(name).verify(net, spec, args.small_timeout, unstable_method=None)
            res[name] = r
            times[name].append(r.wall_time)
            statuses[name].append(r.status)
        both = {r.status for r in res.values() if r.decided}
        wrong += len(both) > 1
        print(f"{net.name:22s} eps={eps:<5g} " + "  ".join(f"{n}={r.status}:{r.wall_time:.2f}s"
                                                             for n, r in res.items()), flush=True)
    common = [i for i in range(args.small_nets) if statuses["milp"][i] in ("sat", "unsat")
              and statuses["marabou"][i] in ("sat", "unsat")]
    tm = sum(times["milp"][i] for i in common)
    tr = sum(times["marabou"][i] for i in common)
    ratios = [times["marabou"][i] / times["milp"][i] for i in common]
    print(f"\n== small nets: {args.small_nets} robustness properties, eps {args.eps}, timeout {args.small_timeout}s ==")
    for n in ("milp", "marabou"):
        s = statuses[n]
        print(f"{n:8s} decided {sum(x in ('sat', 'unsat') for x in s):3d}  timeout {s.count('timeout'):3d}  "
              f"total {sum(times[n]):7.2f}s  median {statistics.median(times[n]):6.2f}s")
    if common:
        print(f"decided by both: {len(common)}; total time marabou/milp = {tr / tm:.2f}x; "
              f"median per-property ratio = {statistics.median(ratios):.2f}x; disagreements = {wrong}")


class Instant(Verifier):
    """A hook that returns at once: what remains of a verify() call is vfnn's own overhead."""

    name = "instant"

    def availability(self) -> Availability:
        return Availability(True, "0")

    def _solve(self, problem: Problem, options: dict) -> RawOutcome:
        return RawOutcome("unknown", message="instant")


def run_overhead(n: int) -> None:
    from vfnn.spec import robustness_spec

    net = random_net(np.random.default_rng(0), 5, [10], 3)
    spec = robustness_spec(np.full(5, 0.5), 0, 0.01, 3)
    t = time.monotonic()
    Instant().verify(net, spec, 10.0, unstable_method=None)  # starts the fork server
    first = time.monotonic() - t
    t = time.monotonic()
    for _ in range(n):
        Instant().verify(net, spec, 10.0, unstable_method=None)
    per = (time.monotonic() - t) / n
    print(f"== overhead: first verify() {first:.2f}s (starts the fork server with torch preloaded); then "
          f"{per * 1000:.1f} ms per call of an instant hook (export, isolated child, cleanup), mean of {n} ==")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instances", type=Path, default=ACASXU / "instances.csv")
    p.add_argument("--expected", type=Path, default=ACASXU / "expected.csv")
    p.add_argument("--verifiers", nargs="*", help="default: every available verifier")
    p.add_argument("--timeout", type=float, default=None, help="per-instance seconds (default: the csv's)")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--skip", type=int, default=0)
    p.add_argument("--every", type=int, default=1, help="take every N-th instance (a spread-out subset)")
    p.add_argument("--filter", default="", help="only instances whose csv row contains this text")
    p.add_argument("--small-nets", type=int, default=12, help="number of small-net properties (0: skip)")
    p.add_argument("--small-timeout", type=float, default=60.0)
    p.add_argument("--eps", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-instances", action="store_true")
    p.add_argument("--overhead", type=int, default=20, help="instant-hook calls to time (0: skip)")
    args = p.parse_args()
    args.opt = {}
    torch.set_num_threads(1)
    from vfnn.verifiers import verifier_status

    avail = [n for n, _, a in verifier_status() if a.available]
    names = args.verifiers or avail
    missing = set(names) - set(avail)
    if missing:
        sys.exit(f"not available here: {', '.join(sorted(missing))}")
    if args.overhead:
        run_overhead(args.overhead)
    if not args.no_instances:
        run_instances(args, names)
    if args.small_nets and {"milp", "marabou"} <= set(avail):
        run_small_nets(args)


if __name__ == "__main__":
    main()
