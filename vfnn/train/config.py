"""The complete, JSON-serialisable description of a training run, and its parsers.

A run is a list of *phases* (``method + regularisers`` for some epochs).  Without ``--schedule``
there is one phase: ``--method`` with every ``--reg`` for ``--epochs``.  With
``--schedule ce:5,ce+nbc:5`` the phases are listed explicitly; the weights of the regularisers
named in phases come from ``--reg name:weight`` (or the regulariser's default weight).  The options
that objectives and regularisers declare (vfnn.train.components) live in ``options``, one table per
declaring class, validated here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from vfnn.train.components import Component, TrainConfigError, declaring_classes, option_flag
from vfnn.train.data import dataset_info
from vfnn.train.models import ACTIVATIONS, Arch
from vfnn.train.objectives import OBJECTIVES
from vfnn.train.regularisers import REGULARISERS


def option_owners() -> dict[str, type[Component]]:
    """Every objective and regulariser class that declares options: the keys of ``TrainConfig.options``."""
    return declaring_classes((OBJECTIVES, REGULARISERS))


def check_options(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The options table completed with every owner's defaults, each value parsed and range-checked."""
    owners = option_owners()
    unknown = sorted(set(table) - set(owners))
    if unknown:
        raise TrainConfigError(f"options for unknown component {unknown[0]!r} (known: {', '.join(owners)})")
    return {name: cls.check_options(table.get(name, {})) for name, cls in owners.items()}


@dataclass(frozen=True)
class Phase:
    method: str
    regs: tuple[str, ...]
    epochs: int

    @property
    def label(self) -> str:
        return "+".join((self.method, *self.regs))


def parse_reg(text: str) -> tuple[str, float]:
    """``name[:weight]`` -> (name, weight); the default weight is the regulariser's own."""
    name, _, w = text.strip().partition(":")
    name = name.strip().lower()
    if name not in REGULARISERS:
        raise TrainConfigError(f"unknown regulariser {name!r} in --reg {text!r} (known: {', '.join(REGULARISERS)})")
    if not w:
        return name, REGULARISERS[name].default_weight
    try:
        weight = float(w)
    except ValueError:
        raise TrainConfigError(f"--reg {text!r}: weight {w!r} is not a number") from None
    if not weight >= 0:
        raise TrainConfigError(f"--reg {text!r}: weight must be >= 0")
    return name, weight


def parse_schedule(text: str) -> list[Phase]:
    """``METHOD[+REG...]:EPOCHS[,...]`` -> phases, e.g. ``ce:5,ce+nbc:5`` or ``ibp+rs:10``."""
    phases = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([a-z0-9+-]+)\s*:\s*(\d+)\s*", part.lower())
        if not m:
            raise TrainConfigError(f"bad --schedule phase {part!r}: expected METHOD[+REG...]:EPOCHS, e.g. ce+nbc:5")
        names = m.group(1).split("+")
        # 'crown-ibp' contains a '-', never a '+', so splitting on '+' is unambiguous.
        method, regs = names[0], tuple(names[1:])
        if method not in OBJECTIVES:
            raise TrainConfigError(f"--schedule phase {part.strip()!r} must start with a method "
                                   f"({', '.join(OBJECTIVES)})")
        for r in regs:
            if r not in REGULARISERS:
                raise TrainConfigError(f"unknown regulariser {r!r} in --schedule phase {part.strip()!r} "
                                       f"(known: {', '.join(REGULARISERS)})")
        if len(set(regs)) != len(regs):
            raise TrainConfigError(f"--schedule phase {part.strip()!r} names a regulariser twice")
        if int(m.group(2)) < 1:
            raise TrainConfigError(f"--schedule phase {part.strip()!r} needs at least 1 epoch")
        phases.append(Phase(method, regs, int(m.group(2))))
    return phases


@dataclass
class TrainConfig:
    """Every option of a run; ``config.json`` is ``dataclasses.asdict`` of this plus provenance."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = True
    train_size: int | None = None
    eval_size: int = 1000
    val_size: int = 0
    arch: str = "fc:100x3"
    activation: str = "relu"
    ramp_slope: float = 0.01
    ramp_slope_end: float | None = None  # linear decay of the slope after the warm-up (0.01 -> 0 in the paper)
    ramp_warmup: int = 1
    ramp_noise: float = 0.0  # Gaussian noise on the bends after each step, times the layer's mean bend
    batch_norm: bool = False
    init: str | None = None
    phases: list[Phase] = field(default_factory=lambda: [Phase("ce", (), 10)])
    reg_weights: dict[str, float] = field(default_factory=dict)
    eps: float | None = None
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    eps_warmup: float = 0.0
    eps_rampup: float | None = None
    kappa_start: float = 1.0
    kappa_end: float | None = None
    beta_start: float = 1.0
    beta_end: float = 0.0
    radii: tuple[float, ...] | None = None
    radius_weights: tuple[float, ...] | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # {component: {option: value}}
    reg_warmup: float = 1.0
    eval_pgd_steps: int = 20
    eval_nbc_samples: int = 4
    seed: int = 0
    device: str = "auto"
    threads: int | None = None

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def weight(self, reg: str) -> float:
        return self.reg_weights.get(reg, REGULARISERS[reg].default_weight)

    def kappa_end_for(self, method: str) -> float:
        return self.kappa_end if self.kappa_end is not None else OBJECTIVES[method].kappa_end

    def validate(self) -> TrainConfig:
        """Fill derived defaults and reject inconsistent options (TrainConfigError, one line)."""
        info = dataset_info(self.dataset)
        if self.init is None:
            Arch.parse(self.arch)
        if self.activation not in ACTIVATIONS:
            raise TrainConfigError(f"--activation {self.activation!r}: choose from {', '.join(ACTIVATIONS)}")
        if self.batch_norm and self.init is not None:
            raise TrainConfigError("--batch-norm and --init exclude each other: the --init model has its own layers")
        if self.activation != "paramramp" and (self.ramp_slope_end is not None or self.ramp_noise):
            raise TrainConfigError("--ramp-slope-end and --ramp-noise need --activation paramramp")
        if self.activation == "paramramp":
            if self.init is not None:
                raise TrainConfigError("--activation and --init exclude each other: the --init model has its own")
            for flag, v in (("--ramp-slope", self.ramp_slope), ("--ramp-slope-end", self.ramp_slope_end)):
                if v is not None and not 0 <= v < 1:
                    raise TrainConfigError(f"{flag} {v}: the leaky slope must be in [0, 1)")
            if not self.ramp_noise >= 0:
                raise TrainConfigError(f"--ramp-noise {self.ramp_noise}: must be >= 0")
            if not 0 <= self.ramp_warmup < self.epochs:
                raise TrainConfigError(f"--ramp-warmup {self.ramp_warmup}: must leave at least one of the "
                                       f"{self.epochs} epochs after the LeakyReLU warm-up")
        if self.radii is not None:
            r, w = self.radii, self.radius_weights
            if any(v <= 0 for v in r) or any(b <= a for a, b in zip(r, r[1:], strict=False)):
                raise TrainConfigError(f"--radii {','.join(map(str, r))}: radii must be positive and increasing")
            if w is None:
                w = tuple(0.5 ** i for i in range(len(r)))
            if len(w) != len(r):
                raise TrainConfigError(f"--radius-weights has {len(w)} values for {len(r)} radii")
            if any(v <= 0 for v in w) or any(b >= a for a, b in zip(w, w[1:], strict=False)):
                raise TrainConfigError("--radius-weights must be positive and strictly decreasing as the radius grows "
                                       "(Liang et al. 2023)")
            self.radius_weights = tuple(w)
            if not any(OBJECTIVES[p.method].certified for p in self.phases):
                certified = ", ".join(name for name, cls in OBJECTIVES.items() if cls.certified)
                raise TrainConfigError(f"--radii is an option of the certified methods ({certified})")
            if self.eps is None:
                self.eps = max(r)
        elif self.radius_weights is not None:
            raise TrainConfigError("--radius-weights needs --radii")
        if self.eps is None:
            self.eps = info.default_eps
        if not 0 <= self.eps <= 1:
            raise TrainConfigError(f"--eps {self.eps} must lie in [0, 1] (pixel space)")
        self.options = check_options(self.options)
        if self.optimizer not in ("adam", "sgd"):
            raise TrainConfigError(f"--optimizer must be adam or sgd, not {self.optimizer!r}")
        checks = [(self.batch_size >= 1, "--batch-size must be >= 1"), (self.lr > 0, "--lr must be > 0"),
                  (self.eval_size >= 1, "--eval-size must be >= 1"),
                  (self.val_size >= 0, "--val-size must be >= 0"),
                  (self.reg_warmup >= 0 and self.eps_warmup >= 0, "warm-up lengths must be >= 0"),
                  (self.train_size is None or self.train_size >= 1, "--train-size must be >= 1"),
                  (self.device in ("auto", "cpu", "cuda"), "--device must be auto, cpu or cuda")]
        for ok, msg in checks:
            if not ok:
                raise TrainConfigError(msg)
        return self

    def to_dict(self) -> dict:
        """config.json's training part: plain JSON values (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["phases"] = [{"method": p.method, "regs": list(p.regs), "epochs": p.epochs} for p in self.phases]
        for k in ("radii", "radius_weights"):
            d[k] = list(d[k]) if d[k] is not None else None
        d["options"] = {name: {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()}
                        for name, opts in self.options.items()}
        return d

    @staticmethod
    def from_dict(d: dict) -> TrainConfig:
        """A config.json (this version's, or older: flat ``nbc_every``-style options, ``method`` + ``regs``
        instead of ``phases``, or the whole config under a ``config`` key) -> TrainConfig (options checked)."""
        if isinstance(d.get("config"), dict) and "phases" not in d and "method" not in d:
            d = d["config"]
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        kw = {k: v for k, v in d.items() if k in names}
        if "phases" in d:
            kw["phases"] = [Phase(p["method"], tuple(p["regs"]), int(p["epochs"])) for p in d["phases"]]
        else:
            regs = d.get("regs") or d.get("reg") or []
            parsed = [(r["name"], float(r.get("weight", REGULARISERS[r["name"]].default_weight)))
                      if isinstance(r, dict) else parse_reg(str(r))
                      for r in ([regs] if isinstance(regs, str) else regs)]
            kw["phases"] = [Phase(str(d["method"]), tuple(n for n, _ in parsed), int(d.get("epochs") or 10))]
            kw.setdefault("reg_weights", dict(parsed))
        for k in ("radii", "radius_weights"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        table = {name: dict(opts) for name, opts in (d.get("options") or {}).items()}
        for name, cls in option_owners().items():  # before the options table: one flat key per option
            for o in vars(cls)["options"]:
                legacy = option_flag(name, o)[2:].replace("-", "_")
                if legacy in d:
                    table.setdefault(name, {}).setdefault(o.name, d[legacy])
        kw["options"] = check_options(table)
        return TrainConfig(**kw)
