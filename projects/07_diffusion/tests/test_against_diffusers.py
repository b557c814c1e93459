"""Schedules and sampler steps against diffusers' reference schedulers, on the same inputs."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from genlab.diffusion.analytic import GaussianMixture
from genlab.diffusion.prediction import Denoiser, DenoiserOutput, to_x0_and_eps
from genlab.diffusion.samplers import DDIMSampler, DDPMSampler, ProbabilityFlowSampler, spaced_timesteps
from genlab.diffusion.schedules import cosine_schedule, linear_schedule

DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
MIXTURE = GaussianMixture(means=[-0.5, 0.6], stds=[0.2, 0.3], weights=[0.4, 0.6])


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, 2, 4, 4, generator=generator), torch.randn(3, 2, 4, 4, generator=generator)


@pytest.mark.parametrize(("ours", "name"), [(linear_schedule, "linear"), (cosine_schedule, "squaredcos_cap_v2")])
def test_schedule_tables_equal_diffusers(ours, name: str) -> None:
    schedule, reference = ours(), DDPMScheduler(beta_schedule=name)
    # diffusers keeps its tables in float32: agreement to float32 precision
    torch.testing.assert_close(schedule.betas.float(), reference.betas, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(schedule.alphas_cumprod.float(), reference.alphas_cumprod, rtol=1e-5, atol=1e-7)
    euler = EulerDiscreteScheduler(beta_schedule=name)
    euler.set_timesteps(1000)
    torch.testing.assert_close(schedule.sigmas_ve.float().flip(0), euler.sigmas[:-1], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 10, 50, 999, 1000])
def test_spaced_timesteps_equal_diffusers(spacing: str, steps: int) -> None:
    if spacing == "linspace" and steps == 1:
        # np.linspace(0, T - 1, 1) is [0]: diffusers' one "linspace" step would start from t = 0, an image that
        # was never noised; ours is the linspace's other end, T - 1, where sampling starts
        assert spaced_timesteps(1000, 1, "linspace") == [999]
        return
    for scheduler in (DDIMScheduler(timestep_spacing=spacing), DDPMScheduler(timestep_spacing=spacing)):
        scheduler.set_timesteps(steps)
        assert spaced_timesteps(1000, steps, spacing) == scheduler.timesteps.tolist()


@pytest.mark.parametrize("variance", ["beta_tilde", "beta", "learned"])
@pytest.mark.parametrize("steps", [1000, 20])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_step_equals_diffusers(variance: str, steps: int, prediction: str) -> None:
    """One ancestral step from every third timestep, same model output and the same noise (drawn by the same
    generator), equals DDPMScheduler.step, on all T steps and on a respaced chain of 20."""
    diffusers_variance = {"beta_tilde": "fixed_small", "beta": "fixed_large", "learned": "learned_range"}[variance]
    reference = DDPMScheduler(variance_type=diffusers_variance, prediction_type=DIFFUSERS_PREDICTION[prediction],
                              clip_sample=False)  # fmt: skip
    reference.set_timesteps(steps)
    schedule = linear_schedule()
    sampler = DDPMSampler(schedule, steps, "leading", variance)
    x_t, output = inputs()
    raw_variance = torch.rand_like(output) * 2 - 1
    for index in range(0, len(sampler.timesteps), 3):
        t, t_prev = sampler.timesteps[index], sampler.previous_timestep(index)
        alpha, sigma = schedule.alpha_sigma(torch.full((3,), t))
        x0, eps = to_x0_and_eps(output, prediction, x_t, alpha, sigma)
        prediction_out = DenoiserOutput(x0, eps, (raw_variance + 1) / 2 if variance == "learned" else None)
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(index))
        ours = sampler.update(prediction_out, x_t, t, t_prev, noise if t_prev >= 0 else None)
        model_output = torch.cat([output, raw_variance], 1) if variance == "learned" else output
        theirs = reference.step(model_output, t, x_t, generator=torch.Generator().manual_seed(index)).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_step_equals_diffusers(eta: float, spacing: str, prediction: str) -> None:
    """eq. 12 equals DDIMScheduler.step at every step of a 50-step schedule (T // N = 20 divides T, so diffusers'
    t - T // N is our next timestep for both spacings), with eta's noise from the same generator."""
    reference = DDIMScheduler(timestep_spacing=spacing, prediction_type=DIFFUSERS_PREDICTION[prediction],
                              clip_sample=False, set_alpha_to_one=True)  # fmt: skip
    reference.set_timesteps(50)
    schedule = linear_schedule()
    sampler = DDIMSampler(schedule, 50, eta, spacing)
    assert sampler.timesteps == reference.timesteps.tolist()
    x_t, output = inputs(1)
    for index, t in enumerate(sampler.timesteps):
        alpha, sigma = schedule.alpha_sigma(torch.full((3,), t))
        x0, eps = to_x0_and_eps(output, prediction, x_t, alpha, sigma)
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(index))
        ours = sampler.update(DenoiserOutput(x0, eps), x_t, t, sampler.previous_timestep(index), noise)
        theirs = reference.step(output, t, x_t, eta=eta, generator=torch.Generator().manual_seed(index)).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def run_diffusers_ode(scheduler, network, x_T: torch.Tensor) -> torch.Tensor:
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(network(model_input, torch.full((len(x),), float(t)), None), t, x).prev_sample
    return x


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing", "karras"])
def test_euler_and_heun_trajectories_equal_diffusers(order: int, spacing: str) -> None:
    """Driven by the same (exact, mixture) denoiser for 12 steps, our Euler / Heun ends where diffusers' does."""
    cls = EulerDiscreteScheduler if order == 1 else HeunDiscreteScheduler
    karras = spacing == "karras"
    reference = cls(beta_start=1e-4, beta_end=0.02, timestep_spacing="linspace" if karras else spacing,
                    use_karras_sigmas=karras)  # fmt: skip
    reference.set_timesteps(12)
    schedule = linear_schedule()
    network = MIXTURE.eps_network(schedule)
    sampler = ProbabilityFlowSampler(schedule, 12, order, spacing)
    reference_sigmas = reference.sigmas.unique_consecutive().double()  # Heun's list repeats each inner sigma
    torch.testing.assert_close(
        torch.tensor(sampler.sigmas, dtype=torch.float64), reference_sigmas, rtol=1e-4, atol=1e-4
    )
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    ours = sampler.sample(Denoiser(network, schedule), x_T)
    theirs = run_diffusers_ode(reference, network, x_T)
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)
    evaluations = 12 if order == 1 else 23
    assert sampler.function_evaluations == evaluations == len(reference.timesteps)


@pytest.mark.parametrize("steps", [10, 20])
def test_ddim_with_the_samplers_x0_clipping_equals_diffusers(steps: int) -> None:
    """The path diffusion-sample runs by default: x0 clamped to [-1, 1] and eps recomputed from it (Denoiser's
    clip_x0) equals DDIMScheduler with clip_sample and use_clipped_model_output, over a whole 10- or 20-step
    trajectory of a fixed eps-network whose x0 predictions leave [-1, 1]."""
    reference = DDIMScheduler(prediction_type="epsilon", clip_sample=True, set_alpha_to_one=True)
    reference.set_timesteps(steps)
    weight = torch.randn(2, 2, generator=torch.Generator().manual_seed(1))

    def network(x_t: torch.Tensor, t: torch.Tensor, condition: object = None) -> torch.Tensor:
        return torch.einsum("oc,nchw->nohw", weight, x_t) * (1 + t.reshape(-1, 1, 1, 1) / 1000)

    schedule = linear_schedule()
    denoiser = Denoiser(network, schedule, "eps", clip_x0=True)
    unclipped = Denoiser(network, schedule, "eps")
    sampler = DDIMSampler(schedule, steps, 0.0, "leading")
    ours = theirs = inputs(2)[0]
    clipped = 0
    for index, t in enumerate(sampler.timesteps):
        output = denoiser(ours, torch.tensor(float(t)))
        clipped += int((unclipped(ours, torch.tensor(float(t))).x0.abs() > 1).sum())
        ours = sampler.update(output, ours, t, sampler.previous_timestep(index), torch.zeros_like(ours))
        eps = network(theirs, torch.full((3,), float(t)))
        theirs = reference.step(eps, t, theirs, eta=0.0, use_clipped_model_output=True).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert clipped > 0, "the clamp never acted, so this test would not see it"
