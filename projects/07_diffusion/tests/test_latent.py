"""Latent diffusion's first stage (latent.py): the scale factor, the latents drawn from the posterior, decoding."""

from __future__ import annotations

import pytest
import torch

from genlab.diffusion.latent import (
    KLFirstStage,
    VQFirstStage,
    draw_latents,
    first_stage_of,
    scale_factor,
    scaled_moments,
)
from genlab.vae.model import VAE, VAEConfig
from genlab.vqvae.model import VQVAE, VQVAEConfig


def tiny_vae(latent_channels: int = 3, likelihood: str = "logistic") -> VAE:
    torch.manual_seed(0)
    config = VAEConfig(image_shape=(1, 28, 28), architecture="conv", hidden_dims=(8, 8), activation="silu",
                       likelihood=likelihood, latent_channels=latent_channels)  # fmt: skip
    return VAE(config)


def tiny_vqvae() -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(VQVAEConfig(image_shape=(1, 28, 28), hidden_channels=16, residual_channels=8, residual_layers=1,
                             num_codes=16, code_dim=4))  # fmt: skip


def images(n: int = 256) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(n, 1, 28, 28) * 2 - 1


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_the_scale_factor_makes_the_training_latents_unit_variance(kind: str) -> None:
    """s = 1 / std(z) (Rombach et al. 2022, Sec. 4.3.2): over the data and the posterior's noise, s z has variance 1.
    For the KL stage the posterior's own variance counts: a random VAE's log-variance is near 0, sigma^2 near 1, so
    a scale from the means alone would leave the latents' variance far from 1."""
    first_stage = KLFirstStage(tiny_vae()) if kind == "kl" else VQFirstStage(tiny_vqvae())
    with torch.no_grad():
        mean, log_var = first_stage.moments(images())
    s = scale_factor(mean, log_var)
    moments = scaled_moments(mean, log_var, s)
    torch.manual_seed(2)
    draws = torch.cat([draw_latents(moments, first_stage.latent_shape[0]) for _ in range(20)])
    assert draws.shape[1:] == first_stage.latent_shape
    assert draws.double().var().item() == pytest.approx(1.0, abs=0.02)
    if kind == "kl":  # the posterior variance is a large part of it here
        assert mean.double().var().item() < 0.5 * (mean.double().var() + log_var.exp().mean()).item()


def test_scaled_moments_describe_s_times_z() -> None:
    """z ~ N(mu, sigma^2) -> s z ~ N(s mu, s^2 sigma^2): the draws' mean and variance per element."""
    mean, log_var = torch.full((1, 2, 3, 3), 0.5), torch.full((1, 2, 3, 3), -1.0)
    moments = scaled_moments(mean, log_var, 3.0)
    torch.manual_seed(0)
    draws = draw_latents(moments.expand(20_000, -1, -1, -1), 2)
    assert draws.mean().item() == pytest.approx(1.5, abs=0.01)
    assert draws.var().item() == pytest.approx(9 * torch.tensor(-1.0).exp().item(), rel=0.02)
    deterministic = scaled_moments(mean, None, 3.0)
    assert torch.equal(draw_latents(deterministic, 2), 3.0 * mean)


def test_the_vq_first_stage_decodes_through_the_nearest_codes() -> None:
    """A latent off the codebook decodes as its nearest codes do: the quantiser is part of the decoder."""
    first_stage = VQFirstStage(tiny_vqvae())
    with torch.no_grad():
        z_e, _ = first_stage.moments(images(4))
        nudged = z_e + 0.01 * torch.randn_like(z_e)
        codes = first_stage.autoencoder.quantizer(nudged).quantized
        assert torch.allclose(first_stage.decode(nudged), first_stage.autoencoder.decode_codes([codes]).clamp(-1, 1))
        assert first_stage.decode(nudged).shape == (4, 1, 28, 28)


def test_the_kl_first_stage_decodes_the_likelihood_mean_in_the_signed_range() -> None:
    vae = tiny_vae()
    first_stage = first_stage_of(vae)
    z = torch.randn(3, *first_stage.latent_shape)
    with torch.no_grad():
        expected = vae.decode(z.flatten(1))[:, 0].clamp(-1, 1)  # the logistic's mean, already in [-1, 1]
        assert torch.equal(first_stage.decode(z), expected)


def test_first_stages_refuse_what_they_cannot_diffuse_in() -> None:
    with pytest.raises(ValueError, match="spatial latent"):
        KLFirstStage(tiny_vae(latent_channels=0))
    with pytest.raises(ValueError, match="one-level"):
        VQFirstStage(VQVAE(VQVAEConfig(image_shape=(1, 32, 32), levels=2, hidden_channels=16, residual_channels=8,
                                       residual_layers=1, num_codes=16, code_dim=4)))  # fmt: skip
    with pytest.raises(TypeError, match="no first stage"):
        first_stage_of(torch.nn.Linear(2, 2))


def test_a_gaussian_decoders_mean_maps_to_the_encoders_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """01's Gaussian likelihood models y = (x + u) / 256 with u ~ U[0, 1): a decoder whose mean is exactly E[y | x]
    = (x + 1/2) / 256 must decode to x / 127.5 - 1, the range the encoder read (not 2 E[y] - 1, half a level off)."""
    stage = KLFirstStage(tiny_vae(likelihood="gaussian"))
    pixels = torch.randint(0, 256, (4, 1, 28, 28))
    exact_mean = (pixels.float() + 0.5) / 256
    monkeypatch.setattr(stage.autoencoder, "decode", lambda z: torch.stack([exact_mean, exact_mean], 1))
    decoded = stage.decode(torch.zeros(4, *stage.latent_shape))
    torch.testing.assert_close(decoded, pixels.float() / 127.5 - 1, atol=1e-6, rtol=0)
