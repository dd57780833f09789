"""AvgPool2d: average pooling without padding (ONNX AveragePool; torch AvgPool2d)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from onnx import helper
from torch import nn

from vfnn.errors import ModelError
from vfnn.layers.base import AffineLayer, Layer, OnnxPart, Shape, pair
from vfnn.layers.conv import Conv2d, transposed_conv

if TYPE_CHECKING:
    import onnx

    from vfnn.bounds.patches import Patches
    from vfnn.onnx_io import Importer


@dataclass(frozen=True)
class AvgPool2d(AffineLayer):
    """Average pooling without padding, floor mode."""

    kernel: tuple[int, int]
    stride: tuple[int, int]

    kind: ClassVar[str] = "avgpool2d"
    module_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.AvgPool2d,)
    onnx_ops: ClassVar[tuple[str, ...]] = ("AveragePool",)

    def problem(self) -> str | None:
        if len(self.kernel) != 2 or len(self.stride) != 2 or min(*self.kernel, *self.stride) < 1:
            return f"kernel {self.kernel} and stride {self.stride} must be 2 positive integers each"
        return None

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 3:
            raise ModelError(f"expects a (C, H, W) input, gets {shape}")
        h = (shape[1] - self.kernel[0]) // self.stride[0] + 1
        w = (shape[2] - self.kernel[1]) // self.stride[1] + 1
        if h < 1 or w < 1:
            raise ModelError(f"kernel {self.kernel} does not fit the input {shape}")
        return (shape[0], h, w)

    # -- torch
    def to_module(self) -> nn.Module:
        return nn.AvgPool2d(self.kernel, self.stride)

    @classmethod
    def module_problem(cls, m: nn.Module) -> str | None:
        if pair(m.padding) != (0, 0) or m.ceil_mode or m.divisor_override is not None:
            return "padding, ceil_mode and divisor_override are not supported"
        return None

    @classmethod
    def from_module(cls, m: nn.Module) -> AvgPool2d:
        return cls(pair(m.kernel_size), pair(m.stride if m.stride is not None else m.kernel_size))

    # -- bounds
    @classmethod
    def center(cls, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, m.kernel_size, m.stride)

    @classmethod
    def radius(cls, m: nn.Module, d: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(d, m.kernel_size, m.stride)

    @classmethod
    def backward(cls, m: nn.Module, A: torch.Tensor, in_shape: Shape, out_shape: Shape
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # The transpose of a per-channel uniform convolution.
        lead = A.shape[: A.dim() - len(out_shape)]
        kh, kw = pair(m.kernel_size)
        c = in_shape[0]
        w = torch.full((c, 1, kh, kw), 1.0 / (kh * kw), dtype=A.dtype, device=A.device)
        new = transposed_conv(A.reshape(-1, *out_shape), w, pair(m.stride), (0, 0), in_shape[1:], groups=c)
        return new.reshape(*lead, *in_shape), None

    @classmethod
    def backward_patches(cls, m: nn.Module, p: Patches, in_shape: Shape) -> Patches:
        kh, kw = pair(m.kernel_size)
        c = in_shape[0]
        w = torch.full((c, 1, kh, kw), 1.0 / (kh * kw), dtype=p.A.dtype, device=p.A.device)
        return p.through_conv(w, None, pair(m.stride), (0, 0), in_shape, groups=c)

    # -- MILP
    def linear_map(self, shape: Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        C, H, W = shape
        (kh, kw), (sh, sw) = self.kernel, self.stride
        _, oh, ow = self.output_shape(shape)
        o, i, j, di, dj = np.meshgrid(np.arange(C), np.arange(oh), np.arange(ow), np.arange(kh), np.arange(kw),
                                      indexing="ij")
        rows = ((o * oh + i) * ow + j).reshape(-1)
        cols = ((o * H + i * sh + di) * W + j * sw + dj).reshape(-1)
        return rows, cols, np.full(rows.size, 1.0 / (kh * kw)), np.zeros(C * oh * ow)

    def for_marabou(self, shape: Shape) -> Layer:
        """A convolution with a diagonal kernel (Marabou's parser has no AveragePool)."""
        c = shape[0]
        w = np.zeros((c, c, *self.kernel), np.float32)
        w[np.arange(c), np.arange(c)] = 1.0 / (self.kernel[0] * self.kernel[1])
        return Conv2d(w, np.zeros(c, np.float32), self.stride)

    # -- ONNX
    def to_onnx(self, index: int, x: str, y: str) -> OnnxPart:
        return [helper.make_node("AveragePool", [x], [y], kernel_shape=list(self.kernel),
                                 strides=list(self.stride))], []

    @classmethod
    def from_onnx(cls, imp: Importer, node: onnx.NodeProto) -> None:
        imp.check_pad_mode(node)
        k = imp.ints(node, "kernel_shape", 2, None, 1)
        s = imp.ints(node, "strides", 2, list(k), 1)
        if any(imp.ints(node, "pads", 4, [0, 0, 0, 0], 0)):
            raise imp.fail(node, "padded average pooling is not supported")
        if any(d != 1 for d in imp.ints(node, "dilations", 2, [1, 1], 1)):
            raise imp.fail(node, "dilated average pooling is not supported")
        if len(imp.shape) != 3:
            raise imp.fail(node, f"expects a (C, H, W) input, gets {imp.shape}")
        partial = any((n - kk) % ss for n, kk, ss in zip(imp.shape[1:], k, s, strict=True))
        if imp.attr(node, "ceil_mode", "int", 0) and partial:
            # ceil mode adds partial windows at the border (averaged over fewer pixels): not an AvgPool2d.
            raise imp.fail(node, f"ceil_mode=1 adds partial windows on input {imp.shape} (kernel {list(k)}, "
                                 f"strides {list(s)}); vfnn supports floor mode only")
        imp.push(cls(k, s), node)
