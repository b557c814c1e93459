"""The final test-NLL estimate (``estimate_test_nll``, the number in the README) against independent computations.

The end-to-end test only asserts NLL > 0, so an averaging bug (dividing by the number of batches, or dropping the
last, smaller batch) would go unnoticed. Here the estimator runs on 37 real test images, not a multiple of any
batch size used, and is checked against log-likelihoods computed in this file in float64:

- exactly, with a VAE whose encoder is the true posterior: encoder weights zero, so q(z|x) = N(0, I) = p(z), and a
  decoder that ignores z (weights zero, a bias per pixel), so that x is independent of z, p(z|x) = p(z) and every
  importance weight w_k = p(x, z_k) / q(z_k|x) equals p(x) whatever noise is drawn;
- by Monte Carlo, with a randomly initialised VAE, against a per-image importance-weighted estimate written out
  here with torch.distributions.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from genlab.core.data import ImageDataset, load_dataset
from genlab.vae.model import VAE, VAEConfig
from genlab.vae.train import estimate_test_nll

NUM_IMAGES = 37  # a prime: no batch size below but 1 and 37 divides it
SIZE = 8
NUM_DIMS = SIZE * SIZE


def first_test_images(value_range: str) -> ImageDataset:
    """The first 37 images of the synthetic test split through the real loader, resized to 1x8x8."""
    data = load_dataset("synthetic", "test", value_range=value_range, image_size=SIZE)
    return ImageDataset(data.name, data.split, data.images[:NUM_IMAGES], data.labels[:NUM_IMAGES],
                        data.captions[:NUM_IMAGES], data.class_names, data.value_range)  # fmt: skip


def exact_posterior_vae(likelihood: str, seed: int = 0) -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """A VAE with q(z|x) = p(z) = p(z|x) and a decoder that ignores z; returns (model, first, second) decoder
    parameters per pixel, float64 (1, 8, 8): Bernoulli logits and None, or the mean and the log-scale/log-std."""
    model = VAE(VAEConfig(image_shape=(1, SIZE, SIZE), architecture="mlp", latent_dim=3, hidden_dims=(5,),
                          activation="tanh", likelihood=likelihood))  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    if likelihood == "bernoulli":
        first, second = 2 * torch.rand(NUM_DIMS, generator=generator) - 1, None  # logits in [-1, 1]
    elif likelihood == "logistic":
        # Means in [-0.5, 0.5], scales in [1, e^0.5]: every bin holds > 1e-5 of the mass, so the estimator's exact
        # CDF difference is used (not its density-times-width fallback for vanishing bins).
        first, second = torch.rand(NUM_DIMS, generator=generator) - 0.5, 0.5 * torch.rand(NUM_DIMS, generator=generator)
    else:  # gaussian on y in [0, 1): means in [0, 1], log-std in [-1, 0]
        first, second = torch.rand(NUM_DIMS, generator=generator), -torch.rand(NUM_DIMS, generator=generator)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        bias = first if second is None else torch.cat([first, second])
        model.decoder.net[-1].bias.copy_(bias)  # decoder output (P * C * H * W,): P = 0 first
    shape = (1, SIZE, SIZE)
    return model, first.double().view(shape), None if second is None else second.double().view(shape)


def logistic_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of 8-bit images (N, 1, 8, 8) under a per-pixel logistic discretised into the 256 bins of [-1, 1],
    the edge bins open (PixelCNN++): sigmoid differences at the bin edges, in float64. -> (N,)"""
    centre = x.double() / 127.5 - 1
    scale = log_scale.exp()
    upper = torch.sigmoid((centre + 1 / 255 - mean) / scale)
    lower = torch.sigmoid((centre - 1 / 255 - mean) / scale)
    probability = torch.where(x == 0, upper, torch.where(x == 255, 1 - lower, upper - lower))
    return probability.log().flatten(1).sum(1)


@pytest.mark.parametrize("batch_size", [1, 10, 16, NUM_IMAGES, 100])
def test_test_nll_is_the_mean_over_every_image_whatever_the_batch_size(batch_size: int) -> None:
    """NLL = -(1/N) sum_i log p(x_i) over all 37 images, and bits/dim = NLL / (D ln 2), for batch sizes that split
    the set into full batches and a smaller last one, one batch, and a batch larger than the set. Dividing by the
    number of batches, or by a full batch per batch, or skipping the last batch, each moves the result."""
    model, mean, log_scale = exact_posterior_vae("logistic")
    data = first_test_images("uint8")
    expected = -logistic_log_likelihood(data.images, mean, log_scale).mean().item()
    result = estimate_test_nll(model, data, num_samples=4, batch_size=batch_size)
    assert result["num_images"] == NUM_IMAGES and result["num_samples"] == 4
    assert result["nll_nats"] == pytest.approx(expected, rel=1e-5)
    assert result["bits_per_dim"] == pytest.approx(expected / (NUM_DIMS * math.log(2)), rel=1e-5)


def test_max_images_averages_over_exactly_the_images_it_reports() -> None:
    """``max_images`` (the periodic estimate's --eval-images) stops after the batch that reaches it: the result is
    the mean over the first ``num_images`` images and says how many that was. At a multiple of the batch size it
    is exactly ``max_images``; otherwise the last batch is used whole (here 30 images for max_images=25)."""
    model, mean, log_scale = exact_posterior_vae("logistic")
    data = first_test_images("uint8")
    per_image = logistic_log_likelihood(data.images, mean, log_scale)
    for max_images, batch_size, used in [(20, 10, 20), (25, 10, 30), (1, 10, 10), (36, 1, 36), (500, 10, 37)]:
        result = estimate_test_nll(model, data, num_samples=2, max_images=max_images, batch_size=batch_size)
        assert result["num_images"] == used, (max_images, batch_size)
        assert result["nll_nats"] == pytest.approx(-per_image[:used].mean().item(), rel=1e-5), (max_images, batch_size)


def test_gaussian_test_nll_goes_through_the_dequantisation_bound_once() -> None:
    """For the Gaussian likelihood on y = (x + u) / 256 the estimate is E_u[-log p(y)] + D log 256 (a bound on the
    discrete -log P(x)). With a decoder that ignores z, E_u[-log N(y; m, s^2)] has a closed form per pixel:
    log s + log(2 pi) / 2 + (((x + 1/2) / 256 - m)^2 + 1 / (12 * 256^2)) / (2 s^2). The estimator draws one u per
    pixel, so it matches up to that noise (sd about 0.003 nats here); forgetting the bound moves it by 355 nats."""
    model, mean, log_std = exact_posterior_vae("gaussian")
    data = first_test_images("uint8")
    torch.manual_seed(0)
    result = estimate_test_nll(model, data, num_samples=1, batch_size=10)
    x = data.images.double()
    squared = ((x + 0.5) / 256 - mean).square() + 1 / (12 * 256**2)
    expected_density_nll = (log_std + 0.5 * math.log(2 * math.pi) + squared / (2 * (2 * log_std).exp())).flatten(1)
    expected = expected_density_nll.sum(1).mean().item() + NUM_DIMS * math.log(256)
    assert result["num_images"] == NUM_IMAGES
    assert result["nll_nats"] == pytest.approx(expected, abs=0.02)
    assert result["bits_per_dim"] == pytest.approx(expected / (NUM_DIMS * math.log(2)), abs=0.02 / NUM_DIMS)


def test_bernoulli_test_nll_is_the_mean_over_dynamically_binarised_images() -> None:
    """On binarised data each image is a fresh x ~ Bernoulli(pixel / 255), so the estimate is, in expectation,
    -(1/N) sum_i sum_d [p_id log sigmoid(b_d) + (1 - p_id) log sigmoid(-b_d)] (b the decoder's logits); the
    binarisation noise gives it a standard deviation of about 0.35 nats here, against a value near 44 nats. No
    bits/dim: binarised MNIST is not 8-bit data."""
    model, logits, _ = exact_posterior_vae("bernoulli")
    data = first_test_images("binary")
    result = estimate_test_nll(model, data, num_samples=2, batch_size=10)
    p = data.images.double() / 255
    per_pixel = p * torch.nn.functional.logsigmoid(logits) + (1 - p) * torch.nn.functional.logsigmoid(-logits)
    variance = (p * (1 - p) * logits.square()).flatten(1).sum(1).sum() / NUM_IMAGES**2  # of the mean over images
    expected = -per_pixel.flatten(1).sum(1).mean().item()
    assert result["num_images"] == NUM_IMAGES and "bits_per_dim" not in result
    assert abs(result["nll_nats"] - expected) < 4 * variance.sqrt().item() + 1e-6


def direct_importance_weighted_nll(model: VAE, images: torch.Tensor, num_samples: int) -> torch.Tensor:
    """-log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) for each image, z_k ~ q(z|x), written out with
    torch.distributions and the float64 logistic above, all K samples of all images at once. -> (N,)"""
    mu, log_var = model.encode(images)  # (N, D)
    q = torch.distributions.Normal(mu.double(), (0.5 * log_var.double()).exp())
    z = q.sample((num_samples,))  # (K, N, D)
    params = model.decode(z.float()).double()  # (K, N, 2, 1, 8, 8)
    x = images.expand(num_samples, *images.shape).flatten(0, 1)  # (K * N, 1, 8, 8)
    mean, log_scale = params[:, :, 0].flatten(0, 1), params[:, :, 1].flatten(0, 1).clamp(min=-7)
    log_px = logistic_log_likelihood(x, mean, log_scale).view(num_samples, len(images))  # (K, N)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_w = log_px + log_pz - q.log_prob(z).sum(-1)  # (K, N)
    return math.log(num_samples) - torch.logsumexp(log_w, dim=0)


@torch.no_grad()
def test_test_nll_matches_a_direct_per_image_importance_weighted_estimate() -> None:
    """With a VAE whose posterior the encoder does not match (random weights), estimate_test_nll equals the mean
    over images of -log (1/K) sum_k w_k computed image by image here, within the Monte Carlo error of the two (about
    0.03 nats; the ELBO (K = 1) is 2.5 nats above, so averaging weights instead of log-sum-exp fails)."""
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_shape=(1, SIZE, SIZE), architecture="mlp", latent_dim=3, hidden_dims=(16,),
                          activation="tanh", likelihood="logistic")).eval()  # fmt: skip
    data = first_test_images("uint8")
    num_samples = 64
    direct = direct_importance_weighted_nll(model, data.images, num_samples)
    result = estimate_test_nll(model, data, num_samples=num_samples, batch_size=10)
    assert result["num_images"] == NUM_IMAGES
    # Two independent estimates: repeat the direct one to measure its spread over draws.
    again = direct_importance_weighted_nll(model, data.images, num_samples)
    spread = (direct - again).std().item() / math.sqrt(NUM_IMAGES)  # sd of a mean's difference, both estimates
    assert result["nll_nats"] == pytest.approx(direct.mean().item(), abs=5 * spread + 1e-3)


class LargestTensor(TorchFunctionMode):
    """Records the size of every tensor any torch function returns (F.interpolate's upsampled maps included)."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if isinstance(result, torch.Tensor):
            self.numel = max(self.numel, result.numel())
        return result


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_no_tensor_of_the_estimate_outgrows_the_memory_budget(architecture: str) -> None:
    """The estimate decodes K samples per image in chunks; a conv decoder's hidden maps (64 channels at full size)
    are 64 times its output, so chunks sized by the output alone ran a Fashion-MNIST conv VAE out of 24 GB."""
    model = VAE(VAEConfig(image_shape=(1, SIZE, SIZE), architecture=architecture, latent_dim=3, hidden_dims=(64, 16),
                          likelihood="bernoulli"))  # fmt: skip
    data, max_values = first_test_images("binary"), 400_000
    with LargestTensor() as largest:
        estimate_test_nll(model, data, num_samples=1000, batch_size=10, max_values=max_values)
    assert max_values / 4 < largest.numel <= max_values  # as large as the budget allows, and no larger
