"""The training loop, the run directory and resuming.

A run directory holds::

    config.json     every option (TrainConfig) + vfnn/torch versions, argv, start time
    metrics.jsonl   one JSON object per finished epoch
    checkpoint.pt   model, optimiser, RNG state and metrics after the last finished epoch
    model.pt        final weights (state_dict + layer description + plain metadata)
    model.onnx      the clean export (normalisation folded into the first layer)
    summary.json    final metrics, paths, total time

Determinism: the global torch RNG and the shuffling generator are re-seeded from (seed, epoch) at
the start of every epoch and evaluation uses its own generator, so an uninterrupted run and one
resumed from any epoch boundary produce the same numbers on CPU.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from vfnn import __version__
from vfnn.errors import ModelError
from vfnn.layers import BatchNorm
from vfnn.layers.batchnorm import batch_statistics
from vfnn.train.config import TrainConfig, TrainConfigError, option_owners
from vfnn.train.data import dataset_info, load_dataset
from vfnn.train.evaluation import evaluate
from vfnn.train.models import (
    build_model,
    jitter_ramp_bends,
    load_model,
    model_from_state,
    model_state,
    ramp_modules,
    ramp_slope_at,
    save_model_pt,
    set_ramp_bends,
)
from vfnn.train.objectives import OBJECTIVES, Batch
from vfnn.train.regularisers import REGULARISERS
from vfnn.train.schedules import phase_at, reg_weight, values_at

if TYPE_CHECKING:
    from rich.progress import Progress

    from vfnn.train.objectives import Objective
    from vfnn.train.regularisers import Regulariser

CHECKPOINT_FORMAT = "vfnn-checkpoint-2"  # 1 stored a layer description
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "model.pt", "model.onnx", "summary.json")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's random stream (fixed function of the run seed and epoch)."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError("--device cuda: torch sees no CUDA device (this torch build or machine has none)")
    return torch.device(name)


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training pixels (the model's normalisation layer)."""
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x.std(axis=(0, 2, 3), dtype=np.float64)
    return [float(v) for v in mean], [float(max(v, 1e-6)) for v in std]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class Trainer:
    """One run: ``Trainer(cfg, run_dir).run()``; ``resume=True`` continues from ``checkpoint.pt``."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                 argv: list[str] | None = None, log: Callable[[str], None] | None = None):
        self.cfg = cfg.validate()
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.argv = argv if argv is not None else list(sys.argv)
        self.log = log or (lambda msg: None)
        self.device = resolve_device(cfg.device)

    # ----------------------------------------------------------------- setup
    def _load_data(self) -> None:
        cfg = self.cfg
        info = dataset_info(cfg.dataset)
        x_tr, y_tr = load_dataset(cfg.dataset, "train", cfg.data_dir, download=cfg.download)
        x_te, y_te = load_dataset(cfg.dataset, "test", cfg.data_dir, download=cfg.download)
        self.mean, self.std = channel_stats(x_tr)
        if cfg.val_size:  # metrics on held-out training images, so tuning never sees the test split
            if cfg.val_size >= len(y_tr):
                raise TrainConfigError(f"--val-size {cfg.val_size}: {cfg.dataset} has only {len(y_tr)} training images")
            x_te, y_te = x_tr[-cfg.val_size:], y_tr[-cfg.val_size:]
            x_tr, y_tr = x_tr[:-cfg.val_size], y_tr[:-cfg.val_size]
        if cfg.train_size is not None:
            x_tr, y_tr = x_tr[:cfg.train_size], y_tr[:cfg.train_size]
        x_te, y_te = x_te[:cfg.eval_size], y_te[:cfg.eval_size]
        self.input_shape = tuple(int(v) for v in info.input_shape)
        self.n_classes = info.n_classes
        self.x_train = torch.from_numpy(x_tr).to(self.device)
        self.y_train = torch.from_numpy(y_tr).to(self.device)
        self.x_eval = torch.from_numpy(x_te).to(self.device)
        self.y_eval = torch.from_numpy(y_te).to(self.device)

    def _initial_model(self) -> nn.Sequential:
        cfg = self.cfg
        if cfg.init is None:
            torch.manual_seed(cfg.seed)
            return build_model(cfg.arch, self.input_shape, self.n_classes, self.mean, self.std, cfg.activation,
                               cfg.ramp_slope, cfg.batch_norm)
        model, meta = load_model(cfg.init)
        shape, n_out = tuple(meta["input_shape"]), int(meta["n_classes"])
        if n_out != self.n_classes:
            raise ModelError(f"--init {cfg.init}: the model has {n_out} outputs, "
                             f"{cfg.dataset} has {self.n_classes} classes")
        if shape != self.input_shape:
            if int(np.prod(shape)) != int(np.prod(self.input_shape)) or len(shape) != 1:
                raise ModelError(f"--init {cfg.init}: the model takes inputs of shape {shape}, "
                                 f"{cfg.dataset} has {self.input_shape}")
            model = nn.Sequential(nn.Flatten(), *model)  # a flat-input model on image data
        return model

    def _make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _prepare_dir(self) -> tuple[int, list[dict]]:
        """Write config.json (new run) or load checkpoint.pt (resume); returns (start epoch, metrics so far)."""
        ckpt_path = self.run_dir / "checkpoint.pt"
        self.reg_states: dict[str, dict[str, torch.Tensor]] = {}
        if self.resume and ckpt_path.exists():
            try:
                ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
                if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
                    raise ModelError(f"{ckpt_path}: not a vfnn checkpoint")
                self.model = model_from_state(ckpt["network"])
                self.model.to(self.device)
                self.optimizer = self._make_optimizer(self.model)
                self.optimizer.load_state_dict(ckpt["optimizer"])
                self.seconds_before = float(ckpt["seconds"])
                metrics = [json.loads(line) for line in ckpt["metrics"]]
                self.reg_states = dict(ckpt.get("regularisers") or {})
                epoch = int(ckpt["epoch"])
            except ModelError:
                raise
            except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say so, never a traceback
                raise ModelError(f"{ckpt_path}: unreadable checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
                                 f"delete it to restart the run from epoch 0") from None
            _atomic_write(self.run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
            return epoch, metrics
        self.model = self._initial_model().to(self.device)
        self._check_model()
        self.optimizer = self._make_optimizer(self.model)
        self.seconds_before = 0.0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.resume:
            config = {**self.cfg.to_dict(), "vfnn_version": __version__, "torch_version": torch.__version__,
                      "python": platform.python_version(), "argv": self.argv,
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            _atomic_write(self.run_dir / "config.json", json.dumps(config, indent=2) + "\n")
        (self.run_dir / "metrics.jsonl").write_text("")
        return 0, []

    def _check_model(self) -> None:
        """Options that depend on the model (before anything is written to the run directory)."""
        if len(self.y_train) % self.cfg.batch_size == 1 and any(
                isinstance(m, BatchNorm.module_types) for m in self.model.modules()):
            raise TrainConfigError(f"--batch-size {self.cfg.batch_size} leaves a last batch of one image, "
                                   "which batch-norm cannot normalise; change --batch-size or --train-size")
        layers = len([m for m in self.model if isinstance(m, nn.ReLU)])
        for name, cls in option_owners().items():
            cls.check_model(self.cfg.options[name], layers)

    def _save_checkpoint(self, epoch: int, metrics: list[dict], seconds: float) -> None:
        payload = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "network": model_state(self.model, self.input_shape),
                   "optimizer": self.optimizer.state_dict(), "metrics": [json.dumps(m) for m in metrics],
                   "seconds": seconds, "torch_rng": torch.get_rng_state(),
                   "regularisers": {name: reg.state() for name, reg in self.regs.items()}}
        tmp = self.run_dir / "checkpoint.pt.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, self.run_dir / "checkpoint.pt")

    # ----------------------------------------------------------------- loop
    def run(self, stop_after: int | None = None, progress: Progress | None = None) -> dict:
        """Train to the end of the schedule (or ``stop_after`` epochs, for tests); returns the summary."""
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self._load_data()
        start, metrics = self._prepare_dir()
        regs = {name: REGULARISERS[name].from_table(cfg.options, weight=cfg.weight(name))
                for phase in cfg.phases for name in phase.regs}
        for name, state in self.reg_states.items():
            regs[name].load_state({k: v.to(self.device) for k, v in state.items()})
        self.regs = regs
        seconds = self.seconds_before
        end = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
        for epoch in range(start, end):
            if cfg.activation == "paramramp":
                if epoch == cfg.ramp_warmup:
                    set_ramp_bends(self.model, self.x_train)  # end of the LeakyReLU warm-up (Lyu et al.)
                slope = ramp_slope_at(cfg.ramp_slope, cfg.ramp_slope_end, cfg.ramp_warmup, cfg.epochs, epoch)
                for m in ramp_modules(self.model):
                    m.slope = slope
            _, phase, _ = phase_at(cfg, epoch)
            objective = OBJECTIVES[phase.method].from_table(cfg.options)
            t0 = time.perf_counter()
            train_stats = self._train_epoch(epoch, objective, {r: regs[r] for r in phase.regs}, progress)
            t1 = time.perf_counter()
            ev = evaluate(self.model, self.x_eval, self.y_eval, float(cfg.eps), self.n_classes,
                          pgd_steps=cfg.eval_pgd_steps, nbc_samples=cfg.eval_nbc_samples, nbc=cfg.options["nbc"],
                          seed=epoch_seed(cfg.seed, epoch) + 1)
            t2 = time.perf_counter()
            seconds += t2 - t0
            record = {"epoch": epoch + 1, "phase": phase.label, "eps": cfg.eps, **train_stats, **ev,
                      "seconds": {"train": round(t1 - t0, 4), "eval": round(t2 - t1, 4)}}
            metrics.append(record)
            self._save_checkpoint(epoch + 1, metrics, seconds)
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            self.log(format_epoch(record, cfg.epochs))
        if end < cfg.epochs:
            return {"complete": False, "epochs_done": end}
        return self._finish(metrics, seconds)

    def _train_epoch(self, epoch: int, objective: Objective, regs: dict[str, Regulariser],
                     progress: Progress | None) -> dict:
        cfg, model = self.cfg, self.model
        model.train()
        has_norm = any(isinstance(m, BatchNorm.module_types) for m in model.modules())
        seed = epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)
        order = torch.randperm(len(self.y_train), generator=torch.Generator().manual_seed(seed)).to(self.device)
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        sums: dict[str, float] = {}
        total = correct = seen = clean_seen = 0
        task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(batches)) if progress else None
        for b, idx in enumerate(batches):
            frac = b / len(batches)
            sched = values_at(cfg, epoch, frac)
            batch = Batch(self.x_train[idx], self.y_train[idx], idx, len(self.y_train), epoch * len(batches) + b)
            weights = {name: reg_weight(cfg, name, epoch, frac) if reg.active(batch) else 0.0
                       for name, reg in regs.items()}
            with batch_statistics(model):  # bounds see the statistics the clean batch is normalised by
                if has_norm:
                    batch.clean(model)
                loss, terms = objective.loss(model, batch, sched)
                for name, reg in regs.items():
                    w = weights[name]
                    if w > 0:
                        value = reg.loss(model, batch, sched)
                        loss = loss + w * value
                        terms[name] = float(value.detach())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip and cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            if cfg.ramp_noise > 0 and epoch >= cfg.ramp_warmup:
                jitter_ramp_bends(model, cfg.ramp_noise)
            n = len(idx)
            seen += n
            total += float(loss.detach()) * n
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * n
            logits = batch.clean_logits_if_computed
            if logits is not None:
                correct += int((logits.argmax(1) == batch.y).sum())
                clean_seen += n
            if progress is not None:
                progress.update(task, advance=1, description=f"epoch {epoch + 1}/{cfg.epochs} loss {total / seen:.4f}")
        if progress is not None:
            progress.remove_task(task)
        last = (len(batches) - 1) / len(batches)  # schedule position of the epoch's last batch
        end = values_at(cfg, epoch, last)
        return {"loss": total / seen, "loss_terms": {k: v / seen for k, v in sums.items()},
                "train_acc": correct / clean_seen if clean_seen else None,
                "eps_train": end.eps, "kappa": end.kappa, "beta": end.beta,
                "reg_weights": {name: reg_weight(cfg, name, epoch, last) for name in regs}}

    def _finish(self, metrics: list[dict], seconds: float) -> dict:
        from vfnn.network import Network
        from vfnn.onnx_io import save_onnx

        cfg = self.cfg
        model = self.model.to("cpu").eval()
        meta = {"dataset": cfg.dataset, "arch": cfg.arch,
                "input_shape": list(self.input_shape), "n_classes": self.n_classes, "eps": cfg.eps,
                "epochs": cfg.epochs, "seed": cfg.seed, "vfnn_version": __version__}
        save_model_pt(self.run_dir / "model.pt", model, meta)
        net = Network.from_torch(model, self.input_shape, name=self.run_dir.name or "model")
        probe = self.x_eval[:8].cpu()
        with torch.no_grad():
            expected = model(probe).double().numpy()
        if not np.allclose(net.forward(probe.numpy()), expected, atol=1e-4, rtol=1e-4):
            raise RuntimeError("internal error: the exported network disagrees with the trained model")
        save_onnx(net, self.run_dir / "model.onnx")
        self.model.to(self.device)
        summary = {"complete": True, "run_dir": str(self.run_dir), "epochs": cfg.epochs,
                   "final": metrics[-1] if metrics else None, "seconds_total": round(seconds, 3),
                   "model_pt": "model.pt", "model_onnx": "model.onnx", "relu_neurons": net.relu_count,
                   "vfnn_version": __version__}
        _atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def format_epoch(m: dict, epochs: int) -> str:
    """One readable line per epoch for the console."""
    v = m["verified_acc"]
    return (f"epoch {m['epoch']}/{epochs} [{m['phase']}] loss {m['loss']:.4f}  clean {100 * m['clean_acc']:.1f}%  "
            f"pgd {100 * m['pgd_acc']:.1f}%  verified ibp {100 * v['ibp']:.1f}% "
            f"crown-lbp {100 * v['crown-lbp']:.1f}% crown {100 * v['crown']:.1f}%  "
            f"unstable {m['unstable']['total']:.1f}  nbc {m['nbc']['adversarial']['overall']:.3f}  "
            f"({m['seconds']['train'] + m['seconds']['eval']:.1f}s)")
