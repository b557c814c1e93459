"""The PatchGAN discriminator VQGAN trains against (Isola et al. 2017, pix2pix; Esser et al. 2021, Sec. 3.1): a
fully convolutional network whose output is a grid of logits, one per overlapping patch of the input, so that
the adversarial loss judges local texture rather than the whole image.

    x (B, C, H, W) -> 4x4 conv stride 2, LeakyReLU(0.2)
                   -> (layers - 1) x [4x4 conv stride 2, BatchNorm, LeakyReLU]   widths x2 each, at most 8 x base
                   -> 4x4 conv stride 1, BatchNorm, LeakyReLU -> 4x4 conv stride 1 to 1 channel: (B, 1, h, w)

Initialised as pix2pix and the paper's code do: convolutions N(0, 0.02), BatchNorm scales N(1, 0.02).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn


@dataclass
class PatchGANConfig:
    image_channels: int = 1
    base_channels: int = 64  # ndf
    layers: int = 3  # stride-2 convolutions (3 in the paper's code; 2 suits 28x28 images)


class PatchGAN(nn.Module, PyTorchModelHubMixin):
    def __init__(self, config: PatchGANConfig | dict) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = PatchGANConfig(**config)
        self.config = config
        ndf = config.base_channels
        blocks: list[nn.Module] = [nn.Conv2d(config.image_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = ndf
        for n in range(1, config.layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < config.layers else 1
            blocks += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> patch logits (B, 1, h, w)."""
        return self.net(x)
