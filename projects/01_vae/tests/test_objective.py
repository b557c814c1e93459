"""What the VAE and IWAE papers say must hold, checked on tiny models."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genlab.vae.model import VAE, VAEConfig
from genlab.vae.objective import (
    bernoulli_log_prob,
    dequantized_gaussian_log_density,
    discretized_logistic_log_prob,
    elbo,
    gaussian_kl,
    gaussian_log_density,
    iwae_bound,
    log_importance_weights,
    vae_loss,
)
from genlab.vae.train import iwae_lr_lambda


def test_gaussian_kl_matches_monte_carlo() -> None:
    """The closed-form KL(q || N(0, I)) (paper, App. B) equals E_q[log q(z) - log p(z)] estimated by sampling."""
    torch.manual_seed(0)
    mu = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]], dtype=torch.float64)
    log_var = torch.tensor([[0.2, -1.5, 0.8], [-0.3, 0.0, 1.2]], dtype=torch.float64)
    z = mu + torch.exp(0.5 * log_var) * torch.randn(200_000, *mu.shape, dtype=torch.float64)
    log_ratio = gaussian_log_density(z, mu, log_var) - gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
    monte_carlo = log_ratio.mean(0)
    standard_error = log_ratio.std(0) / math.sqrt(z.shape[0])
    closed_form = gaussian_kl(mu, log_var)
    assert torch.all((monte_carlo - closed_form).abs() < 4 * standard_error)
    assert torch.all(closed_form > 0)
    assert gaussian_kl(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_gaussian_log_density_matches_torch_distributions() -> None:
    torch.manual_seed(1)
    z, mu, log_var = torch.randn(3, 5, 4).unbind(0)
    reference = torch.distributions.Normal(mu, torch.exp(0.5 * log_var)).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_density(z, mu, log_var), reference)


def test_bernoulli_log_prob_matches_torch_distributions() -> None:
    torch.manual_seed(2)
    logits = torch.randn(4, 1, 3, 3)
    x = torch.bernoulli(torch.full((4, 1, 3, 3), 0.4))
    reference = torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(bernoulli_log_prob(logits, x), reference)


@pytest.mark.parametrize("log_scale", [-6.0, -3.0, -1.0, 0.5])
def test_discretized_logistic_is_normalised(log_scale: float) -> None:
    """The 256 bin probabilities sum to 1, for sharp and wide logistics, centred anywhere."""
    values = torch.arange(256).view(256, 1, 1, 1)  # every 8-bit value as a 1x1x1 image
    for mean in (-1.2, -0.5, 0.0, 0.33, 0.99):
        log_p = discretized_logistic_log_prob(
            torch.full((256, 1, 1, 1), mean), torch.full((256, 1, 1, 1), log_scale), values
        )
        assert torch.logsumexp(log_p.double(), 0).exp().item() == pytest.approx(1.0, abs=2e-3)


def test_discretized_logistic_matches_cdf_differences() -> None:
    """Inner bins are sigmoid differences at the bin edges, computed here independently in float64."""
    mean, scale = torch.tensor(0.1, dtype=torch.float64), torch.tensor(0.05, dtype=torch.float64)
    x = torch.tensor([0, 7, 128, 140, 255])
    centre = x.double() / 127.5 - 1
    upper = torch.sigmoid((centre + 1 / 255 - mean) / scale)
    lower = torch.sigmoid((centre - 1 / 255 - mean) / scale)
    expected = torch.where(x == 0, upper, torch.where(x == 255, 1 - lower, upper - lower))
    got = discretized_logistic_log_prob(
        torch.full((5, 1, 1, 1), 0.1), torch.full((5, 1, 1, 1), math.log(0.05)), x.view(5, 1, 1, 1)
    ).exp()
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-7)


def test_dequantized_gaussian_is_a_gaussian_density_at_the_dequantised_point() -> None:
    torch.manual_seed(3)
    x = torch.randint(0, 256, (2, 3, 4, 4))
    noise = torch.rand(x.shape)
    mean, log_std = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4) * 0.3 - 2
    reference = torch.distributions.Normal(mean, log_std.exp()).log_prob((x + noise) / 256).flatten(1).sum(-1)
    torch.testing.assert_close(dequantized_gaussian_log_density(mean, log_std, x, noise), reference)


def _tiny_binary_vae() -> VAE:
    """A 2x2 binary VAE with a 1-d latent whose decoder depends strongly on z and whose q is off the posterior."""
    torch.manual_seed(4)
    model = VAE(VAEConfig(image_shape=(1, 2, 2), latent_dim=1, hidden_dims=(16,), activation="tanh")).double()
    with torch.no_grad():
        model.decoder.net[0].weight.mul_(4.0)
        model.decoder.net[-1].weight.mul_(4.0)
        model.encoder.net[-1].bias.copy_(torch.tensor([0.8, -1.0], dtype=torch.float64))  # mu +0.8, var e^-1
    return model


def _exact_log_likelihood(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log int p(x|z) N(z; 0, 1) dz by quadrature on a fine grid of the 1-d latent."""
    z = torch.linspace(-9, 9, 20_001, dtype=torch.float64)[:, None]  # (G, 1)
    with torch.no_grad():
        log_px_given_z = bernoulli_log_prob(model.decode(z)[None, :, 0], x[:, None])  # (B, G)
    log_integrand = log_px_given_z + gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
    return torch.logsumexp(log_integrand, dim=1) + math.log(float(z[1] - z[0]))


def test_exact_likelihood_of_a_tiny_vae_is_normalised() -> None:
    """Sanity of the reference itself: the 16 binary 2x2 images have probabilities summing to 1."""
    model = _tiny_binary_vae()
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64).view(16, 1, 2, 2)
    assert _exact_log_likelihood(model, images).exp().sum().item() == pytest.approx(1.0, abs=1e-8)


def test_iwae_bound_rises_with_k_and_stays_below_the_exact_log_likelihood() -> None:
    """E[L_K] <= E[L_{K+1}] <= log p(x) (Burda et al. 2016, Thm. 1), against an exact log p(x) by quadrature."""
    model = _tiny_binary_vae()
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64).view(2, 1, 2, 2)
    exact = _exact_log_likelihood(model, x)
    torch.manual_seed(5)
    bounds = []
    with torch.no_grad():
        for k, repeats in ((1, 4000), (8, 1000), (64, 200), (1024, 40)):
            draws = iwae_bound(model, x.repeat(repeats, 1, 1, 1), "bernoulli", k).view(repeats, -1)  # (R, B)
            mean, error = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
            assert torch.all(mean <= exact + 3 * error + 1e-9), f"K={k} exceeds log p(x)"
            bounds.append(mean)
    for smaller, larger in itertools.pairwise(bounds):
        assert torch.all(larger > smaller)
    gap_elbo, gap_last = exact - bounds[0], exact - bounds[-1]
    assert torch.all(gap_elbo > 0.1)  # the ELBO has a visible gap on this model...
    assert torch.all(gap_last < gap_elbo / 5)  # ...which K = 1024 samples mostly close


def test_importance_weights_average_to_the_elbo() -> None:
    """E_q[log w] = ELBO: the one-sample IWAE term and the closed-form-KL ELBO estimate agree in mean."""
    model = _tiny_binary_vae()
    x = torch.tensor([[1.0, 1.0, 0.0, 1.0]], dtype=torch.float64).view(1, 1, 2, 2)
    torch.manual_seed(6)
    with torch.no_grad():
        log_w = log_importance_weights(model, x, "bernoulli", 100_000)  # (K, 1)
        elbos = elbo(model, x.repeat(20_000, 1, 1, 1), "bernoulli")["elbo"]  # 20,000 independent estimates
    assert log_w.mean().item() == pytest.approx(elbos.mean().item(), abs=4 * log_w.std().item() / math.sqrt(20_000))


def test_reparameterisation_gives_gradients_and_the_right_moments() -> None:
    mu = torch.tensor([1.5, -0.5], requires_grad=True)
    log_var = torch.tensor([0.4, -2.0], requires_grad=True)
    torch.manual_seed(7)
    z = VAE.reparameterize(mu, log_var, num_samples=100_000)  # (K, 2)
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), log_var.detach().exp(), atol=0.02, rtol=0.02)
    z.sum().backward()
    assert mu.grad is not None and torch.all(mu.grad == 100_000)
    assert log_var.grad is not None and torch.all(log_var.grad.abs() > 0)


def test_beta_weights_only_the_kl() -> None:
    model = _tiny_binary_vae()
    x = torch.ones(3, 1, 2, 2, dtype=torch.float64)
    torch.manual_seed(8)
    plain = elbo(model, x, "bernoulli", beta=1.0)
    torch.manual_seed(8)
    weighted = elbo(model, x, "bernoulli", beta=4.0)
    torch.testing.assert_close(weighted["elbo"], plain["reconstruction"] - 4.0 * plain["kl"])


@pytest.mark.parametrize(
    ("likelihood", "architecture", "shape"),
    [("bernoulli", "mlp", (1, 28, 28)), ("logistic", "conv", (3, 16, 16)), ("gaussian", "conv", (1, 16, 16))],
)
def test_each_objective_decreases_on_a_structured_batch(likelihood: str, architecture: str, shape: tuple) -> None:
    """A few dozen Adam steps on one batch of shapes must improve the ELBO (or IWAE bound) substantially."""
    from genlab.core.data import convert_range, synthetic_shapes

    images, _, _ = synthetic_shapes(32, size=shape[1], channels=shape[0], seed=0)
    x = convert_range(images, "uint8") if likelihood != "bernoulli" else (images > 127).float()
    torch.manual_seed(9)
    config = VAEConfig(image_shape=shape, architecture=architecture, latent_dim=8, hidden_dims=(16, 32),
                       activation="elu", likelihood=likelihood)  # fmt: skip
    model = VAE(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        loss, _ = vae_loss(model, x, likelihood, iwae_samples=4 if step % 2 else 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    start, end = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert end < start - 0.1 * abs(start), (start, end)


def test_iwae_learning_rate_schedule() -> None:
    """3^i epochs at 10^(-i/7): epoch 0 at 1, epochs 1-3 at 10^(-1/7), epochs 4-12 at 10^(-2/7), ... i <= 7."""
    lam = iwae_lr_lambda(steps_per_epoch=10)
    assert lam(0) == 1.0 and lam(9) == 1.0
    assert lam(10) == pytest.approx(10 ** (-1 / 7)) and lam(39) == pytest.approx(10 ** (-1 / 7))
    assert lam(40) == pytest.approx(10 ** (-2 / 7)) and lam(129) == pytest.approx(10 ** (-2 / 7))
    assert lam(130) == pytest.approx(10 ** (-3 / 7))
    assert lam(3280 * 10 - 1) == pytest.approx(10 ** (-7 / 7))
    assert lam(10**9) == pytest.approx(0.1)


def test_save_and_load_pretrained_roundtrip(tmp_path) -> None:
    model = VAE(VAEConfig(image_shape=(3, 32, 32), architecture="conv", hidden_dims=(8, 16), likelihood="logistic"))
    model.save_pretrained(tmp_path)
    loaded = VAE.from_pretrained(str(tmp_path))
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_conv_vae_shapes(shape: tuple) -> None:
    model = VAE(VAEConfig(image_shape=shape, architecture="conv", hidden_dims=(8, 16, 16), likelihood="logistic"))
    x = torch.randint(0, 256, (2, *shape))
    params, z, mu, log_var = model(x, num_samples=3)
    assert params.shape == (3, 2, 2, *shape)
    assert z.shape == (3, 2, 50) and mu.shape == log_var.shape == (2, 50)
