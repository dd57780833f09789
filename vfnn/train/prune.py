"""Iterative structured pruning with lottery-ticket rewinding (Li et al., TMLR 2023; ``vfnn prune``).

A *unit* is a neuron of a hidden fc layer or a channel of a hidden conv layer: the output of a
Dense/Conv2d that feeds an activation (through an optional batch-norm).  Each round

1. scores every unit of the current network (``nrs``: ``-mean NRS`` over the training images at
   the training eps, so the most unstable units score lowest, as the paper's ``pruner.py``;
   ``magnitude``: the mean |w| of the unit's incoming weights; ``random``), and removes the
   ``round(rate * n)`` lowest-scoring of the ``n`` remaining units, over all layers at once
   (a global threshold, the paper's default), never the last unit of a layer;
2. takes the weights of the *rewind epoch* of the original run and removes the pruned units from
   them (rows of the producing layer, batch-norm channels, columns of the consuming layer): the
   network is smaller, not masked;
3. retrains that network with the run's own recipe (its config.json, all epochs, through
   :class:`~vfnn.train.trainer.Trainer` with ``init``), in a run directory of its own.

The rewind weights come from replaying the original run's recipe for ``rewind_epoch`` epochs: the
trainer re-seeds every epoch, so on CPU these are the original run's weights at that epoch bit for
bit, and any finished run can be pruned without having kept them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vfnn.errors import ModelError
from vfnn.layers import ActivationLayer, BatchNorm, Conv2d, Dense, Flatten, Layer, ReLU
from vfnn.network import Network
from vfnn.train.components import TrainConfigError
from vfnn.train.config import TrainConfig
from vfnn.train.models import load_model, save_model_pt
from vfnn.train.regularisers import NRS
from vfnn.train.trainer import Trainer

CRITERIA = ("nrs", "magnitude", "random")


@dataclass(frozen=True)
class Site:
    """One prunable layer: indices (in ``Network.layers``) of the producing Dense/Conv2d, its
    batch-norm (or None), the activation, and the consuming Dense/Conv2d (after a Flatten when
    ``flatten``)."""

    producer: int
    norm: int | None
    activation: int
    consumer: int
    flatten: bool


def prunable_sites(net: Network) -> list[Site]:
    """Every activation layer as a :class:`Site` (ModelError for a chain pruning cannot cut)."""
    layers, sites = net.layers, []
    for a, layer in enumerate(layers):
        if not isinstance(layer, ActivationLayer):
            continue
        if not isinstance(layer, ReLU):
            raise ModelError(f"layer {a} ({type(layer).__name__}): structured pruning supports ReLU networks only")
        norm = a - 1 if a >= 1 and isinstance(layers[a - 1], BatchNorm) else None
        p = a - 1 if norm is None else a - 2
        q = a + 1
        flatten = q < len(layers) and isinstance(layers[q], Flatten)
        q += flatten
        if p < 0 or not isinstance(layers[p], (Dense, Conv2d)) or q >= len(layers) or \
                not isinstance(layers[q], (Dense, Conv2d)):
            raise ModelError(f"activation layer {a}: pruning needs Dense/Conv2d [BatchNorm] ReLU [Flatten] "
                             "Dense/Conv2d around each activation")
        sites.append(Site(p, norm, a, q, flatten))
    if not sites:
        raise ModelError("the network has no hidden layer to prune")
    return sites


def unit_counts(net: Network) -> list[int]:
    """Units (neurons or channels) of each prunable layer."""
    return [int(net.layers[s.producer].weight.shape[0]) for s in prunable_sites(net)]


def prune_network(net: Network, keep: list[np.ndarray]) -> Network:
    """``net`` with only the units ``keep[i]`` (indices) of prunable layer ``i``: every array that
    belongs to a removed unit is cut out, so the network (and its ONNX export) is smaller."""
    sites = prunable_sites(net)
    if len(keep) != len(sites):
        raise ValueError(f"{len(keep)} keep lists for {len(sites)} prunable layers")
    layers: list[Layer] = list(net.layers)
    shapes = net.layer_shapes()
    for site, idx in zip(sites, keep, strict=True):
        idx = np.asarray(idx, dtype=np.int64)
        prod = layers[site.producer]
        layers[site.producer] = dataclasses.replace(prod, weight=prod.weight[idx], bias=prod.bias[idx])
        if site.norm is not None:
            bn = layers[site.norm]
            layers[site.norm] = dataclasses.replace(bn, gamma=bn.gamma[idx], beta=bn.beta[idx], mean=bn.mean[idx],
                                                    var=bn.var[idx])
        cons = layers[site.consumer]
        w = cons.weight
        if site.flatten:  # a Dense reading the flattened (C, H, W) map: whole channels of columns
            c = shapes[site.producer][0]
            w = w.reshape(w.shape[0], c, -1)[:, idx].reshape(w.shape[0], -1)
        else:
            w = w[:, idx]
        layers[site.consumer] = dataclasses.replace(cons, weight=w)
    return Network(net.input_shape, tuple(layers), net.name)


@torch.no_grad()
def unit_scores(criterion: str, net: Network, cfg: TrainConfig, x: torch.Tensor, *, seed: int = 0,
                batch: int = 256) -> list[np.ndarray]:
    """Per prunable layer, one score per unit; the lowest are pruned first.

    ``nrs``: ``-mean NRS`` over the images ``x`` at ``cfg.eps`` with the run's nrs settings
    (bounds, eps0), averaged over a channel's positions; ``magnitude``: mean |w| of the unit's
    incoming weights; ``random``: uniform draws from ``seed``."""
    sites = prunable_sites(net)
    counts = unit_counts(net)
    if criterion == "random":
        g = np.random.default_rng(seed)
        return [g.random(n) for n in counts]
    if criterion == "magnitude":
        return [np.abs(net.layers[s.producer].weight.astype(np.float64)).reshape(n, -1).mean(1)
                for s, n in zip(sites, counts, strict=True)]
    if criterion != "nrs":
        raise ValueError(f"unknown pruning criterion {criterion!r} (known: {', '.join(CRITERIA)})")
    model = net.to_torch().to(x.device).eval()
    nrs = NRS.from_table(cfg.options)
    sums = [torch.zeros(n, dtype=torch.float64, device=x.device) for n in counts]
    for start in range(0, len(x), batch):
        terms = nrs.neuron_terms(model, x[start:start + batch], float(cfg.eps))
        for total, t in zip(sums, terms, strict=True):
            total += t.double().flatten(2).mean(2).sum(0) if t.dim() > 2 else t.double().sum(0)
    return [(-total / len(x)).cpu().numpy() for total in sums]


def select(scores: list[np.ndarray], rate: float) -> list[np.ndarray]:
    """Indices to keep per layer after removing the ``round(rate * n)`` lowest scores of all ``n``
    units (rounded half up; ties by layer, then index), keeping at least one unit per layer."""
    n = sum(len(s) for s in scores)
    k = int(np.floor(rate * n + 0.5))
    layer = np.concatenate([np.full(len(s), i) for i, s in enumerate(scores)])
    index = np.concatenate([np.arange(len(s)) for s in scores])
    order = np.lexsort((index, layer, np.concatenate(scores)))
    left = [len(s) for s in scores]
    removed = np.zeros(n, bool)
    for j in order:
        if k == 0:
            break
        if left[layer[j]] > 1:
            removed[j], left[layer[j]], k = True, left[layer[j]] - 1, k - 1
    return [index[(layer == i) & ~removed] for i in range(len(scores))]


def _row(round_: int, units: int, summary: dict, run_dir: Path) -> dict:
    final = summary.get("final") or {}
    return {"round": round_, "units": units, "relu_neurons": summary.get("relu_neurons"),
            "clean_acc": final.get("clean_acc"), "verified_crown": (final.get("verified_acc") or {}).get("crown"),
            "unstable": (final.get("unstable") or {}).get("total"), "run_dir": str(run_dir)}


def prune_run(run_dir: str | Path, criterion: str = "nrs", rate: float = 0.11, rounds: int = 12,
              rewind_epoch: int = 8, out: str | Path | None = None, *, overwrite: bool = False,
              overrides: dict | None = None, argv: list[str] | None = None,
              log: Callable[[str], None] | None = None) -> list[dict]:
    """Prune the finished run in ``run_dir`` for ``rounds`` rounds (module docstring); each round is
    a run directory ``out/round-R``.  ``overrides`` sets run-wide fields that do not change the
    recipe (device, threads, data_dir).  Returns one row per round, round 0 being the run itself,
    also written to ``out/prune.json``."""
    run_dir = Path(run_dir)
    log = log or (lambda msg: None)
    if criterion not in CRITERIA:
        raise TrainConfigError(f"--criterion {criterion!r}: choose from {', '.join(CRITERIA)}")
    if not 0 < rate < 1:
        raise TrainConfigError(f"--rate {rate}: the fraction of units removed per round must lie in (0, 1)")
    if rounds < 1:
        raise TrainConfigError("--rounds must be >= 1")
    missing = [f for f in ("config.json", "model.pt", "summary.json") if not (run_dir / f).is_file()]
    if missing:
        raise TrainConfigError(f"{run_dir}: not a finished vfnn run (no {missing[0]})")
    try:
        cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainConfigError(f"{run_dir / 'config.json'}: unreadable run configuration ({exc})") from None
    for k, v in (overrides or {}).items():
        setattr(cfg, k, v)
    cfg.validate()
    if cfg.activation != "relu":
        raise TrainConfigError(f"{run_dir}: structured pruning supports ReLU runs only (not {cfg.activation})")
    if not 0 <= rewind_epoch <= cfg.epochs:
        raise TrainConfigError(f"--rewind-epoch {rewind_epoch}: the run has {cfg.epochs} epochs")
    out = Path(out) if out is not None else run_dir.with_name(f"{run_dir.name}-prune-{criterion}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise TrainConfigError(f"{out} is not empty; use --overwrite to replace its pruning rounds")
        for old in [*out.glob("round-*"), out / "rewind"]:
            shutil.rmtree(old, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    argv = argv or ["vfnn", "prune", str(run_dir)]

    model, meta = load_model(run_dir / "model.pt")
    shape = tuple(int(d) for d in meta["input_shape"])
    current = Network.from_torch(model, shape, simplify=False)
    prunable_sites(current)  # refuse an unprunable network before any training
    log(f"rewind: replaying {run_dir}'s recipe for {rewind_epoch} epochs -> {out / 'rewind'}")
    replay = Trainer(cfg, out / "rewind", argv=argv, log=log)
    replay.run(stop_after=rewind_epoch)
    rewind = Network.from_torch(replay.model.cpu(), shape, simplify=False)
    x_train = replay.x_train
    kept = [np.arange(n) for n in unit_counts(current)]
    rows = [_row(0, sum(len(k) for k in kept), json.loads((run_dir / "summary.json").read_text()), run_dir)]
    for r in range(1, rounds + 1):
        scores = unit_scores(criterion, current, cfg, x_train, seed=cfg.seed * 1000 + r)
        kept = [k[i] for k, i in zip(kept, select(scores, rate), strict=True)]
        round_dir = out / f"round-{r}"
        round_dir.mkdir()
        init = save_model_pt(round_dir / "init.pt", prune_network(rewind, kept).to_torch(), meta)
        round_cfg = dataclasses.replace(cfg, init=str(init), arch=f"init:{init}", batch_norm=False)
        log(f"round {r}/{rounds}: {sum(len(k) for k in kept)} units kept -> {round_dir}")
        summary = Trainer(round_cfg, round_dir, argv=[*argv, f"(round {r})"], log=log).run()
        current = Network.from_torch(load_model(round_dir / "model.pt")[0], shape, simplify=False)
        rows.append(_row(r, sum(len(k) for k in kept), summary, round_dir))
    record = {"run_dir": str(run_dir), "criterion": criterion, "rate": rate, "rounds": rounds,
              "rewind_epoch": rewind_epoch, "kept": [[int(i) for i in k] for k in kept], "rounds_table": rows}
    (out / "prune.json").write_text(json.dumps(record, indent=2) + "\n")
    return rows
