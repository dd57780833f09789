"""Training cost and effect of every method on real MNIST (fc:100x3), measured in one run.

Part 1 -- seconds per training epoch for ce, pgd, trades, ibp, crown-ibp, ce+nbc, ce+rs on a
fixed MNIST subset, and each one relative to ce measured in the same process.  The methods are
timed round-robin (one epoch each, --timing-rounds rounds, median per method) so that changing
machine load affects all alike.  For ibp/crown-ibp the eps ramp covers the whole epoch, so the
CROWN-IBP term (beta > 0) is really computed.

Part 2 -- a results table from real MNIST training: clean accuracy, PGD accuracy, CROWN-verified
accuracy and mean unstable neurons (CROWN) at the training eps, on the first --eval-size test images.

    python benchmarks/training.py                  # defaults below; a few minutes on 2 CPU cores
    python benchmarks/training.py --epochs 10 --train-size 60000 --eval-size 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from vfnn.train.config import Phase, TrainConfig
from vfnn.train.trainer import Trainer

METHODS = ("ce", "pgd", "trades", "ibp", "crown-ibp", "ce+nbc", "ce+rs")
# NBC's cost at other settings than the default (persistent neighbours on every 4th batch), timed in the same rounds.
NBC_VARIANTS = {"ce+nbc every 1": {"options": {"nbc": {"every": 1}}},
                "ce+nbc both": {"options": {"nbc": {"neighbours": "both", "every": 1}}}}
DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def phase(label: str, epochs: int) -> Phase:
    method, *regs = label.split("+")
    return Phase(method, tuple(regs), epochs)


def run(label: str, epochs: int, args: argparse.Namespace, eval_size: int, workdir: Path, **kw: object) -> list[dict]:
    kw = {**NBC_VARIANTS.get(label, {}), **kw}
    recipe = "ce+nbc" if label in NBC_VARIANTS else label
    cfg = TrainConfig(dataset="mnist", data_dir=args.data_dir, download=False, train_size=kw.pop("train_size", None),
                      eval_size=eval_size, arch="fc:100x3", phases=[phase(recipe, epochs)], eps=args.eps,
                      seed=args.seed, eval_pgd_steps=20, **kw)  # type: ignore[arg-type]
    out = workdir / f"{label.replace(' ', '_')}-{epochs}-{eval_size}"
    Trainer(cfg, out, argv=sys.argv).run()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(DATA), help="folder with mnist/ (default: ../shared/datasets)")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--timing-subset", type=int, default=10000, help="training images per timed epoch")
    ap.add_argument("--timing-rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5, help="epochs of the results run")
    ap.add_argument("--train-size", type=int, default=None, help="training images of the results run (default all)")
    ap.add_argument("--eval-size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-results", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), MNIST fc:100x3, eps={args.eps}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"\n## seconds per training epoch ({args.timing_subset} images, batch 128, "
              f"median of {args.timing_rounds} round-robin rounds)")
        timed = (*METHODS, *NBC_VARIANTS)
        samples: dict[str, list[float]] = {label: [] for label in timed}
        for r in range(args.timing_rounds):
            for label in timed:
                ms = run(label, 1, args, 100, work / f"round{r}", train_size=args.timing_subset, eps_rampup=1.0)
                samples[label].append(ms[0]["seconds"]["train"])
        times = {label: statistics.median(v) for label, v in samples.items()}
        print(f"{'method':<16} {'s/epoch':>8} {'x ce':>6}")
        for label in timed:
            print(f"{label:<16} {times[label]:8.2f} {times[label] / times['ce']:6.2f}")
        if args.skip_results:
            return
        size = "all 60000" if args.train_size is None else str(args.train_size)
        print(f"\n## results after {args.epochs} epochs ({size} training images; metrics on the first "
              f"{args.eval_size} test images at eps={args.eps}; PGD 20 steps; bounds: CROWN)")
        print(f"{'method':<10} {'clean':>6} {'PGD':>6} {'verified':>8} {'unstable':>9} {'NBC(adv)':>9} {'train s':>8}")
        for label in METHODS:
            ms = run(label, args.epochs, args, args.eval_size, work, train_size=args.train_size)
            f = ms[-1]
            train_s = sum(m["seconds"]["train"] for m in ms)
            print(f"{label:<10} {100 * f['clean_acc']:5.1f}% {100 * f['pgd_acc']:5.1f}% "
                  f"{100 * f['verified_acc']['crown']:7.1f}% {f['unstable']['total']:9.1f} "
                  f"{f['nbc']['adversarial']['overall']:9.3f} {train_s:8.1f}", flush=True)


if __name__ == "__main__":
    main()
