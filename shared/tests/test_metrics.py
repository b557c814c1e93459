"""genlab.core.metrics: bits/dim, the dequantisation bound, the importance-weighted log-likelihood estimate, PSNR
and SSIM."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from genlab.core.metrics import (
    bits_per_dim,
    discrete_nll_bound,
    importance_weighted_log_likelihood,
    mean_over_batches,
    psnr,
    ssim,
)

LogWeights = Callable[[torch.Tensor, int], torch.Tensor]


def test_bits_per_dim_known_values() -> None:
    """D ln 2 nats over D dimensions is exactly 1 bit/dim; works on floats and per-example tensors."""
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    nll = torch.tensor([0.0, 3072 * math.log(2) * 2.5])
    torch.testing.assert_close(bits_per_dim(nll, 3072), torch.tensor([0.0, 2.5]))


@pytest.mark.parametrize("num_dims", [1, 784, 3072])
def test_discrete_bound_of_uniform_density_is_8_bits(num_dims: int) -> None:
    """The uniform density on the data interval gives exactly log2(256) = 8 bits/dim, for [0, 1] and [-1, 1]."""
    # Uniform on [0, 1]^D: density 1, continuous NLL 0.
    unit = discrete_nll_bound(0.0, num_dims, levels=256, interval_width=1.0)
    assert bits_per_dim(unit, num_dims) == pytest.approx(8.0)
    # Uniform on [-1, 1]^D: density 2^-D, continuous NLL D ln 2.
    signed = discrete_nll_bound(num_dims * math.log(2), num_dims, levels=256, interval_width=2.0)
    assert bits_per_dim(signed, num_dims) == pytest.approx(8.0)
    # Binary data (2 levels) under the uniform density: 1 bit/dim.
    assert bits_per_dim(discrete_nll_bound(0.0, num_dims, levels=2), num_dims) == pytest.approx(1.0)


def test_discrete_bound_is_a_bound_for_a_peaked_density() -> None:
    """For any density, the bound is at least the exact discrete NLL: check a 1-d Gaussian by quadrature."""
    levels, mean, std = 4, 0.4, 0.15
    normal = torch.distributions.Normal(mean, std)
    for x in range(levels):
        edges = torch.tensor([x / levels, (x + 1) / levels], dtype=torch.float64)
        exact = -math.log(float(normal.cdf(edges[1]) - normal.cdf(edges[0])))
        u = (torch.arange(10_000, dtype=torch.float64) + 0.5) / 10_000  # midpoint rule over the bin
        continuous = float(-normal.log_prob((x + u) / levels).mean())
        assert discrete_nll_bound(continuous, 1, levels=levels) >= exact - 1e-9


# A linear-Gaussian latent model with an exact marginal: z ~ N(0, 1), x | z ~ N(a z, s^2), so x ~ N(0, a^2 + s^2).
A, S = 2.0, 0.5
X = torch.tensor([-2.0, 0.3, 1.5, 3.0], dtype=torch.float64)


def normal_log_pdf(value: torch.Tensor, mean: torch.Tensor | float, var: torch.Tensor | float) -> torch.Tensor:
    var = torch.as_tensor(var, dtype=torch.float64)
    return -0.5 * torch.log(2 * math.pi * var) - (value - mean) ** 2 / (2 * var)


def exact_log_marginal(x: torch.Tensor) -> torch.Tensor:
    return normal_log_pdf(x, 0.0, A**2 + S**2)


def posterior(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The exact p(z | x): precision 1 + a^2/s^2, mean (a/s^2) x / precision."""
    precision = 1 + A**2 / S**2
    return (A / S**2) * x / precision, 1 / precision


def gaussian_log_weights(mean_scale: float, var_scale: float, generator: torch.Generator) -> LogWeights:
    """log w = log p(z) + log p(x|z) - log q(z|x) with q a scaled version of the exact posterior."""

    def log_weights(x: torch.Tensor, k: int) -> torch.Tensor:
        mean, var = posterior(x)
        q_mean, q_var = mean * mean_scale, var * var_scale
        z = q_mean + math.sqrt(q_var) * torch.randn(k, x.shape[0], generator=generator, dtype=torch.float64)
        return normal_log_pdf(z, 0.0, 1.0) + normal_log_pdf(x, A * z, S**2) - normal_log_pdf(z, q_mean, q_var)

    return log_weights


def test_importance_weighted_estimate_rises_with_k_towards_log_px() -> None:
    """With an imperfect q the IWAE estimate stays below log p(x) (within MC error), rises with K, nears it at K=100."""
    repeats = 250
    x = X.repeat(repeats)  # (R * B,): every example estimated independently R times
    exact = exact_log_marginal(X)
    generator = torch.Generator().manual_seed(0)
    log_weights = gaussian_log_weights(0.6, 3.0, generator)  # q's mean shrunk and its variance inflated
    gaps = []
    for k in (1, 10, 100):
        estimates = importance_weighted_log_likelihood(log_weights, x, k).view(repeats, len(X))  # (R, B)
        gap = estimates.mean(0) - exact  # E[estimate] - log p(x) <= 0
        standard_error = estimates.std(0) / math.sqrt(repeats)
        assert (gap <= 3 * standard_error).all(), (k, gap, standard_error)
        gaps.append(float(gap.mean()))
    assert gaps[0] < gaps[1] < gaps[2]
    assert gaps[0] < -0.5  # the imperfect q matters at K=1 (its KL to the posterior)...
    assert abs(gaps[2]) < 0.02  # ...and hardly at all at K=100


def test_importance_weighted_estimate_is_exact_with_the_true_posterior() -> None:
    """q = p(z|x) makes every weight equal p(x): the K=1 estimate is exact, with zero variance."""
    generator = torch.Generator().manual_seed(1)
    estimate = importance_weighted_log_likelihood(gaussian_log_weights(1.0, 1.0, generator), X.repeat(5), 1)
    torch.testing.assert_close(estimate, exact_log_marginal(X).repeat(5), rtol=0, atol=1e-10)


def test_chunking_gives_the_same_estimate() -> None:
    """K samples in chunks (combined by a running log-sum-exp) equal one chunk of K with the same random numbers."""
    num_samples = 100
    eps = torch.randn(num_samples, len(X), generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def replaying_log_weights(requested: list[int]) -> LogWeights:
        position = 0

        def log_weights(x: torch.Tensor, k: int) -> torch.Tensor:
            nonlocal position
            requested.append(k)
            mean, var = posterior(x)
            q_mean, q_var = 0.5 * mean, 2.0 * var
            z = q_mean + math.sqrt(q_var) * eps[position : position + k]
            position += k
            return normal_log_pdf(z, 0.0, 1.0) + normal_log_pdf(x, A * z, S**2) - normal_log_pdf(z, q_mean, q_var)

        return log_weights

    one_chunk_sizes: list[int] = []
    chunked_sizes: list[int] = []
    whole = importance_weighted_log_likelihood(replaying_log_weights(one_chunk_sizes), X, num_samples, chunk_size=100)
    chunked = importance_weighted_log_likelihood(replaying_log_weights(chunked_sizes), X, num_samples, chunk_size=30)
    assert one_chunk_sizes == [100] and chunked_sizes == [30, 30, 30, 10]
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)
    # And both are the plain formula log mean exp.
    log_w = replaying_log_weights([])(X, num_samples)
    torch.testing.assert_close(whole, torch.logsumexp(log_w, 0) - math.log(num_samples), rtol=0, atol=1e-12)


def test_mean_over_batches_weights_every_example_once() -> None:
    """Unequal batches: the mean is over examples, not the mean of batch means."""
    batches = [torch.tensor([1.0, 1.0, 1.0]), torch.tensor([5.0])]
    assert mean_over_batches(batches) == pytest.approx(2.0)  # the mean of batch means would be 3
    assert mean_over_batches(iter([torch.tensor([0.1] * 7)])) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        mean_over_batches([])


def test_psnr_by_hand() -> None:
    reference = torch.zeros(2, 1, 4, 4)
    x = reference.clone()
    x[0] += 0.1  # MSE 0.01 in a range of 2: 10 log10(4 / 0.01) = 26.02 dB
    x[1, 0, 0, 0] = 1.0  # MSE 1 / 16: 10 log10(64) = 18.06 dB
    assert psnr(x, reference).tolist() == pytest.approx([10 * math.log10(400), 10 * math.log10(64)])
    assert psnr(x[:1] / 2 + 0.5, reference[:1] / 2 + 0.5, data_range=1.0).item() == pytest.approx(
        10 * math.log10(1 / 0.0025)
    )


def test_psnr_over_a_region_counts_only_its_pixels() -> None:
    reference = torch.zeros(2, 3, 4, 4)
    x = reference.clone()
    x[:, :, :2] = 0.5  # the top half wrong by 0.5 (MSE 0.25 there), the bottom half exact
    top = torch.zeros(1, 1, 4, 4)
    top[..., :2, :] = 1
    assert psnr(x, reference, where=top).tolist() == pytest.approx([10 * math.log10(4 / 0.25)] * 2)
    assert psnr(x, reference, where=1 - top).min() > 100  # exact there: the clamp's 1e-20 floor
    assert psnr(x, reference, where=torch.ones(1, 1, 4, 4)).tolist() == pytest.approx(psnr(x, reference).tolist())


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_equals_scikit_image(channels: int) -> None:
    """Against scikit-image's structural_similarity with Wang et al.'s Gaussian window (sigma 1.5), population
    statistics and the data range of [-1, 1] images, on structured images, noisy copies and unrelated ones."""
    from skimage.metrics import structural_similarity

    torch.manual_seed(0)
    grid = torch.linspace(-1, 1, 28)
    base = torch.sin(3 * grid[None, :] + 2 * grid[:, None])[None, None].repeat(3, channels, 1, 1)  # (3, C, 28, 28)
    others = torch.stack([base[0], (base[1] + 0.3 * torch.randn_like(base[1])).clamp(-1, 1),
                          torch.rand_like(base[2]) * 2 - 1])  # fmt: skip
    ours = ssim(others, base)
    for image, reference, value in zip(others, base, ours, strict=True):
        expected = structural_similarity(
            image.permute(1, 2, 0).numpy().astype(np.float64), reference.permute(1, 2, 0).numpy().astype(np.float64),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0, channel_axis=2,
        )  # fmt: skip
        assert value.item() == pytest.approx(expected, abs=1e-9)
    assert ours[0].item() == pytest.approx(1.0) and ours[1] > ours[2]
