"""VNN-LIB parse speed: robustness specs of MNIST (784) and CIFAR (3072) size, and the ACAS Xu properties.

Run: ``python benchmarks/specs.py``.  Prints the median of several reads (ms) next to the targets
from issue 2 (784 inputs well under 50 ms, 3072 inputs under 200 ms) and the write time, and how the
read time of one long ``and`` grows with its length (linear: ~10x for 10x the atoms; the old
per-atom copy was quadratic, ~100x: 100k atoms took 64 s).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vfnn.spec import robustness_spec
from vfnn.vnnlib import read_vnnlib, write_vnnlib

ACASXU = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "acasxu" / "vnnlib"


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def long_and(n: int, nested: bool) -> str:
    """One ``and`` of n input bounds, at the top level or inside an ``or`` (a nested DNF)."""
    atoms = " ".join(f"(<= X_0 {1 + k % 7})" if k % 2 else f"(>= X_0 {-1 - k % 5})" for k in range(n))
    body = f"(or (and {atoms}) (and (<= X_0 9) (>= X_0 8)))" if nested else f"(and {atoms})"
    return f"(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert {body})\n(assert (<= Y_0 0))\n"


def scaling(tmp: Path) -> None:
    for nested in (False, True):
        ms = {}
        for n in (20_000, 200_000):
            path = tmp / f"and_{n}.vnnlib"
            path.write_text(long_and(n, nested))
            ms[n] = median_ms(lambda path=path: read_vnnlib(path), 3)
        where = "nested in an or" if nested else "top level"
        print(f"one and, {where}: 20k atoms {ms[20_000]:7.1f} ms, 200k atoms {ms[200_000]:7.1f} ms, "
              f"ratio {ms[200_000] / ms[20_000]:5.1f} (linear ~10, quadratic ~100)")


def main(repeats: int = 9) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for n, target in ((784, 50.0), (3072, 200.0)):
            spec = robustness_spec(rng.random(n), 3, 2 / 255, 10)
            path = Path(tmp) / f"robust_{n}.vnnlib"
            write_ms = median_ms(lambda spec=spec, path=path: write_vnnlib(spec, path), repeats)
            read_ms = median_ms(lambda path=path: read_vnnlib(path), repeats)
            kib = path.stat().st_size / 1024
            print(
                f"robustness {n:5d} inputs ({kib:6.0f} KiB): read {read_ms:7.2f} ms (target < {target:.0f} ms, "
                f"{target / read_ms:5.1f}x under), write {write_ms:6.2f} ms"
            )
            gz = write_vnnlib(spec, Path(tmp) / f"robust_{n}.vnnlib.gz")
            print(f"robustness {n:5d} inputs, gzip: read {median_ms(lambda gz=gz: read_vnnlib(gz), repeats):7.2f} ms")
        scaling(Path(tmp))
    if not ACASXU.is_dir():
        print(f"ACAS Xu properties not found at {ACASXU}; skipped", file=sys.stderr)
        return
    props = sorted(ACASXU.glob("prop_*.vnnlib"), key=lambda p: int(p.stem.split("_")[1]))
    per = {p.stem: median_ms(lambda p=p: read_vnnlib(p), repeats) for p in props}
    print("ACAS Xu: " + ", ".join(f"{k} {v:.2f} ms" for k, v in per.items()))


if __name__ == "__main__":
    main()
