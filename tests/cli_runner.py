"""Test helpers: `vfnn ARGS` run in-process through the real entry point; whether a process still runs; a
results file written by the campaign store."""

from __future__ import annotations

from pathlib import Path

import pytest

from vfnn.campaign.store import CampaignRecord, ResultStore
from vfnn.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``vfnn ARGS``; a command that returns normally exits 0."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def alive(pid: int) -> bool:
    """Running, not a zombie (a killed process whose new parent has not reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def write_records(path: Path, records: list[CampaignRecord]) -> Path:
    """A results file holding exactly these records, written by the store (the only writer)."""
    path.unlink(missing_ok=True)
    with ResultStore(path) as store:
        store.open_for_append()
        for r in records:
            store.append(r)
    return path
