"""``vfnn train``: one command for NBC and every baseline it is compared with."""

from __future__ import annotations

import re
from pathlib import Path

import click

HELP = """Train a (verification-friendly) classifier and write a self-describing run directory.

\b
  vfnn train --dataset mnist --arch fc:100x3 --reg nbc --eps 0.05 --out runs/nbc
  vfnn train --dataset mnist --method crown-ibp --eps 0.1 --epochs 20
  vfnn train --dataset mnist --schedule ce:5,ce+nbc:5 --reg nbc:0.5
  vfnn train --init runs/ce/model.onnx --schedule ce+nbc:3 --out runs/ft
  vfnn train --resume runs/nbc

\b
Methods (--method): ce (cross-entropy), pgd (Madry: CE at a PGD point),
trades (CE + beta*KL at the KL-maximising point), ibp and crown-ibp
(kappa*CE + (1-kappa)*CE(-m), m = lower bounds of the margins f_y - f_j over
the eps-ball; crown-ibp uses beta*CROWN-IBP + (1-beta)*IBP bounds).  Certified
methods ramp eps from 0 after --eps-warmup epochs over --eps-rampup epochs
(default: half the phase) while kappa goes --kappa-start -> --kappa-end (1 ->
0.5 for ibp, 1 -> 0 for crown-ibp) and beta 1 -> 0.  --radii r1,r2,.. with
strictly decreasing --radius-weights (default 1, 1/2, 1/4, ..) sums the robust
term over several radii (Liang et al. 2023).

\b
Regularisers (--reg NAME[:WEIGHT], repeatable; weights warm up linearly from 0
over --reg-warmup epochs, default 1):
  nbc  (default weight 15)   neuron behaviour consistency (Liu et al. 2025):
       L = sum_i lambda_i * mean_j -tanh(1 + c * z_ij(x) * z_ij(x'))
       z = ReLU inputs of layer i; x' = neighbours in the eps-ball (and [0,1]):
       --nbc-neighbours persistent (default: one adversarial neighbour per
       training image, kept across epochs and moved one signed-gradient step
       by each training step's own input gradient), uniform (--nbc-samples
       draws), adversarial (--nbc-steps signed-gradient steps maximising L
       from a uniform start) or both; on every --nbc-every-th batch (4) with
       that many times the weight; c = --nbc-c (1); lambda_i =
       --nbc-layer-weights normalised to sum 1 (lNBC; default equal).
  rs   (default weight 0.5)  ReLU stability (Xiao et al. 2019):
       mean over layers and neurons of -tanh(1 + l*u), (l,u) = IBP bounds.
  l1   (default weight 1e-5) sum of |w| over all weight matrices/kernels.

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


def _default_out(dataset: str, arch: str, label: str, seed: int) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", f"{dataset}-{arch}-{label}-s{seed}")
    return Path("runs") / name


@click.command("train", help=HELP, context_settings={"max_content_width": 100})
@click.option("--dataset", default="digits", show_default=True,
              type=click.Choice(["digits", "mnist", "fashion-mnist", "cifar10"]),
              help="digits needs no download (scikit-learn's 8x8 digits).")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="VFNN_DATA",
              help="Folder with <dataset>/ files [env VFNN_DATA; default ~/.cache/vfnn].")
@click.option("--download/--no-download", default=True, show_default=True,
              help="Fetch missing dataset files from the official locations.")
@click.option("--train-size", type=int, help="Use only the first N training images.")
@click.option("--eval-size", type=int, default=1000, show_default=True, help="Test images used for the metrics.")
@click.option("--val-size", type=int, default=0, show_default=True,
              help="Hold out the last N training images and compute the metrics on them instead of test images.")
@click.option("--arch", default="fc:100x3", show_default=True,
              help="fc:WIDTHxDEPTH, fc:W1,W2,.., cnn:small, cnn:medium.")
@click.option("--init", "init", type=click.Path(dir_okay=False),
              help="Start from a model: our model.pt or an ONNX file (fine-tuning).")
@click.option("--method", default="ce", show_default=True,
              type=click.Choice(["ce", "pgd", "trades", "ibp", "crown-ibp"]))
@click.option("--reg", "regs", multiple=True, metavar="NAME[:WEIGHT]", help="nbc, rs or l1 (repeatable).")
@click.option("--schedule", help="Phases METHOD[+REG..]:EPOCHS, comma-separated (replaces --method/--epochs).")
@click.option("--epochs", type=int, help="Epochs (without --schedule).  [default: 10]")
@click.option("--eps", type=float, help="Training/eval L-inf radius in pixel space [default: mnist 0.1, "
              "fashion-mnist 0.1, cifar10 2/255, digits 0.05].")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--grad-clip", type=float, default=10.0, show_default=True, help="Max gradient norm (0: off).")
@click.option("--pgd-steps", type=int, default=10, show_default=True, help="Attack steps for pgd/trades training.")
@click.option("--trades-beta", type=float, default=6.0, show_default=True)
@click.option("--eps-warmup", type=float, default=0.0, show_default=True, help="Epochs at eps=0 (certified).")
@click.option("--eps-rampup", type=float, help="Epochs of linear eps ramp-up (certified) [default: half the phase].")
@click.option("--kappa-start", type=float, default=1.0, show_default=True)
@click.option("--kappa-end", type=float, help="[default: 0.5 for ibp, 0 for crown-ibp]")
@click.option("--radii", help="Multi-radius training radii, increasing (e.g. 0.1,0.2,0.3).")
@click.option("--radius-weights", help="Their weights, strictly decreasing [default: 1,0.5,0.25,..].")
@click.option("--nbc-neighbours", type=click.Choice(["uniform", "adversarial", "both", "persistent"]),
              default="persistent", show_default=True)
@click.option("--nbc-samples", type=int, default=1, show_default=True, help="Uniform neighbours per input.")
@click.option("--nbc-steps", type=int, default=3, show_default=True, help="Steps of the adversarial neighbour.")
@click.option("--nbc-c", type=float, default=1.0, show_default=True, help="c in -tanh(1 + c z(x) z(x')).")
@click.option("--nbc-layer-weights", help="lNBC: one weight per ReLU layer, e.g. 1,0.5,0.25.")
@click.option("--nbc-every", type=int, default=4, show_default=True,
              help="NBC on every K-th batch only (its weight times K): a K-th of the cost.")
@click.option("--reg-warmup", type=float, default=1.0, show_default=True, help="Epochs of linear weight warm-up.")
@click.option("--eval-pgd-steps", type=int, default=20, show_default=True,
              help="Steps of the evaluation attacks (PGD accuracy, adversarial NBC metric).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run directory [default: runs/<dataset>-<arch>-<phases>-s<seed>].")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this directory.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
@click.pass_context
def train(ctx: click.Context, **kw: object) -> None:
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
    from vfnn.train.config import Phase, TrainConfig, TrainConfigError, parse_floats, parse_reg, parse_schedule

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
        phases=phases, reg_weights=reg_weights, eps=kw["eps"], batch_size=int(kw["batch_size"]), lr=float(kw["lr"]),
        optimizer=str(kw["optimizer"]), weight_decay=float(kw["weight_decay"]), grad_clip=float(kw["grad_clip"]),
        pgd_steps=int(kw["pgd_steps"]), trades_beta=float(kw["trades_beta"]), eps_warmup=float(kw["eps_warmup"]),
        eps_rampup=kw["eps_rampup"], kappa_start=float(kw["kappa_start"]), kappa_end=kw["kappa_end"],
        radii=parse_floats(kw["radii"], "--radii"),
        radius_weights=parse_floats(kw["radius_weights"], "--radius-weights"),
        nbc_neighbours=str(kw["nbc_neighbours"]), nbc_samples=int(kw["nbc_samples"]), nbc_steps=int(kw["nbc_steps"]),
        nbc_c=float(kw["nbc_c"]), nbc_layer_weights=parse_floats(kw["nbc_layer_weights"], "--nbc-layer-weights"),
        nbc_every=int(kw["nbc_every"]), val_size=int(kw["val_size"]),
        reg_warmup=float(kw["reg_warmup"]), eval_pgd_steps=int(kw["eval_pgd_steps"]), seed=int(kw["seed"]),
        device=str(kw["device"]), threads=kw["threads"],
    )
    return cfg.validate()


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
