"""Speed and peak memory of vfnn.bounds: boxes/second for IBP, CROWN, LBP, CROWN-LBP and alpha-CROWN.

Run: ``python benchmarks/bounds.py [--threads N] [--quick] [--methods crown,lbp,...] [--batches 1,100]
[--intermediate per-box|batch-union|full] [--json OUT] [--previous FILE] [--tightness]``.
"x IBP" is the method's time over IBP's on the same network and batch, measured in the same run.
Where auto_LiRPA is importable (the copy in an alpha-beta-CROWN checkout, put on PYTHONPATH), its
CROWN (``BoundedModule``, default options: patches for convolutions) is timed on the same networks
and boxes in the same run, and each vfnn CROWN row prints "x auto_LiRPA" (auto_LiRPA's time over
vfnn's: above 1 is faster).  Otherwise the rows print "x previous", the speed-up over the figures of
an earlier run (``--previous``, default ``benchmarks/results/bounds.json``, written by ``--json``).
Networks have random weights scaled like trained ones (1/sqrt(fan-in)); boxes are L-inf balls
of radius 0.02 around random points, so a realistic share of neurons is unstable.  Each
measurement runs in a fresh process; "peak MiB" is that process's peak resident memory minus its
resident memory before the first bound computation (Linux), which covers torch's CPU allocations.
``--intermediate`` picks CROWN's refinement rule (``batch-union`` is auto_LiRPA's, the previous
default); ``--tightness`` instead compares, on 30 boxes of radii 0.005-0.05, each rule's bounds of
a box in the batch with the same box alone, and per neuron against IBP and pure CROWN.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vfnn.bounds import INTERMEDIATE, Bounds, compute_bounds


def mlp(sizes: list[int]) -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g) / a ** 0.5)
            lin.bias.copy_(torch.randn(b, generator=g) * 0.05)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(nn.Flatten(), *layers[:-1]).eval()


def small_cnn() -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2, padding=1),
                      nn.ReLU(), nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10)).eval()
    with torch.no_grad():
        for p in m.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5 * (1.0 if p.dim() > 1 else 0.05))
    return m


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _child(conn, name: str, method: str, B: int, repeats: int, threads: int,  # noqa: ANN001
           intermediate: str = "per-box") -> None:
    torch.set_num_threads(threads)
    model, shape = NETS[name]()
    base = _rss()
    if method == "auto_lirpa":
        out = measure_paired(model, shape, B, max(repeats, 5), intermediate)
    else:
        out = measure(model, shape, B, method, repeats=repeats, intermediate=intermediate)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conn.send((*out, (peak - base) / 2**20))


def run_isolated(name: str, method: str, B: int, repeats: int, threads: int,
                 intermediate: str = "per-box") -> tuple[float, float, float]:
    """One measurement in a fresh process, so the peak resident memory is this call's alone:
    (boxes/s, unstable/box, peak MiB); for ``auto_lirpa`` (auto_LiRPA's boxes/s, vfnn's, peak MiB)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child, args=(child, name, method, B, repeats, threads, intermediate))
    p.start()
    out = parent.recv()
    p.join()
    return out


def boxes(shape: tuple[int, ...], B: int, eps: float = 0.02) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``B`` L-inf boxes of radius ``eps`` in [0, 1] and C: 9 margins against class 0 + 1 zero row."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, *shape, generator=g)
    C = torch.eye(10).unsqueeze(0).expand(B, 10, 10) - torch.eye(10)[torch.zeros(B, dtype=torch.long)].unsqueeze(1)
    return (x - eps).clamp(0, 1), (x + eps).clamp(0, 1), C


def bound_call(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, method: str,
               intermediate: str) -> Callable[[], Bounds | None]:
    """A call computing the bounds once; ``auto_lirpa`` is auto_LiRPA's CROWN (returns None)."""
    if method == "auto_lirpa":
        from auto_LiRPA import BoundedModule, BoundedTensor
        from auto_LiRPA.perturbations import PerturbationLpNorm

        x = BoundedTensor((lo + hi) / 2, PerturbationLpNorm(x_L=lo, x_U=hi))
        bounded = BoundedModule(model, torch.zeros_like(lo), verbose=0)

        def lirpa() -> None:
            bounded.compute_bounds(x=(x,), C=C, method="CROWN")
        return lirpa
    kw = {"intermediate": intermediate} if method in ("crown", "alpha-crown") else {}
    return lambda: compute_bounds(model, lo, hi, C, method=method, **kw)


def _seconds(call: Callable[[], Bounds | None]) -> tuple[float, Bounds | None]:
    t0 = time.perf_counter()
    res = call()
    return time.perf_counter() - t0, res


def measure(model: nn.Module, shape: tuple[int, ...], B: int, method: str, repeats: int = 3,
            intermediate: str = "per-box") -> tuple[float, float]:
    """(boxes/s of the best of ``repeats`` calls, unstable neurons per box)."""
    lo, hi, C = boxes(shape, B)
    call = bound_call(model, lo, hi, C, method, intermediate)
    with torch.no_grad():
        if method != "alpha-crown":  # warm-up (alpha-CROWN runs long enough without one)
            call()
        best, res = min((_seconds(call) for _ in range(repeats)), key=lambda t: t[0])
    unstable = sum(int(((lo_ < 0) & (hi_ > 0)).sum()) for lo_, hi_ in res.pre_activation) / B
    return B / best, unstable


def measure_paired(model: nn.Module, shape: tuple[int, ...], B: int, rounds: int,
                   intermediate: str) -> tuple[float, float]:
    """(auto_LiRPA's boxes/s, vfnn CROWN's) on the same boxes, the two calls alternating in one
    process (best of ``rounds`` each), so a change of machine load hits both alike."""
    lo, hi, C = boxes(shape, B)
    calls = [bound_call(model, lo, hi, C, m, intermediate) for m in ("auto_lirpa", "crown")]
    best = [float("inf")] * 2
    with torch.no_grad():
        for call in calls:
            call()
        for _ in range(rounds):
            for k, call in enumerate(calls):
                best[k] = min(best[k], _seconds(call)[0])
    return B / best[0], B / best[1]


def has_auto_lirpa() -> bool:
    return importlib.util.find_spec("auto_LiRPA") is not None


PREVIOUS = Path(__file__).parent / "results" / "bounds.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="one repeat")
    ap.add_argument("--methods", default="ibp,crown,lbp,crown-lbp,alpha-crown",
                    help="comma-separated methods (IBP is always measured, for the ratio)")
    ap.add_argument("--batches", default="1,100", help="comma-separated batch sizes")
    ap.add_argument("--intermediate", default="per-box", choices=INTERMEDIATE, help="CROWN's refinement rule")
    ap.add_argument("--tightness", action="store_true", help="batch dependence and per-neuron tightness only")
    ap.add_argument("--json", type=Path, help="write every row's figures here (for a later --previous)")
    ap.add_argument("--previous", type=Path, default=PREVIOUS,
                    help="an earlier run's --json, for the x previous column when auto_LiRPA is absent")
    args = ap.parse_args()
    if args.tightness:
        torch.set_num_threads(args.threads)
        for name in ("MLP 784-256-256-10", "CNN c16k4s2-c32k4s2-fc100-10"):
            tightness(name)
        return
    methods = ["ibp", *(m for m in args.methods.split(",") if m != "ibp")]
    lirpa = "crown" in methods and has_auto_lirpa()
    if lirpa:
        methods.append("auto_lirpa")
    previous = json.loads(args.previous.read_text()) if not lirpa and args.previous.exists() else {}
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 3
    ibp_rate: dict[int, float] = {}
    rows: dict[str, float] = {}
    ref = "x auto_LiRPA" if lirpa else f"x previous ({args.previous.name})" if previous else ""
    print(f"torch {torch.__version__}, {args.threads} thread(s), eps 0.02, C = 9 margins + 1 zero row per box, "
          f"intermediate {args.intermediate}; auto_LiRPA {'timed in this run' if lirpa else 'not importable'}")
    print(f"{'network':32s} {'method':12s} {'batch':>5s} {'boxes/s':>10s} {'s/100 boxes':>12s} {'x IBP':>7s} "
          f"{'peak MiB':>9s} {'unstable/box':>12s}  {ref}")
    plan = [(name, methods, batches) for name in ("MLP 784-256x4-10", "CNN c16k4s2-c32k4s2-fc100-10")]
    if "crown" in methods:  # the two-layer MLP of auto_LiRPA's own reference figure
        plan.append(("MLP 784-256-256-10", [m for m in methods if m in ("ibp", "crown", "auto_lirpa")], [100]))
    for name, net_methods, net_batches in plan:
        for method in net_methods:
            for B in net_batches:
                rate, second, mib = run_isolated(name, method, B, repeats, args.threads, args.intermediate)
                if method == "ibp":
                    ibp_rate[B] = rate
                key = f"{name} | {method} | {B}"
                rows[key] = 100 / rate
                unstable = float("nan") if method == "auto_lirpa" else second
                print(f"{name:32s} {method:12s} {B:5d} {rate:10.1f} {100 / rate:12.3f} {ibp_rate[B] / rate:7.1f} "
                      f"{mib:9.1f} {unstable:12.1f}", end="")
                if method == "auto_lirpa":  # second: vfnn CROWN's boxes/s, alternating with it
                    print(f"  vfnn CROWN {second / rate:.2f}x as fast (alternating in one process: "
                          f"{100 / second:.3f} vs {100 / rate:.3f} s/100)")
                elif key in previous:
                    lirpa_then = previous.get(f"{name} | auto_lirpa | {B}")
                    then = f"; auto_LiRPA then took {lirpa_then / rows[key]:.2f}x this time" if lirpa_then else ""
                    print(f"  {previous[key] / rows[key]:.2f}x{then}")
                else:
                    print()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


def tightness(name: str, B: int = 30) -> None:
    """Per rule: the largest change of any bound of a box between the batch and alone, and how
    many pre-activation bounds are looser than IBP's and than pure CROWN's (``full``)."""
    model, shape = NETS[name]()
    model = model.double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, *shape, generator=g, dtype=torch.float64)
    eps = torch.tensor([0.005, 0.01, 0.02, 0.03, 0.05], dtype=torch.float64)[torch.arange(B) % 5]
    eps = eps.reshape(B, *[1] * len(shape))
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)

    def flat(res: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([p[0].flatten(1) for p in res.pre_activation], 1),
                torch.cat([p[1].flatten(1) for p in res.pre_activation], 1))

    with torch.no_grad():
        ibp = flat(compute_bounds(model, lo, hi, method="ibp"))
        pure = flat(compute_bounds(model, lo, hi, method="crown", intermediate="full"))
        for rule in ("batch-union", "per-box"):
            kw = {"method": "crown", "intermediate": rule, "intersect_ibp": False}
            res = compute_bounds(model, lo, hi, **kw)
            pl, pu = flat(res)
            dep = 0.0
            for b in range(B):
                one = compute_bounds(model, lo[b: b + 1], hi[b: b + 1], **kw)
                ol, ou = flat(one)
                dep = max(dep, float((pl[b] - ol[0]).abs().max()), float((pu[b] - ou[0]).abs().max()),
                          float((res.lower[b] - one.lower[0]).abs().max()))
            n = pl.numel() * 2
            vs_ibp = int((pl < ibp[0] - 1e-9).sum() + (pu > ibp[1] + 1e-9).sum())
            worse = torch.cat([(pure[0] - pl).flatten(), (pu - pure[1]).flatten()])
            unstable = int(((pl < 0) & (pu > 0)).sum()) / B
            n_worse, max_worse = int((worse > 1e-9).sum()), float(worse.max())
            print(f"{name:30s} {rule:12s} batch {B}: max |batch - alone| {dep:.3g}; pre-activation bounds looser "
                  f"than IBP {vs_ibp}/{n}, than pure CROWN {n_worse}/{n} (max {max_worse:.3g}); "
                  f"unstable/box {unstable:.1f}")


NETS = {
    "MLP 784-256x4-10": lambda: (mlp([784, 256, 256, 256, 256, 10]), (1, 28, 28)),
    "CNN c16k4s2-c32k4s2-fc100-10": lambda: (small_cnn(), (1, 28, 28)),
    "MLP 784-256-256-10": lambda: (mlp([784, 256, 256, 10]), (1, 28, 28)),
}

if __name__ == "__main__":
    main()
