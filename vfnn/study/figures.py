"""Study figures (PNG): UNSAT % vs eps per recipe, a cactus plot per recipe, unstable neurons per layer."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from vfnn.campaign.figures import pyplot, save
from vfnn.campaign.store import CampaignRecord
from vfnn.study.config import Study

MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")
DASHES = ("-", "--", "-.", ":")


def _name(*parts: Any) -> str:
    return "_".join(str(p).replace(":", "-").replace("/", "-").replace(" ", "") for p in parts)


def write_study_figures(study: Study, rows: list[dict[str, Any]], groups: dict[tuple, list[CampaignRecord]],
                        folder: Path) -> list[Path]:
    """One set of figures per dataset x arch (x verifier for the verification ones)."""
    if not rows:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    out = []
    panels: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        panels[(r["dataset"], r["arch"], r["verifier"])].append(r)
    for (dataset, arch, verifier), panel in panels.items():
        out.append(_unsat_vs_eps(plt, panel, f"{dataset} {arch}, {verifier}",
                                 folder / f"{_name('unsat_vs_eps', dataset, arch, verifier)}.png"))
        recs = {k: v for k, v in groups.items() if k[0] == dataset and k[1] == arch and k[4] == verifier}
        out.append(_cactus(plt, recs, f"{dataset} {arch}, {verifier}, {study.timeout:g} s per property",
                           folder / f"{_name('cactus', dataset, arch, verifier)}.png"))
    first = {}
    for r in rows:  # the unstable record is the same for every verifier: plot the first one's
        first.setdefault((r["dataset"], r["arch"]), r["verifier"])
    for (dataset, arch), verifier in first.items():
        panel = [r for r in rows if (r["dataset"], r["arch"], r["verifier"]) == (dataset, arch, verifier)]
        if any(r["unstable_per_layer"] for r in panel):
            out.append(_unstable_layers(plt, panel, f"{dataset} {arch}",
                                        folder / f"{_name('unstable_per_layer', dataset, arch)}.png"))
    return out


def _unsat_vs_eps(plt: Any, rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    by_recipe: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if r["eps"] is not None:
            by_recipe[r["recipe"]].append((r["eps"], 100 * r["unsat"]))
    for i, (recipe, points) in enumerate(by_recipe.items()):  # marker and dash vary: equal lines stay visible
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=MARKERS[i % len(MARKERS)],
                linestyle=DASHES[i % len(DASHES)], alpha=0.85, label=recipe)
    ax.set_ylim(-2, 102)
    return _save(plt, fig, ax, "radius eps (L-inf, pixel space)", "UNSAT (verified) %",
                 f"Verified properties vs radius: {title}", path)


def _save(plt: Any, fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Labels, grid and legend of a one-panel figure, written as PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(plt, fig, path)


def _cactus(plt: Any, groups: dict[tuple, list[CampaignRecord]], title: str, path: Path) -> Path:
    """Properties decided within t seconds, one line per recipe (all radii pooled)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    by_recipe: dict[str, list[float]] = defaultdict(list)
    for key, recs in groups.items():
        by_recipe[key[2]] += [r.wall_time for r in recs if r.decided]
    for recipe, times in by_recipe.items():
        times.sort()
        ax.step([0.0, *times], list(range(len(times) + 1)), where="post", label=f"{recipe} ({len(times)})")
    return _save(plt, fig, ax, "time per property (s)", "properties decided", f"Cactus plot: {title}", path)


def _unstable_layers(plt: Any, rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Mean CROWN-unstable neurons per ReLU layer, one panel per radius, one line per recipe."""
    radii = sorted({r["eps"] for r in rows if r["eps"] is not None})
    fig, axes = plt.subplots(1, len(radii), figsize=(3.2 * len(radii), 3.4), squeeze=False, sharey=True)
    for ax, eps in zip(axes[0], radii, strict=True):
        for r in rows:
            if r["eps"] == eps and r["unstable_per_layer"]:
                layers = list(range(1, len(r["unstable_per_layer"]) + 1))
                ax.plot(layers, r["unstable_per_layer"], marker="o", label=r["recipe"])
                ax.set_xticks(layers)
        ax.set_title(f"eps {eps:g}", fontsize=9)
        ax.set_xlabel("ReLU layer")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("unstable neurons (CROWN)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"Unstable neurons per layer: {title}", fontsize=10)
    return save(plt, fig, path)
