"""Campaign scheduling overhead and the speed-up of --jobs 2 over --jobs 1, measured in one run.

Usage:  python benchmarks/campaign.py [--specs 40] [--verifier milp] [--out DIR]

Builds a small digits network (64-16-10, trained for a few seconds), writes robustness specs for
it, and runs the same campaign with --jobs 1 and --jobs 2 (fresh output folders).  Prints:

* overhead per job = (campaign wall time x jobs - sum of the verifiers' wall times) / jobs run:
  what the campaign adds around each verify() call (pool start-up, dispatch, result records with
  fsync, progress); start-up of the worker processes is included, so it shrinks as campaigns grow;
* time to the first recorded result (the start-up cost alone);
* speed-up = wall(--jobs 1) / wall(--jobs 2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build(root: Path, n_specs: int) -> Path:
    import torch
    from torch import nn

    from vfnn.campaign.specgen import generate_specs
    from vfnn.network import Network
    from vfnn.onnx_io import save_onnx
    from vfnn.train.data import load_dataset

    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = load_dataset("digits", "train")
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(m(xt), yt).backward()
        opt.step()
    model = save_onnx(Network.from_torch(m, (1, 8, 8), "bench"), root / "model.onnx")
    per_class = max(1, -(-n_specs // 20))
    generate_specs("digits", per_class, [0.01, 0.04], root / "specs", models=[model], timeout=60)
    csv_path = root / "specs" / "instances.csv"
    rows = csv_path.read_text().splitlines()[:n_specs]
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def measure(csv_path: Path, out: Path, verifier: str, jobs: int) -> dict:
    from vfnn.campaign.runner import run_campaign

    t0 = time.time()
    s = run_campaign(csv_path, [verifier], out, jobs=jobs, show_progress=False)
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    first = min(_ts(r["finished_at"]) for r in recs) - t0
    solve = [float(r["result"]["wall_time"]) for r in recs]
    return {"jobs": jobs, "n": s.ran, "wall": s.wall_time, "solve_sum": sum(solve),
            "solve_median": statistics.median(solve),
            "overhead_per_job": (s.wall_time * jobs - sum(solve)) / s.ran, "first_result": first,
            "statuses": s.counts}


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", type=int, default=40)
    ap.add_argument("--verifier", default="milp")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    root = Path(a.out or tempfile.mkdtemp(prefix="vfnn-bench-campaign-"))
    csv_path = build(root, a.specs)
    print(f"{a.specs} jobs, verifier {a.verifier}, {os.cpu_count()} CPUs, folder {root}", flush=True)
    rows = [measure(csv_path, root / f"jobs{j}", a.verifier, j) for j in (1, 2)]
    print(f"{'jobs':>4} {'wall s':>8} {'sum solve s':>12} {'median solve s':>15} {'overhead s/job':>15} "
          f"{'first result s':>15}  statuses")
    for r in rows:
        print(f"{r['jobs']:>4} {r['wall']:>8.2f} {r['solve_sum']:>12.2f} {r['solve_median']:>15.3f} "
              f"{r['overhead_per_job']:>15.3f} {r['first_result']:>15.2f}  {r['statuses']}")
    r1, r2 = rows
    print(f"overhead per job (--jobs 1): {r1['overhead_per_job']:.3f} s = "
          f"{100 * r1['overhead_per_job'] / r1['solve_median']:.0f}% of the median solve time")
    print(f"speed-up --jobs 2 over --jobs 1: {r1['wall'] / r2['wall']:.2f}x")
    if r1["statuses"] != r2["statuses"]:
        print("WARNING: the two runs gave different statuses", file=sys.stderr)


if __name__ == "__main__":
    main()
