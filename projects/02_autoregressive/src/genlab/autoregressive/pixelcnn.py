"""PixelCNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks", Sec. 3.5).

    p(x) = prod_i p(x_i | x_<i),   p(x_i | x_<i) = prod_c p(x_{i,c} | x_{i,<c}, x_<i)            (eqs. 1-2)

A 7x7 convolution with mask A, a stack of residual blocks (Fig. 5: 1x1 reduce 2h -> h, 3x3 mask B, 1x1
expand h -> 2h, each after a ReLU, plus the skip), and the ReLU / 1x1 / ReLU / 1x1 head. Every convolution is
masked, so all conditionals come out of one forward pass. The receptive field grows as a stack of masked
squares and never reaches the pixels above and to the right of a pixel beyond the first few rows: the blind
spot that Gated PixelCNN removes.

``start_sampling`` / ``logits_at`` compute one pixel's output through every layer from the caches of the
layers' inputs (Ramachandran et al. 2017), so sampling costs one column of the network per pixel instead of
the whole image per pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genlab.autoregressive.layers import MaskedConv2d, OutputHead, StepCache, check_sizes, image_window, scale_input


class ResidualBlock(nn.Module):
    """Fig. 5 of the paper: x + 1x1(ReLU(3x3_B(ReLU(1x1(ReLU(x)))))), with 2h channels in and out."""

    def __init__(self, channels: int, kernel_size: int, colors: int) -> None:
        super().__init__()
        half = channels // 2
        self.reduce = MaskedConv2d(channels, half, 1, "B", colors)
        self.conv = MaskedConv2d(half, half, kernel_size, "B", colors)
        self.expand = MaskedConv2d(half, channels, 1, "B", colors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.reduce(F.relu(x)))
        return x + self.expand(F.relu(self.conv(y)))

    def step(self, x: torch.Tensor, cache: StepCache, row: int, col: int) -> torch.Tensor:
        """The same block at one pixel: x is (B, 2h, 1, 1); the 3x3 reads its earlier inputs from ``cache``."""
        cache.write(F.relu(self.reduce(F.relu(x))), row, col)
        return x + self.expand(F.relu(self.conv.window_forward(cache.window(row, col))))


class PixelCNN(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        levels: int = 2,
        hidden_channels: int = 32,
        num_blocks: int = 7,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        head_channels: int = 64,
    ) -> None:
        super().__init__()
        colors = image_shape[0]
        check_sizes(colors, kernel_size, hidden_channels, head_channels)
        self.image_shape, self.levels = tuple(image_shape), levels
        self.input_conv = MaskedConv2d(colors, 2 * hidden_channels, first_kernel_size, "A", colors)
        self.blocks = nn.ModuleList(ResidualBlock(2 * hidden_channels, kernel_size, colors) for _ in range(num_blocks))
        self.head = OutputHead(2 * hidden_channels, head_channels, colors, levels)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return scale_input(x, self.levels, self.head.out.weight.dtype)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) integer levels -> logits (B, C, H, W) if binary else (B, L, C, H, W)."""
        h = self.input_conv(self.scaled(x))  # (B, 2h, H, W)
        for block in self.blocks:
            h = block(h)
        return self.head(h)

    def start_sampling(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> list[StepCache]:
        _, height, width = self.image_shape
        return [StepCache(b.conv.in_channels, height, width, b.conv.pad, self.scaled(x)) for b in self.blocks]

    def logits_at(self, caches: list[StepCache], x: torch.Tensor, row: int, col: int) -> torch.Tensor:
        """Logits of pixel (row, col) given the image so far: (B, C, 1, 1) or (B, L, C, 1, 1)."""
        window = image_window(self.scaled(x), self.input_conv.pad, row, col)
        h = self.input_conv.window_forward(window)  # (B, 2h, 1, 1)
        for block, cache in zip(self.blocks, caches, strict=True):
            h = block.step(h, cache, row, col)
        return self.head(h)
