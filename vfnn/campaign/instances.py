"""VNN-COMP ``instances.csv`` files: one ``onnx,vnnlib,timeout`` row per property.

VNN-COMP writes no header and gives both paths relative to the directory that holds the csv
(the benchmark folder).  vfnn reads the same files, tolerates a header row, a byte-order mark,
blank lines and ``#`` comments, and never fails on a bad row: the row becomes an :class:`Instance`
with a ``problem`` that the campaign records as an ``error`` result, so the rest of the campaign
runs.  A file that is not UTF-8 text, or has no usable row at all, is an error up front.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from vfnn.errors import SpecError


@dataclass(frozen=True)
class Instance:
    """One row: a model and a property, with paths as written in the csv (relative to ``root``)."""

    onnx: str
    vnnlib: str
    timeout: float | None
    root: Path
    category: str
    row: int  # 1-based line number in the csv, for messages
    problem: str | None = None  # why this row cannot run (it becomes an ``error`` result)

    @property
    def model_path(self) -> Path:
        return _resolve(self.root, self.onnx)

    @property
    def spec_path(self) -> Path:
        return _resolve(self.root, self.vnnlib)

    @property
    def ident(self) -> str:
        """``onnx::vnnlib`` as written in the csv: the property's identity across verifiers."""
        return f"{self.onnx}::{self.vnnlib}"


def _resolve(root: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else root / path))


def read_instances(path: str | Path, category: str | None = None) -> list[Instance]:
    """Every row of a VNN-COMP ``instances.csv``; ``category`` defaults to the csv's folder name."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # -sig: spreadsheets write a byte-order mark
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the instances file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"{path}:{line}: not a text (UTF-8) instances file: byte {exc.object[exc.start]:#04x} "
                        f"at offset {exc.start}") from None
    root = path.resolve().parent
    cat = category or root.name
    out: list[Instance] = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if lineno == 1 and [c.lower() for c in cells[:3]] == ["onnx", "vnnlib", "timeout"]:
            continue  # a header written by hand or by a spreadsheet
        out.append(_parse_row(cells, root, cat, lineno, path))
    if not out:
        raise SpecError(f"{path}: no instances (expected rows 'onnx,vnnlib,timeout')")
    if all(i.problem for i in out):  # not one usable row: the wrong file, not a few bad rows
        raise SpecError(f"{path}: none of its {len(out)} rows is usable; the first: {out[0].problem}")
    return out


def _parse_row(cells: list[str], root: Path, cat: str, lineno: int, path: Path) -> Instance:
    where = f"{path.name} line {lineno}"
    onnx = cells[0] if cells else ""
    vnnlib = cells[1] if len(cells) > 1 else ""
    if len(cells) < 3 or not onnx or not vnnlib:
        return Instance(onnx, vnnlib, None, root, cat, lineno,
                        f"{where}: expected 'onnx,vnnlib,timeout', got {','.join(cells)!r}")
    if "\0" in onnx or "\0" in vnnlib:  # no file system takes it; Path.resolve() would raise
        return Instance(onnx, vnnlib, None, root, cat, lineno, f"{where}: a path holds a NUL byte")
    try:
        timeout = float(cells[2])
    except ValueError:
        timeout = math.nan
    if not math.isfinite(timeout) or timeout <= 0:
        return Instance(onnx, vnnlib, None, root, cat, lineno,
                        f"{where}: timeout {cells[2]!r} is not a positive number of seconds")
    return Instance(onnx, vnnlib, timeout, root, cat, lineno)


def write_instances(path: str | Path, rows: list[tuple[str, str, float]]) -> Path:
    """Write ``onnx,vnnlib,timeout`` rows (no header, as VNN-COMP does)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        for onnx, vnnlib, timeout in rows:
            w.writerow([onnx, vnnlib, f"{timeout:g}"])
    return path
