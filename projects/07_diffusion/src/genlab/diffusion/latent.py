"""Latent diffusion (Rombach et al. 2022): the diffusion model of this project, run on an autoencoder's latents.

A first stage, trained before and frozen, maps an image to a smaller latent and back: E(x) (B, c, H/f, W/f) and
D(z) (B, C, H, W), f the downsampling factor. The second stage is any diffusion model of this project, trained on

    z = s * E(x),    s = 1 / std(E(x)) over the training set          (the paper's scale factor, Sec. 4.3.2, App. G)

so that the latents it diffuses have unit variance, as the schedules assume of data; a sample z_0 becomes an image
as D(z_0 / s). The paper compares two regularisations of the first stage's latent (Sec. 3.1), both here, each an
earlier project's autoencoder:

    kl   01's convolutional VAE with a spatial latent, trained with a small KL weight: E(x) is a draw of
         q(z | x) = N(mu(x), diag sigma^2(x)), a new one every time the diffusion model sees x; D is the decoder's mean.
    vq   05's VQ-VAE: E(x) is the encoder's output before quantisation, z_e(x); D quantises to the nearest code and
         then decodes ("the quantization layer is absorbed by the decoder", Sec. 3.1), so a sample need not land on
         a code.

A first stage is described once by its posterior moments on the data (mean, and log-variance for kl): the scale
factor follows from them in closed form, and the training latents are drawn from them (``draw_latents``). This
file imports only torch and the two earlier projects' model files.
"""

from __future__ import annotations

import torch
from torch import nn

from genlab.vae.model import VAE
from genlab.vqvae.model import VQVAE

KINDS = ("kl", "vq")


class FirstStage(nn.Module):
    """A frozen autoencoder seen from the diffusion model: posterior moments of images and decoding of latents."""

    kind: str
    autoencoder: nn.Module

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (B, C, H, W) in [-1, 1] -> the posterior's mean (B, c, h, w) and log-variance (None if
        deterministic)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, c, h, w) -> images (B, C, H, W) in [-1, 1]."""
        raise NotImplementedError


class KLFirstStage(FirstStage):
    """01's VAE with a spatial latent (``latent_channels`` > 0) and an 8-bit likelihood (images in [-1, 1])."""

    kind = "kl"

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        if not vae.config.latent_channels:
            raise ValueError("a KL first stage needs 01's conv VAE with a spatial latent (latent_channels > 0)")
        if vae.config.likelihood == "bernoulli":
            raise ValueError("a KL first stage needs an 8-bit likelihood (logistic or gaussian), not bernoulli")
        self.autoencoder = vae.eval().requires_grad_(False)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.autoencoder.config.latent_shape)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        mean, log_var = self.autoencoder.encoder(x)  # the VAE's input for 8-bit data is x / 127.5 - 1, this range
        return mean.view(len(x), *self.latent_shape), log_var.view(len(x), *self.latent_shape)  # (B, c h w) -> maps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        mean = self.autoencoder.decode(z.flatten(1))[:, 0]  # (B, P, C, H, W) -> the likelihood's mean (B, C, H, W)
        if self.autoencoder.config.likelihood == "gaussian":  # its mean is of y = (x + u) / 256, u ~ U[0, 1)
            mean = (256 * mean - 0.5) / 127.5 - 1  # E[y] = (x + 1/2) / 256 -> x / 127.5 - 1, the encoder's range
        return mean.clamp(-1, 1)


class VQFirstStage(FirstStage):
    """05's one-level VQ-VAE (images in [-1, 1]); the latent is the pre-quantisation z_e."""

    kind = "vq"

    def __init__(self, vqvae: VQVAE) -> None:
        super().__init__()
        if vqvae.config.levels != 1:
            raise ValueError("a VQ first stage is 05's one-level VQ-VAE; VQ-VAE-2's two grids are not one latent")
        self.autoencoder = vqvae.eval().requires_grad_(False)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        (h, w) = self.autoencoder.config.token_shapes()[0]
        return (self.autoencoder.config.code_dim, h, w)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.autoencoder.pre_quantize(self.autoencoder.encoder(x)), None  # z_e (B, D, H/4, W/4)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        quantized = self.autoencoder.quantizer(z).quantized  # nearest codes, (B, D, h, w)
        return self.autoencoder.decode_codes([quantized]).clamp(-1, 1)


def first_stage_of(autoencoder: nn.Module) -> FirstStage:
    """The first stage that wraps a trained autoencoder of 01 (kl) or 05 (vq)."""
    if isinstance(autoencoder, VAE):
        return KLFirstStage(autoencoder)
    if isinstance(autoencoder, VQVAE):
        return VQFirstStage(autoencoder)
    raise TypeError(f"no first stage for {type(autoencoder).__name__}; known: 01's VAE (kl), 05's VQVAE (vq)")


def scale_factor(mean: torch.Tensor, log_var: torch.Tensor | None) -> float:
    """s = 1 / std(z) over every element of the training latents z ~ q(z | x), in closed form from the moments:
    Var z = E[mu^2 + sigma^2] - (E mu)^2 (a deterministic first stage: sigma = 0)."""
    mean = mean.double()
    second_moment = mean.square().mean() + (0.0 if log_var is None else log_var.double().exp().mean())
    variance = second_moment - mean.mean().square()
    return float(variance.clamp_min(1e-12).rsqrt())


def scaled_moments(mean: torch.Tensor, log_var: torch.Tensor | None, scale: float) -> torch.Tensor:
    """The moments of s * z, stacked on the channels: (N, c, h, w) mean [, log-variance] -> (N, c or 2c, h, w)."""
    if log_var is None:
        return scale * mean
    return torch.cat([scale * mean, log_var + 2 * torch.log(torch.tensor(scale))], dim=1)  # Var(s z) = s^2 sigma^2


def draw_latents(moments: torch.Tensor, latent_channels: int) -> torch.Tensor:
    """A fresh z = mu + sigma * eps from ``scaled_moments`` (B, 2c, h, w) -> (B, c, h, w); deterministic ones as
    they are."""
    if moments.shape[1] == latent_channels:
        return moments
    mean, log_var = moments.split(latent_channels, dim=1)
    return mean + (0.5 * log_var).exp() * torch.randn_like(mean)
