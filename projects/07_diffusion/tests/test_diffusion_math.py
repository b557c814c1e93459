"""What the papers say must hold: the forward process, the samplers and the likelihood on data whose scores are
known in closed form, the objectives' weightings, and guidance."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.diffusion.analytic import GaussianMixture
from genlab.diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance
from genlab.diffusion.model import UNet, UNetConfig
from genlab.diffusion.objective import diffusion_loss, drop_labels, elbo_bits_per_dim, vlb_term
from genlab.diffusion.prediction import Denoiser, DenoiserOutput, eps_to_score, from_x0_and_eps, to_x0_and_eps
from genlab.diffusion.samplers import DDIMSampler, DDPMSampler, make_sampler
from genlab.diffusion.schedules import cosine_schedule, linear_schedule, make_schedule, sigmoid_schedule
from genlab.diffusion.sde import (
    VESDE,
    VPSDE,
    noise_level_grid,
    ode_log_likelihood,
    predictor_corrector_sample,
    probability_flow_sample,
    score_from_denoiser,
)

MIXTURE = GaussianMixture(means=[-0.6, 0.5], stds=[0.15, 0.25], weights=[0.3, 0.7])
GAUSSIAN = GaussianMixture(means=[0.3], stds=[0.5])


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- the forward process ----


@pytest.mark.parametrize("schedule", [linear_schedule(), cosine_schedule(), sigmoid_schedule()], ids=lambda s: s.name)
def test_closed_form_q_matches_the_iterated_chain(schedule) -> None:
    """x_t by eq. 4 in one draw, and by t steps of q(x_t | x_{t-1}) (eq. 2), have the same mean and variance."""
    x0 = torch.full((40_000, 1, 1, 1), 0.8)
    torch.manual_seed(0)
    for t in (50, 400):
        chain = x0
        for step in range(t + 1):
            chain = schedule.q_step(chain, torch.full((len(x0),), step), torch.randn_like(x0))
        closed = schedule.q_sample(x0, torch.full((len(x0),), t), torch.randn_like(x0))
        alpha, sigma = schedule.alpha_sigma(torch.tensor([t]))
        for draws in (chain, closed):
            assert abs(draws.mean().item() - 0.8 * alpha.item()) < 4 * sigma.item() / math.sqrt(len(x0))
            assert abs(draws.var().item() / sigma.item() ** 2 - 1) < 0.03


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_schedules_run_from_data_to_noise(name: str) -> None:
    schedule = make_schedule(name)
    log_snr = schedule.log_snr(torch.arange(1000))
    assert (log_snr[1:] < log_snr[:-1]).all()  # the SNR falls at every step
    assert log_snr[0] > 6 and log_snr[-1] < -8  # almost clean at t = 0, almost pure noise at T - 1
    alpha, sigma = schedule.alpha_sigma(torch.arange(1000))
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(1000))  # variance preserving
    fractional = schedule.timestep_of_sigma(schedule.sigma_ve(torch.tensor([123.25, 700.5])))
    torch.testing.assert_close(fractional, torch.tensor([123.25, 700.5]), atol=0.02, rtol=0)


def test_cosine_schedule_is_improved_ddpms_formula() -> None:
    """alpha_bar_t = f(t) / f(0), f(t) = cos((t/T + s) / (1 + s) pi / 2)^2, below the 0.999 clip (eq. 17)."""
    schedule, T, s = cosine_schedule(), 1000, 0.008
    t = torch.arange(1, 900, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    torch.testing.assert_close(schedule.alphas_cumprod[t.long() - 1], f / f0)


# ---- predictions and scores ----


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_types_convert_into_each_other(prediction: str) -> None:
    x0, eps = torch.randn(5, 1, 3, 3, generator=generator(1)), torch.randn(5, 1, 3, 3, generator=generator(2))
    alpha, sigma = linear_schedule().alpha_sigma(torch.tensor([3, 100, 400, 700, 999]))
    x_t = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps
    target = from_x0_and_eps(x0, eps, prediction, alpha, sigma)
    x0_back, eps_back = to_x0_and_eps(target, prediction, x_t, alpha, sigma)
    torch.testing.assert_close(x0_back, x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(eps_back, eps, atol=1e-4, rtol=1e-4)


def test_eps_prediction_is_the_score_times_minus_sigma() -> None:
    """Denoising score matching: -eps / sigma is grad log q(x_t | x_0), and the ideal eps-network of the mixture,
    divided by -sigma, is grad log p_t (checked against autograd of the mixture's log density)."""
    schedule = linear_schedule()
    t = torch.full((6,), 300)
    alpha, sigma = schedule.alpha_sigma(t)
    x0, eps = MIXTURE.sample(6, generator(3)), torch.randn(6, 1, 2, 2, generator=generator(4))
    x_t = (alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps).requires_grad_(True)
    log_q = -0.5 * ((x_t - alpha.view(-1, 1, 1, 1) * x0) ** 2 / sigma.view(-1, 1, 1, 1) ** 2).sum()
    (conditional_score,) = torch.autograd.grad(log_q, x_t)
    torch.testing.assert_close(eps_to_score(eps, sigma), conditional_score, atol=1e-4, rtol=1e-4)
    (marginal_score,) = torch.autograd.grad(MIXTURE.log_prob(x_t, alpha, sigma).sum(), x_t)
    ideal_eps = MIXTURE.eps_network(schedule)(x_t.detach(), t.float())
    torch.testing.assert_close(eps_to_score(ideal_eps, sigma), marginal_score.float(), atol=1e-4, rtol=1e-4)


# ---- samplers driven by the exact score ----


def assert_moments(samples: torch.Tensor, data: GaussianMixture, tolerance: float = 0.03) -> None:
    assert abs(samples.mean().item() - data.mean) < tolerance, (samples.mean().item(), data.mean)
    assert abs(samples.var().item() / data.variance - 1) < 4 * tolerance, (samples.var().item(), data.variance)


def standard_noise(count: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """N(0, I) draws standardised to mean 0 and variance 1 exactly, so the tests see the samplers' errors, not the
    noise's."""
    x = torch.randn(count, *shape, generator=generator(seed))
    return (x - x.mean()) / x.std()


@pytest.mark.parametrize("data", [GAUSSIAN, MIXTURE], ids=["gaussian", "mixture"])
@pytest.mark.parametrize(("name", "steps", "extra"), [
    ("ddpm", 1000, {}), ("ddpm", 100, {"variance": "beta"}), ("ddim", 200, {}), ("ddim", 200, {"eta": 1.0}),
    ("euler", 200, {}), ("heun", 30, {}), ("heun", 40, {"spacing": "karras"}),
])  # fmt: skip
def test_discrete_samplers_with_the_exact_score_recover_the_data(data, name: str, steps: int, extra: dict) -> None:
    schedule = linear_schedule()
    sampler = make_sampler(name, schedule, steps, **extra)
    x_T = standard_noise(3000, data.shape, 5)
    samples = sampler.sample(Denoiser(data.eps_network(schedule), schedule), x_T, generator=generator(6))
    assert_moments(samples, data, tolerance=0.02)
    if data is MIXTURE:  # the modes' weights: the fraction of samples nearer the second mean
        second = (samples.mean(dim=(1, 2, 3)) > 0).float().mean().item()
        assert abs(second - 0.7) < 0.03


@pytest.mark.parametrize(
    ("name", "steps", "spacing"), [("heun", 50, None), ("heun", 60, "karras"), ("ddim", 1000, None)]
)
def test_deterministic_samplers_follow_the_exact_flow_map(name: str, steps: int, spacing: str | None) -> None:
    """For Gaussian data N(mu, s^2) the probability-flow ODE maps x_T to mu + s (x_T - alpha_T mu) / sqrt(alpha_T^2
    s^2 + sigma_T^2), pointwise: the ODE samplers must land there, not just on the right moments. (DDIM needs many
    steps for this: at 50 it shrinks the variance by about 10%, a first-order sampler's bias.)"""
    schedule = linear_schedule()
    x_T = torch.randn(500, *GAUSSIAN.shape, generator=generator(17))
    mu, s = GAUSSIAN.mean, math.sqrt(GAUSSIAN.variance)
    alpha, sigma = (v.item() for v in schedule.alpha_sigma(torch.tensor([999])))
    start = 999 if name == "heun" else make_sampler(name, schedule, steps, spacing).timesteps[0]
    alpha, sigma = (v.item() for v in schedule.alpha_sigma(torch.tensor([start])))
    exact = mu + s * (x_T - alpha * mu) / math.sqrt(alpha**2 * s**2 + sigma**2)
    samples = make_sampler(name, schedule, steps, spacing).sample(
        Denoiser(GAUSSIAN.eps_network(schedule), schedule), x_T
    )
    assert (samples - exact).abs().max().item() < 0.02


def vp_score(data: GaussianMixture, sde: VPSDE):
    return lambda x, t: data.score(x, *sde.marginal(t))


def ve_score(data: GaussianMixture, sde: VESDE):
    # VE's forward variance from x_0 is sigma(t)^2 - sigma_min^2
    return lambda x, t: data.score(x, torch.ones_like(t), (sde.sigma(t) ** 2 - sde.sigma_min**2).sqrt())


@pytest.mark.parametrize("data", [GAUSSIAN, MIXTURE], ids=["gaussian", "mixture"])
@pytest.mark.parametrize("kind", ["vp-pc", "vp-predictor", "ve-pc", "ve-predictor", "vp-ode", "ve-ode"])
def test_score_sde_samplers_with_the_exact_score_recover_the_data(data, kind: str) -> None:
    sde = VPSDE() if kind.startswith("vp") else VESDE()
    score = vp_score(data, sde) if kind.startswith("vp") else ve_score(data, sde)
    x_T = sde.prior_sample((3000, *data.shape), generator(7))
    if kind.endswith("ode"):
        samples = probability_flow_sample(sde, score, x_T, num_steps=200)
    else:
        corrector_steps = 0 if kind.endswith("predictor") else 1
        samples = predictor_corrector_sample(sde, score, x_T, 500, corrector_steps, generator=generator(8))
    assert_moments(samples, data, tolerance=0.04)


# sigma_max = 200: the VE prior N(0, sigma_max^2) stands in for p_1 = data * N(0, sigma_max^2); at 200 the
# difference in log density is below 0.01 nats here
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=200.0)], ids=["vp", "ve"])
@pytest.mark.parametrize("exact_trace", [True, False])
def test_ode_likelihood_matches_the_exact_density(sde, exact_trace: bool) -> None:
    """The instantaneous change of variables along the probability-flow ODE gives log p_0 of the mixture (exact
    trace; Hutchinson's estimate is unbiased, so its mean over the points matches)."""
    x0 = MIXTURE.sample(200, generator(9))
    score = vp_score(MIXTURE, sde) if isinstance(sde, VPSDE) else ve_score(MIXTURE, sde)
    estimate = ode_log_likelihood(sde, score, x0, num_steps=200, exact_trace=exact_trace, generator=generator(10))
    exact = MIXTURE.log_prob(x0)
    if exact_trace:
        torch.testing.assert_close(estimate, exact, atol=0.05, rtol=0)
    else:
        assert abs((estimate - exact).mean().item()) < 0.1


# data as narrow as 8-bit pixels (a bin of 8-bit data in [-1, 1] is 1/128 wide): its score near t = 0 is
# of size 1 / sigma(t)^2, the stiffness that broke the likelihood of a trained network on a grid uniform in t
PIXEL_LIKE = GaussianMixture(means=[-1.0, 0.2], stds=[0.003, 0.003], weights=[0.6, 0.4])


@pytest.mark.parametrize("t_min", [1e-5, 1e-3])
def test_ode_likelihood_of_pixel_narrow_data_matches_the_exact_density(t_min: float) -> None:
    """From t_min the change of variables gives log p_{t_min}(x0) exactly, even where p_t is sharp: the grid
    (equal steps in log sigma) must resolve the time scale of the score near t = 0."""
    sde = VPSDE()
    x0 = PIXEL_LIKE.sample(100, generator(12))
    estimate = ode_log_likelihood(sde, vp_score(PIXEL_LIKE, sde), x0, 200, t_min, exact_trace=True)
    alpha, sigma = sde.marginal(torch.tensor([t_min], dtype=torch.float64))
    exact = PIXEL_LIKE.log_prob(x0, alpha, sigma)
    torch.testing.assert_close(estimate, exact, atol=0.05, rtol=0)


def test_the_noise_level_grid_is_uniform_in_log_sigma_and_ends_at_its_bounds() -> None:
    vp, ve = VPSDE(), VESDE()
    times = noise_level_grid(vp, 50, 1e-4)
    assert times[0].item() == 1e-4 and times[-1].item() == 1.0 and (times.diff() > 0).all()
    alpha, sigma = vp.marginal(times)
    log_ratio_steps = (sigma / alpha).log().diff()
    torch.testing.assert_close(log_ratio_steps, torch.full_like(log_ratio_steps, log_ratio_steps.mean().item()))
    # the VE SDE's log sigma is linear in t: its grid is the uniform one
    torch.testing.assert_close(noise_level_grid(ve, 10, 0.0), torch.linspace(0, 1, 11, dtype=torch.float64))


def test_a_ddpm_network_as_a_score_is_asked_about_the_sdes_noise_level() -> None:
    """score_from_denoiser calls the network at the DDPM timestep whose sigma / alpha is the VP SDE's at t, and
    divides its eps by the SDE's sigma (at t near 0 the two readings of "timestep t (N - 1)" differ by half)."""
    schedule, vp = linear_schedule(), VPSDE()
    asked = {}

    def denoise(x: torch.Tensor, timestep: torch.Tensor, condition: object) -> DenoiserOutput:
        asked["timestep"] = timestep
        return DenoiserOutput(torch.zeros_like(x), torch.ones_like(x))

    times = torch.tensor([1e-3, 3e-3, 0.05, 0.3, 0.7, 1.0])
    score = score_from_denoiser(denoise, vp, schedule)(torch.zeros(len(times), 1, 2, 2), times)
    alpha, sigma = vp.marginal(times)
    network_alpha, network_sigma = schedule.alpha_sigma(asked["timestep"])
    torch.testing.assert_close(network_sigma / network_alpha, sigma / alpha, rtol=0.01, atol=0)
    torch.testing.assert_close(score, -1 / sigma.reshape(-1, 1, 1, 1).expand_as(score))


def test_ddim_with_eta_zero_is_deterministic_and_inverts() -> None:
    schedule = linear_schedule()
    denoiser = Denoiser(MIXTURE.eps_network(schedule), schedule)
    x_T = torch.randn(500, *MIXTURE.shape, generator=generator(11))
    sampler = DDIMSampler(schedule, 50)
    first = sampler.sample(denoiser, x_T, generator=generator(1))
    torch.testing.assert_close(sampler.sample(denoiser, x_T, generator=generator(2)), first, atol=0, rtol=0)
    stochastic = DDIMSampler(schedule, 50, eta=1.0)
    assert not torch.allclose(stochastic.sample(denoiser, x_T, generator=generator(1)),
                              stochastic.sample(denoiser, x_T, generator=generator(2)))  # fmt: skip
    x0 = MIXTURE.sample(500, generator(12))
    errors = {}
    for steps in (20, 200):
        inverter = DDIMSampler(schedule, steps)
        latent = inverter.invert(denoiser, x0)
        errors[steps] = (inverter.sample(denoiser, latent) - x0).abs().mean().item()
    assert abs(latent.std().item() - 1) < 0.05  # the 200-step inversion lands on N(0, I)-like noise
    assert errors[200] < 0.02 and errors[200] < errors[20] / 3, errors


@pytest.mark.parametrize("steps", [10, 1000])
def test_ddim_with_eta_one_is_the_ddpm_step(steps: int) -> None:
    """DDIM, Sec. 4.1: with eta = 1 the generalised step is DDPM's ancestral step with variance beta_tilde, on the
    full chain and on a respaced one. Given one x0 prediction, its eps (so both see the same x_t), and one noise
    draw, the two updates agree at every step of the schedule."""
    schedule = linear_schedule()
    ddim, ddpm = DDIMSampler(schedule, steps, eta=1.0), DDPMSampler(schedule, steps, variance="beta_tilde")
    assert ddim.timesteps == ddpm.timesteps
    x_t, x0 = torch.randn(2, 64, 1, 2, 2, generator=generator(13))
    for index in range(0, steps, max(1, steps // 10)):
        t, t_prev = ddim.timesteps[index], ddim.previous_timestep(index)
        alpha, sigma = schedule.alpha_sigma(torch.full((64,), t))
        prediction = DenoiserOutput(x0, to_x0_and_eps(x0, "x0", x_t, alpha, sigma)[1])
        noise = torch.randn(x_t.shape, generator=generator(index))
        ours, reference = ddim.update(prediction, x_t, t, t_prev, noise), ddpm.update(prediction, x_t, t, t_prev, noise)
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_respaced_ddpm_uses_the_respaced_betas() -> None:
    """On N < T steps the step variance is beta = 1 - alpha_bar_t / alpha_bar_t_prev (Nichol & Dhariwal, Sec. 4):
    one step from t = 500 to 250 with x0_hat = x_t = 0 has standard deviation sqrt(beta_tilde) of that jump."""
    schedule = linear_schedule()
    sampler = DDPMSampler(schedule, 4)
    assert sampler.timesteps == [750, 500, 250, 0]
    zeros = torch.zeros(20_000, 1, 1, 1)
    x = sampler.update(DenoiserOutput(zeros, zeros), zeros, 500, 250, torch.randn_like(zeros))
    a, a_prev = schedule.alphas_cumprod[500], schedule.alphas_cumprod[250]
    beta_tilde = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
    assert abs(x.std().item() / beta_tilde.sqrt().item() - 1) < 0.02


# ---- objectives ----


def affine_network(x_t: torch.Tensor, t: torch.Tensor, _condition=None) -> torch.Tensor:
    """A fixed imperfect eps-predictor: the loss terms below are non-trivial but known."""
    return 0.4 * x_t + 0.002 * t.view(-1, 1, 1, 1) - 0.3


def test_elbo_weighting_of_the_weighted_loss_equals_the_vlb() -> None:
    """With w = 1 the weighted loss, averaged over t = 1 .. T-1, is the sum of the VLB's KL terms L_{t-1}, computed
    here independently from DDPM's eq. 11 mean mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t)
    and the Gaussian KL with the posterior variance beta_tilde."""
    schedule = linear_schedule(50)
    x0 = MIXTURE.sample(8, generator(13))
    D = x0[0].numel()
    weighted, kls, ours_kl, kls_wide, ours_wide = [], [], [], [], []
    for step in range(1, 50):
        t = torch.full((8,), step)
        torch.manual_seed(step)
        loss, _ = diffusion_loss(affine_network, schedule, x0, weighting="elbo", t=t)
        weighted.append(loss.item() * D)
        torch.manual_seed(step)
        eps = torch.randn_like(x0)
        x_t = schedule.q_sample(x0, t, eps)
        eps_hat = affine_network(x_t, t.float())
        beta, alpha_bar = schedule.betas[step].item(), schedule.alphas_cumprod[step].item()
        alpha_bar_prev = schedule.alphas_cumprod[step - 1].item()
        model_mean = (x_t - beta / math.sqrt(1 - alpha_bar) * eps_hat) / math.sqrt(1 - beta)  # eq. 11
        true_mean = (
            math.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar) * x0
            + math.sqrt(1 - beta) * (1 - alpha_bar_prev) / (1 - alpha_bar) * x_t
        )  # eq. 7
        beta_tilde = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
        kls.append(((true_mean - model_mean) ** 2 / (2 * beta_tilde)).flatten(1).sum(1).mean().item())
        x0_hat = (x_t - math.sqrt(1 - alpha_bar) * eps_hat) / math.sqrt(alpha_bar)
        log_variance = torch.full_like(x0, math.log(beta_tilde))
        ours_kl.append(vlb_term(schedule, x0, x_t, t, x0_hat, log_variance).mean().item())
        # with the model's variance beta_t (DDPM's other fixed choice) the KL has its log and trace terms too
        wide = (math.log(beta / beta_tilde) + beta_tilde / beta - 1) / 2 + (true_mean - model_mean) ** 2 / (2 * beta)
        kls_wide.append(wide.flatten(1).sum(1).mean().item())
        ours_wide.append(vlb_term(schedule, x0, x_t, t, x0_hat, torch.full_like(x0, math.log(beta))).mean().item())
    assert sum(weighted) / len(weighted) == pytest.approx(sum(kls), rel=1e-4)
    assert ours_kl == pytest.approx(kls, rel=1e-4)
    assert ours_wide == pytest.approx(kls_wide, rel=1e-4)


def test_elbo_of_an_ideal_denoiser_is_the_decoders_bin_mass() -> None:
    """Images of one gray level k, and the exact denoiser of that point mass: every KL term vanishes, so the ELBO is
    L_T (tiny) plus the decoder's -log2 of the mass N(x_0, beta_tilde_1) puts on the bin [x0 - 1/255, x0 + 1/255]
    (DDPM eq. 13, whose variance at t = 1 is Improved DDPM's clipped beta_tilde_1). An ignorant denoiser (eps_hat =
    0) pays bits/dim for every step."""
    schedule = linear_schedule()
    x0 = torch.full((4, 1, 2, 2), 2 * 77 / 255 - 1)
    point = GaussianMixture(means=[x0[0, 0, 0, 0].item()], stds=[1e-4])
    good = elbo_bits_per_dim(Denoiser(point.eps_network(schedule), schedule), x0)
    a = schedule.alphas_cumprod
    beta_tilde_1 = ((1 - a[0]) / (1 - a[1]) * schedule.betas[1]).item()
    half_bin = (1 / 255) / math.sqrt(beta_tilde_1)
    decoder = -math.log2(math.erf(half_bin / math.sqrt(2)))  # Phi(h) - Phi(-h) = erf(h / sqrt 2)
    assert good["prior"].max() < 1e-3 and good["diffusion"].max() < 1e-3
    torch.testing.assert_close(good["decoder"], torch.full((4,), decoder, dtype=torch.float64), atol=1e-3, rtol=0)
    bad = elbo_bits_per_dim(Denoiser(lambda x, t, c: torch.zeros_like(x), schedule), x0)["bits_per_dim"]
    assert bad.min() > good["bits_per_dim"].max() + 3


@pytest.mark.parametrize(("prediction", "weighting", "learned"), [
    ("eps", "simple", False), ("v", "simple", False), ("x0", "simple", False), ("eps", "elbo", False),
    ("eps", "sigmoid", False), ("eps", "simple", True),
])  # fmt: skip
def test_the_loss_falls_on_a_small_structured_batch(prediction: str, weighting: str, learned: bool) -> None:
    torch.manual_seed(0)
    network = UNet(UNetConfig(image_channels=1, image_size=8, base_channels=16, channel_multipliers=(1, 2),
                              residual_blocks=1, attention_resolutions=(), groups=8, dropout=0.0,
                              learned_variance=learned))  # fmt: skip
    x0 = torch.zeros(16, 1, 8, 8)
    x0[:, :, 2:6, 2:6] = 1.0  # a bright square on black: structure a network can learn in a few steps
    x0 = x0 * 2 - 1
    schedule = linear_schedule(100)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    t = torch.randint(1, 100, (16,), generator=generator(14))

    def loss_now() -> float:
        torch.manual_seed(99)
        return diffusion_loss(network, schedule, x0, prediction=prediction, weighting=weighting,
                              learned_variance=learned, t=t)[0].item()  # fmt: skip

    before = loss_now()
    for _ in range(60):
        loss, _ = diffusion_loss(network, schedule, x0, prediction=prediction, weighting=weighting,
                                 learned_variance=learned)  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_now() < 0.6 * before


# ---- guidance ----


def test_label_dropout_replaces_the_given_fraction_by_the_null_label() -> None:
    labels = torch.arange(20_000) % 10
    torch.manual_seed(0)
    dropped = drop_labels(labels, 0.1, null_label=10)
    replaced = dropped != labels
    assert abs(replaced.float().mean().item() - 0.1) < 0.01 and (dropped[replaced] == 10).all()
    assert torch.equal(drop_labels(labels, 0.0, 10), labels)


def test_classifier_free_guidance_at_scales_zero_and_one() -> None:
    def network(x, t, labels):  # eps-part = label value (null label 10 -> -1), variance part = label / 10
        value = torch.where(labels == 10, -1.0, labels.float()).view(-1, 1, 1, 1)
        return torch.cat([x * 0 + value, x * 0 + labels.view(-1, 1, 1, 1) / 10], dim=1)

    x, t, labels = torch.zeros(3, 1, 2, 2), torch.full((3,), 5.0), torch.tensor([2, 4, 7])
    conditional, unconditional = network(x, t, labels), network(x, t, torch.full_like(labels, 10))
    torch.testing.assert_close(ClassifierFreeGuidance(network, 1.0, 10)(x, t, labels), conditional)
    torch.testing.assert_close(ClassifierFreeGuidance(network, 0.0, 10)(x, t, labels), unconditional)
    guided = ClassifierFreeGuidance(network, 3.0, 10)(x, t, labels)
    torch.testing.assert_close(guided[:, :1], unconditional[:, :1] + 3 * (conditional[:, :1] - unconditional[:, :1]))
    torch.testing.assert_close(guided[:, 1:], conditional[:, 1:])  # the variance channels are not guided


def test_classifier_guidance_with_the_exact_classifier_gives_the_conditional_model() -> None:
    """For a mixture whose classes are its components, p(y | x_t) is the responsibility; guiding the exact
    unconditional eps with it at scale 1 gives the exact eps of the class-y component (Bayes: grad log p(x|y) =
    grad log p(x) + grad log p(y|x)), and DDIM sampling then lands on that component."""
    schedule = linear_schedule()
    components = [GaussianMixture([m], [s]) for m, s in zip([-0.6, 0.5], [0.15, 0.25], strict=True)]

    def classifier(x, t):
        alpha, sigma = schedule.alpha_sigma(t.detach().cpu())
        log_probs, _, _ = MIXTURE._component_log_probs(x, alpha, sigma)
        return log_probs.float()

    guided = ClassifierGuidance(Denoiser(MIXTURE.eps_network(schedule), schedule), classifier, schedule, 1.0)
    x_t = torch.randn(64, *MIXTURE.shape, generator=generator(15))
    t = torch.full((64,), 400.0)
    for label, component in enumerate(components):
        labels = torch.full((64,), label)
        expected = component.eps_network(schedule)(x_t, t)
        torch.testing.assert_close(guided(x_t, t, labels).eps, expected, atol=1e-4, rtol=1e-4)
    samples = make_sampler("heun", schedule, 80).sample(guided, standard_noise(2000, MIXTURE.shape, 16),
                                                        torch.zeros(2000, dtype=torch.long))  # fmt: skip
    assert_moments(samples, components[0])
