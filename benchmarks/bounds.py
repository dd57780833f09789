"""Speed and peak memory of vfnn.bounds: boxes/second for IBP, CROWN and alpha-CROWN.

Run: ``python benchmarks/bounds.py [--threads N] [--quick]``.  Networks have random weights
scaled like trained ones (1/sqrt(fan-in)); boxes are L-inf balls of radius 0.02 around random
points, so a realistic share of neurons is unstable.  Peak memory is the largest resident-set
growth seen during the timed calls (sampled from /proc/self/statm, Linux), which covers torch's
CPU allocations.
"""

from __future__ import annotations

import argparse
import resource
import threading
import time

import torch
from torch import nn

from vfnn.bounds import compute_bounds


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
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Samples the resident set size in a thread while the block runs."""

    def __enter__(self) -> PeakRSS:
        self._stop = False
        self.base = self.peak = _rss()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self.t.join()
        self.peak = max(self.peak, _rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def measure(model: nn.Module, shape: tuple[int, ...], B: int, method: str, eps: float = 0.02,
            repeats: int = 3) -> tuple[float, float, float]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, *shape, generator=g)
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    C = torch.eye(10).unsqueeze(0).expand(B, 10, 10) - torch.eye(10)[torch.zeros(B, dtype=torch.long)].unsqueeze(1)
    with torch.no_grad():
        compute_bounds(model, lo, hi, C, method=method)  # warm-up
        best = float("inf")
        with PeakRSS() as mem:
            for _ in range(repeats):
                t0 = time.perf_counter()
                res = compute_bounds(model, lo, hi, C, method=method)
                best = min(best, time.perf_counter() - t0)
    unstable = sum(int(((lo_ < 0) & (hi_ > 0)).sum()) for lo_, hi_ in res.pre_activation) / B
    return B / best, mem.mib, unstable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="one repeat, skip batch 1 of alpha-CROWN")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 3
    nets = [("MLP 784-256x4-10", mlp([784, 256, 256, 256, 256, 10]), (1, 28, 28)),
            ("CNN c16k4s2-c32k4s2-fc100-10", small_cnn(), (1, 28, 28))]
    print(f"torch {torch.__version__}, {args.threads} thread(s), eps 0.02, C = 9 margins + 1 zero row per box")
    print(f"{'network':32s} {'method':12s} {'batch':>5s} {'boxes/s':>10s} {'s/100 boxes':>12s} {'peak MiB':>9s} "
          f"{'unstable/box':>12s}")
    for name, model, shape in nets:
        for method in ("ibp", "crown", "alpha-crown"):
            for B in (1, 100):
                rate, mib, unstable = measure(model, shape, B, method, repeats=repeats)
                print(f"{name:32s} {method:12s} {B:5d} {rate:10.1f} {100 / rate:12.3f} {mib:9.1f} {unstable:12.1f}")
    model = mlp([784, 256, 256, 10])
    rate, mib, unstable = measure(model, (1, 28, 28), 100, "crown", repeats=repeats)
    ref = 0.5
    print(f"\nMLP 784-256-256-10, CROWN, batch 100: {100 / rate:.3f} s per 100 boxes, peak {mib:.0f} MiB, "
          f"{unstable:.0f} unstable/box; auto_LiRPA's reference figure {ref} s -> {ref / (100 / rate):.1f}x")
    print(f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
