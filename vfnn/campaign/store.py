"""``results.jsonl``: the append-only record of a campaign, one JSON object per finished job.

Why a log and not a database: a line is appended (write + flush + fsync) the moment a job
finishes, so killing the campaign (even with SIGKILL) loses only jobs that were still running.
A crash in the middle of a write can leave a torn last line; :meth:`ResultStore.open_for_append`
cuts it off (that job simply runs again) and readers skip it.  When a key appears more than
once (``vfnn bench --rerun``), the last line wins.  One writer at a time is enforced with an
advisory lock on ``results.jsonl.lock``.

Reading is strict: a line that is not JSON, or a record without the fields ``vfnn gate`` and
``vfnn report`` rely on (``key``, ``onnx``, ``vnnlib``, ``verifier``, ``result.status``, ...), is an
error naming the file and line (exit code 2), never skipped.  A CI gate must not pass on a file
that was edited or produced by something else; skipping would let it judge fewer properties than
the campaign ran, silently.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from vfnn.campaign.analysis import STATUSES
from vfnn.errors import VfnnError

SCHEMA = 1


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
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
            try:
                rec = json.loads(raw)
            except ValueError:  # includes bytes that are not UTF-8
                rec = None
            problem = "not JSON" if rec is None else record_problem(rec)
            if problem is not None:
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


def load_latest(path: str | Path) -> dict[str, dict[str, Any]]:
    """The last record of every job key (file order is completion order)."""
    latest: dict[str, dict[str, Any]] = {}
    for rec in iter_records(path):
        latest.pop(rec["key"], None)
        latest[rec["key"]] = rec
    return latest


def load_records(paths: list[str | Path] | str | Path) -> list[dict[str, Any]]:
    """The latest record per key over one or several results files."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    merged: dict[str, dict[str, Any]] = {}
    for p in paths:
        merged.update(load_latest(p))
    return list(merged.values())


class ResultStore:
    """The single writer of one ``results.jsonl``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f: IO[bytes] | None = None
        self._lock: IO[bytes] | None = None

    def open_for_append(self) -> dict[str, dict[str, Any]]:
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

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line and make it durable before returning."""
        if self._f is None:
            raise RuntimeError("ResultStore.append before open_for_append")
        line = json.dumps(_finite(record), separators=(",", ":"), allow_nan=False, default=_jsonable) + "\n"
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
