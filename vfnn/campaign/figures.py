"""Report figures (matplotlib, Agg backend, PNG): cactus plot, verified % vs eps, unstable per layer.

Each is registered by name in :mod:`vfnn.campaign.reports` and written as ``figures/<name>.png``."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from vfnn.campaign.analysis import Records, group_by
from vfnn.campaign.reports import figure


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out, write as PNG and close the figure (pyplot keeps every open figure alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@figure("cactus")
def cactus(records: Records, path: Path) -> Path:
    """Number of properties decided (sat or unsat) within t seconds, one step line per verifier."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (verifier,), recs in group_by(records, "verifier").items():
        times = sorted(r.wall_time for r in recs if r.decided)
        if times:
            ax.step([0.0, *times], list(range(len(times) + 1)), where="post", label=f"{verifier} ({len(times)})")
    ax.set_xlabel("time per property (s)")
    ax.set_ylabel("properties decided")
    ax.set_title("Cactus plot")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return save(plt, fig, path)


@figure("verified_vs_eps")
def verified_vs_eps(records: Records, path: Path) -> Path | None:
    """Verified % against eps, one line per training method (per model when no method is known)
    and verifier."""
    recs = [r for r in records if r.eps is not None]
    if not recs:
        return None
    key = "method" if all(r.method for r in recs) else "model"
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (who, verifier), group in group_by(recs, key, "verifier").items():
        by_eps: dict[float | None, list[str]] = defaultdict(list)
        for r in group:
            by_eps[r.eps].append(r.status)
        xs = sorted(by_eps)
        ys = [100.0 * by_eps[e].count("unsat") / len(by_eps[e]) for e in xs]
        ax.plot(xs, ys, marker="o", label=f"{who} / {verifier}")
    ax.set_xlabel("eps (L-infinity radius)")
    ax.set_ylabel("verified %")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Verified properties per {key}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save(plt, fig, path)


@figure("unstable_per_layer")
def unstable_per_layer(records: Records, path: Path) -> Path | None:
    """Mean unstable neurons per ReLU layer, one line per model, one panel per eps.

    Each property counts once (the record is the same for every verifier)."""
    seen = {}
    for r in records:
        if r.unstable_layers is not None:
            seen.setdefault(r.instance, r)
    recs = list(seen.values())
    if not recs:
        return None
    eps_values = sorted({r.eps for r in recs}, key=lambda e: (e is None, e or 0.0))[:6]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(eps_values), figsize=(4 * len(eps_values), 3.5), squeeze=False)
    for ax, e in zip(axes[0], eps_values, strict=True):
        groups: dict[str, list[list[int]]] = defaultdict(list)
        for r in recs:
            if r.eps == e:
                label = r.model_name + (f" ({r.method})" if r.method else "")
                groups[label].append(r.unstable_layers or [])
        for label, rows in sorted(groups.items()):
            depth = max(len(x) for x in rows)
            means = [sum(x[i] for x in rows if i < len(x)) / len(rows) for i in range(depth)]
            ax.plot(range(depth), means, marker="o", label=label)
            ax.set_xticks(range(depth))  # layers are whole numbers
        ax.set_title("eps " + ("?" if e is None else f"{e:g}"))
        ax.set_xlabel("ReLU layer")
        ax.set_ylabel("mean unstable neurons")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return save(plt, fig, path)

