"""``vfnn train``: one command for NBC and every baseline it is compared with.

The options of the objectives and regularisers, the choice lists and the paragraphs of ``--help``
that describe each method and regulariser are generated from the registries (vfnn.train.objectives,
vfnn.train.regularisers, vfnn.train.data), so adding a component never touches this file.  They are
built on first use: ``vfnn`` itself starts without importing torch.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import click

HELP_HEAD = """Train a (verification-friendly) classifier and write a self-describing run directory.

\b
  vfnn train --dataset mnist --arch fc:100x3 --reg nbc --eps 0.05 --out runs/nbc
  vfnn train --dataset mnist --method crown-ibp --eps 0.1 --epochs 20
  vfnn train --dataset mnist --schedule ce:5,ce+nbc:5 --reg nbc:0.5
  vfnn train --init runs/ce/model.onnx --schedule ce+nbc:3 --out runs/ft
  vfnn train --resume runs/nbc
"""

HELP_METHODS = """Methods (--method).  Certified methods ramp eps from 0 after --eps-warmup
epochs over --eps-rampup epochs (default: half the phase) while kappa goes
--kappa-start -> --kappa-end and beta 1 -> 0.  --radii r1,r2,.. with strictly
decreasing --radius-weights (default 1, 1/2, 1/4, ..) sums the robust term
over several radii (Liang et al. 2023)."""

HELP_REGS = """Regularisers (--reg NAME[:WEIGHT], repeatable; weights warm up linearly from 0
over --reg-warmup epochs, default 1):"""

HELP_TAIL = """
\b
Schedules: --schedule METHOD[+REG..]:EPOCHS[,..], e.g. ce:5,ce+nbc:5 trains 5
epochs of ce then 5 of ce with NBC; regulariser weights come from --reg.

\b
Every epoch logs (metrics.jsonl) the loss terms, clean accuracy, PGD accuracy,
IBP- and CROWN-verified accuracy, mean unstable neurons per layer (CROWN) and
the NBC metric (fraction of neurons whose state z > 0 agrees between x and its
uniform / adversarial neighbours), all at the training eps on --eval-size test
inputs.  See docs/training.md for every formula and default.
"""

RESUME_OVERRIDABLE = {"resume", "device", "quiet", "threads", "data_dir", "download"}


def train_help() -> str:
    """The full ``--help`` text: fixed paragraphs around one entry per registered method and regulariser."""
    from vfnn.train.objectives import OBJECTIVES
    from vfnn.train.regularisers import REGULARISERS

    def entry(name: str, extra: str, doc: str) -> list[str]:
        head, *rest = doc.splitlines() or [""]
        first = f"  {name:<10}{extra}"
        lines = [first, f"{'':12}{head}"] if extra else [f"  {name:<10}{head}"]
        return [*lines, *(f"{'':12}{line}" for line in rest)]

    methods = [line for name, cls in OBJECTIVES.items() for line in entry(name, "", cls.describe())]
    regs = [line for name, cls in REGULARISERS.items()
            for line in entry(name, f"(default weight {cls.default_weight:g})", cls.describe())]
    body = "\n".join(["\b", HELP_METHODS, *methods, "", "\b", HELP_REGS, *regs])
    return inspect.cleandoc(HELP_HEAD) + "\n\n" + body + "\n" + HELP_TAIL


def component_params() -> list[click.Option]:
    """One click option per declared objective/regulariser option: ``--<component>-<option>``."""
    from vfnn.train.components import option_flag
    from vfnn.train.config import option_owners

    params = []
    for name, cls in option_owners().items():
        for o in vars(cls)["options"]:
            kind: Any = click.Choice(list(o.choices)) if o.choices else (str if o.type is tuple else o.type)
            params.append(click.Option([option_flag(name, o)], type=kind, default=o.default,
                                       show_default=o.default is not None, help=o.help,
                                       metavar="X,Y,.." if o.type is tuple else None))
    return params


def component_values(kw: dict) -> dict[str, dict[str, Any]]:
    """The command's generated options as ``TrainConfig.options`` (checked there)."""
    from vfnn.train.components import option_flag
    from vfnn.train.config import option_owners

    return {name: {o.name: kw[option_flag(name, o)[2:].replace("-", "_")] for o in vars(cls)["options"]}
            for name, cls in option_owners().items()}


def _params() -> list[click.Parameter]:
    from vfnn.train.data import DATASETS
    from vfnn.train.models import ACTIVATIONS
    from vfnn.train.objectives import OBJECTIVES
    from vfnn.train.regularisers import REGULARISERS

    opt = click.Option
    return [
        opt(["--dataset"], default="digits", show_default=True, type=click.Choice(list(DATASETS)),
            help="digits needs no download (scikit-learn's 8x8 digits)."),
        opt(["--data-dir"], type=click.Path(file_okay=False), envvar="VFNN_DATA",
            help="Folder with <dataset>/ files [env VFNN_DATA; default ~/.cache/vfnn]."),
        opt(["--download/--no-download"], default=True, show_default=True,
            help="Fetch missing dataset files from the official locations."),
        opt(["--train-size"], type=int, help="Use only the first N training images."),
        opt(["--eval-size"], type=int, default=1000, show_default=True, help="Test images used for the metrics."),
        opt(["--val-size"], type=int, default=0, show_default=True,
            help="Hold out the last N training images and compute the metrics on them instead of test images."),
        opt(["--arch"], default="fc:100x3", show_default=True,
            help="fc:WIDTHxDEPTH, fc:W1,W2,.., cnn:small, cnn:medium."),
        opt(["--activation"], type=click.Choice(list(ACTIVATIONS)), default="relu", show_default=True,
            help="paramramp: Lyu et al.'s ReLU with a trainable second bend per neuron (exported as ReLUs)."),
        opt(["--ramp-slope"], type=float, default=0.01, show_default=True,
            help="ParamRamp's leaky slope eta."),
        opt(["--ramp-slope-end"], type=float,
            help="Decay the slope linearly to this over the epochs after the warm-up (Lyu et al.: 0.01 -> 0) "
                 "[default: constant]."),
        opt(["--ramp-noise"], type=float, default=0.0, show_default=True,
            help="After each step add N(0, (NOISE * the layer's mean bend)^2) to every bend (Lyu et al.: 0.01)."),
        opt(["--ramp-warmup"], type=int, default=1, show_default=True,
            help="Epochs of LeakyReLU before each bend is set to its neuron's mean activation."),
        opt(["--batch-norm"], is_flag=True,
            help="Batch-norm between every hidden fc/conv layer and its activation (folded in the export)."),
        opt(["--init", "init"], type=click.Path(dir_okay=False),
            help="Start from a model: our model.pt or an ONNX file (fine-tuning)."),
        opt(["--method"], default="ce", show_default=True, type=click.Choice(list(OBJECTIVES))),
        opt(["--reg", "regs"], multiple=True, metavar="NAME[:WEIGHT]",
            help=f"{', '.join(REGULARISERS)} (repeatable)."),
        opt(["--schedule"], help="Phases METHOD[+REG..]:EPOCHS, comma-separated (replaces --method/--epochs)."),
        opt(["--epochs"], type=int, help="Epochs (without --schedule).  [default: 10]"),
        opt(["--eps"], type=float, help="Training/eval L-inf radius in pixel space [default: "
            + ", ".join(f"{name} {_pixels(info.default_eps)}" for name, info in DATASETS.items()) + "]."),
        opt(["--batch-size"], type=int, default=128, show_default=True),
        opt(["--lr"], type=float, default=1e-3, show_default=True),
        opt(["--optimizer"], type=click.Choice(["adam", "sgd"]), default="adam", show_default=True),
        opt(["--weight-decay"], type=float, default=0.0, show_default=True),
        opt(["--grad-clip"], type=float, default=10.0, show_default=True, help="Max gradient norm (0: off)."),
        opt(["--eps-warmup"], type=float, default=0.0, show_default=True, help="Epochs at eps=0 (certified)."),
        opt(["--eps-rampup"], type=float,
            help="Epochs of linear eps ramp-up (certified) [default: half the phase]."),
        opt(["--kappa-start"], type=float, default=1.0, show_default=True),
        opt(["--kappa-end"], type=float, help="[default: " + ", ".join(
            f"{cls.kappa_end:g} for {name}" for name, cls in OBJECTIVES.items() if cls.certified) + "]"),
        opt(["--radii"], help="Multi-radius training radii, increasing (e.g. 0.1,0.2,0.3)."),
        opt(["--radius-weights"], help="Their weights, strictly decreasing [default: 1,0.5,0.25,..]."),
        *component_params(),
        opt(["--reg-warmup"], type=float, default=1.0, show_default=True, help="Epochs of linear weight warm-up."),
        opt(["--eval-pgd-steps"], type=int, default=20, show_default=True,
            help="Steps of the evaluation attacks (PGD accuracy, adversarial NBC metric)."),
        opt(["--seed"], type=int, default=0, show_default=True),
        opt(["--device"], type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        opt(["--threads"], type=int, help="torch CPU threads."),
        opt(["--out"], type=click.Path(file_okay=False),
            help="Run directory [default: runs/<dataset>-<arch>-<phases>-s<seed>]."),
        opt(["--overwrite"], is_flag=True, help="Replace an existing run in --out."),
        opt(["--resume"], type=click.Path(file_okay=False), help="Continue the run in this directory."),
        opt(["-q", "--quiet"], is_flag=True, help="No progress bar or per-epoch lines."),
    ]


def _pixels(v: float) -> str:
    """A radius as people write it: 2/255 for an 8-bit step count, else the number."""
    steps = v * 255
    return f"{round(steps)}/255" if abs(steps - round(steps)) < 1e-9 and v < 0.05 else f"{v:g}"


class TrainCommand(click.Command):
    """A command whose options and help are built from the registries when first needed (and again if they change)."""

    def __init__(self) -> None:
        super().__init__("train", callback=_train, short_help="Train a classifier and write a run directory.",
                         context_settings={"max_content_width": 100})
        self._built: tuple[tuple[str, ...], ...] | None = None

    @property  # type: ignore[override]
    def params(self) -> list[click.Parameter]:
        from vfnn.train.objectives import OBJECTIVES
        from vfnn.train.regularisers import REGULARISERS

        key = (tuple(OBJECTIVES), tuple(REGULARISERS))
        if self._built != key:
            self._params, self._built = _params(), key
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:  # click.Command.__init__ sets it: built lazily instead
        self._params = value

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(train_help())


def _default_out(dataset: str, arch: str, label: str, seed: int) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", f"{dataset}-{arch}-{label}-s{seed}")
    return Path("runs") / name


@click.pass_context
def _train(ctx: click.Context, **kw: object) -> None:
    from vfnn.train.config import TrainConfigError

    if kw["resume"]:
        _resume(ctx, kw)
        return
    source = ctx.get_parameter_source("method")
    cfg = config_from_options({**kw, "method_given": source is not None and source.name == "COMMANDLINE"})
    out = Path(str(kw["out"])) if kw["out"] else _default_out(cfg.dataset, cfg.arch if not cfg.init else "init",
                                                              "_".join(p.label for p in cfg.phases), cfg.seed)
    if out.exists() and any((out / f).exists() for f in ("config.json", "checkpoint.pt")):
        if not kw["overwrite"]:
            raise TrainConfigError(f"{out} already holds a run; use --resume {out} to continue it or --overwrite")
        from vfnn.train.trainer import RUN_FILES

        for f in RUN_FILES:
            (out / f).unlink(missing_ok=True)
    _run(cfg, out, resume=False, quiet=bool(kw["quiet"]), argv=command_line(ctx))


def command_line(ctx: click.Context) -> list[str]:
    """The options given on the command line (or by environment), as an equivalent argv."""
    argv = ["vfnn", "train"]
    for param in ctx.command.params:
        name = param.name or ""
        source = ctx.get_parameter_source(name)
        if source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT") or not isinstance(param, click.Option):
            continue
        value = ctx.params[name]
        flag = max(param.opts, key=len)
        if param.is_flag:
            if param.secondary_opts and not value:
                argv.append(max(param.secondary_opts, key=len))
            elif value:
                argv.append(flag)
        elif param.multiple:
            for v in value:
                argv += [flag, str(v)]
        else:
            argv += [flag, str(value)]
    return argv


def config_from_options(kw: dict):
    """Build and validate a TrainConfig from the command's options."""
    from vfnn.train.components import parse_floats
    from vfnn.train.config import Phase, TrainConfig, TrainConfigError, parse_reg, parse_schedule

    reg_weights: dict[str, float] = {}
    for text in kw["regs"] or ():
        name, weight = parse_reg(str(text))
        if name in reg_weights:
            raise TrainConfigError(f"--reg {name} given twice")
        reg_weights[name] = weight
    if kw["schedule"]:
        if kw["epochs"] is not None:
            raise TrainConfigError("--epochs and --schedule both given; the schedule fixes the number of epochs")
        phases = parse_schedule(str(kw["schedule"]))
        used = {r for p in phases for r in p.regs}
        unused = sorted(set(reg_weights) - used)
        if unused:
            raise TrainConfigError(f"--reg {unused[0]} is not used by any --schedule phase (add +{unused[0]} to one)")
        if kw.get("method_given"):
            raise TrainConfigError("--method and --schedule both given; name the method in each schedule phase")
    else:
        epochs = 10 if kw["epochs"] is None else int(kw["epochs"])  # type: ignore[arg-type]
        if epochs < 1:
            raise TrainConfigError("--epochs must be >= 1")
        phases = [Phase(str(kw["method"]), tuple(reg_weights), epochs)]
    arch = str(kw["arch"])
    if kw["init"]:  # the architecture is the --init model's, and config.json says so
        if click.get_current_context().get_parameter_source("arch") is click.core.ParameterSource.COMMANDLINE:
            raise TrainConfigError("--arch and --init exclude each other: the architecture is the --init model's")
        arch = f"init:{kw['init']}"
    cfg = TrainConfig(
        dataset=str(kw["dataset"]), data_dir=kw["data_dir"], download=bool(kw["download"]),
        train_size=kw["train_size"], eval_size=int(kw["eval_size"]), arch=arch, init=kw["init"],
        activation=str(kw["activation"]), ramp_slope=float(kw["ramp_slope"]), ramp_warmup=int(kw["ramp_warmup"]),
        ramp_slope_end=kw["ramp_slope_end"], ramp_noise=float(kw["ramp_noise"]),
        batch_norm=bool(kw["batch_norm"]),
        phases=phases, reg_weights=reg_weights, eps=kw["eps"], batch_size=int(kw["batch_size"]), lr=float(kw["lr"]),
        optimizer=str(kw["optimizer"]), weight_decay=float(kw["weight_decay"]), grad_clip=float(kw["grad_clip"]),
        options=component_values(kw), eps_warmup=float(kw["eps_warmup"]),
        eps_rampup=kw["eps_rampup"], kappa_start=float(kw["kappa_start"]), kappa_end=kw["kappa_end"],
        radii=parse_floats(kw["radii"], "--radii"),
        radius_weights=parse_floats(kw["radius_weights"], "--radius-weights"),
        val_size=int(kw["val_size"]),
        reg_warmup=float(kw["reg_warmup"]), eval_pgd_steps=int(kw["eval_pgd_steps"]), seed=int(kw["seed"]),
        device=str(kw["device"]), threads=kw["threads"],
    )
    return cfg.validate()


train = TrainCommand()


def _resume(ctx: click.Context, kw: dict) -> None:
    import json

    from vfnn.train.config import TrainConfig, TrainConfigError

    run_dir = Path(str(kw["resume"]))
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise TrainConfigError(f"--resume {run_dir}: no config.json there (not a vfnn run directory)")
    for name in kw:
        source = ctx.get_parameter_source(name)
        if name not in RESUME_OVERRIDABLE and source is not None and source.name == "COMMANDLINE":
            flag = "--" + name.replace("_", "-")
            raise TrainConfigError(f"--resume takes the options from {cfg_path}; "
                                   f"only --device, --threads, --data-dir, --quiet may be given (got {flag})")
    try:
        cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainConfigError(f"{cfg_path}: unreadable run configuration ({exc})") from None
    for name in ("device", "threads", "data_dir"):
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            setattr(cfg, name, kw[name])
    if (run_dir / "summary.json").exists():
        if not kw["quiet"]:
            click.echo(f"{run_dir}: run already complete (see summary.json)")
        return
    _run(cfg, run_dir, resume=True, quiet=bool(kw["quiet"]), argv=command_line(ctx))


def _run(cfg, out: Path, resume: bool, quiet: bool, argv: list[str]) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vfnn.train.trainer import Trainer

    console = Console(stderr=True)

    def log(message: str) -> None:
        if not quiet:
            console.print(message, markup=False, highlight=False, soft_wrap=True)

    trainer = Trainer(cfg, out, resume=resume, argv=argv, log=log)
    if not quiet:
        phases = ", ".join(f"{p.label}:{p.epochs}" for p in cfg.phases)
        log(f"training {'(resumed) ' if resume else ''}-> {out}  [{phases}] eps={cfg.eps} device={trainer.device}")
    try:
        if quiet:
            summary = trainer.run()
        else:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console, transient=True) as progress:
                summary = trainer.run(progress=progress)
    except KeyboardInterrupt:
        click.echo(f"vfnn: interrupted; continue with: vfnn train --resume {out}", err=True)
        raise
    final = summary.get("final") or {}
    log(f"done: {out}/model.onnx  clean {100 * final.get('clean_acc', 0):.1f}%  "
        f"verified(crown) {100 * final.get('verified_acc', {}).get('crown', 0):.1f}%  "
        f"({summary.get('seconds_total', 0):.1f}s)")
