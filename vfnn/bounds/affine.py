"""The affine pieces of a network, seen from bound propagation.

Between two ReLU layers a network is an affine map made of a few torch modules.  Bound
propagation needs three things from each of them: the forward map (the centre of an interval),
the forward map of ``|W|`` (the radius of an interval) and the transposed map applied to a batch
of linear coefficients (the backward step of CROWN).  This module provides those three for every
module of :data:`vfnn.network.TORCH_MODULES` except ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vfnn.errors import ModelError
from vfnn.network import ElementwiseAffineModule

AFFINE_MODULES = (nn.Linear, nn.Conv2d, ElementwiseAffineModule, nn.Flatten, nn.AvgPool2d)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def check_module(m: nn.Module, index: int) -> None:
    """Raise a one-line ModelError for a module (or module setting) bounds cannot handle."""
    where = f"module {index} ({type(m).__name__})"
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or _pair(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise ModelError(f"{where}: groups, dilation, string padding or a non-zero padding mode is not supported")
    elif isinstance(m, nn.AvgPool2d):
        if _pair(m.padding) != (0, 0) or m.ceil_mode or m.divisor_override is not None:
            raise ModelError(f"{where}: padding, ceil_mode and divisor_override are not supported")
    elif isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise ModelError(f"{where}: only Flatten(start_dim=1, end_dim=-1) is supported")
    elif not isinstance(m, (nn.Linear, ElementwiseAffineModule, nn.ReLU)):
        supported = "Linear, Conv2d, ElementwiseAffineModule, ReLU, Flatten, AvgPool2d, Identity, Dropout"
        raise ModelError(f"{where}: not supported by bound propagation (supported: {supported})")


@dataclass
class Affine:
    """One affine module with the shapes (no batch dimension) of its input and output."""

    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    # -- forward maps ------------------------------------------------------------------------
    def center(self, x: torch.Tensor) -> torch.Tensor:
        """The module itself, in the dtype of ``x``."""
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(x, m.weight.to(x.dtype), None if m.bias is None else m.bias.to(x.dtype))
        if isinstance(m, nn.Conv2d):
            b = None if m.bias is None else m.bias.to(x.dtype)
            return F.conv2d(x, m.weight.to(x.dtype), b, m.stride, m.padding)
        if isinstance(m, ElementwiseAffineModule):
            return x * m.scale.to(x.dtype) + m.shift.to(x.dtype)
        if isinstance(m, nn.Flatten):
            return x.flatten(1)
        return F.avg_pool2d(x, m.kernel_size, m.stride)

    def radius(self, d: torch.Tensor) -> torch.Tensor:
        """The linear part with ``|W|``: maps an interval radius to the output radius."""
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(d, m.weight.to(d.dtype).abs())
        if isinstance(m, nn.Conv2d):
            return F.conv2d(d, m.weight.to(d.dtype).abs(), None, m.stride, m.padding)
        if isinstance(m, ElementwiseAffineModule):
            return d * m.scale.to(d.dtype).abs()
        if isinstance(m, nn.Flatten):
            return d.flatten(1)
        return F.avg_pool2d(d, m.kernel_size, m.stride)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval arithmetic in centre/radius form (as auto_LiRPA's IBP)."""
        if isinstance(self.module, nn.Flatten):
            return lo.flatten(1), hi.flatten(1)
        mid, diff = (hi + lo) / 2.0, (hi - lo) / 2.0
        c, r = self.center(mid), self.radius(diff)
        return c - r, c + r

    # -- backward map --------------------------------------------------------------------------
    def backward(self, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``A`` (..., *out_shape) holds linear functions of the output; return the same functions
        of the input, ``A @ L`` with shape (..., *in_shape), and the constant term ``A @ c`` (...)
        (None when the module has no constant term)."""
        m = self.module
        lead = A.shape[: A.dim() - len(self.out_shape)]
        if isinstance(m, nn.Linear):
            W = m.weight.to(A.dtype)
            bias = None if m.bias is None else A @ m.bias.to(A.dtype)
            return A @ W, bias
        if isinstance(m, nn.Conv2d):
            W = m.weight.to(A.dtype)
            flat = A.reshape(-1, *self.out_shape)
            new = F.conv_transpose2d(flat, W, None, m.stride, m.padding, self._output_padding(m.kernel_size))
            bias = None if m.bias is None else A.sum((-2, -1)) @ m.bias.to(A.dtype)
            return new.reshape(*lead, *self.in_shape), bias
        if isinstance(m, ElementwiseAffineModule):
            n = len(self.in_shape)
            bias = (A * m.shift.to(A.dtype)).flatten(-n).sum(-1)
            return A * m.scale.to(A.dtype), bias
        if isinstance(m, nn.Flatten):
            return A.reshape(*lead, *self.in_shape), None
        # AvgPool2d: the transpose of a per-channel uniform convolution.
        kh, kw = _pair(m.kernel_size)
        c = self.in_shape[0]
        w = torch.full((c, 1, kh, kw), 1.0 / (kh * kw), dtype=A.dtype, device=A.device)
        flat = A.reshape(-1, *self.out_shape)
        new = F.conv_transpose2d(flat, w, None, _pair(m.stride), 0, self._output_padding((kh, kw)), groups=c)
        return new.reshape(*lead, *self.in_shape), None

    def _output_padding(self, kernel: int | tuple[int, int]) -> tuple[int, int]:
        """Rows/columns the strided convolution dropped, which its transpose must restore."""
        m = self.module
        kh, kw = _pair(kernel)
        sh, sw = _pair(m.stride)
        ph, pw = _pair(getattr(m, "padding", 0))
        h, w = self.out_shape[-2:]
        return (self.in_shape[-2] - ((h - 1) * sh - 2 * ph + kh), self.in_shape[-1] - ((w - 1) * sw - 2 * pw + kw))
