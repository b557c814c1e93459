"""Ancestral sampling (PixelRNN paper Sec. 2) and the fast cached sampler (Ramachandran et al. 2017).

Every draw is an inverse-CDF transform of a uniform given in advance, so the naive sampler (the whole network per
value) and the cached sampler (one column of the network per pixel, from caches of earlier layer outputs) must
produce the very same images from the same uniforms; float64 models keep the two computations' rounding
differences far below any decision boundary. The naive sampler is checked against the model's own p(x).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genlab.autoregressive.model import ARConfig, AutoregressiveModel
from genlab.autoregressive.objective import log_likelihood
from genlab.autoregressive.sampler import inverse_cdf_draw, sample_cached, sample_naive

TINY = {
    "nade": {"hidden_sizes": (8,)},
    "made": {"hidden_sizes": (16,), "num_masks": 3, "order_agnostic": True},
    "pixelcnn": {"hidden_channels": 6, "num_layers": 2, "head_channels": 6},
    "gated_pixelcnn": {"hidden_channels": 6, "num_layers": 3, "head_channels": 6},
}


def build(
    name: str, image_shape: tuple[int, int, int], levels: int = 2, scale: float = 2.0, **overrides
) -> AutoregressiveModel:
    """A float64 model with the TINY size of ``name``, its parameters scaled up so its conditionals are far from
    uniform (samples then differ from image to image in a structured way)."""
    torch.manual_seed(0)
    config = ARConfig(model=name, image_shape=image_shape, levels=levels, **{**TINY[name], **overrides})
    model = AutoregressiveModel(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


# (model, image shape, levels, classes, temperature)
CASES = [
    ("nade", (1, 5, 5), 2, 0, 1.0),
    ("nade", (1, 5, 5), 2, 0, 0.7),
    ("pixelcnn", (1, 5, 5), 2, 0, 1.0),
    ("pixelcnn", (3, 4, 4), 4, 0, 1.0),
    ("pixelcnn", (3, 4, 4), 256, 0, 0.8),
    ("gated_pixelcnn", (1, 5, 5), 2, 0, 1.0),
    ("gated_pixelcnn", (3, 4, 4), 256, 0, 1.0),
    ("gated_pixelcnn", (1, 5, 5), 2, 3, 1.0),
    ("gated_pixelcnn", (3, 4, 4), 4, 3, 0.7),
]
IDS = [
    f"{name}-{shape[0]}x{shape[1]}x{shape[2]}-L{levels}-classes{classes}-T{t}"
    for name, shape, levels, classes, t in CASES
]


def case_inputs(shape: tuple[int, int, int], levels: int, classes: int, batch: int = 6):
    generator = torch.Generator().manual_seed(7)
    uniforms = torch.rand((batch, *shape), generator=generator, dtype=torch.float64)
    labels = torch.arange(batch) % classes if classes else None
    prefix = torch.randint(levels, (batch, *shape), generator=generator).double()
    return uniforms, labels, prefix


@pytest.mark.parametrize(("name", "shape", "levels", "classes", "temperature"), CASES, ids=IDS)
def test_cached_sampler_draws_exactly_what_the_naive_sampler_draws(
    name: str, shape: tuple[int, int, int], levels: int, classes: int, temperature: float
) -> None:
    """Ramachandran et al. (2017): caching each layer's earlier outputs changes the cost, not the conditionals.
    The same uniforms give the same images, unconditional and class-conditional, binary and L-way colour."""
    model = build(name, shape, levels, num_classes=classes) if classes else build(name, shape, levels)
    uniforms, labels, _ = case_inputs(shape, levels, classes)
    naive = sample_naive(model, uniforms, labels, temperature=temperature)
    cached = sample_cached(model, uniforms, labels, temperature=temperature)
    assert naive.shape == uniforms.shape and naive.dtype == torch.float64
    assert torch.equal(naive, cached)
    assert torch.equal(naive, naive.round()) and naive.min() >= 0 and naive.max() <= levels - 1
    assert len({tuple(image.flatten().tolist()) for image in naive}) == len(naive)  # really random images
    if levels > 2:
        assert len(naive.unique()) > 2  # the softmax draws use more than two levels


@pytest.mark.parametrize(("name", "shape", "levels", "classes", "temperature"), CASES, ids=IDS)
def test_completion_keeps_the_known_values_and_cached_equals_naive(
    name: str, shape: tuple[int, int, int], levels: int, classes: int, temperature: float
) -> None:
    """Completion: the first k values of the generation order come from ``prefix`` unchanged, the rest are drawn
    given them. k = D/2 (the top half of the image) and k = D/2 + 1, which for colour images cuts a pixel between
    its R and its G."""
    model = build(name, shape, levels, num_classes=classes) if classes else build(name, shape, levels)
    uniforms, labels, prefix = case_inputs(shape, levels, classes)
    order = model.generation_order()
    D = math.prod(shape)
    for known in (D // 2, D // 2 + 1):
        naive = sample_naive(model, uniforms, labels, prefix=prefix, known=known, temperature=temperature)
        cached = sample_cached(model, uniforms, labels, prefix=prefix, known=known, temperature=temperature)
        assert torch.equal(naive, cached), known
        kept = order[:known]
        assert torch.equal(naive.flatten(1)[:, kept], prefix.flatten(1)[:, kept])
        drawn = order[known:]  # the rest is drawn, not copied
        assert not torch.equal(naive.flatten(1)[:, drawn], prefix.flatten(1)[:, drawn])
    assert torch.equal(prefix, case_inputs(shape, levels, classes)[2])  # the prefix itself is not written to


def all_images(shape: tuple[int, int, int], levels: int) -> torch.Tensor:
    values = list(itertools.product(range(levels), repeat=math.prod(shape)))
    return torch.tensor(values, dtype=torch.float64).view(-1, *shape)


@pytest.mark.parametrize(
    ("name", "shape", "levels", "mask_index"),
    [("pixelcnn", (1, 2, 2), 2, 0), ("gated_pixelcnn", (1, 1, 2), 3, 0), ("made", (1, 2, 2), 2, 2)],
)
def test_naive_sampler_samples_the_models_distribution(
    name: str, shape: tuple[int, int, int], levels: int, mask_index: int
) -> None:
    """Ancestral sampling draws from p(x) = prod_i p(x_i | x_<i): the empirical frequencies of 20000 samples
    over every possible image match exp(log p) (total variation < 0.03, several times the sampling noise). For
    MADE, mask set 2 is sampled in its own ordering, which must agree with the likelihood of the same mask set."""
    model = build(name, shape, levels, scale=3.0)
    images = all_images(shape, levels)
    with torch.no_grad():
        p = log_likelihood(model(images, mask_index=mask_index), images, levels).exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert 0.5 * (p - 1 / len(p)).abs().sum() > 0.2  # far from uniform, so the comparison below means something
    uniforms = torch.rand((20_000, *shape), generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    samples = sample_naive(model, uniforms, mask_index=mask_index)
    codes = (samples.flatten(1).long() * levels ** torch.arange(math.prod(shape) - 1, -1, -1)).sum(1)
    frequencies = torch.bincount(codes, minlength=len(images)).double() / len(samples)
    total_variation = 0.5 * (frequencies - p).abs().sum().item()
    assert total_variation < 0.03, (frequencies, p)


def test_inverse_cdf_draw_picks_the_smallest_level_whose_cdf_exceeds_u() -> None:
    """x = min {k : u < CDF(k)} for L-way values, 1[u < sigmoid(logit)] for binary ones; temperature divides the
    logits before either."""
    probabilities = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    logits = probabilities.log().expand(5, 3)
    u = torch.tensor([0.0, 0.19, 0.21, 0.51, 0.999], dtype=torch.float64)
    assert inverse_cdf_draw(logits, u, 3).tolist() == [0, 0, 1, 2, 2]
    binary = inverse_cdf_draw(torch.zeros(4, dtype=torch.float64), torch.tensor([0.1, 0.49, 0.51, 0.9]), 2)
    assert binary.tolist() == [1, 1, 0, 0]
    cold = inverse_cdf_draw(torch.full((2,), 1.0), torch.tensor([0.9, 0.95]), 2, temperature=0.1)
    assert cold.tolist() == [1, 1]  # sigmoid(10) > 0.9999
    cold_softmax = inverse_cdf_draw(logits[:2], torch.tensor([0.5, 0.9], dtype=torch.float64), 3, temperature=0.05)
    assert cold_softmax.tolist() == [2, 2]  # at low temperature the mode takes (almost) all the mass


def test_made_has_no_cached_sampler() -> None:
    """MADE's conditionals come out of one masked MLP pass with no per-pixel cache: sample_cached refuses it
    (and sample_naive still works)."""
    model = build("made", (1, 2, 2))
    uniforms = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="no cached sampler"):
        sample_cached(model, uniforms)
    assert sample_naive(model, uniforms).shape == (2, 1, 2, 2)
