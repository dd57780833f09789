"""Per-epoch evaluation: clean, PGD and bound-verified accuracy, unstable neurons, NBC metric.

Verified accuracy is reported for IBP, CROWN-LBP (Lyu et al.'s method: the one their tables report)
and CROWN (with the same bounding lines CROWN >= CROWN-LBP >= IBP per image, Theorem 2 of that paper;
CROWN-LBP uses the tight lines, CROWN the adaptive ones).

Everything is measured on a fixed subset of the test split at the *target* training radius (not
the ramped one), so epochs and runs compare.  Randomness (PGD start, NBC neighbours) comes from
a generator seeded by the run seed and the epoch, so evaluation never moves the training stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vfnn.layers import activation_modules, kind_of_module
from vfnn.train.attacks import pgd
from vfnn.train.models import forward_with_preacts, relu_layer_sizes
from vfnn.train.objectives import input_box, margin_matrix
from vfnn.train.regularisers import nbc_agreement, nbc_neighbours

UNSTABLE_METHOD = "crown"
BOUND_FLOAT_BUDGET = 5e7  # floats per CROWN chunk (B * neurons^2), about 200 MB


def _verified(lb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A sample is verified when every margin f_y - f_j (j != y) has a positive lower bound."""
    lb = lb.clone()
    lb[torch.arange(len(y)), y] = float("inf")
    return (lb > 0).all(dim=1)


def evaluate(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float, n_classes: int, *,
             pgd_steps: int, nbc_samples: int, nbc: Mapping[str, Any], seed: int, chunk: int = 256) -> dict:
    """All metrics of one epoch on ``(x, y)`` (already on the model's device); ``nbc``: the run's NBC settings,
    whose ``c`` and ``layer_weights`` the adversarial neighbour search climbs."""
    from vfnn.bounds import compute_bounds

    model.eval()
    device = x.device
    gen = torch.Generator(device=device).manual_seed(seed)
    sizes = relu_layer_sizes(model, tuple(x.shape[1:]))
    bound_chunk = max(1, min(chunk, int(BOUND_FLOAT_BUDGET // max(max(sizes, default=1) ** 2, 1))))
    lbp_chunk = max(1, min(chunk, int(BOUND_FLOAT_BUDGET // max(x[0].numel() * max(sizes, default=1), 1))))
    n = len(y)
    clean = pgd_ok = ibp_ok = lbp_ok = crown_ok = 0
    unstable = [0.0] * len(sizes)
    activations = [m for m in model if isinstance(m, activation_modules())]
    agree_u = [0.0] * len(sizes)
    agree_a = [0.0] * len(sizes)
    overall_u = overall_a = 0.0
    for s in range(0, n, chunk):
        xb, yb = x[s:s + chunk], y[s:s + chunk]
        with torch.no_grad():
            logits, z_x = forward_with_preacts(model, xb)
        ok = logits.argmax(1) == yb
        clean += int(ok.sum())
        with torch.enable_grad():
            x_adv = pgd(model, xb, yb, eps, pgd_steps, generator=gen)
            x_nbc = nbc_neighbours(model, xb, z_x, eps, "adversarial", steps=pgd_steps, c=nbc["c"],
                                   layer_weights=nbc["layer_weights"], generator=gen)
        with torch.no_grad():
            pgd_ok += int((ok & (model(x_adv).argmax(1) == yb)).sum())
            lower, upper = input_box(xb, eps)
            ibp = compute_bounds(model, lower, upper, margin_matrix(yb, n_classes), method="ibp")
            ibp_ok += int((_verified(ibp.lower, yb) & ok).sum())
            for t in range(0, len(yb), lbp_chunk):  # LBP carries input x neuron matrices per sample
                sl = slice(t, t + lbp_chunk)
                lbp = compute_bounds(model, lower[sl], upper[sl], margin_matrix(yb[sl], n_classes), method="crown-lbp")
                lbp_ok += int((_verified(lbp.lower, yb[sl]) & ok[sl]).sum())
            for t in range(0, len(yb), bound_chunk):
                sl = slice(t, t + bound_chunk)
                res = compute_bounds(model, lower[sl], upper[sl], margin_matrix(yb[sl], n_classes),
                                     method=UNSTABLE_METHOD)
                crown_ok += int((_verified(res.lower, yb[sl]) & ok[sl]).sum())
                for i, ((lo, up), act) in enumerate(zip(res.pre_activation, activations, strict=True)):
                    unstable[i] += float(kind_of_module(act).unstable(act, lo, up).flatten(1).sum())
            x_uni = nbc_neighbours(model, xb, z_x, eps, "uniform", samples=nbc_samples, generator=gen)
        for acc, overall_name, xn in ((agree_u, "u", x_uni), (agree_a, "a", x_nbc)):
            per_layer, overall = nbc_agreement(model, xb, xn)
            for i, v in enumerate(per_layer):
                acc[i] += v * len(yb)
            if overall_name == "u":
                overall_u += overall * len(yb)
            else:
                overall_a += overall * len(yb)
    return {
        "eval_size": n,
        "clean_acc": clean / n,
        "pgd_acc": pgd_ok / n,
        "pgd_steps": pgd_steps,
        "verified_acc": {"ibp": ibp_ok / n, "crown-lbp": lbp_ok / n, UNSTABLE_METHOD: crown_ok / n},
        "unstable": {"method": UNSTABLE_METHOD, "eps": eps, "per_layer": [u / n for u in unstable],
                     "total": sum(unstable) / n, "neurons": sizes},
        "nbc": {"uniform": {"samples": nbc_samples, "per_layer": [a / n for a in agree_u], "overall": overall_u / n},
                "adversarial": {"steps": pgd_steps, "per_layer": [a / n for a in agree_a], "overall": overall_a / n}},
    }
