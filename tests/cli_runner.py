"""`vfnn ARGS` run in-process through the real entry point, for tests that check exit codes and output."""

from __future__ import annotations

import pytest

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
