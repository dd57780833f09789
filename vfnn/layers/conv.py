"""Conv2d: 2-D convolution on (C, H, W) inputs (ONNX Conv; torch Conv2d)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from vfnn.errors import ModelError
from vfnn.layers.base import AffineLayer, Layer, OnnxPart, Shape, numpy_of, pair, tensor_of

if TYPE_CHECKING:
    import onnx

    from vfnn.bounds.patches import Patches
    from vfnn.onnx_io import Importer


def output_padding(in_shape: Shape, out_shape: Shape, kernel: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int]) -> tuple[int, int]:
    """Rows/columns a strided convolution dropped, which its transpose must restore."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    h, w = out_shape[-2:]
    return (in_shape[-2] - ((h - 1) * sh - 2 * ph + kh), in_shape[-1] - ((w - 1) * sw - 2 * pw + kw))


# Below this many input channels (or from a 1x1 map) a transposed convolution runs as one GEMM and
# a col2im (F.fold): measured 2-3x faster than torch's CPU conv_transpose2d for 1-3 channels (40x
# from a 1x1 map), slower from 8 channels on.
FOLD_MAX_CHANNELS = 4


def transposed_conv(A: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                    out_hw: tuple[int, int], groups: int = 1) -> torch.Tensor:
    """The transpose of ``conv2d(., weight, stride, padding)`` applied to ``A`` (N, C_out, h, w),
    giving (N, C_in, *out_hw): how back-substitution passes a convolution."""
    N, co, h, w = A.shape
    kernel = (weight.shape[2], weight.shape[3])
    if groups == 1 and (weight.shape[1] < FOLD_MAX_CHANNELS or h * w == 1):
        cols = A.reshape(N, co, h * w).transpose(1, 2) @ weight.reshape(co, -1)
        return F.fold(cols.transpose(1, 2), out_hw, kernel, padding=padding, stride=stride)
    pad = output_padding((0, *out_hw), (0, h, w), kernel, stride, padding)
    return F.conv_transpose2d(A, weight, None, stride, padding, pad, groups)


@dataclass(frozen=True, eq=False)
class Conv2d(AffineLayer):
    """2-D convolution on (C, H, W) inputs; ``padding`` is (top, left, bottom, right)."""

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)

    kind: ClassVar[str] = "conv2d"
    module_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Conv2d,)
    onnx_ops: ClassVar[tuple[str, ...]] = ("Conv",)
    exact_under_ibp: ClassVar[bool] = True

    def __repr__(self) -> str:
        o, c, kh, kw = self.weight.shape
        return f"Conv2d({c}->{o}, kernel={kh}x{kw}, stride={self.stride}, padding={self.padding})"

    def problem(self) -> str | None:
        if self.weight.ndim != 4:
            return f"weight of shape {self.weight.shape} is not rank 4"
        if self.bias.shape != (self.weight.shape[0],):
            return f"bias of shape {self.bias.shape} does not fit {self.weight.shape[0]} outputs"
        if len(self.stride) != 2 or min(self.stride) < 1 or len(self.padding) != 4 or min(self.padding) < 0:
            return f"stride {self.stride} must be 2 positive and padding {self.padding} 4 non-negative integers"
        return None

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 3 or shape[0] != self.weight.shape[1]:
            raise ModelError(f"expects ({self.weight.shape[1]}, H, W) input, gets {shape}")
        kh, kw = self.weight.shape[2:]
        t, left, b, r = self.padding
        h = (shape[1] + t + b - kh) // self.stride[0] + 1
        w = (shape[2] + left + r - kw) // self.stride[1] + 1
        if h < 1 or w < 1:
            raise ModelError(f"kernel {kh}x{kw} does not fit the padded input {shape}")
        return (self.weight.shape[0], h, w)

    def fold_after(self, aff: Any) -> Layer | None:
        if (pc := aff.per_channel()) is None:
            return None
        s, t = pc
        return Conv2d(self.weight * s[:, None, None, None], self.bias * s + t, self.stride, self.padding)

    def fold_before(self, aff: Any) -> Layer | None:
        # With padding, the border would see the shifted zero: not exact.
        if self.padding != (0, 0, 0, 0) or (pc := aff.per_channel()) is None:
            return None
        s, t = pc
        w = self.weight
        return Conv2d(w * s[None, :, None, None], self.bias + np.einsum("ocij,c->o", w, t), self.stride, self.padding)

    # -- torch
    def to_module(self) -> nn.Module:
        t, left, b, r = self.padding
        if t != b or left != r:
            raise ModelError(f"asymmetric convolution padding {self.padding} has no torch.nn.Conv2d form")
        o, c, kh, kw = self.weight.shape
        m = nn.Conv2d(c, o, (kh, kw), stride=self.stride, padding=(t, left))
        m.weight.data, m.bias.data = tensor_of(self.weight), tensor_of(self.bias)
        return m

    @classmethod
    def module_problem(cls, m: nn.Module) -> str | None:
        if m.groups != 1 or pair(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
            return "groups, dilation, string padding or a non-zero padding mode is not supported"
        return None

    @classmethod
    def from_module(cls, m: nn.Module) -> Conv2d:
        ph, pw = pair(m.padding)
        return cls(numpy_of(m.weight), numpy_of(m.bias, m.out_channels), pair(m.stride), (ph, pw, ph, pw))

    # -- bounds
    @classmethod
    def center(cls, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        b = None if m.bias is None else m.bias.to(x.dtype)
        return F.conv2d(x, m.weight.to(x.dtype), b, m.stride, m.padding)

    @classmethod
    def radius(cls, m: nn.Module, d: torch.Tensor) -> torch.Tensor:
        return F.conv2d(d, m.weight.to(d.dtype).abs(), None, m.stride, m.padding)

    @classmethod
    def backward(cls, m: nn.Module, A: torch.Tensor, in_shape: Shape, out_shape: Shape
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        lead = A.shape[: A.dim() - len(out_shape)]
        new = transposed_conv(A.reshape(-1, *out_shape), m.weight.to(A.dtype), pair(m.stride), pair(m.padding),
                              in_shape[1:])
        bias = None if m.bias is None else A.sum((-2, -1)) @ m.bias.to(A.dtype)
        return new.reshape(*lead, *in_shape), bias

    @classmethod
    def backward_patches(cls, m: nn.Module, p: Patches, in_shape: Shape) -> Patches:
        return p.through_conv(m.weight, m.bias, pair(m.stride), pair(m.padding), in_shape)

    # -- MILP
    def linear_map(self, shape: Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        C, H, W = shape
        n_out, _, kh, kw = self.weight.shape
        _, oh, ow = self.output_shape(shape)
        (sh, sw), (pt, pl, _, _) = self.stride, self.padding
        o, i, j, c, di, dj = np.meshgrid(np.arange(n_out), np.arange(oh), np.arange(ow), np.arange(C), np.arange(kh),
                                         np.arange(kw), indexing="ij")
        y, x = i * sh + di - pt, j * sw + dj - pl
        ok = (y >= 0) & (y < H) & (x >= 0) & (x < W)
        w = self.weight.astype(np.float64)[o, c, di, dj]
        ok &= w != 0
        rows = ((o * oh + i) * ow + j)[ok]
        cols = ((c * H + y) * W + x)[ok]
        return rows, cols, w[ok], np.repeat(self.bias.astype(np.float64), oh * ow)

    # -- ONNX
    def to_onnx(self, index: int, x: str, y: str) -> OnnxPart:
        inits = [numpy_helper.from_array(self.weight, f"W{index}"), numpy_helper.from_array(self.bias, f"B{index}")]
        kh, kw = self.weight.shape[2:]
        node = helper.make_node("Conv", [x, f"W{index}", f"B{index}"], [y], kernel_shape=[kh, kw],
                                strides=list(self.stride), pads=list(self.padding))
        return [node], inits

    @classmethod
    def from_onnx(cls, imp: Importer, node: onnx.NodeProto) -> None:
        w = imp.operand(node, 1, "weight")
        if w.ndim != 4:
            raise imp.fail(node, f"only 2-D convolutions are supported (weight of shape {w.shape})")
        if imp.attr(node, "group", "int", 1) != 1 or any(d != 1 for d in imp.ints(node, "dilations", 2, [1, 1], 1)):
            raise imp.fail(node, "grouped or dilated convolutions are not supported")
        imp.check_pad_mode(node)
        kernel = imp.ints(node, "kernel_shape", 2, list(w.shape[2:]), 1)
        if kernel != w.shape[2:]:
            raise imp.fail(node, f"kernel_shape {list(kernel)} does not match the weight's {list(w.shape[2:])}")
        bias = imp.operand(node, 2, "bias", optional=True)
        bias = np.zeros(w.shape[0]) if bias is None else bias
        if bias.shape != (w.shape[0],):
            raise imp.fail(node, f"bias of shape {bias.shape} does not fit {w.shape[0]} output channels")
        pads = imp.ints(node, "pads", 4, [0, 0, 0, 0], 0)
        imp.push(cls(w, bias, imp.ints(node, "strides", 2, [1, 1], 1), pads), node)
