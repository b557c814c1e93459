"""Generators and discriminators of the GAN papers. Images are in [-1, 1]; a discriminator returns one raw value
per image (a logit for the GAN losses, a critic value for WGAN and the hinge loss), shape (B,).

- ``MLPGenerator`` / ``MLPDiscriminator``: the fully connected nets of Goodfellow et al. 2014.
- ``DCGenerator`` / ``DCDiscriminator``: Radford et al. 2015's guidelines: strided (transposed) convolutions and
  no pooling, batch norm in both nets except the generator's output and the discriminator's input, ReLU in the
  generator with tanh at its output, LeakyReLU(0.2) in the discriminator. The same nets serve WGAN (critic) and,
  with layer norm or no norm in the critic, WGAN-GP; with class-conditional batch norm and a projection head,
  the conditional GAN.
- ``ResNetGenerator`` / ``ResNetDiscriminator``: SAGAN (Zhang et al. 2018): residual up/down blocks, spectral
  norm in both nets, a self-attention block at one resolution, conditional batch norm and a projection
  discriminator (Miyato & Koyama 2018) when there are classes.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from genlab.gans.layers import ConditionalBatchNorm2d, SelfAttention2d, spectral

Norm = Literal["batch", "layer", "none"]


def base_resolution(image_size: int) -> int:
    """The generator's first feature map: 7x7 for 28x28 (two doublings), else 4x4; the size must then be a
    power-of-two multiple of it."""
    base = 7 if image_size % 7 == 0 else 4
    doublings = math.log2(image_size / base)
    if image_size < 2 * base or doublings != int(doublings):
        raise ValueError(f"image size {image_size} is not 7 or 4 times a power of two (28, 32, 64, ...)")
    return base


def dcgan_init(module: nn.Module) -> None:
    """DCGAN Sec. 4: every weight from N(0, 0.02); batch-norm gains from N(1, 0.02), biases 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class MLPGenerator(nn.Module):
    """z (B, Z) -> ReLU MLP -> tanh -> images (B, C, H, W); no tanh for unbounded data (``bounded=False``)."""

    def __init__(
        self, latent_dim: int, image_shape: tuple[int, int, int], hidden: tuple[int, ...], bounded: bool = True
    ) -> None:
        super().__init__()
        self.image_shape = image_shape
        layers: list[nn.Module] = []
        width = latent_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers += [nn.Linear(width, math.prod(image_shape)), nn.Tanh() if bounded else nn.Identity()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z).view(len(z), *self.image_shape)  # (B, Z) -> (B, C, H, W)


class MLPDiscriminator(nn.Module):
    """images -> LeakyReLU MLP with dropout (the paper regularises D with dropout) -> one logit (B,)."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: tuple[int, ...], dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(image_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(images).squeeze(1)


class DCGenerator(nn.Module):
    """z (B, Z) -> project to (8w or 4w, b, b) -> stride-2 transposed convolutions, each doubling the size and
    halving the channels, with batch norm and ReLU -> a final transposed convolution to C channels and tanh."""

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], width: int, num_classes: int = 0) -> None:
        super().__init__()
        channels, size, _ = image_shape
        self.base = base_resolution(size)
        doublings = int(math.log2(size // self.base))
        self.start_channels = width * 2 ** (doublings - 1)
        self.project = nn.Linear(latent_dim, self.start_channels * self.base**2, bias=False)
        self.norms = nn.ModuleList()
        self.blocks = nn.ModuleList()
        current = self.start_channels
        self.norms.append(self._norm(current, num_classes))
        for _ in range(doublings - 1):
            self.blocks.append(nn.ConvTranspose2d(current, current // 2, 4, stride=2, padding=1, bias=False))
            self.norms.append(self._norm(current // 2, num_classes))
            current //= 2
        self.to_image = nn.ConvTranspose2d(current, channels, 4, stride=2, padding=1)
        self.apply(dcgan_init)

    @staticmethod
    def _norm(channels: int, num_classes: int) -> nn.Module:
        return ConditionalBatchNorm2d(channels, num_classes) if num_classes else nn.BatchNorm2d(channels)

    def _normalise(self, index: int, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        norm = self.norms[index]
        return norm(x, labels) if isinstance(norm, ConditionalBatchNorm2d) else norm(x)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.project(z).view(len(z), self.start_channels, self.base, self.base)  # (B, 8w, b, b)
        x = torch.relu(self._normalise(0, x, labels))
        for index, block in enumerate(self.blocks, start=1):
            x = torch.relu(self._normalise(index, block(x), labels))  # (B, c, s, s) -> (B, c / 2, 2s, 2s)
        return torch.tanh(self.to_image(x))  # (B, C, H, W)


class DCDiscriminator(nn.Module):
    """images -> stride-2 convolutions with LeakyReLU(0.2), each halving the size and doubling the channels
    (no norm on the first) -> a linear head on the b x b map -> one value (B,).

    ``norm``: "batch" (DCGAN, WGAN), "layer" or "none" (WGAN-GP: the penalty is per example, which batch norm
    would break). With classes, the projection discriminator adds <embed(y), phi(x)> to the head.
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int, norm: Norm = "batch", num_classes: int = 0):
        super().__init__()
        channels, size, _ = image_shape
        base = base_resolution(size)
        doublings = int(math.log2(size // base))
        layers: list[nn.Module] = []
        current, resolution = channels, size
        for index in range(doublings):
            out = width * 2**index
            resolution //= 2
            layers.append(nn.Conv2d(current, out, 4, stride=2, padding=1, bias=index == 0 or norm == "none"))
            if index > 0 and norm == "batch":
                layers.append(nn.BatchNorm2d(out))
            elif index > 0 and norm == "layer":
                layers.append(nn.LayerNorm([out, resolution, resolution]))
            layers.append(nn.LeakyReLU(0.2))
            current = out
        self.features = nn.Sequential(*layers, nn.Flatten())  # phi(x): (B, c * b * b)
        feature_dim = current * base * base
        self.head = nn.Linear(feature_dim, 1)
        self.embed = nn.Embedding(num_classes, feature_dim) if num_classes else None
        self.apply(dcgan_init)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        phi = self.features(images)
        value = self.head(phi).squeeze(1)
        if self.embed is not None:
            value = value + (self.embed(labels) * phi).sum(dim=1)  # projection: + <embed(y), phi(x)>
        return value


class ResBlockUp(nn.Module):
    """BN -> ReLU -> upsample x2 -> conv3 -> BN -> ReLU -> conv3, plus the upsampled input through a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm1 = ConditionalBatchNorm2d(in_channels, num_classes) if num_classes else nn.BatchNorm2d(in_channels)
        self.conv1 = spectral(nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.norm2 = ConditionalBatchNorm2d(out_channels, num_classes) if num_classes else nn.BatchNorm2d(out_channels)
        self.conv2 = spectral(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = spectral(nn.Conv2d(in_channels, out_channels, 1))
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    @staticmethod
    def _norm(norm: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return norm(x, labels) if isinstance(norm, ConditionalBatchNorm2d) else norm(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.upsample(torch.relu(self._norm(self.norm1, x, labels))))
        h = self.conv2(torch.relu(self._norm(self.norm2, h, labels)))
        return h + self.skip(self.upsample(x))  # (B, C_in, s, s) -> (B, C_out, 2s, 2s)


class ResBlockDown(nn.Module):
    """(ReLU ->) conv3 -> ReLU -> conv3 -> avg-pool x2, plus the input through a 1x1 conv and the same pooling."""

    def __init__(self, in_channels: int, out_channels: int, first: bool = False) -> None:
        super().__init__()
        self.first = first  # the first block sees the image: no ReLU before its first convolution
        self.conv1 = spectral(nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.conv2 = spectral(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = spectral(nn.Conv2d(in_channels, out_channels, 1))
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else torch.relu(x)
        h = self.pool(self.conv2(torch.relu(self.conv1(h))))
        return h + self.pool(self.skip(x))  # (B, C_in, s, s) -> (B, C_out, s/2, s/2)


class ResNetGenerator(nn.Module):
    """SAGAN's generator: z -> linear to (c, b, b) -> residual up-blocks (self-attention after the block that
    reaches ``attention_resolution``, default half the image size) -> BN -> ReLU -> conv3 -> tanh. Spectral norm
    on every layer."""

    def __init__(
        self, latent_dim: int, image_shape: tuple[int, int, int], width: int, num_classes: int = 0,
        attention_resolution: int = 0,
    ) -> None:  # fmt: skip
        super().__init__()
        channels, size, _ = image_shape
        attention_resolution = attention_resolution or size // 2
        self.base = base_resolution(size)
        doublings = int(math.log2(size // self.base))
        self.start_channels = width * 2 ** (doublings - 1)
        self.project = spectral(nn.Linear(latent_dim, self.start_channels * self.base**2))
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        current, resolution = self.start_channels, self.base
        for index in range(doublings):
            out = max(width, current // 2) if index > 0 else current
            self.blocks.append(ResBlockUp(current, out, num_classes))
            current, resolution = out, resolution * 2
            if resolution == attention_resolution:
                self.attention[str(index)] = SelfAttention2d(current)
        self.final_norm = nn.BatchNorm2d(current)
        self.to_image = spectral(nn.Conv2d(current, channels, 3, padding=1))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.project(z).view(len(z), self.start_channels, self.base, self.base)
        for index, block in enumerate(self.blocks):
            x = block(x, labels)
            if str(index) in self.attention:
                x = self.attention[str(index)](x)
        return torch.tanh(self.to_image(torch.relu(self.final_norm(x))))  # (B, C, H, W)


class ResNetDiscriminator(nn.Module):
    """SAGAN's discriminator: residual down-blocks (self-attention once the map is ``attention_resolution``),
    ReLU, global sum pooling -> phi(x); value = w . phi(x) (+ <embed(y), phi(x)> with classes, the projection
    discriminator). Spectral norm on every layer, the embedding included."""

    def __init__(
        self, image_shape: tuple[int, int, int], width: int, num_classes: int = 0, attention_resolution: int = 0
    ) -> None:
        super().__init__()
        channels, size, _ = image_shape
        attention_resolution = attention_resolution or size // 2
        doublings = int(math.log2(size // base_resolution(size)))
        layers: list[nn.Module] = []
        current, resolution = channels, size
        for index in range(doublings):
            out = width * 2**index
            layers.append(ResBlockDown(current, out, first=index == 0))
            current, resolution = out, resolution // 2
            if resolution == attention_resolution:
                layers.append(SelfAttention2d(current))
        self.blocks = nn.Sequential(*layers)
        self.head = spectral(nn.Linear(current, 1))
        self.embed = spectral(nn.Embedding(num_classes, current)) if num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        phi = torch.relu(self.blocks(images)).sum(dim=(2, 3))  # global sum pooling: (B, C)
        value = self.head(phi).squeeze(1)
        if self.embed is not None:
            value = value + (self.embed(labels) * phi).sum(dim=1)
        return value
