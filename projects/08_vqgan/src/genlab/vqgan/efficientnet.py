"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant without squeeze-excitation, with ReLU6), as a frozen
feature network for the offline perceptual distance. Built to load the ImageNet state dict that
``../shared/tools/fetch-weights`` lays out (efficientnet-lite0.pth: keys _conv_stem, _bn0, _blocks.i.*, ...).

    stem    3x3 conv stride 2 -> 32, BatchNorm, ReLU6
    blocks  MBConv (1x1 expand, k x k depthwise, 1x1 project; a residual when the shape is kept), by stage:
            (expand, kernel, stride, width, repeats) = (1,3,1,16,1) (6,3,2,24,2) (6,5,2,40,2) (6,3,2,80,3)
            (6,5,1,112,3) (6,5,2,192,4) (6,3,1,320,1)

``features`` returns the activations after the last block of each of the first five stages (strides 2 to 16).
The weights come from TensorFlow, so every k x k convolution pads as TF's "SAME" does (``SameConv2d``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip
FEATURE_STAGES = 5  # the stages whose outputs the perceptual distance compares


class SameConv2d(nn.Conv2d):
    """A convolution with TF's "SAME" padding, which the ported weights were trained with: out = ceil(in / stride),
    the padding split with the odd pixel at the bottom and right. For stride 1 and an odd kernel it is k // 2 on
    every side; for stride 2 on an even side it is (k - 2) // 2 before and k // 2 after, not k // 2 on both."""

    def __init__(self, *args: int, **kwargs: int) -> None:
        super().__init__(*args, **kwargs, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, kernel, stride in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)  # width first, as F.pad wants
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = in_channels * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, self.stage_ends, width = [], [], 32
        for expand, kernel, stride, out, repeats in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(width, out, expand, kernel, stride if r == 0 else 1))
                width = out
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(width, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, 3, H, W) scaled to about [-1, 1] (TF-Lite's (x - 127) / 128) -> the first five stages' outputs."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        outputs = []
        for index, block in enumerate(self._blocks):
            h = block(h)
            if index in self.stage_ends[:FEATURE_STAGES]:
                outputs.append(h)
            if len(outputs) == FEATURE_STAGES:
                break
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> ImageNet logits (B, 1000)."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))
        return self._fc(h.mean(dim=(2, 3)))


def load_efficientnet_lite0(path: str | Path) -> EfficientNetLite0:
    """The ImageNet weights from ``path`` (a state dict, loaded with weights_only), frozen, in eval mode."""
    network = EfficientNetLite0()
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return network.eval().requires_grad_(False)
