"""The export form of a network: every layer as plain ONNX-able layers, with the linear maps an
activation's export adds merged into the Dense/Conv2d layers next to them.

An activation that ONNX has no operator for (ParamRamp) exports as a linear *expansion*, a ReLU
and a linear *combination* (:meth:`~vfnn.layers.base.Layer.export_form`).  Left as layers of their
own, these are extra Gemm/1x1 Conv nodes (and, for IBP-style verifiers, extra looseness); here
the expansion is multiplied into the Dense/Conv2d before it and the combination into the
Dense/Conv2d after it (through a Flatten), wherever that is exact.  Only the added layers merge:
the user's own layers keep their structure.
"""

from __future__ import annotations

import numpy as np

from vfnn.layers.affine import ElementwiseAffine
from vfnn.layers.base import Layer, Shape
from vfnn.layers.conv import Conv2d
from vfnn.layers.dense import Dense
from vfnn.layers.flatten import Flatten


def export_layers(layers: tuple[Layer, ...], shapes: list[Shape]) -> tuple[Layer, ...]:
    """``layers`` (with input ``shapes``) in export form, added linear maps merged where exact."""
    expanded: list[tuple[Layer, bool]] = []  # (layer, added by an export form)
    for layer, shape in zip(layers, shapes, strict=True):
        form = layer.export_form(shape)
        expanded += [(part, part is not layer) for part in form]
    out: list[tuple[Layer, bool]] = []
    i = 0
    while i < len(expanded):
        layer, added = expanded[i]
        if out and (added or out[-1][1]):
            merged = _merge(out[-1][0], layer)
            if merged is not None:
                out[-1] = (merged, added and out[-1][1])
                i += 1
                continue
        # a 1x1 combination, then a Flatten and the user's Dense: the Dense absorbs the combination
        if (added and i + 2 < len(expanded) and isinstance(expanded[i + 1][0], Flatten)
                and isinstance(expanded[i + 2][0], Dense)):
            merged = _combine_into_flat_dense(layer, expanded[i + 2][0])  # type: ignore[arg-type]
            if merged is not None:
                out += [expanded[i + 1], (merged, False)]
                i += 3
                continue
        out.append((layer, added))
        i += 1
    return tuple(layer for layer, _ in out)


def _is_pointwise(c: Conv2d) -> bool:
    return c.weight.shape[2:] == (1, 1) and c.stride == (1, 1) and c.padding == (0, 0, 0, 0)


def _merge(a: Layer, b: Layer) -> Layer | None:
    """``b`` after ``a`` as one layer, or None where that is not exact (or not a Dense/Conv2d pair,
    or a layer and a shift it folds)."""
    if isinstance(b, ElementwiseAffine):
        return a.fold_after(b)
    if isinstance(a, Dense) and isinstance(b, Dense):
        return Dense((b.weight.astype(np.float64) @ a.weight).astype(np.float32),
                     (b.weight.astype(np.float64) @ a.bias + b.bias).astype(np.float32))
    if isinstance(a, Conv2d) and isinstance(b, Conv2d):
        if _is_pointwise(b):  # channel mixing after a convolution
            m = b.weight[:, :, 0, 0].astype(np.float64)
            return Conv2d(np.einsum("oc,cikl->oikl", m, a.weight).astype(np.float32),
                          (m @ a.bias + b.bias).astype(np.float32), a.stride, a.padding)
        if _is_pointwise(a) and (not np.any(a.bias) or b.padding == (0, 0, 0, 0)):
            # channel mixing before a convolution (a bias would be wrong on a zero-padded border)
            m = a.weight[:, :, 0, 0].astype(np.float64)
            return Conv2d(np.einsum("ocxy,ci->oixy", b.weight, m).astype(np.float32),
                          (b.bias + np.einsum("ocxy,c->o", b.weight, a.bias)).astype(np.float32), b.stride, b.padding)
    return None


def _combine_into_flat_dense(a: Layer, dense: Dense) -> Dense | None:
    """``dense`` after a Flatten after the 1x1 Conv ``a`` (channel-major flattening)."""
    if not isinstance(a, Conv2d) or not _is_pointwise(a):
        return None
    m = a.weight[:, :, 0, 0].astype(np.float64)  # (C, C_in)
    c = m.shape[0]
    if dense.weight.shape[1] % c:
        return None
    w = dense.weight.astype(np.float64).reshape(dense.weight.shape[0], c, -1)  # (out, C, H*W)
    bias = dense.bias + w.sum(axis=2) @ a.bias
    return Dense(np.einsum("ocp,ci->oip", w, m).reshape(dense.weight.shape[0], -1).astype(np.float32),
                 bias.astype(np.float32))
