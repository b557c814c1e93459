"""VQ-VAE and VQ-VAE-2 networks, the objective and the bits/dim bound."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.vqvae.model import VQVAE, VQVAEConfig
from genlab.vqvae.objective import bits_per_dim_bound, discretised_gaussian_nll, vqvae_loss


def _tiny(levels: int = 1, image_shape=(1, 16, 16), **kwargs) -> VQVAE:
    torch.manual_seed(0)
    config = VQVAEConfig(image_shape=image_shape, levels=levels, hidden_channels=16, residual_channels=8,
                         residual_layers=1, num_codes=16, code_dim=4, **kwargs)  # fmt: skip
    return VQVAE(config)


@pytest.mark.parametrize(("levels", "shapes"), [(1, [(4, 4)]), (2, [(2, 2), (4, 4)])])
def test_token_grids_sit_at_a_quarter_and_an_eighth_of_the_side(levels: int, shapes: list) -> None:
    model = _tiny(levels).eval()
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    tokens = model.encode(x)
    assert [tuple(t.shape[1:]) for t in tokens] == shapes == model.config.token_shapes()
    assert model(x).reconstruction.shape == x.shape
    # Decoding the tokens is the forward pass's reconstruction: the decoder sees only the codes.
    assert torch.allclose(model.decode_tokens(tokens), model(x).reconstruction, atol=1e-5)


def test_vqvae2_bottom_codes_are_conditioned_on_the_top_and_the_decoder_sees_both() -> None:
    model = _tiny(levels=2).eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    # The bottom quantiser's input depends on the top codes (through the top decoder): Alg. 1 of Razavi et al.
    seen: list[torch.Tensor] = []
    model.quantizer.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    model.quantize(x)
    with torch.no_grad():
        model.top_quantizer.codebook.mul_(-1.0)  # other top code vectors, the same encoder
    model.quantize(x)
    assert not torch.allclose(seen[0], seen[1])
    # The decoder uses both levels: changing either one's tokens changes the image.
    t, b = model.encode(x)
    image = model.decode_tokens([t, b])
    assert not torch.allclose(model.decode_tokens([(t + 1) % 16, b]), image)
    assert not torch.allclose(model.decode_tokens([t, (b + 1) % 16]), image)


def test_side_lengths_that_the_hierarchy_cannot_halve_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        VQVAEConfig(image_shape=(1, 28, 28), levels=2)
    VQVAEConfig(image_shape=(1, 28, 28), levels=1)  # 28 = 4 x 7: fine for one level


@pytest.mark.parametrize("ema", [False, True])
def test_the_objective_adds_the_codebook_term_only_without_ema(ema: bool) -> None:
    model = _tiny(ema=ema).train()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    torch.manual_seed(1)
    loss, terms = vqvae_loss(model, x, commitment_cost=0.25)
    expected = terms["reconstruction_mse"] + 0.25 * terms["codes/commitment_loss"]
    if not ema:
        expected = expected + terms["codes/codebook_loss"]
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert (model.quantizer.codebook.grad is None) == ema


@pytest.mark.parametrize("levels", [1, 2])
def test_the_objective_decreases_on_a_small_structured_batch(levels: int) -> None:
    model = _tiny(levels).train()
    x = torch.zeros(16, 1, 16, 16) - 1
    x[:8, :, 4:12, 4:12] = 1.0  # eight squares, eight blank images
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss, terms = vqvae_loss(model, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(terms["reconstruction_mse"].item())
    # Below 0.25, the error of the mean image: the codes carry which images hold a square.
    assert losses[-1] < 0.2 and losses[-1] < 0.15 * losses[0]


@pytest.mark.parametrize(("mean", "sigma"), [(0.0, 0.05), (0.93, 0.01), (-1.2, 0.3), (0.4, 2.0)])
def test_the_discretised_gaussian_sums_to_one_over_the_256_values(mean: float, sigma: float) -> None:
    values = (torch.arange(256, dtype=torch.float64) / 127.5 - 1).view(256, 1, 1, 1)  # every 8-bit value
    nll = discretised_gaussian_nll(values, torch.full_like(values, mean), sigma)
    assert torch.exp(-nll).sum().item() == pytest.approx(1.0, abs=1e-9)


def test_the_discretised_gaussian_is_the_density_times_the_bin_for_a_wide_gaussian() -> None:
    x = torch.tensor([0.2], dtype=torch.float64).view(1, 1, 1, 1)
    sigma, width = 0.5, 2 / 255
    density = math.exp(-0.5 * (0.2 / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    assert math.exp(-discretised_gaussian_nll(x, torch.zeros_like(x), sigma).item()) == pytest.approx(
        density * width, rel=1e-4
    )


@pytest.mark.parametrize(
    ("x", "mean", "sigma", "tolerance"),
    [
        (0.5, -1.0, 0.2, 1e-2),
        (-0.5, 0.9, 0.2, 1e-2),
        (0.2, 0.2, 0.2, 1e-3),
        (0.9, -1.0, 0.1, 0.2),
        (-0.9, 1.0, 0.1, 0.2),
    ],
)
def test_the_discretised_gaussian_is_finite_and_right_far_in_the_tails(
    x: float, mean: float, sigma: float, tolerance: float
) -> None:
    """Bins 7 to 19 sigma from the mean hold masses down to 1e-80, which a float32 difference of CDFs rounds to
    zero. Against the midpoint rule, density times bin width (its error grows with z^2, hence the tolerances)."""
    width = 2 / 255
    values = torch.tensor([x], dtype=torch.float32).view(1, 1, 1, 1)
    nll = discretised_gaussian_nll(values, torch.full_like(values, mean), sigma).item()
    z = (x - mean) / sigma
    log_density_times_width = -0.5 * z**2 - math.log(sigma * math.sqrt(2 * math.pi)) + math.log(width)
    assert math.isfinite(nll) and -nll == pytest.approx(log_density_times_width, abs=tolerance)


def test_the_bound_counts_log_k_per_latent() -> None:
    # A perfect decoder (-log p(x|z) = 0) on 28x28 with 7x7 latents of K = 512: 49 x 9 bits over 784 dims.
    assert bits_per_dim_bound(0.0, 49, 512, 784) == pytest.approx(49 * 9 / 784)
    # And the decoder's nats add in bits: 784 ln 2 nats are one more bit per dimension.
    assert bits_per_dim_bound(784 * math.log(2), 49, 512, 784) == pytest.approx(1 + 49 * 9 / 784)
