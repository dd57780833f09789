"""Local-robustness specs from a dataset: the protocol of the NBC paper's experiments.

For each class, K test images are chosen deterministically: the first K images of that class in
the dataset's own order, or, with a seed, in the order of a seeded permutation of the split.  With
``correct_only`` an image is taken only if every given model classifies it correctly; the
misclassified ones met on the way are counted and reported.  Each (image, eps) pair becomes one
VNN-LIB file (L-infinity box clipped to [0, 1], unsafe when another class scores at least as high
as the true one) and one ``instances.csv`` row per model.  Models are referenced, not copied: the
onnx column holds the model's path relative to the output folder, so the training run directory
(with its ``config.json``) stays next to the model and the report can group by training method.

``specs.json`` (next to ``instances.csv``) records, for every spec file, the image index, label
and eps: the report takes eps from there (and falls back to the ``eps<value>`` in the file name).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vfnn import __version__
from vfnn.campaign.instances import write_instances
from vfnn.errors import ModelError, VfnnError
from vfnn.spec import robustness_spec

SIDECAR = "specs.json"


@dataclass(frozen=True)
class SpecsSummary:
    """What :func:`generate_specs` wrote."""

    out: Path
    instances: Path | None  # None without models: an instances.csv needs an onnx column
    n_images: int
    n_specs: int
    n_rows: int
    skipped_misclassified: int
    short_classes: dict[int, int]  # class -> how many images it got, when fewer than K were available


def spec_filename(dataset: str, split: str, index: int, label: int, eps: float) -> str:
    """``vnnlib/<dataset>_<split>_<index>_label<label>_eps<eps>.vnnlib`` (eps in ``%g`` format)."""
    return f"vnnlib/{dataset}_{split}_{index}_label{label}_eps{eps:g}.vnnlib"


def select_images(
    labels: np.ndarray,
    per_class: int,
    n_classes: int,
    seed: int | None = None,
    correct: np.ndarray | None = None,
) -> tuple[list[int], int]:
    """Indices of up to ``per_class`` images per class and the number of misclassified ones skipped.

    ``correct`` (bool per image) excludes misclassified images; ``seed`` replaces dataset order by
    a seeded permutation.  The result is sorted by class, then by selection order.
    """
    order = np.arange(len(labels)) if seed is None else np.random.default_rng(seed).permutation(len(labels))
    chosen: dict[int, list[int]] = {c: [] for c in range(n_classes)}
    skipped = 0
    for i in order:
        c = int(labels[i])
        if c not in chosen or len(chosen[c]) >= per_class:
            continue
        if correct is not None and not correct[i]:
            skipped += 1
            continue
        chosen[c].append(int(i))
        if all(len(v) >= per_class for v in chosen.values()):
            break
    return [i for c in range(n_classes) for i in chosen[c]], skipped


def _predictions(model: Path, x: np.ndarray, n_classes: int) -> np.ndarray:
    from vfnn.onnx_io import load_onnx

    net = load_onnx(model)
    per_image = int(np.prod(x.shape[1:]))
    if net.input_size != per_image or net.output_size != n_classes:
        raise ModelError(
            f"{model}: has {net.input_size} inputs and {net.output_size} outputs, "
            f"the dataset has {per_image} pixels per image and {n_classes} classes"
        )
    out = []
    for start in range(0, len(x), 2048):
        out.append(net.forward(x[start:start + 2048].reshape(-1, *net.input_shape)).argmax(axis=1))
    return np.concatenate(out)


def generate_specs(
    dataset: str,
    per_class: int,
    eps: list[float],
    out: str | Path,
    models: list[str | Path] = (),
    correct_only: bool = False,
    timeout: float = 60.0,
    split: str = "test",
    seed: int | None = None,
    data_dir: str | Path | None = None,
) -> SpecsSummary:
    """Write ``vnnlib/*.vnnlib``, ``instances.csv`` and ``specs.json`` into ``out``."""
    from vfnn.train.data import dataset_info, load_dataset
    from vfnn.vnnlib import write_vnnlib

    if per_class < 1:
        raise VfnnError(f"--per-class must be at least 1, got {per_class}")
    if not eps or any(not (e > 0) for e in eps):
        raise VfnnError(f"every eps must be positive, got {eps}")
    if correct_only and not models:
        raise VfnnError("--correct-only needs at least one --model to classify the images")
    if timeout <= 0:
        raise VfnnError(f"--timeout must be positive, got {timeout}")
    n_classes = dataset_info(dataset).n_classes
    x, y = load_dataset(dataset, split, data_dir)
    model_paths = [Path(m) for m in models]
    for m in model_paths:
        if not m.is_file():
            raise ModelError(f"{m}: no such file")
    correct = None
    if correct_only:
        correct = np.ones(len(y), bool)
        for m in model_paths:
            correct &= _predictions(m, x, n_classes) == y
    elif model_paths:
        for m in model_paths:  # check the shapes now rather than in every verification job
            _predictions(m, x[:1], n_classes)
    chosen, skipped = select_images(y, per_class, n_classes, seed, correct)
    counts = np.bincount(y[chosen], minlength=n_classes) if chosen else np.zeros(n_classes, int)
    short = {c: int(counts[c]) for c in range(n_classes) if counts[c] < per_class}

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, dict] = {}
    files: list[str] = []
    for i in chosen:
        label = int(y[i])
        for e in eps:
            rel = spec_filename(dataset, split, i, label, e)
            spec = robustness_spec(x[i].reshape(-1), label, e, n_classes, clip=(0.0, 1.0), name=Path(rel).stem)
            write_vnnlib(spec, out / rel)
            files.append(rel)
            meta[rel] = {"dataset": dataset, "split": split, "index": i, "label": label, "eps": e}
    rows = [(os.path.relpath(m.resolve(), out.resolve()), f, timeout) for m in model_paths for f in files]
    instances = write_instances(out / "instances.csv", rows) if rows else None
    sidecar = {
        "schema": 1,
        "vfnn_version": __version__,
        "dataset": dataset,
        "split": split,
        "per_class": per_class,
        "eps": list(eps),
        "seed": seed,
        "selection": "seeded permutation" if seed is not None else "dataset order",
        "correct_only": correct_only,
        "models": [str(m) for m in model_paths],
        "skipped_misclassified": skipped,
        "specs": meta,
    }
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=1) + "\n")
    return SpecsSummary(out, instances, len(chosen), len(files), len(rows), skipped, short)


def load_sidecar(csv_dir: Path) -> dict[str, dict]:
    """``specs.json``'s per-file metadata keyed by absolute spec path (empty when absent)."""
    path = csv_dir / SIDECAR
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    specs = data.get("specs", {}) if isinstance(data, dict) else {}
    return {str((csv_dir / k).resolve()): v for k, v in specs.items() if isinstance(v, dict)}
