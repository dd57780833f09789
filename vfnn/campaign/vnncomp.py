"""VNN-COMP result files, so the competition's scoring and plotting scripts read a vfnn campaign.

The scorer (``process_results.py`` of the vnncomp20xx_results repositories) globs
``<tool>/results.csv``; each row is ``category,onnx,vnnlib,prepare_time,result,run_time`` with no
header, in the same instance order for every tool.  ``result`` is the word ``run_instance.sh``
writes: ``sat``/``unsat``/``timeout``/``error``/``unknown`` -- the scorer's ``CSV_SUBSTITUTIONS``
turn ``unsat`` into ``holds`` and ``sat`` into ``violated``.  A counterexample goes to
``<tool>/<category>/<onnx stem>_<vnnlib stem>.counterexample.gz`` as ``((X_0 v) ... (Y_0 v))``,
where the scorer looks for it.

vfnn writes one such folder per verifier (``<out>/<verifier>/``; ``<out>/portfolio/`` for a
portfolio) and, when the campaign has a single verifier or a single portfolio, the same rows as
``<out>/results.csv``.
"""

from __future__ import annotations

import csv
import gzip
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from vfnn.campaign.jobs import Job

if TYPE_CHECKING:  # this module is also imported by `vfnn verify`, which must start fast
    from vfnn.campaign.store import CampaignRecord


def tool_folder(label: str) -> str:
    """A folder name for a verifier label (``portfolio(a,b)`` -> ``portfolio``)."""
    return "portfolio" if label.startswith("portfolio(") else re.sub(r"[^A-Za-z0-9_.-]", "_", label)


def counterexample_text(x: list[float], y: list[float] | None) -> str:
    """A counterexample in the VNN-COMP format, ``((X_0 v) ... (Y_0 v))`` with one pair per line and
    ``repr`` floats (an exact round trip): ``vfnn verify --save-counterexample`` and the campaign's
    ``*.counterexample.gz`` files are the same text."""
    items = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x)]
    items += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y or [])]
    return "(" + "\n".join(items) + ")\n"


def write_vnncomp(out: Path, jobs: list[Job], records: dict[str, CampaignRecord]) -> list[Path]:
    """Write ``<out>/<tool>/results.csv`` (and counterexamples) for every finished job of ``jobs``."""
    by_label: dict[str, list[CampaignRecord]] = {}
    for job in jobs:
        rec = records.get(job.key)
        by_label.setdefault(job.label, [])
        if rec is not None:
            by_label[job.label].append(rec)
    written: list[Path] = []
    for label, recs in by_label.items():
        folder = out / tool_folder(label)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "results.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            for rec in recs:
                res = rec.result
                w.writerow([rec.category, rec.onnx, rec.vnnlib, f"{rec.prepare_time:.6f}", rec.status,
                            f"{rec.wall_time:.6f}"])
                if rec.status == "sat" and res.counterexample_input is not None:
                    ce_dir = folder / rec.category
                    ce_dir.mkdir(parents=True, exist_ok=True)
                    name = f"{Path(rec.onnx).stem}_{Path(rec.vnnlib).stem}.counterexample.gz"
                    with gzip.open(ce_dir / name, "wt") as g:
                        g.write(counterexample_text(res.counterexample_input, res.counterexample_output))
        written.append(path)
    if len(by_label) == 1:
        shutil.copyfile(written[0], out / "results.csv")
        written.append(out / "results.csv")
    return written
