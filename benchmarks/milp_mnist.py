"""milp on VNN-COMP-style MNIST MLPs (issue 11, section 1): solved count and time per option set.

Usage:  python benchmarks/milp_mnist.py [--out DIR] [--timeout 30] [--images 6]
                                        [--config NAME:KEY=VALUE,KEY=VALUE ...] [--hard-only] [--abcrown]

Builds (cached in ``--out``, default /work/study-out/milp-mnist) two CE-trained MLPs,
784-256x2-10 and 784-256x4-10 (``vfnn train --arch fc:256xN --epochs 3 --threads 1``), and
robustness specs at eps 0.03 and 0.05 for ``--images`` correctly classified test images (one per
class, seed 0, labels 0..images-1), then runs ``vfnn bench --jobs 1`` once per option set in the
same invocation and prints per instance the status and tool time of each, the solved counts and
the ratio of summed tool times against the first set (``before``: today's defaults).
``--hard-only`` runs the other sets only on the instances ``before`` did not decide (they cannot
change an instance the bounds or the attack already settle, only its time).

Each set is a list of milp options, e.g. ``--config alpha:bounds=alpha-crown``; the default is
``after:`` (milp's defaults).  Results are
kept in ``OUT/run-<name>``; delete a folder to measure that set again.

``--abcrown`` (needs ``VFNN_ABCROWN``, and ``VFNN_ABCROWN_PYTHON``; see verifiers/abcrown/README.md)
then runs α,β-CROWN (``vfnn bench -v abcrown --jobs 1``, one thread: the adapter's default
``OMP_NUM_THREADS=1``) on all the instances, kept in ``OUT/run-abcrown``, adds its column and
solved count, and compares it with the last milp set: solved by each, by either, and any sat
against unsat disagreement (listed; there should be none).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ARCHS = ("256x2", "256x4")
EPS = "0.03,0.05"
BEFORE = ["presolve=true"]  # milp as it was before this benchmark: HiGHS presolve on


def vfnn(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vfnn", *args], check=True)


def build(out: Path, data_dir: str, images: int, timeout: float) -> Path:
    """Nets and specs (cached); the instances.csv of the benchmark set."""
    for arch in ARCHS:
        if not (out / f"fc{arch}" / "model.onnx").exists():
            vfnn("train", "--dataset", "mnist", "--data-dir", data_dir, "--no-download", "--arch", f"fc:{arch}",
                 "--epochs", "3", "--threads", "1", "-q", "--out", str(out / f"fc{arch}"))
    specs = out / "specs"
    if not (specs / "instances.csv").exists():
        vfnn("specs", "--dataset", "mnist", "--data-dir", data_dir, "--per-class", "1", "--eps", EPS,
             *[a for arch in ARCHS for a in ("--model", str(out / f"fc{arch}" / "model.onnx"))],
             "--correct-only", "--seed", "0", "--timeout", str(timeout), "--out", str(specs))
    subset = specs / f"s{images * 4}"
    subset.mkdir(exist_ok=True)
    if not (subset / "vnnlib").exists():
        (subset / "vnnlib").symlink_to(specs / "vnnlib")
    keep = tuple(f"_label{k}_" for k in range(images))
    rows = [r for r in (specs / "instances.csv").read_text().splitlines() if any(k in r for k in keep)]
    rows = ["../" + r for r in rows]  # relative to the subset's folder
    (subset / "instances.csv").write_text("\n".join(rows) + "\n")
    return subset / "instances.csv"


def seconds(result: dict) -> str:
    """Tool time, or "killed" when the tool was stopped at the deadline without reporting one."""
    return "killed" if result["tool_time"] is None else f"{result['tool_time']:.1f}s"


def key(onnx: str, vnnlib: str) -> str:
    return f"{Path(onnx).parent.name}::{Path(vnnlib).stem}"


def run(instances: Path, out: Path, name: str, options: list[str], timeout: float,
        verifier: str = "milp") -> dict[str, dict]:
    """``vfnn bench`` of ``verifier`` for one option set; results by instance key (model::spec)."""
    folder = out / f"run-{name}"
    args = ["bench", str(instances), "-v", verifier, "-o", str(folder), "--timeout", str(timeout), "--jobs", "1", "-q"]
    for o in (["threads=1"] if verifier == "milp" else []) + options:
        args += ["-O", f"{verifier}.{o}"]
    vfnn(*args)
    results = {}
    for line in (folder / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        results[key(r["onnx"], r["vnnlib"])] = r["result"]
    return results


def decided(result: dict | None) -> bool:
    return result is not None and result["status"] in ("sat", "unsat")


def compare(res: dict[str, dict], milp: str, keys: list[str]) -> None:
    """Solved by the last milp set, by α,β-CROWN, by either; sat-against-unsat disagreements, loudly.
    An instance the set skipped (``--hard-only``) counts with ``before``'s result."""
    a, b = {**res["before"], **res[milp]}, res["abcrown"]
    x, y = (sum(decided(r.get(k)) for k in keys) for r in (a, b))
    either = sum(decided(a.get(k)) or decided(b.get(k)) for k in keys)
    clash = [k for k in keys if decided(a.get(k)) and decided(b.get(k)) and a[k]["status"] != b[k]["status"]]
    print(f"milp ({milp}) solved {x}, abcrown solved {y}, either solved {either}, "
          f"disagreements (sat vs unsat) {len(clash)}")
    for k in clash:
        print(f"!!! DISAGREEMENT {k}: milp ({milp}) {a[k]['status']}, abcrown {b[k]['status']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/work/study-out/milp-mnist"))
    ap.add_argument("--data-dir", default="/work/shared/datasets")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--images", type=int, default=6, help="images per net and eps (labels 0..N-1)")
    ap.add_argument("--config", action="append", default=[], help="NAME:KEY=VALUE,... (milp options)")
    ap.add_argument("--hard-only", action="store_true")
    ap.add_argument("--abcrown", action="store_true", help="also run α,β-CROWN (needs $VFNN_ABCROWN)")
    a = ap.parse_args()
    if a.abcrown and not os.environ.get("VFNN_ABCROWN"):
        print("--abcrown needs VFNN_ABCROWN=/path/to/complete_verifier/abcrown.py (and VFNN_ABCROWN_PYTHON)",
              file=sys.stderr)
        sys.exit(2)
    a.out.mkdir(parents=True, exist_ok=True)
    instances = all_instances = build(a.out, a.data_dir, a.images, a.timeout)
    configs = [("before", BEFORE)] + [(c.split(":")[0], [o for o in c.split(":", 1)[1].split(",") if o])
                                  for c in (a.config or ["after:"])]
    res = {"before": run(instances, a.out, "before", BEFORE, a.timeout)}
    hard = [k for k, r in res["before"].items() if r["status"] not in ("sat", "unsat")]
    if a.hard_only:
        hard_csv = instances.parent / "hard.csv"
        lines = instances.read_text().splitlines()
        hard_csv.write_text("".join(f"{line}\n" for line in lines if key(*line.split(",")[:2]) in hard))
        instances = hard_csv
    for name, opts in configs[1:]:
        res[name] = run(instances, a.out, name, opts, a.timeout)
    milps = list(res)
    if a.abcrown:
        res["abcrown"] = run(all_instances, a.out, "abcrown", [], a.timeout, verifier="abcrown")
    names = list(res)
    print(f"{'instance':44s} " + " ".join(f"{n:>18s}" for n in names))
    for k in res["before"]:
        cells = [f"{res[n][k]['status']:>8s} {seconds(res[n][k]):>9s}" if k in res[n] else f"{'-':>18s}"
                 for n in names]
        print(f"{k:44s} " + " ".join(cells))
    for n in milps:
        keys = [k for k in res[n] if k in res["before"]]
        solved = sum(res[n][k]["status"] in ("sat", "unsat") for k in keys)
        both = [k for k in keys if all(r[k]["status"] in ("sat", "unsat") and (r[k]["tool_stats"].get("milps") or 0) > 0
                                       for r in (res[n], res["before"]))]
        t, t0 = (sum(r[k]["tool_time"] for k in both) for r in (res[n], res["before"]))
        ratio = f"{t0 / t:.2f}x faster than before" if both else "none"
        print(f"{n}: solved {solved}/{len(keys)}; on the {len(both)} both decide with a MILP, {t:.1f}s ({ratio})")
    if a.abcrown:
        keys = list(res["before"])
        print(f"abcrown: solved {sum(decided(res['abcrown'].get(k)) for k in keys)}/{len(keys)}")
        compare(res, milps[-1], keys)


if __name__ == "__main__":
    main()
