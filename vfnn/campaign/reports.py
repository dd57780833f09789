"""The tables and figures of ``vfnn report``, each one function found by name.

A table is ``@table("name")`` on a function ``records -> Table | None``; a figure is
``@figure("name")`` on a function ``(records, path) -> path | None`` (None: nothing to show for
these records).  ``vfnn report`` prints every table, and with ``--out`` writes every figure as
``figures/<name>.png``, in registration order; ``--only NAME`` picks some, ``--list`` names them.
The built-in ones live in :mod:`vfnn.campaign.report` (tables) and :mod:`vfnn.campaign.figures`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.table import Table as RichTable

from vfnn.errors import VfnnError

if TYPE_CHECKING:
    from vfnn.campaign.store import CampaignRecord

BUILTIN_MODULES = ("vfnn.campaign.report", "vfnn.campaign.figures")


@dataclass(frozen=True)
class Table:
    """A table as rows of strings, for the terminal and for Markdown alike."""

    title: str
    columns: tuple[str, ...]
    rows: list[list[str]]
    left: int = 2  # the first ``left`` columns are names (left-aligned), the others numbers

    def rich(self) -> RichTable:
        t = RichTable(title=self.title, title_justify="left")
        for i, name in enumerate(self.columns):
            t.add_column(name, justify="left" if i < self.left else "right")
        for row in self.rows:
            t.add_row(*row)
        return t

    def markdown(self) -> str:
        head = "|" + "|".join("---" if i < self.left else "---:" for i in range(len(self.columns))) + "|"
        return "\n".join(["| " + " | ".join(self.columns) + " |", head,
                          *("| " + " | ".join(row) + " |" for row in self.rows)])


@dataclass(frozen=True)
class Entry:
    """One registered table or figure."""

    name: str
    kind: Literal["table", "figure"]
    make: Callable[..., Any]

    @property
    def summary(self) -> str:
        return " ".join((self.make.__doc__ or "").strip().split("\n\n")[0].split())


_REGISTRY: dict[str, Entry] = {}


def _register(name: str, kind: Literal["table", "figure"]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name].make is not fn:
            raise ValueError(f"report {name!r} is registered twice")
        _REGISTRY[name] = Entry(name, kind, fn)
        return fn

    return add


def table(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(records) -> Table | None`` as the table ``name``."""
    return _register(name, "table")


def figure(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(records, path) -> Path | None`` as the figure ``name`` (written to ``<name>.png``)."""
    return _register(name, "figure")


def entries() -> list[Entry]:
    """Every table and figure, in registration order (the built-in ones first)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return list(_REGISTRY.values())


def select(names: Sequence[str] = ()) -> list[Entry]:
    """The entries called ``names`` (all when empty); an unknown name is a one-line error."""
    known = {e.name: e for e in entries()}
    for name in names:
        if name not in known:
            raise VfnnError(f"unknown report {name!r}: expected one of {', '.join(known)} (vfnn report --list)")
    return list(known.values()) if not names else [e for e in known.values() if e.name in names]


def make_tables(chosen: Sequence[Entry], records: Sequence[CampaignRecord]) -> list[Table]:
    return [t for e in chosen if e.kind == "table" and (t := e.make(list(records))) is not None]


def make_figures(chosen: Sequence[Entry], records: Sequence[CampaignRecord], folder: Path) -> list[Path]:
    """Write the chosen figures into ``folder`` (created when there is one to write)."""
    figures = [e for e in chosen if e.kind == "figure"]
    if figures:
        folder.mkdir(parents=True, exist_ok=True)
    return [p for e in figures if (p := e.make(list(records), folder / f"{e.name}.png")) is not None]
