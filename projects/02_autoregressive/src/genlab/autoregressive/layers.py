"""Building blocks shared by the convolutional and recurrent pixel models: masked convolutions, the cache the
fast sampler keeps for each of them, and the output head.

Ordering (PixelRNN paper, Sec. 2.1): pixels in raster order, row by row and left to right; inside a pixel the
colour channels R -> G -> B. A feature map with n channels is split into ``colors`` interleaved groups,
channel i belonging to colour group i % colors, so that group g only ever sees the colours it may condition on.

Tensor conventions: binary data has ``levels = 2`` and one logit per value (a sigmoid, as in the paper for
MNIST); 8-bit data has ``levels = 256`` and a softmax. Logits come out as (B, C, H, W) for binary data and as
(B, L, C, H, W) for L-way data, the layout ``F.cross_entropy`` expects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def scale_input(x: torch.Tensor, levels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer levels {0, ..., L-1} -> floats in [-1, 1], the range the networks see."""
    return x.to(dtype) * (2.0 / (levels - 1)) - 1.0


def check_sizes(colors: int, kernel_size: int, *channel_counts: int) -> None:
    """Every colour group of a masked layer needs equal width, and a masked kernel needs a centre tap."""
    if any(count % colors for count in channel_counts):
        raise ValueError(f"channel counts must be multiples of the {colors} colours, got {channel_counts}")
    if kernel_size % 2 == 0:
        raise ValueError(f"the kernel size must be odd (a centre tap), got {kernel_size}")


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """Move a (B, C, H, W) map one row down (zeros in row 0): row r then only holds what row r-1 saw."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


class MaskedConv2d(nn.Conv2d):
    """A convolution whose output at a pixel sees only the inputs before it in the generation order.

    Kernel taps before the centre tap in raster order are kept, those after it are zeroed. At the centre tap
    the colour groups decide (PixelRNN paper, Sec. 3.4 and Fig. 4): mask "A" lets output group g see input
    groups < g (the first layer: a pixel's own value is never an input to its prediction), mask "B" lets it
    see groups <= g (every later layer: group g's features already exclude colour g itself).

    ``centre`` places the tap that is aligned with the output pixel; the padding is chosen so the output has
    the input's size. With centre = the last tap of a row kernel it is the horizontal stack's 1 x (k//2 + 1)
    convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        mask_type: str,
        colors: int = 1,
        centre: tuple[int, int] | None = None,
        bias: bool = True,
    ) -> None:
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        super().__init__(in_channels, out_channels, (kh, kw), bias=bias)
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        cy, cx = centre if centre is not None else (kh // 2, kw // 2)
        self.pad = (cx, kw - 1 - cx, cy, kh - 1 - cy)  # (left, right, top, bottom), as F.pad wants
        mask = torch.zeros(out_channels, in_channels, kh, kw)
        mask[:, :, :cy, :] = 1  # rows above the centre
        mask[:, :, cy, :cx] = 1  # left of the centre in its row
        out_group = torch.arange(out_channels)[:, None] % colors
        in_group = torch.arange(in_channels)[None, :] % colors
        mask[:, :, cy, cx] = (in_group < out_group if mask_type == "A" else in_group <= out_group).float()
        self.register_buffer("mask", mask, persistent=False)

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pad), self.masked_weight(), self.bias)

    def window_forward(self, window: torch.Tensor) -> torch.Tensor:
        """The convolution on an already padded window (B, C_in, kh, W + kw - 1) -> (B, C_out, 1, W)."""
        return F.conv2d(window, self.masked_weight(), self.bias)


class StepCache:
    """The zero-padded input of one convolution, filled in pixel by pixel (or row by row) while sampling.

    This is the cache of Ramachandran et al. (2017): a layer's output at a pixel is computed once, when the
    pixel is generated, and later pixels read it from here instead of recomputing the whole map.
    """

    def __init__(self, channels: int, height: int, width: int, pad: tuple[int, int, int, int], like: torch.Tensor):
        left, right, top, bottom = pad
        self.left, self.top = left, top
        self.kh, self.kw = top + bottom + 1, left + right + 1
        self.buffer = like.new_zeros(like.shape[0], channels, height + top + bottom, width + left + right)

    def write(self, value: torch.Tensor, row: int, col: int | None = None) -> None:
        """Store a (B, C, 1, 1) value at (row, col), or a (B, C, 1, W) row when ``col`` is None."""
        r = row + self.top
        if col is None:
            self.buffer[:, :, r : r + 1, self.left : self.left + value.shape[-1]] = value
        else:
            self.buffer[:, :, r : r + 1, col + self.left : col + self.left + 1] = value

    def window(self, row: int, col: int | None = None) -> torch.Tensor:
        """The padded neighbourhood a kernel needs for output (row, col), or for the whole output row."""
        rows = self.buffer[:, :, row : row + self.kh]
        return rows if col is None else rows[:, :, :, col : col + self.kw]


def image_window(x: torch.Tensor, pad: tuple[int, int, int, int], row: int, col: int | None = None) -> torch.Tensor:
    """The same window read straight from the (partly generated) image, for the first layer."""
    kh, kw = pad[2] + pad[3] + 1, pad[0] + pad[1] + 1
    rows = F.pad(x, pad)[:, :, row : row + kh]
    return rows if col is None else rows[:, :, :, col : col + kw]


class OutputHead(nn.Module):
    """ReLU -> 1x1 (mask B) -> ReLU -> 1x1 (mask B) -> logits, as at the top of every model in the paper."""

    def __init__(self, in_channels: int, hidden: int, colors: int, levels: int) -> None:
        super().__init__()
        self.colors, self.levels = colors, levels
        values_per_colour = 1 if levels == 2 else levels
        self.hidden = MaskedConv2d(in_channels, hidden, 1, "B", colors)
        self.out = MaskedConv2d(hidden, values_per_colour * colors, 1, "B", colors)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.out(F.relu(self.hidden(F.relu(features))))  # (B, V * C, H, W), channel v * C + c
        if self.levels == 2:
            return logits  # (B, C, H, W)
        b, _, h, w = logits.shape
        return logits.view(b, self.levels, self.colors, h, w)  # (B, L, C, H, W)
