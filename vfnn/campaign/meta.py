"""What a result is *about*: the property's eps/image and the model's name and training method.

Recorded in each ``results.jsonl`` line when the job finishes, so the report and the gate need
nothing but the results file.

* Property: ``specs.json`` written by ``vfnn specs`` next to ``instances.csv`` (image index, label,
  eps); otherwise the ``eps<value>`` and ``label<k>`` parts of the spec's file name, if any.
* Model: ``config.json`` next to the ONNX file (written by ``vfnn train``), read by
  :meth:`vfnn.train.config.TrainConfig.from_dict` like ``vfnn train --resume`` reads it.  Its
  training label is the phase list in ``--schedule`` syntax (``ce+nbc``, or ``ce:5,ce+nbc:5`` for
  several phases).  The model's name is its run folder's name when the file is called
  ``model.onnx``, else the file's stem.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vfnn.campaign.store import ModelInfo, PropertyMeta
from vfnn.errors import VfnnError

_EPS = re.compile(r"eps[_=-]?([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")
_LABEL = re.compile(r"label[_=-]?([0-9]+)")
_TRAIN_KEYS = ("eps", "arch", "dataset", "seed")  # recorded as train_<key> when config.json has them


def spec_meta(spec_path: Path, sidecar: dict[str, dict]) -> PropertyMeta:
    """eps / label / image index of a spec: from the ``specs.json`` sidecar, else its file name."""
    try:
        meta = sidecar.get(str(spec_path.resolve()))
    except (OSError, ValueError):  # a path no file system takes (e.g. a NUL byte): its row is an error record
        return PropertyMeta()
    if meta is not None:
        return PropertyMeta(**{k: meta[k] for k in ("eps", "label", "index", "dataset", "split") if k in meta})
    name = spec_path.name
    eps, label = _EPS.search(name), _LABEL.search(name)
    return PropertyMeta(eps=float(eps.group(1).rstrip(".")) if eps else None,
                        label=int(label.group(1)) if label else None)


def model_name(onnx_path: Path) -> str:
    """Run folder name for ``<run>/model.onnx``, else the file's stem."""
    return onnx_path.parent.name if onnx_path.stem == "model" and onnx_path.parent.name else onnx_path.stem


def training_label(cfg: dict[str, Any]) -> str | None:
    """``ce+nbc`` style label of a ``config.json``, None when it is not a training config that
    :meth:`TrainConfig.from_dict` reads (which takes the older shapes too: ``method`` + ``regs``, or
    everything under ``config``)."""
    from vfnn.train.config import TrainConfig

    try:
        phases = TrainConfig.from_dict(cfg).phases
    except (VfnnError, KeyError, TypeError, ValueError, AttributeError):
        return None
    if len(phases) == 1:
        return phases[0].label
    return ",".join(f"{p.label}:{p.epochs}" for p in phases)


def model_meta(onnx_path: Path) -> ModelInfo:
    """Name, training label and training options of a model (from its ``config.json`` when present).

    The ``train_*`` fields are only those the file states, never a default it did not write."""
    name = model_name(onnx_path)
    try:
        cfg = json.loads((onnx_path.parent / "config.json").read_text())
    except (OSError, ValueError):
        return ModelInfo(name)
    label = training_label(cfg) if isinstance(cfg, dict) else None
    if label is None:
        return ModelInfo(name)
    stated = cfg["config"] if isinstance(cfg.get("config"), dict) else cfg  # early runs nested the options
    return ModelInfo(name, label, **{f"train_{k}": stated[k] for k in _TRAIN_KEYS if k in stated})
