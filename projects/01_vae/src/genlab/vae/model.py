"""The VAE of Kingma & Welling (2013), "Auto-Encoding Variational Bayes": networks only.

    encoder    q_phi(z | x) = N(z; mu_phi(x), diag sigma^2_phi(x))          (paper, eq. 9)
    prior      p(z) = N(0, I)
    decoder    p_theta(x | z): Bernoulli for binary images (paper, App. C.1), or, for 8-bit images, a
               discretised logistic or a Gaussian with a learned variance per pixel (App. C.2 for the Gaussian)

Two networks: the paper's MLP (one or more hidden layers, tanh in the paper) and a convolutional variant for
colour images. The convolutional one's latent is a vector (a linear layer after the last feature map) or, with
``latent_channels`` > 0, the last feature map itself: z is then ``latent_channels`` maps of the encoder's smallest
side, flattened to latent_dim = c * h * w values, so the objective and sampling treat it as any other vector. That
spatial latent is what latent diffusion (07) diffuses in: a KL-regularised autoencoder, Rombach et al. 2022, Sec. 3.
The objective (ELBO, IWAE) is in objective.py; this file imports only torch and the Hub mixin.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

Likelihood = Literal["bernoulli", "logistic", "gaussian"]

# Number of decoder outputs per pixel and channel: Bernoulli logits; logistic and Gaussian mean and log-scale.
PARAMS_PER_VALUE = {"bernoulli": 1, "logistic": 2, "gaussian": 2}

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}


@dataclass
class VAEConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    architecture: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = 50
    hidden_dims: tuple[int, ...] = (512, 512)  # MLP widths, or conv channels (one stride-2 layer each)
    activation: Literal["tanh", "relu", "elu", "silu"] = "tanh"
    likelihood: Likelihood = "bernoulli"
    latent_channels: int = 0  # conv only: > 0 makes z a (latent_channels, h, w) map; latent_dim is then c * h * w

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape)
        self.hidden_dims = tuple(self.hidden_dims)
        if self.latent_channels < 0:
            raise ValueError(f"latent_channels must be >= 0, got {self.latent_channels}")
        if self.latent_channels:
            if self.architecture != "conv":
                raise ValueError("a spatial latent (latent_channels > 0) needs the conv architecture")
            self.latent_dim = math.prod(self.latent_shape)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one z: (latent_dim,), or (latent_channels, h, w) for a spatial latent."""
        if not self.latent_channels:
            return (self.latent_dim,)
        _, height, width = self.image_shape
        return (self.latent_channels, *_conv_sizes(height, width, len(self.hidden_dims))[-1])


def _mlp(sizes: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """x (B, C, H, W) -> (mu, log sigma^2), each (B, latent_dim)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        in_features = math.prod(config.image_shape)
        self.net = _mlp([in_features, *config.hidden_dims, 2 * config.latent_dim], config.activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.net(x.flatten(1)).chunk(2, dim=1)  # (B, D) -> 2 x (B, latent)
        return mu, log_var


class MLPDecoder(nn.Module):
    """z (B, latent_dim) -> likelihood parameters (B, P * C, H, W)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        channels, height, width = config.image_shape
        self.out_shape = (PARAMS_PER_VALUE[config.likelihood] * channels, height, width)
        out_features = math.prod(self.out_shape)
        self.net = _mlp([config.latent_dim, *reversed(config.hidden_dims), out_features], config.activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)


def _conv_sizes(height: int, width: int, layers: int) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2, padding-1, 3x3 convolution: h -> ceil(h / 2)."""
    sizes = [(height, width)]
    for _ in range(layers):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class ConvEncoder(nn.Module):
    """Stride-2 convolutions, then a linear layer to (mu, log sigma^2), or a 1x1 conv for a spatial latent."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        channels, height, width = config.image_shape
        widths = [channels, *config.hidden_dims]
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(fan_in, fan_out, 3, stride=2, padding=1), ACTIVATIONS[config.activation]()]
        self.convs = nn.Sequential(*layers)
        h, w = _conv_sizes(height, width, len(config.hidden_dims))[-1]
        self.spatial = config.latent_channels > 0
        if self.spatial:
            self.to_latent = nn.Conv2d(widths[-1], 2 * config.latent_channels, 1)
        else:
            self.to_latent = nn.Linear(widths[-1] * h * w, 2 * config.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.convs(x)  # (B, C, H, W) -> (B, C', h, w)
        if self.spatial:
            mu, log_var = self.to_latent(features).chunk(2, dim=1)  # 2 x (B, c, h, w)
            return mu.flatten(1), log_var.flatten(1)  # 2 x (B, c h w)
        mu, log_var = self.to_latent(features.flatten(1)).chunk(2, dim=1)
        return mu, log_var


class ConvDecoder(nn.Module):
    """A linear layer (a 3x3 conv for a spatial latent) to the smallest feature map, then (upsample to the encoder's
    size, 3x3 conv) per layer."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        channels, height, width = config.image_shape
        self.sizes = list(reversed(_conv_sizes(height, width, len(config.hidden_dims))))  # smallest first
        widths = list(reversed(config.hidden_dims))
        self.first_shape = (widths[0], *self.sizes[0])
        self.latent_shape = config.latent_shape
        if config.latent_channels:
            self.from_latent = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        else:
            self.from_latent = nn.Linear(config.latent_dim, math.prod(self.first_shape))
        self.activation = ACTIVATIONS[config.activation]()
        out_channels = [*widths[1:], PARAMS_PER_VALUE[config.likelihood] * channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(fan_in, fan_out, 3, padding=1) for fan_in, fan_out in zip(widths, out_channels, strict=True)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.view(z.shape[0], *self.latent_shape)  # (B, c h w) -> (B, c, h, w) for a spatial latent
        h = self.activation(self.from_latent(z)).view(z.shape[0], *self.first_shape)  # (B, C', h, w)
        for i, conv in enumerate(self.convs):
            h = conv(F.interpolate(h, size=self.sizes[i + 1], mode="nearest"))  # upsample to the next size
            if i < len(self.convs) - 1:
                h = self.activation(h)
        return h  # (B, P * C, H, W)


class VAE(nn.Module, PyTorchModelHubMixin):
    """Encoder q(z|x), decoder p(x|z) and the standard normal prior p(z)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = VAEConfig(**config)
        self.config = config
        if config.architecture == "mlp":
            self.encoder, self.decoder = MLPEncoder(config), MLPDecoder(config)
        else:
            self.encoder, self.decoder = ConvEncoder(config), ConvDecoder(config)

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """Data as the encoder sees it: binary images as they are; 8-bit integers scaled to [-1, 1]."""
        dtype = next(self.parameters()).dtype
        if self.config.likelihood == "bernoulli":
            return x.to(dtype)
        return x.to(dtype) / 127.5 - 1.0

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x): mean and log-variance, each (B, latent_dim)."""
        return self.encoder(self.network_input(x))

    @staticmethod
    def reparameterize(mu: torch.Tensor, log_var: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): the reparameterisation trick (paper, eq. 10).

        (B, D) -> (B, D), or (K, B, D) with ``num_samples`` = K independent draws per example.
        """
        shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
        eps = torch.randn(shape, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * log_var) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """p(x | z) parameters: (..., latent_dim) -> (..., P, C, H, W), P values per pixel and channel."""
        batch_shape = z.shape[:-1]
        params = self.decoder(z.reshape(-1, z.shape[-1]))  # (N, P * C, H, W)
        channels, height, width = self.config.image_shape
        return params.view(*batch_shape, PARAMS_PER_VALUE[self.config.likelihood], channels, height, width)

    def forward(
        self, x: torch.Tensor, num_samples: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, draw z ~ q(z|x) (K per example if ``num_samples``), decode.

        Returns (decoder params (B, P, C, H, W) or (K, B, P, C, H, W), z, mu, log_var).
        """
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var, num_samples)
        return self.decode(z), z, mu, log_var

    def prior_sample(self, num_samples: int, device: torch.device | str | None = None) -> torch.Tensor:
        """z ~ N(0, I): (num_samples, latent_dim)."""
        device = device or next(self.parameters()).device
        return torch.randn(num_samples, self.config.latent_dim, device=device)
