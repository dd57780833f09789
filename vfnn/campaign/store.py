"""``results.jsonl``: the append-only record of a campaign, one JSON object per finished job.

Why a log and not a database: a line is appended (write + flush + fsync) the moment a job
finishes, so killing the campaign (even with SIGKILL) loses only jobs that were still running.
A crash in the middle of a write can leave a torn last line; :meth:`ResultStore.open_for_append`
cuts it off (that job simply runs again) and readers skip it.  When a key appears more than
once (``vfnn bench --rerun``), the last line wins.  One writer at a time is enforced with an
advisory lock on ``results.jsonl.lock``.

A line is a :class:`CampaignRecord`; this module is the only code that turns one into JSON or
back, so every other module reads attributes and the file format has one definition.

Reading is strict: a line that is not JSON, or a record without the fields ``vfnn gate`` and
``vfnn report`` rely on (``key``, ``onnx``, ``vnnlib``, ``verifier``, ``result.status``, ...), is an
error naming the file and line (exit code 2), never skipped.  A CI gate must not pass on a file
that was edited or produced by something else; skipping would let it judge fewer properties than
the campaign ran, silently.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vfnn.errors import VfnnError
from vfnn.verifiers.result import DECISIVE, STATUSES, VerificationResult

SCHEMA = 1


@dataclass(frozen=True)
class ModelInfo:
    """What a result says about its model: the name and, from ``config.json``, how it was trained."""

    name: str
    method: str | None = None  # training label, ``ce+nbc`` or ``ce:5,ce+nbc:5``
    train_eps: float | None = None
    train_arch: str | None = None
    train_dataset: str | None = None
    train_seed: int | None = None


@dataclass(frozen=True)
class PropertyMeta:
    """What a result says about its property: from ``specs.json``, else the spec's file name."""

    eps: float | None = None
    label: int | None = None
    index: int | None = None
    dataset: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class PortfolioInfo:
    """Who won a portfolio job and what the others did (``{"status": "stopped"}`` when cut short)."""

    verifiers: tuple[str, ...]
    winner: str | None  # None when no verifier decided
    chosen: str  # whose result the record carries
    results: dict[str, dict[str, Any]]  # verifier -> {status, wall_time} or {status: "stopped"}


@dataclass(frozen=True)
class CampaignRecord:
    """One finished job: the verifier layer's result plus the job's keys and provenance.

    The field meanings are the ``results.jsonl`` schema of docs/campaigns.md."""

    key: str  # <onnx>::<vnnlib>::<verifier>
    onnx: str  # as written in instances.csv
    vnnlib: str
    verifier: str  # a verifier name or portfolio(a,b)
    result: VerificationResult
    category: str = ""
    model_path: str | None = None  # the absolute paths that were used
    spec_path: str | None = None
    timeout: float | None = None  # None for a broken instances.csv row
    prepare_time: float = 0.0
    portfolio: PortfolioInfo | None = None
    meta: PropertyMeta = field(default_factory=PropertyMeta)
    model: ModelInfo | None = None
    finished_at: str | None = None
    host: str | None = None
    worker_pid: int | None = None
    vfnn_version: str | None = None

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def decided(self) -> bool:
        return self.result.status in DECISIVE

    @property
    def wall_time(self) -> float:
        """The verifier's wall time, 0 when unknown (a row that never ran)."""
        return float(self.result.wall_time or 0.0)

    @property
    def instance(self) -> str:
        """The property's identity across verifiers: ``onnx::vnnlib`` as written in instances.csv."""
        return f"{self.onnx}::{self.vnnlib}"

    @property
    def eps(self) -> float | None:
        return None if self.meta.eps is None else float(self.meta.eps)

    @property
    def model_name(self) -> str:
        return (self.model.name if self.model else None) or Path(self.onnx or "?").stem

    @property
    def method(self) -> str | None:
        return self.model.method if self.model else None

    @property
    def unstable_total(self) -> int | None:
        u = self.result.unstable
        return None if u is None else u.unstable

    @property
    def unstable_layers(self) -> list[int] | None:
        """Unstable neurons per ReLU layer, in layer order (None without a record)."""
        u = self.result.unstable
        if u is None or not u.layers:
            return None
        return [s.unstable for s in sorted(u.layers, key=lambda s: s.layer)]

    @property
    def stable_fraction(self) -> float | None:
        u = self.result.unstable
        return None if u is None or not u.neurons else 1 - u.unstable / u.neurons


def _to_dict(rec: CampaignRecord) -> dict[str, Any]:
    """The JSON object of one line (schema 1; field order as the files have always had it)."""
    def present(obj: Any) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(obj).items() if v is not None}

    pf = rec.portfolio
    return {
        "schema": SCHEMA, "key": rec.key, "category": rec.category, "onnx": rec.onnx, "vnnlib": rec.vnnlib,
        "model_path": rec.model_path, "spec_path": rec.spec_path, "timeout": rec.timeout, "verifier": rec.verifier,
        "status": rec.status, "result": rec.result.to_dict(), "prepare_time": rec.prepare_time,
        "portfolio": None if pf is None else {"verifiers": list(pf.verifiers), "winner": pf.winner,
                                              "chosen": pf.chosen, "results": pf.results},
        "meta": present(rec.meta), "model": None if rec.model is None else present(rec.model),
        "finished_at": rec.finished_at, "host": rec.host, "worker_pid": rec.worker_pid,
        "vfnn_version": rec.vfnn_version,
    }


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _from_dict(d: dict[str, Any]) -> CampaignRecord:
    """A record from a validated line (:func:`record_problem` is None).  Result fields that older
    writers may have left out and no reader needs get neutral values; the top-level ``status`` is a
    copy of ``result.status`` and is not read."""
    res = {"verifier": d["verifier"], "verifier_version": None, "options": {}, "wall_time": 0.0, "tool_time": None,
           "timeout": d.get("timeout") or 0.0, **d["result"]}
    res["wall_time"] = res["wall_time"] or 0.0  # a non-finite time was written as null
    res["timeout"] = math.inf if res["timeout"] is None else res["timeout"]
    pf = d.get("portfolio")
    return CampaignRecord(
        key=d["key"], onnx=d["onnx"], vnnlib=d["vnnlib"], verifier=d["verifier"],
        result=VerificationResult.from_dict(res), category=d.get("category") or "",
        model_path=d.get("model_path"), spec_path=d.get("spec_path"), timeout=d.get("timeout"),
        prepare_time=float(d.get("prepare_time") or 0.0),
        portfolio=None if pf is None else PortfolioInfo(tuple(pf["verifiers"]), pf.get("winner"), pf["chosen"],
                                                        dict(pf.get("results") or {})),
        meta=PropertyMeta(**_known(PropertyMeta, d.get("meta") or {})),
        model=None if d.get("model") is None else ModelInfo(**_known(ModelInfo, d["model"])),
        finished_at=d.get("finished_at"), host=d.get("host"), worker_pid=d.get("worker_pid"),
        vfnn_version=d.get("vfnn_version"),
    )


def _parse(raw: bytes) -> tuple[CampaignRecord | None, str | None]:
    """A line's record, or why it is not one."""
    try:
        d = json.loads(raw)
    except ValueError:  # includes bytes that are not UTF-8
        return None, "not JSON"
    problem = record_problem(d)
    if problem is not None:
        return None, problem
    try:
        return _from_dict(d), None
    except (KeyError, TypeError, ValueError) as exc:  # e.g. a sat without a counterexample, a bad portfolio
        return None, f"not a result the verifier layer gives ({type(exc).__name__}: {exc})"


def iter_records(path: str | Path) -> Iterator[CampaignRecord]:
    """Every complete record of a results file, in file order.

    A torn last line (a write cut short by a kill) is skipped; any other line that is not a
    record is an error naming the line, so a gate never passes on a silently shortened file."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise VfnnError(f"{path}: cannot read results ({exc.strerror or exc})") from None
    with f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                break  # torn tail: the job that was being written did not finish
            if not raw.strip():
                continue
            rec, problem = _parse(raw)
            if rec is None:
                raise VfnnError(f"{path}:{number}: not a vfnn result record ({problem}; corrupt or edited file)")
            yield rec


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _opt(ok: Any) -> Any:
    return lambda v: v is None or ok(v)


def _unstable_ok(u: Any) -> bool:
    if not isinstance(u, dict) or ("total_unstable" in u and not _is_count(u["total_unstable"])):
        return False
    layers = u.get("layers", [])
    return isinstance(layers, list) and all(
        isinstance(s, dict) and _is_count(s.get("layer")) and _is_count(s.get("unstable")) for s in layers)


_OBJECT = (lambda v: isinstance(v, dict), "an object")
_TEXT = (_text, "a non-empty string")
_OPT_TEXT = (_opt(_str), "a string")
#: (path, required, test, what it must be): the fields that report, gate and resume read.
_FIELDS = (
    # onnx/vnnlib may be empty: bench records a row without them as an error record
    (("key",), True, *_TEXT), (("onnx",), True, _str, "a string"), (("vnnlib",), True, _str, "a string"),
    (("verifier",), True, *_TEXT), (("result",), True, *_OBJECT),
    (("category",), False, *_OPT_TEXT), (("model_path",), False, *_OPT_TEXT), (("spec_path",), False, *_OPT_TEXT),
    (("model",), False, _opt(_OBJECT[0]), "an object"), (("meta",), False, _opt(_OBJECT[0]), "an object"),
    (("result", "status"), True, lambda v: v in STATUSES, f"one of {', '.join(STATUSES)}"),
    (("result", "wall_time"), False, _opt(lambda v: _is_number(v) and v >= 0), "a time in seconds"),
    (("result", "message"), False, *_OPT_TEXT),
    (("result", "counterexample_input"), False, _opt(lambda v: isinstance(v, list) and all(map(_is_number, v))),
     "a list of numbers"),
    (("result", "unstable"), False, _opt(_unstable_ok), "an unstable-neuron record"),
    (("model", "name"), False, *_OPT_TEXT), (("model", "method"), False, *_OPT_TEXT),
    (("meta", "eps"), False, _opt(_is_number), "a number"),
)


def record_problem(rec: Any) -> str | None:
    """What makes ``rec`` unusable for report, gate and resume (a missing or mistyped field), else None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    for path, required, ok, what in _FIELDS:
        parent = rec if len(path) == 1 else rec.get(path[0]) or {}
        name = ".".join(path)
        if path[-1] not in parent:
            if required:
                return f"no {name!r}"
        elif not ok(parent[path[-1]]):
            return f"{name!r} is not {what}"
    return None


def load_latest(path: str | Path) -> dict[str, CampaignRecord]:
    """The last record of every job key (file order is completion order)."""
    latest: dict[str, CampaignRecord] = {}
    for rec in iter_records(path):
        latest.pop(rec.key, None)
        latest[rec.key] = rec
    return latest


def load_records(paths: list[str | Path] | str | Path) -> list[CampaignRecord]:
    """The latest record per key over one or several results files."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    merged: dict[str, CampaignRecord] = {}
    for p in paths:
        merged.update(load_latest(p))
    return list(merged.values())


class ResultStore:
    """The single writer of one ``results.jsonl``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f: IO[bytes] | None = None
        self._lock: IO[bytes] | None = None

    def open_for_append(self) -> dict[str, CampaignRecord]:
        """Lock the file, cut a torn tail, and return the records already there (latest per key)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_name(self.path.name + ".lock"), "wb")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise VfnnError(f"{self.path}: another vfnn bench is writing to this file") from None
        self._f = open(self.path, "ab+")
        self._truncate_torn_tail()
        return load_latest(self.path)

    def _truncate_torn_tail(self) -> None:
        assert self._f is not None
        f = self._f
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Walk back to the last newline and cut everything after it.
        pos, chunk = size, 1 << 16
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            block = f.read(pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                f.truncate(start + nl + 1)
                break
            pos = start
        else:
            f.truncate(0)
        f.flush()
        os.fsync(f.fileno())
        f.seek(0, os.SEEK_END)

    def append(self, record: CampaignRecord) -> None:
        """Write one record as one line and make it durable before returning."""
        if self._f is None:
            raise RuntimeError("ResultStore.append before open_for_append")
        line = json.dumps(_finite(_to_dict(record)), separators=(",", ":"), allow_nan=False, default=_jsonable) + "\n"
        self._f.write(line.encode())
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finite(o: Any) -> Any:
    """Standard JSON has no NaN/Infinity (jq and most parsers reject them): store them as null."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if hasattr(o, "tolist"):
        return _finite(o.tolist())
    return o


def _jsonable(o: Any) -> Any:
    """numpy scalars/arrays and paths inside a result dict."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
