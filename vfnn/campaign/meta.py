"""What a result is *about*: the property's eps/image and the model's name and training method.

Recorded in each ``results.jsonl`` line when the job finishes, so the report and the gate need
nothing but the results file.

* Property: ``specs.json`` written by ``vfnn specs`` next to ``instances.csv`` (image index, label,
  eps); otherwise the ``eps<value>`` and ``label<k>`` parts of the spec's file name, if any.
* Model: ``config.json`` next to the ONNX file (written by ``vfnn train``).  Its training label is
  the phase list in ``--schedule`` syntax (``ce+nbc``, or ``ce:5,ce+nbc:5`` for several phases);
  a config with plain ``method``/``regs`` keys works too.  The model's name is its run folder's
  name when the file is called ``model.onnx``, else the file's stem.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_EPS = re.compile(r"eps[_=-]?([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")
_LABEL = re.compile(r"label[_=-]?([0-9]+)")


def spec_meta(spec_path: Path, sidecar: dict[str, dict]) -> dict[str, Any]:
    """eps / label / image index of a spec: from the ``specs.json`` sidecar, else its file name."""
    try:
        meta = sidecar.get(str(spec_path.resolve()))
    except (OSError, ValueError):  # a path no file system takes (e.g. a NUL byte): its row is an error record
        return {}
    if meta is not None:
        return dict(meta)
    out: dict[str, Any] = {}
    name = spec_path.name
    if m := _EPS.search(name):
        out["eps"] = float(m.group(1).rstrip("."))
    if m := _LABEL.search(name):
        out["label"] = int(m.group(1))
    return out


def model_name(onnx_path: Path) -> str:
    """Run folder name for ``<run>/model.onnx``, else the file's stem."""
    return onnx_path.parent.name if onnx_path.stem == "model" and onnx_path.parent.name else onnx_path.stem


def training_label(cfg: dict[str, Any]) -> str | None:
    """``ce+nbc`` style label of a training config, None when it says nothing about the method."""
    if isinstance(cfg.get("config"), dict) and "phases" not in cfg and "method" not in cfg:
        cfg = cfg["config"]
    phases = cfg.get("phases")
    if isinstance(phases, list) and phases and all(isinstance(p, dict) and "method" in p for p in phases):
        labels = ["+".join([str(p["method"]), *map(str, p.get("regs") or [])]) for p in phases]
        if len(labels) == 1:
            return labels[0]
        return ",".join(f"{lab}:{p.get('epochs', '?')}" for lab, p in zip(labels, phases, strict=True))
    if isinstance(cfg.get("method"), str):
        regs = cfg.get("regs") or cfg.get("reg") or []
        if isinstance(regs, str):
            regs = [regs]
        names = [r.get("name", "?") if isinstance(r, dict) else str(r).split(":")[0] for r in regs]
        return "+".join([cfg["method"], *names])
    return None


def model_meta(onnx_path: Path) -> dict[str, Any]:
    """Name, training label and training eps of a model (from its ``config.json`` when present)."""
    out: dict[str, Any] = {"name": model_name(onnx_path)}
    cfg_path = onnx_path.parent / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return out
    if not isinstance(cfg, dict):
        return out
    label = training_label(cfg)
    if label is not None:
        out["method"] = label
        inner = cfg.get("config") if isinstance(cfg.get("config"), dict) else cfg
        for k in ("eps", "arch", "dataset", "seed"):
            if k in inner:
                out[f"train_{k}"] = inner[k]
    return out
