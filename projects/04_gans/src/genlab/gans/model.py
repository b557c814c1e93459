"""One front for every GAN variant: a config, a registry of named sizes, and Hub-loadable generator and
discriminator modules built from ``models``.

Variants, each with the architecture and loss of its paper:

    gan      MLP nets (Goodfellow et al. 2014), the GAN loss with a minimax or non-saturating generator
    dcgan    DCGAN nets (Radford et al. 2015), non-saturating GAN loss
    wgan     DCGAN nets, critic loss, weight clipping (Arjovsky et al. 2017)
    wgan_gp  DCGAN nets with layer norm in the critic, critic loss plus gradient penalty (Gulrajani et al. 2017)
    sagan    residual nets with spectral norm and self-attention, hinge loss (Zhang et al. 2018)
    cgan     DCGAN nets with class-conditional batch norm in G and a projection discriminator

On the 2-D toy mixtures every variant uses MLP nets (``GANConfig.points``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from genlab.gans.models import (
    DCDiscriminator,
    DCGenerator,
    MLPDiscriminator,
    MLPGenerator,
    ResNetDiscriminator,
    ResNetGenerator,
)

Variant = Literal["gan", "dcgan", "wgan", "wgan_gp", "sagan", "cgan"]
VARIANTS: tuple[str, ...] = ("gan", "dcgan", "wgan", "wgan_gp", "sagan", "cgan")


@dataclass
class GANConfig:
    variant: Variant = "dcgan"
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    latent_dim: int = 100  # z ~ N(0, I)
    width: int = 64  # convolutional nets: the channels of the full-resolution stage
    hidden: tuple[int, ...] = (256, 512)  # MLP generator's hidden layers (the discriminator mirrors them)
    num_classes: int = 0  # > 0: class-conditional generator and discriminator (cgan; sagan optionally)

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape)
        self.hidden = tuple(self.hidden)

    @property
    def points(self) -> bool:
        """2-D toy points stored as (2, 1, 1): MLP nets, no tanh, no dropout, whatever the variant."""
        return self.image_shape[1:] == (1, 1)


# "small": what a 2-core CPU trains in well under an hour on 28x28 data; "paper": the papers' widths
# (DCGAN's 64 / 128 feature maps at the finest stage; the GAN paper's MNIST nets had 1200-unit layers).
SIZES: dict[str, dict[str, Any]] = {
    "small": {"latent_dim": 64, "width": 32, "hidden": (256, 512)},
    "paper": {"latent_dim": 100, "width": 64, "hidden": (1200, 1200)},
}


def build_config(variant: str, size: str, image_shape: tuple[int, int, int], **overrides: Any) -> GANConfig:
    """The registry's size, then explicit overrides (None keeps the size's value)."""
    values = {**SIZES[size], **{k: v for k, v in overrides.items() if v is not None}}
    return GANConfig(variant=variant, image_shape=image_shape, **values)


def as_config(config: GANConfig | dict) -> GANConfig:
    """The Hub mixin hands back the saved config as a dict."""
    return GANConfig(**config) if isinstance(config, dict) else config


class Generator(nn.Module, PyTorchModelHubMixin):
    """z (B, Z) [and labels (B,)] -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config = as_config(config)
        shape, classes = config.image_shape, config.num_classes
        if config.variant == "gan" or config.points:
            self.net = MLPGenerator(config.latent_dim, shape, config.hidden, bounded=not config.points)
        elif config.variant == "sagan":
            self.net = ResNetGenerator(config.latent_dim, shape, config.width, classes)
        else:
            self.net = DCGenerator(config.latent_dim, shape, config.width, classes)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z, labels)

    def sample(
        self, count: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``count`` images in [-1, 1] from z ~ N(0, I) (drawn on the CPU from ``generator``, so seeded samples
        are the same on every device)."""
        device = next(self.parameters()).device
        z = torch.randn(count, self.config.latent_dim, generator=generator).to(device)
        return self(z, labels)


class Discriminator(nn.Module, PyTorchModelHubMixin):
    """images (B, C, H, W) [and labels] -> one raw value (B,): a logit, or a critic value."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config = as_config(config)
        shape, classes = config.image_shape, config.num_classes
        if config.variant == "gan" or config.points:
            self.net = MLPDiscriminator(shape, tuple(reversed(config.hidden)), dropout=0.0 if config.points else 0.3)
        elif config.variant == "sagan":
            self.net = ResNetDiscriminator(shape, config.width, classes)
        else:
            norm = "layer" if config.variant == "wgan_gp" else "batch"
            self.net = DCDiscriminator(shape, config.width, norm, classes)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(images, labels)
