"""A study file (TOML): the datasets x architectures x training recipes x seeds grid, its radii and verifiers.

Everything is checked before anything runs, with one error per mistake naming the file, the table,
the key and (where it can be found) the line.  Each model of the grid becomes a ``vfnn train``
command line, parsed by the train command's own options, so a study can say whatever
``vfnn train`` can and nothing else::

    [study]
    name = "nbc-mnist"            # default output folder: study-out/<name>
    datasets = ["mnist"]
    archs = ["fc:100x3", "cnn:small"]
    seeds = [0]
    radii = [0.02, 0.05, 0.1]     # the specs' L-inf radii (pixel space)
    per_class = 10                # test images per class
    timeout = 60                  # seconds per verification job
    jobs = 2                      # verification jobs at a time

    [train]                       # options of every recipe (vfnn train's, without the dashes)
    epochs = 5
    eps = 0.1

    [train."cnn:small"]           # overrides for one architecture or one dataset
    epochs = 3

    [recipes.ce]
    method = "ce"

    [recipes."ce+nbc"]
    reg = "nbc"

    [verifiers.milp]              # a verifier and its options
    threads = 1
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from vfnn.errors import VfnnError

if TYPE_CHECKING:
    from vfnn.train.config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PHASES = ("train", "specs", "verify", "report")
STUDY_KEYS = {
    "name": str, "datasets": list, "archs": list, "recipes": list, "seeds": list, "radii": list, "per_class": int,
    "split": str, "correct_only": bool, "timeout": (int, float), "jobs": int,
}
# Options the study sets itself for every run (the grid, the run folder, the console).
RESERVED = {"dataset", "arch", "seed", "out", "overwrite", "resume", "quiet", "data_dir", "download", "no_download",
            "init"}


class StudyError(VfnnError):
    """A study file is malformed; the message names the file, the key and the line."""


PRUNE_KEYS: dict[str, type | tuple[type, ...]] = {"of": str, "criterion": str, "rate": (int, float), "rounds": int,
                                                  "rewind-epoch": int}


@dataclass(frozen=True)
class Pruning:
    """A pruned recipe: ``vfnn prune`` of the ``of`` recipe's run; the model is the last round's.
    Settings the file leaves out take ``vfnn prune``'s defaults (:func:`vfnn.train.prune.prune_run`)."""

    of: str
    criterion: str
    rate: float
    rounds: int
    rewind_epoch: int


@dataclass(frozen=True)
class ModelRun:
    """One model of the grid: trained by ``vfnn train argv``, or pruned from the run ``base``."""

    dataset: str
    arch: str
    recipe: str
    seed: int
    argv: tuple[str, ...]  # the ``vfnn train`` arguments (without --out, --quiet); empty for a pruned run
    run_dir: Path
    pruning: Pruning | None = None
    base: ModelRun | None = None

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.arch} {self.recipe} s{self.seed}"

    @property
    def prune_dir(self) -> Path:
        """Where ``vfnn prune`` writes its rounds (the run directory is its last round)."""
        return self.run_dir.parent

    @property
    def command(self) -> list[str]:
        """The command line that makes this model (shown by ``--check``, logged in its config.json)."""
        if self.pruning is None or self.base is None:
            return ["vfnn", "train", *self.argv, "--out", str(self.run_dir)]
        p = self.pruning
        return ["vfnn", "prune", str(self.base.run_dir), "--criterion", p.criterion, "--rate", f"{p.rate:g}",
                "--rounds", str(p.rounds), "--rewind-epoch", str(p.rewind_epoch), "--out", str(self.prune_dir)]


@dataclass
class Study:
    """A validated study: its runs and how their robustness properties are verified."""

    path: Path
    name: str
    out: Path
    runs: list[ModelRun]
    radii: list[float]
    per_class: int
    split: str
    correct_only: bool
    timeout: float
    jobs: int
    verifiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_dir: str | None = None

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.runs))


class _Where:
    """Finds the line of a key inside a table of the study file, for error messages."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.lines = path, text.splitlines()

    def line(self, table: str, key: str | None = None) -> int | None:
        parts = [re.escape(p) for p in _split_table(table)]
        header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(rf'"?{p}"?' for p in parts) + r"\s*\]")
        start = next((i for i, s in enumerate(self.lines) if header.match(s)), None)
        if key is None or start is None:
            return None if start is None else start + 1
        pat = re.compile(rf'^\s*"?{re.escape(key)}"?\s*=')
        for i in range(start + 1, len(self.lines)):
            if self.lines[i].lstrip().startswith("["):
                break
            if pat.match(self.lines[i]):
                return i + 1
        return start + 1

    def error(self, table: str, key: str | None, message: str) -> StudyError:
        line = self.line(table, key)
        where = f"{self.path}" + (f":{line}" if line else "") + f": [{table}]" + (f" {key}" if key else "")
        return StudyError(f"{where}: {message}")


def _split_table(table: str) -> list[str]:
    return [p.strip('"') for p in re.findall(r'"[^"]*"|[^.]+', table)]


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


SHIPPED = Path(__file__).resolve().parents[1] / "studies"


def shipped_studies() -> list[str]:
    """Names of the study files that come with vfnn (``vfnn study NAME``)."""
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def resolve_study_path(name: str | Path) -> Path:
    """A path, or the name of a shipped study (``quick``, ``nbc-mnist``, ...)."""
    path = Path(name)
    if not path.exists() and path.suffix == "" and len(path.parts) == 1 and (SHIPPED / f"{name}.toml").is_file():
        return SHIPPED / f"{name}.toml"
    if path.is_dir():
        raise StudyError(f"{path}: is a directory, not a study file")
    if not path.exists():
        raise StudyError(f"{path}: no such file (shipped studies: {', '.join(shipped_studies())})")
    return path


def load_study(path: str | Path, out: str | Path | None = None, data_dir: str | None = None) -> Study:
    """Read and validate a study file; every ``vfnn train`` command line is parsed before anything runs."""
    path = resolve_study_path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise StudyError(f"{path}: not a UTF-8 text file") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: not valid TOML: {exc}") from None
    where = _Where(path, text)
    for key in doc:
        if key not in ("study", "train", "recipes", "verifiers"):
            raise where.error(key, None, f"unknown table{_suggest(key, ['study', 'train', 'recipes', 'verifiers'])}; "
                              "a study has [study], [train], [recipes.NAME] and [verifiers.NAME]")
    head = _table(doc, "study", where)
    for key, value in head.items():
        if key not in STUDY_KEYS:
            raise where.error("study", key, f"unknown key{_suggest(key, list(STUDY_KEYS))}")
        if not isinstance(value, STUDY_KEYS[key]) or (isinstance(value, bool) and STUDY_KEYS[key] is not bool):
            raise where.error("study", key, f"expected {_type_name(STUDY_KEYS[key])}, got {value!r}")
    for key in ("datasets", "archs", "radii", "per_class"):
        if key not in head:
            raise where.error("study", None, f"missing key {key!r}")
    name = str(head.get("name", path.stem))
    recipes = _table(doc, "recipes", where)
    if not recipes:
        raise where.error("recipes", None, "a study needs at least one [recipes.NAME] table")
    chosen = head.get("recipes", list(recipes))
    for r in chosen:
        if r not in recipes:
            raise where.error("study", "recipes", f"no [recipes.{r}] table{_suggest(str(r), list(recipes))}")
    radii = _numbers(head["radii"], where, "radii", positive=True)
    if any(r > 1 for r in radii):
        raise where.error("study", "radii", "radii lie in (0, 1] (pixel space)")
    seeds = head.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise where.error("study", "seeds", "expected a list of integers")
    for key in ("per_class", "jobs"):
        if key in head and head[key] < 1:
            raise where.error("study", key, "must be at least 1")
    timeout = float(head.get("timeout", 60))
    if timeout <= 0:
        raise where.error("study", "timeout", "must be positive")
    split = str(head.get("split", "test"))
    if split not in ("test", "train"):
        raise where.error("study", "split", "must be 'test' or 'train'")
    out_dir = Path(out) if out is not None else Path("study-out") / name
    runs = _runs(doc, head, chosen, seeds, where, out_dir, data_dir)
    verifiers = _verifiers(doc, where)
    return Study(path, name, out_dir, runs, radii, int(head["per_class"]), split, bool(head.get("correct_only", False)),
                 timeout, int(head.get("jobs", 1)), verifiers, data_dir)


def _type_name(t: Any) -> str:
    names = {str: "a string", list: "a list", int: "an integer", bool: "true or false"}
    return "a number" if isinstance(t, tuple) else names[t]


def _table(doc: dict, key: str, where: _Where) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise where.error(key, None, "expected a table")
    return value


def _numbers(values: Any, where: _Where, key: str, positive: bool = False) -> list[float]:
    if not isinstance(values, list) or not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise where.error("study", key, "expected a non-empty list of numbers")
    if positive and any(v <= 0 for v in values):
        raise where.error("study", key, "every value must be positive")
    return [float(v) for v in values]


def _strings(head: dict, key: str, where: _Where) -> list[str]:
    values = head[key]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise where.error("study", key, "expected a non-empty list of strings")
    return list(values)


def _runs(doc: dict, head: dict, recipes: list[str], seeds: list[int], where: _Where, out: Path,
          data_dir: str | None) -> list[ModelRun]:
    from vfnn.train.cli import train

    datasets, archs = _strings(head, "datasets", where), _strings(head, "archs", where)
    shared = _table(doc, "train", where)
    overrides = {k: v for k, v in shared.items() if isinstance(v, dict)}
    base = {k: v for k, v in shared.items() if not isinstance(v, dict)}
    for k in overrides:
        if k not in datasets and k not in archs:
            raise where.error(_table_name("train", k), None, "an override table must be named after one of the study's "
                              f"datasets ({', '.join(datasets)}) or archs ({', '.join(archs)})")
    params = _train_options(train)
    pruned = {r: _pruning(doc, r, recipes, where) for r in recipes if "prune" in _table(doc["recipes"], r, where)}
    trained = [r for r in recipes if r not in pruned]
    tables = [("train", base), *((_table_name("train", n), t) for n, t in overrides.items()),
              *((_table_name("recipes", r), _table(doc["recipes"], r, where)) for r in trained)]
    for table, values in tables:
        for key in values:
            name = key.replace("-", "_")
            if name in RESERVED:
                raise where.error(table, key, "is set by the study for every run (grid, --data-dir, run folder)")
            if name not in params:
                raise where.error(table, key, f"not a vfnn train option{_suggest(name, list(params))}")
    runs = []
    for dataset in datasets:
        for arch in archs:
            for r in trained:
                recipe = doc["recipes"][r]
                # Later tables win; a recipe with its own schedule does not inherit epochs or method.
                layers = [("train", base), (_table_name("train", dataset), overrides.get(dataset, {})),
                          (_table_name("train", arch), overrides.get(arch, {})), (_table_name("recipes", r), recipe)]
                source: dict[str, tuple[str, str, Any]] = {}
                for table, values in layers:
                    for key, value in values.items():
                        source[key.replace("-", "_")] = (table, key, value)
                if "schedule" in recipe:
                    for inherited in ("epochs", "method"):
                        if inherited in source and source[inherited][0] != layers[-1][0]:
                            del source[inherited]
                argv = ["--dataset", dataset, "--arch", arch]
                for name, (_, _, value) in source.items():
                    argv += _flag(params[name], value)
                for seed in seeds:
                    run_argv = (*argv, "--seed", str(seed))
                    _check_train_args(run_argv, data_dir, where, source, params, _table_name("recipes", r), dataset,
                                      arch)
                    run_dir = out / "runs" / dataset / _safe(arch) / _safe(r) / f"s{seed}"
                    runs.append(ModelRun(dataset, arch, r, seed, run_argv, run_dir))
    by_key = {(run.dataset, run.arch, run.recipe, run.seed): run for run in runs}
    for r, pruning in pruned.items():  # after every trained run: each is pruned from one of them
        for dataset in datasets:
            for arch in archs:
                for seed in seeds:
                    prune_dir = out / "runs" / dataset / _safe(arch) / _safe(r) / f"s{seed}"
                    runs.append(ModelRun(dataset, arch, r, seed, (), prune_dir / f"round-{pruning.rounds}", pruning,
                                         by_key[(dataset, arch, pruning.of, seed)]))
    return runs


def _pruning(doc: dict, r: str, recipes: list[str], where: _Where) -> Pruning:
    """A recipe's ``prune = {of = "RECIPE", criterion, rate, rounds, rewind-epoch}`` table, checked."""
    from vfnn.train.prune import CRITERIA, prune_run

    table = _table_name("recipes", r)
    recipe = doc["recipes"][r]
    others = [k for k in recipe if k != "prune"]
    if others:
        raise where.error(table, others[0], "a pruned recipe takes its training from its `of` recipe; "
                          "it has only a `prune` table")
    spec = recipe["prune"]
    if not isinstance(spec, dict):
        raise where.error(table, "prune", "expected a table: prune = {of = \"RECIPE\", criterion = \"nrs\", ...}")
    for key, value in spec.items():
        if key not in PRUNE_KEYS:
            raise where.error(table, "prune", f"unknown key {key!r}{_suggest(key, list(PRUNE_KEYS))}")
        if not isinstance(value, PRUNE_KEYS[key]) or isinstance(value, bool):
            raise where.error(table, "prune", f"{key}: expected {_type_name(PRUNE_KEYS[key])}, got {value!r}")
    of = spec.get("of")
    if of not in recipes or of == r or "prune" in doc["recipes"][of]:
        raise where.error(table, "prune", f"of = {of!r}: name another, trained recipe of the study "
                          f"({', '.join(x for x in recipes if 'prune' not in doc['recipes'][x])})")
    defaults = inspect.signature(prune_run).parameters
    settings = {name: spec.get(name.replace("_", "-"), defaults[name].default)
                for name in ("criterion", "rate", "rounds", "rewind_epoch")}
    p = Pruning(of, **{**settings, "rate": float(settings["rate"])})
    if p.criterion not in CRITERIA:
        raise where.error(table, "prune", f"criterion {p.criterion!r}: choose from {', '.join(CRITERIA)}")
    if not 0 < p.rate < 1 or p.rounds < 1 or p.rewind_epoch < 0:
        raise where.error(table, "prune", "rate lies in (0, 1), rounds >= 1, rewind-epoch >= 0")
    return p


def _table_name(parent: str, name: str) -> str:
    return f"{parent}.{name}" if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'{parent}."{name}"'


def _train_options(command: click.Command) -> dict[str, click.Option]:
    """The train command's options by every name a study may use: ``reg`` (the flag) and ``regs`` (the parameter)."""
    out: dict[str, click.Option] = {}
    for p in command.params:
        if isinstance(p, click.Option):
            for name in (*p.opts, *p.secondary_opts):
                if name.startswith("--"):
                    out[name[2:].replace("-", "_")] = p
            out.setdefault(str(p.name), p)
    return out


def _flag(param: click.Option, value: Any) -> list[str]:
    """TOML value -> ``vfnn train`` arguments: flags for booleans, repeats for multiple options, commas for lists."""
    flag = max(param.opts, key=len)
    if param.is_flag:
        if param.secondary_opts:
            return [flag] if value else [max(param.secondary_opts, key=len)]
        return [flag] if value else []
    values = value if isinstance(value, list) else [value]
    if param.multiple:
        return [a for v in values for a in (flag, _text(v))]
    return [flag, ",".join(_text(v) for v in values)]


def _text(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", name)


def parse_train_args(args: list[str]) -> tuple[TrainConfig, list[str]]:
    """A ``vfnn train`` command line -> its validated TrainConfig and canonical argv, as the command parses it."""
    from vfnn.train.cli import command_line, config_from_options, train

    ctx = train.make_context("train", list(args))
    with ctx:
        source = ctx.get_parameter_source("method")
        cfg = config_from_options({**ctx.params, "method_given": source is not None and source.name == "COMMANDLINE"})
        return cfg, command_line(ctx)


def _check_train_args(argv: tuple[str, ...], data_dir: str | None, where: _Where,
                      source: dict[str, tuple[str, str, Any]], params: dict[str, click.Option], recipe_table: str,
                      dataset: str, arch: str) -> None:
    """Parse a run's command line as ``vfnn train`` would, without training; errors name the TOML key."""
    try:
        parse_train_args([*argv, *(["--data-dir", data_dir] if data_dir else []), "--quiet"])
    except click.BadParameter as exc:
        table, key = next(((t, k) for name, (t, k, _) in source.items() if params[name] is exc.param),
                          (recipe_table, None))
        raise where.error(table, key, f"{exc.format_message()} (for {dataset} {arch})") from None
    except click.ClickException as exc:
        raise where.error(recipe_table, None, f"{dataset} {arch}: {exc.format_message()}") from None
    except VfnnError as exc:
        raise where.error(recipe_table, None, f"{dataset} {arch}: {exc}") from None


def _verifiers(doc: dict, where: _Where) -> dict[str, dict[str, Any]]:
    from vfnn.verifiers.registry import load_verifier_class

    table = _table(doc, "verifiers", where)
    if not table:
        return {"milp": {}}
    out = {}
    for name, options in table.items():
        if not isinstance(options, dict):
            raise where.error("verifiers", name, "expected a table of the verifier's options ([verifiers.NAME])")
        try:
            cls = load_verifier_class(name)
            cls.resolve_options({k: str(v) if not isinstance(v, str) else v for k, v in options.items()})
        except VfnnError as exc:
            raise where.error(f"verifiers.{name}", None, str(exc)) from None
        out[name] = dict(options)
    return out
