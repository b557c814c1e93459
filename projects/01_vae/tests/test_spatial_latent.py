"""The conv VAE's spatial latent (latent_channels > 0): the first stage latent diffusion (07) diffuses in."""

from __future__ import annotations

import pytest
import torch

from genlab.vae.model import VAE, VAEConfig
from genlab.vae.objective import elbo


def spatial_vae(**overrides) -> VAE:
    torch.manual_seed(0)
    config = dict(image_shape=(1, 28, 28), architecture="conv", hidden_dims=(8, 8), activation="silu",
                  likelihood="logistic", latent_channels=3)  # fmt: skip
    return VAE(VAEConfig(**{**config, **overrides}))


def test_the_spatial_latent_is_a_map_of_the_smallest_feature_side() -> None:
    vae = spatial_vae()
    assert vae.config.latent_shape == (3, 7, 7) and vae.config.latent_dim == 147  # 28 -> 14 -> 7
    x = torch.randint(0, 256, (2, 1, 28, 28))
    mu, log_var = vae.encode(x)
    assert mu.shape == log_var.shape == (2, 147)
    assert vae.decode(mu).shape == (2, 2, 1, 28, 28)  # the logistic's mean and log-scale
    assert torch.isfinite(elbo(vae, x, "logistic")["elbo"]).all()  # the objective takes it as a vector


def test_each_latent_position_sees_only_its_own_neighbourhood() -> None:
    """What makes the latent spatial: mu at grid cell (0, 0) depends on the image's top-left corner only (two
    stride-2 3x3 convolutions and a 1x1 see 7 pixels across), while a vector latent's linear layer sees them all."""
    x = torch.randint(0, 256, (1, 1, 28, 28))
    changed = x.clone()
    changed[..., 20:, 20:] = 255 - changed[..., 20:, 20:]  # the bottom-right corner only
    spatial = spatial_vae()
    before, after = (spatial.encode(v)[0].view(1, 3, 7, 7) for v in (x, changed))
    assert torch.equal(before[..., 0, 0], after[..., 0, 0])
    assert not torch.equal(before[..., 6, 6], after[..., 6, 6])
    vector = spatial_vae(latent_channels=0, latent_dim=147)
    assert not torch.equal(vector.encode(x)[0][:, :3], vector.encode(changed)[0][:, :3])


def test_a_spatial_latent_needs_the_conv_architecture() -> None:
    with pytest.raises(ValueError, match="conv architecture"):
        VAEConfig(architecture="mlp", latent_channels=2)
    with pytest.raises(ValueError, match=">= 0"):
        VAEConfig(architecture="conv", latent_channels=-1)
