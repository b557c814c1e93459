"""Editing and inverse problems with an unconditional model (editing.py, posterior.py), on data whose exact score is
known: inpainting keeps the known pixels, RePaint's resampling gets nearer the true conditional than replacement,
SDEdit's strength runs from the input to the prior, DPS's samples satisfy the measurement."""

from __future__ import annotations

import itertools

import pytest
import torch

from genlab.diffusion.analytic import CorrelatedGaussian, GaussianMixture
from genlab.diffusion.editing import function_evaluations, inpaint, named_mask, repaint_walk, sdedit
from genlab.diffusion.posterior import GaussianBlur, SuperResolution, dps_sample, measure, replacement_sample
from genlab.diffusion.prediction import Denoiser
from genlab.diffusion.samplers import DDIMSampler, DDPMSampler
from genlab.diffusion.schedules import linear_schedule

SCHEDULE = linear_schedule(1000)


def denoiser_of(data: GaussianMixture | CorrelatedGaussian) -> Denoiser:
    return Denoiser(data.eps_network(SCHEDULE), SCHEDULE, "eps")


def test_repaint_walk_goes_down_the_chain_and_back_up_r_minus_1_times_at_every_jump() -> None:
    assert repaint_walk(5) == [0, 1, 2, 3, 4, 5]  # resamplings = 1: the plain chain
    assert repaint_walk(3, jump_length=1, resamplings=2) == [0, 1, 0, 1, 2, 1, 2, 3]  # Alg. 1 with U = 2
    N, j, r = 40, 5, 4
    walk = repaint_walk(N, j, r)
    assert walk[0] == 0 and walk[-1] == N
    assert all(abs(b - a) == 1 for a, b in itertools.pairwise(walk))
    for position in range(N - 1, j - 1, -j):  # from chain times 0, j, 2j, ... (position N - 1 - t): r - 1 jumps
        ups = [i for i in range(len(walk) - 1) if walk[i] == position and walk[i + 1] == position - 1]
        assert len(ups) == r - 1
        for i in ups:
            assert walk[i : i + j + 1] == list(range(position, position - j - 1, -1))
    # every down-step is one network evaluation: N for the chain, plus j for each of the (N / j - 1)(r - 1) jumps
    assert function_evaluations(N, j, r) == N + j * (N // j - 1) * (r - 1)


def test_repaint_walk_is_the_papers_schedule_worked_by_hand() -> None:
    # RePaint's time schedule for T = 11 reverse steps, jump length 3, 2 samplings: jumps at t = 0, 3, 6 (t < T - j),
    # each one going back up 3 steps once; written out by hand from the paper's schedule, then t -> position 10 - t.
    # (T - 1 is not a multiple of j, so jumps counted from x_T instead, at positions 3, 6, 9, would differ.)
    times = [10, 9, 8, 7, 6, 7, 8, 9, 8, 7, 6, 5, 4, 3, 4, 5, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, -1]
    assert repaint_walk(11, jump_length=3, resamplings=2) == [10 - t for t in times]


@pytest.mark.parametrize("resamplings", [1, 3])
def test_inpainting_keeps_the_known_pixels_exactly(resamplings: int) -> None:
    data = GaussianMixture([-0.5, 0.5], [0.2, 0.2], shape=(1, 8, 8))
    x0 = data.sample(6, torch.Generator().manual_seed(0))
    mask = named_mask("centre", 8)
    generator = torch.Generator().manual_seed(1)
    x_T = torch.randn(x0.shape, generator=generator)
    filled = inpaint(denoiser_of(data), DDPMSampler(SCHEDULE, 20), x0, mask, x_T, generator=generator,
                     resamplings=resamplings)  # fmt: skip
    assert torch.equal(filled * mask, x0 * mask)
    assert not torch.allclose(filled * (1 - mask), x0 * (1 - mask))  # the hole is generated, not copied


def test_repaint_gets_nearer_the_true_conditional_than_replacement() -> None:
    """Two pixels with correlation 0.95; the first is known (1.5), the second should be drawn from N(0.95 * 1.5,
    1 - 0.95^2). Replacement only lets the known pixel in through x_t and lands its samples short of the
    conditional mean; resampling (RePaint, Sec. 4.2) corrects most of that gap."""
    rho = 0.95
    data = CorrelatedGaussian(torch.zeros(2), torch.tensor([[1.0, rho], [rho, 1.0]]))
    known = torch.tensor([[1.5]])
    true_mean, true_variance = data.conditional(known, torch.tensor([0]))
    true_std = true_variance.sqrt().item()
    count = 4000
    x0 = torch.tensor([1.5, 0.0]).repeat(count, 1).reshape(count, 1, 1, 2)
    mask = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    errors, stds = {}, {}
    for resamplings in (1, 10):
        generator = torch.Generator().manual_seed(0)
        x_T = torch.randn(x0.shape, generator=generator)
        filled = inpaint(denoiser_of(data), DDPMSampler(SCHEDULE, 50), x0, mask, x_T, generator=generator,
                         resamplings=resamplings)  # fmt: skip
        errors[resamplings] = abs(filled[..., 1].mean().item() - true_mean.item())
        stds[resamplings] = filled[..., 1].std().item()
    assert errors[1] > 0.3  # replacement's known bias: far outside 4000 samples' standard error (0.005)
    # resampling with the forward process in between: near the conditional's mean and its spread (measured here:
    # mean error 0.03, spread 0.25 against 0.31; without the re-noising the spread collapses to 0.10)
    assert errors[10] < 0.05
    assert abs(stds[10] - true_std) < 0.3 * true_std


def test_sdedit_strength_zero_returns_the_guide_and_one_forgets_it() -> None:
    data = GaussianMixture([-0.5, 0.5], [0.2, 0.2], shape=(1, 4, 4))
    denoise = denoiser_of(data)
    guides = [torch.full((3, 1, 4, 4), value) for value in (-1.0, 1.0)]

    def edit(guide: torch.Tensor, strength: float) -> torch.Tensor:
        return sdedit(denoise, DDPMSampler(SCHEDULE, 25), guide, strength, generator=torch.Generator().manual_seed(0))

    assert torch.equal(edit(guides[0], 0.0), guides[0])
    assert torch.equal(edit(guides[0], 1.0), edit(guides[1], 1.0))  # the same noise, any guide: the same sample
    # in between, the output stays nearer the guide the less it is noised
    distances = [(edit(guides[1], s) - guides[1]).abs().mean().item() for s in (0.1, 0.4, 0.8)]
    assert distances[0] < distances[1] < distances[2]
    sampler = DDIMSampler(SCHEDULE, 25)
    sdedit(denoise, sampler, guides[0], 0.5)
    assert sampler.timesteps[0] == 960  # the caller's sampler keeps its own chain


def test_dps_samples_satisfy_a_noiseless_linear_measurement() -> None:
    """y = A x_0 with A the mean of the first two of four correlated coordinates, no noise. With the exact score,
    DPS's samples meet y closely (its fixed-size steps leave a residual of about the step size's order), where the
    prior's own samples scatter by the prior's spread of A x."""
    covariance = 0.5 * torch.eye(4) + 0.5 * torch.ones(4, 4)
    data = CorrelatedGaussian(torch.zeros(4), covariance)

    def operator(x: torch.Tensor) -> torch.Tensor:
        return x[..., :2].mean(-1, keepdim=True)

    count = 200
    y = torch.full((count, 1, 1, 1), 1.2)
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn((count, 1, 1, 4), generator=generator)
    sampler = DDPMSampler(SCHEDULE, 250)
    posterior = dps_sample(denoiser_of(data), sampler, y, operator, 0.1, x_T, generator=generator)
    prior = sampler.sample(denoiser_of(data), x_T, generator=torch.Generator().manual_seed(0))
    assert (operator(posterior) - y).abs().mean() < 0.05
    assert (operator(prior) - y).abs().mean() > 0.5
    # the unmeasured coordinates follow: E[x_3 | mean(x_1, x_2) = 1.2] = Cov / Var * 1.2 = 0.5 / 0.75 * 1.2 = 0.8
    assert posterior[..., 2:].mean().item() == pytest.approx(0.8, abs=0.15)
    assert prior[..., 2:].mean().abs() < 0.2


def test_replacement_meets_the_super_resolution_measurement_exactly() -> None:
    data = GaussianMixture([-0.5, 0.5], [0.2, 0.2], shape=(1, 8, 8))
    operator = SuperResolution(4)
    x_true = data.sample(4, torch.Generator().manual_seed(0))
    y = measure(operator, x_true, noise_std=0.0)
    generator = torch.Generator().manual_seed(1)
    x_T = torch.randn(x_true.shape, generator=generator)
    restored = replacement_sample(denoiser_of(data), DDPMSampler(SCHEDULE, 20), y, operator, x_T,
                                  generator=generator)  # fmt: skip
    assert torch.allclose(operator(restored), y, atol=1e-5)
    assert operator.pseudo_inverse(y).shape == x_true.shape and torch.allclose(operator(operator.pseudo_inverse(y)), y)


def test_the_blur_is_a_normalised_symmetric_gaussian() -> None:
    blur = GaussianBlur(size=9, sigma=1.5)
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(blur(flat), flat)  # the kernel sums to one
    delta = torch.zeros(1, 1, 17, 17)
    delta[..., 8, 8] = 1
    response = blur(delta)[0, 0, 4:13, 4:13]
    assert torch.allclose(response, blur.kernel[0, 0]) and torch.allclose(response, response.T)
    assert torch.allclose(response, response.flip(0))
    assert response[4, 4] / response[4, 5] == pytest.approx(torch.exp(torch.tensor(0.5 / 1.5**2)).item(), rel=1e-5)
