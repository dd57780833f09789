"""CROWN rows of an image layer's neurons as patches: each row's coefficients kept only over its
receptive field (auto_LiRPA's "patches" mode).

The CROWN bound of one neuron of a convolutional layer is a linear function of every earlier map,
but it depends only on a window of each: the neuron's receptive field.  Dense rows hold the whole
map for every row, most of it zeros, and transposed convolutions of those zeros were most of
CROWN's time on CNNs.  A :class:`Patches` holds, for each row, its window of the current map and
the window's top-left corner; the layer kinds move it backwards (``AffineLayer.backward_patches``:
convolutions grow the window, elementwise maps cut the matching window of their scale), and
activations replace their outputs by their linear bounds cut to each window.  Where a kind has no
patches form, or a window has grown as large as its map, the rows turn dense and the usual
back-substitution finishes them, so the result is the dense one up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vfnn.layers import Shape
from vfnn.layers.conv import transposed_conv


@dataclass
class Patches:
    """``A`` (Bb, P, r, C, kh, kw): row k's coefficients over the window of the current map
    (``shape`` = (C, H, W)) whose top-left corner is (``top[k]``, ``left[k]``), possibly outside
    the map; coefficients outside the map are zero.  ``bias`` (Bb, P, r) is the constant term."""

    A: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    shape: Shape
    bias: torch.Tensor

    @classmethod
    def unit_rows(cls, rows: torch.Tensor, shape: Shape, dtype: torch.dtype) -> Patches:
        """The neurons ``rows`` (flat indices into ``shape`` = (C, H, W)) as 1x1 windows."""
        C, H, W = shape
        r = rows.numel()
        A = torch.zeros(1, 1, r, C, 1, 1, dtype=dtype, device=rows.device)
        A[0, 0, torch.arange(r, device=rows.device), rows // (H * W), 0, 0] = 1.0
        return cls(A, (rows // W) % H, rows % W, shape, torch.zeros(1, 1, r, dtype=dtype, device=rows.device))

    @property
    def window(self) -> tuple[int, int]:
        return self.A.shape[-2], self.A.shape[-1]

    def covers_map(self) -> bool:
        """Whether a window is as large as its map (dense rows are then no dearer)."""
        kh, kw = self.window
        return kh * kw >= self.shape[1] * self.shape[2]

    def cut(self, t: torch.Tensor) -> torch.Tensor:
        """Each row's window of ``t`` (Bt, C, H, W): (Bt, r, C, kh, kw), zero outside the map."""
        (kh, kw), (H, W) = self.window, self.shape[1:]
        pt, pl = max(0, -int(self.top.min())), max(0, -int(self.left.min()))
        pb, pr = max(0, int(self.top.max()) + kh - H), max(0, int(self.left.max()) + kw - W)
        padded = F.pad(t, (pl, pr, pt, pb))
        ih = (self.top + pt).unsqueeze(1) + torch.arange(kh, device=t.device)
        iw = (self.left + pl).unsqueeze(1) + torch.arange(kw, device=t.device)
        return padded[:, :, ih.unsqueeze(2), iw.unsqueeze(1)].transpose(1, 2)

    def _inside(self, top: torch.Tensor, left: torch.Tensor, kh: int, kw: int, H: int, W: int) -> torch.Tensor:
        ih = top.unsqueeze(1) + torch.arange(kh, device=top.device)
        iw = left.unsqueeze(1) + torch.arange(kw, device=top.device)
        ok = ((ih >= 0) & (ih < H)).unsqueeze(2) & ((iw >= 0) & (iw < W)).unsqueeze(1)
        return ok.unsqueeze(1).to(self.A.dtype)  # (r, 1, kh, kw)

    # -- moving backwards ---------------------------------------------------------------------------
    def through_conv(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                     padding: tuple[int, int], in_shape: Shape, groups: int = 1) -> Patches:
        """The rows as functions of the input of a convolution (torch's ``weight``, symmetric
        ``padding`` (rows, columns)) whose output is the current map."""
        Bb, P, r, Co, kh, kw = self.A.shape
        b = self.bias if bias is None else self.bias + self.A.sum((-2, -1)) @ bias.to(self.A.dtype)
        kh2, kw2 = (kh - 1) * stride[0] + weight.shape[2], (kw - 1) * stride[1] + weight.shape[3]
        new = transposed_conv(self.A.reshape(-1, Co, kh, kw), weight.to(self.A.dtype), stride, (0, 0), (kh2, kw2),
                              groups)
        top, left = self.top * stride[0] - padding[0], self.left * stride[1] - padding[1]
        new = new.reshape(Bb, P, r, in_shape[0], kh2, kw2) * self._inside(top, left, kh2, kw2, *in_shape[1:])
        return Patches(new, top, left, in_shape, b)

    def through_elementwise(self, scale: torch.Tensor, shift: torch.Tensor) -> Patches:
        """The rows as functions of the input of ``x * scale + shift`` (each broadcast to the map)."""
        dtype = self.A.dtype
        s = self.cut(torch.broadcast_to(scale.to(dtype), self.shape).unsqueeze(0))
        t = self.cut(torch.broadcast_to(shift.to(dtype), self.shape).unsqueeze(0))
        return Patches(self.A * s.unsqueeze(1), self.top, self.left, self.shape,
                       self.bias + (self.A * t.unsqueeze(1)).flatten(-3).sum(-1))

    # -- leaving patches ----------------------------------------------------------------------------
    def dense(self) -> torch.Tensor:
        """The rows over the whole map: (Bb, P, r, C, H, W)."""
        Bb, P, r, C, kh, kw = self.A.shape
        H, W = self.shape[1:]
        pt, pl = max(0, -int(self.top.min())), max(0, -int(self.left.min()))
        pb, pr = max(0, int(self.top.max()) + kh - H), max(0, int(self.left.max()) + kw - W)
        out = torch.zeros(r, H + pt + pb, W + pl + pr, Bb, P, C, dtype=self.A.dtype, device=self.A.device)
        k = torch.arange(r, device=out.device).reshape(r, 1, 1)
        ih = (self.top + pt).reshape(r, 1, 1) + torch.arange(kh, device=out.device).reshape(1, kh, 1)
        iw = (self.left + pl).reshape(r, 1, 1) + torch.arange(kw, device=out.device).reshape(1, 1, kw)
        out[k, ih, iw] = self.A.permute(2, 4, 5, 0, 1, 3)
        return out[:, pt: pt + H, pl: pl + W].permute(3, 4, 0, 5, 1, 2)

    def concretize(self, center: torch.Tensor, diff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds of the rows over the input box ``center +- diff`` (B, n), the current map being the input."""
        B = center.shape[0]
        c, d = self.cut(center.reshape(B, *self.shape)), self.cut(diff.reshape(B, *self.shape))
        lo_A, up_A = self.A[:, 0], self.A[:, -1]
        lower = (lo_A * c).flatten(-3).sum(-1) - (lo_A.abs() * d).flatten(-3).sum(-1) + self.bias[:, 0]
        upper = (up_A * c).flatten(-3).sum(-1) + (up_A.abs() * d).flatten(-3).sum(-1) + self.bias[:, -1]
        return lower, upper
