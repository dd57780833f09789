"""VNN-LIB parse speed: robustness specs of MNIST (784) and CIFAR (3072) size, and the ACAS Xu properties.

Run: ``python benchmarks/specs.py``.  Prints the median of several reads (ms) next to the targets
from issue 2 (784 inputs well under 50 ms, 3072 inputs under 200 ms) and the write time.
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
    if not ACASXU.is_dir():
        print(f"ACAS Xu properties not found at {ACASXU}; skipped", file=sys.stderr)
        return
    props = sorted(ACASXU.glob("prop_*.vnnlib"), key=lambda p: int(p.stem.split("_")[1]))
    per = {p.stem: median_ms(lambda p=p: read_vnnlib(p), repeats) for p in props}
    print("ACAS Xu: " + ", ".join(f"{k} {v:.2f} ms" for k, v in per.items()))


if __name__ == "__main__":
    main()
