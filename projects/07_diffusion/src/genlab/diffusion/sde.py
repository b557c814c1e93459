"""The score-SDE view of diffusion (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

A forward SDE dx = f(x, t) dt + g(t) dw, t in [0, 1], carries data to noise; its reverse (eq. 6, Anderson 1982)

    dx = [f(x, t) - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar

and the probability-flow ODE with the same marginals (eq. 13)

    dx/dt = f(x, t) - 1/2 g(t)^2 grad log p_t(x)

need only the score s(x, t) = grad log p_t(x). Two SDEs:
    VP (eq. 11): dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw, beta(t) = beta_min + t (beta_max - beta_min): DDPM in
        continuous time (beta_min = 0.1, beta_max = 20 are DDPM's 1e-4 .. 0.02 times N = 1000). Marginal
        N(alpha(t) x_0, sigma(t)^2 I), alpha(t) = exp(-1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min), sigma^2 = 1 -
        alpha^2 (eq. 29).
    VE (eq. 9): dx = sqrt(d sigma^2 / dt) dw, sigma(t) = sigma_min (sigma_max / sigma_min)^t: SMLD / NCSN.
        Marginal N(x_0, sigma(t)^2 I) (variance sigma^2 - sigma_min^2 exactly; the sigma_min^2 is neglected as
        in the paper).

Samplers here: predictor-corrector (Alg. 1 with Euler-Maruyama as predictor, Langevin dynamics as corrector, Alg.
4-5), and the probability-flow ODE by Heun's method, which also gives the log-likelihood through the
instantaneous change of variables (eq. 39 and App. D.2):

    log p_0(x(0)) = log p_1(x(1)) + int_0^1 div f_tilde(x(t), t) dt,   f_tilde = f - 1/2 g^2 s

with the divergence estimated by Hutchinson's trace estimator, E_z[z^T (d f_tilde / d x) z], z Rademacher.

A network trained on a discrete DDPM schedule of N steps is a VP score model through s(x, t) = -eps_hat(x, tau)
/ sigma(t), tau the timestep with the SDE's noise level at t (``score_from_denoiser``); the VE view of the same
network is the change of variables x_ve = x_vp / alpha (``ve_score_from_vp``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from genlab.diffusion.prediction import DenoiserOutput
from genlab.diffusion.schedules import NoiseSchedule, expand_like

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]  # s(x (B, ...), t (B,)) -> grad_x log p_t(x) (B, ...)


class VPSDE:
    """The variance-preserving SDE with a linear beta(t) (eq. 11)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min, self.beta_max = beta_min, beta_max

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha(t), sigma(t)) of p_0t(x(t) | x(0)) = N(alpha x(0), sigma^2 I) (eq. 29)."""
        log_alpha = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        return log_alpha.exp(), (-torch.expm1(2 * log_alpha)).sqrt()

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return -0.5 * expand_like(self.beta(t), x) * x  # f(x, t) = -1/2 beta(t) x

    def diffusion(self, t: Tensor) -> Tensor:
        return self.beta(t).sqrt()  # g(t) = sqrt(beta(t))

    def time_of_noise_ratio(self, ratio: Tensor) -> Tensor:
        """The t at which sigma(t) / alpha(t) = ``ratio``: 1 / alpha^2 = 1 + ratio^2, so the quadratic
        1/2 t^2 (beta_max - beta_min) + t beta_min = log(1 + ratio^2)."""
        spread = self.beta_max - self.beta_min
        return (-self.beta_min + (self.beta_min**2 + 2 * spread * torch.log1p(ratio**2)).sqrt()) / spread

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(shape, generator=generator)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log N(x; 0, I) per example."""
        D = x[0].numel()
        return -0.5 * D * math.log(2 * math.pi) - 0.5 * x.flatten(1).pow(2).sum(1)

    def langevin_alpha(self, t: Tensor, num_steps: int) -> Tensor:
        """alpha_i of Alg. 5's step size: 1 - beta_i of the discretised chain (Song et al.'s code)."""
        return 1 - self.beta(t) / num_steps


class VESDE:
    """The variance-exploding SDE of SMLD (eq. 9)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), self.sigma(t)

    def time_of_noise_ratio(self, ratio: Tensor) -> Tensor:
        """The t at which sigma(t) / alpha(t) = sigma(t) = ``ratio``: log sigma is linear in t."""
        return torch.log(ratio / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t: Tensor) -> Tensor:
        # g = sqrt(d sigma^2 / dt) = sigma(t) sqrt(2 log(sigma_max / sigma_min))
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(shape, generator=generator) * self.sigma_max

    def prior_log_prob(self, x: Tensor) -> Tensor:
        D = x[0].numel()
        return (-0.5 * D * math.log(2 * math.pi * self.sigma_max**2)
                - 0.5 * x.flatten(1).pow(2).sum(1) / self.sigma_max**2)  # fmt: skip

    def langevin_alpha(self, t: Tensor, num_steps: int) -> Tensor:
        return torch.ones_like(t)


SDE = VPSDE | VESDE


def noise_level_grid(sde: SDE, num_steps: int, t_min: float) -> Tensor:
    """Times t_min = t_0 < ... < t_n = 1, float64, equally spaced in log(sigma(t) / alpha(t)) (minus half the log-
    SNR). Near t = 0 the score is of size 1 / sigma and the VP's sigma^2 grows like beta_min t, so the drift changes
    on a time scale proportional to t: equal steps in t are far too long there (200 of them from t = 1e-5 gave an
    impossible negative bits/dim on a trained network), equal steps in log sigma keep h / t about constant. For the
    VE SDE log sigma is linear in t and this grid is the uniform one."""
    ends = torch.tensor([t_min, 1.0], dtype=torch.float64)
    alpha, sigma = sde.marginal(ends)
    log_ratios = torch.linspace(*(sigma / alpha).log().tolist(), num_steps + 1, dtype=torch.float64)
    times = sde.time_of_noise_ratio(log_ratios.exp())
    times[0], times[-1] = t_min, 1.0  # exact ends, not their round trip through log and sqrt
    return times


def score_from_denoiser(
    denoise: Callable[[Tensor, Tensor, Any], DenoiserOutput], sde: VPSDE, schedule: NoiseSchedule,
    condition: Any = None,
) -> ScoreFn:  # fmt: skip
    """A discrete-time eps-network as the VP SDE's score, s(x, t) = -eps_hat(x, tau) / sigma(t), where tau is the
    (fractional) timestep of ``schedule`` with the same noise level sigma / alpha as the SDE at t. For DDPM's
    schedule tau is about t N - 1; Song et al. label DDPM checkpoints t (N - 1), one step off, which matters only
    near t = 0 (at t = 1 / N it asks the network about sigma = 0.015 while the SDE's is 0.010). Below the first
    step the timestep stays at 0, the smallest noise level the network was trained on."""

    def score(x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = sde.marginal(t)
        timestep = schedule.timestep_of_sigma((sigma / alpha).cpu())
        eps = denoise(x, timestep, condition).eps
        return -eps / expand_like(sigma, x)

    return score


def ve_score_from_vp(vp_score: ScoreFn, vp: VPSDE) -> Callable[[Tensor, Tensor], Tensor]:
    """The VE view of a VP score model, as a function of the VE noise level sigma (B,): x_ve = x_vp / alpha has
    noise level sigma = sigma_vp / alpha at the VP time tau with sigma_vp(tau) / alpha(tau) = sigma, and
    s_ve(x_ve) = alpha s_vp(alpha x_ve)."""

    def score(x_ve: Tensor, sigma: Tensor) -> Tensor:
        tau = vp.time_of_noise_ratio(sigma)
        alpha = expand_like(1 / (1 + sigma**2).sqrt(), x_ve)
        return alpha * vp_score(alpha * x_ve, tau)

    return score


def ve_time_score(ve_sigma_score: Callable[[Tensor, Tensor], Tensor], ve: VESDE) -> ScoreFn:
    """A score in terms of the VE noise level, as a function of the VE SDE's time t: s(x, sigma(t))."""
    return lambda x, t: ve_sigma_score(x, ve.sigma(t))


@torch.no_grad()
def predictor_corrector_sample(
    sde: SDE, score: ScoreFn, x_T: Tensor, num_steps: int = 1000, corrector_steps: int = 1, snr: float = 0.16,
    t_min: float = 1e-3, generator: torch.Generator | None = None, predictor: bool = True,
) -> Tensor:  # fmt: skip
    """PC sampling (Alg. 1) from x_T (a draw of the prior, e.g. ``sde.prior_sample``) on times 1 -> t_min.

    Each step: ``corrector_steps`` of Langevin dynamics at t (Alg. 4-5: step 2 alpha_i (r ||z|| / ||s||)^2 for
    signal-to-noise ratio r), then one reverse-SDE Euler-Maruyama step to t - dt. ``corrector_steps=0`` is the
    predictor alone, ``predictor=False`` the corrector alone (annealed Langevin dynamics of SMLD). The last step
    returns the noiseless mean (the paper's "denoising" of the final sample)."""
    times = torch.linspace(1.0, t_min, num_steps, dtype=torch.float64)
    dt = (1.0 - t_min) / (num_steps - 1) if num_steps > 1 else 1.0 - t_min
    x, x_mean = x_T, x_T
    batch = len(x_T)

    def noise() -> Tensor:
        return torch.randn(x.shape, generator=generator).to(x.device, x.dtype)

    for t_value in times:
        t = torch.full((batch,), float(t_value), device=x.device)
        for _ in range(corrector_steps):
            grad = score(x, t)
            z = noise()
            grad_norm = grad.flatten(1).norm(dim=1).mean()
            noise_norm = z.flatten(1).norm(dim=1).mean()
            step = 2 * expand_like(sde.langevin_alpha(t, num_steps), x) * (snr * noise_norm / grad_norm) ** 2
            x_mean = x + step * grad
            x = x_mean + (2 * step).sqrt() * z
        if predictor:
            g = expand_like(sde.diffusion(t), x)
            reverse_drift = sde.drift(x, t) - g**2 * score(x, t)  # eq. 6
            x_mean = x - reverse_drift * dt  # time runs backwards: x(t - dt) = x(t) - drift dt + g sqrt(dt) z
            x = x_mean + g * math.sqrt(dt) * noise()
    return x_mean


def ode_drift(sde: SDE, score: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    """f_tilde(x, t) = f(x, t) - 1/2 g(t)^2 s(x, t), the probability-flow ODE's velocity (eq. 13)."""
    return sde.drift(x, t) - 0.5 * expand_like(sde.diffusion(t), x) ** 2 * score(x, t)


@torch.no_grad()
def probability_flow_sample(sde: SDE, score: ScoreFn, x_T: Tensor, num_steps: int = 100, t_min: float = 1e-3
                            ) -> Tensor:  # fmt: skip
    """Integrate the probability-flow ODE from t = 1 to t_min by Heun's method (2 evaluations per step) on
    ``noise_level_grid``."""
    times = noise_level_grid(sde, num_steps, t_min).flip(0)
    x = x_T
    for t_now, t_next in itertools.pairwise(times):
        h = float(t_next - t_now)
        t0 = torch.full((len(x),), float(t_now), device=x.device)
        t1 = torch.full((len(x),), float(t_next), device=x.device)
        d0 = ode_drift(sde, score, x, t0)
        x_euler = x + h * d0
        x = x + 0.5 * h * (d0 + ode_drift(sde, score, x_euler, t1))
    return x


def _drift_and_divergence(sde: SDE, score: ScoreFn, x: Tensor, t: Tensor, probe: Tensor | None
                          ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """f_tilde(x, t) and its divergence: exact (a Jacobian trace, for tiny D) when ``probe`` is None, else
    Hutchinson's z^T (d f_tilde / dx) z with the given probe z."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        drift = ode_drift(sde, score, x, t)
        if probe is not None:
            (vjp,) = torch.autograd.grad(drift, x, probe)
            divergence = (vjp * probe).flatten(1).sum(1)
        else:
            flat = drift.flatten(1)
            divergence = torch.zeros(len(x), device=x.device, dtype=x.dtype)
            for i in range(flat.shape[1]):
                (row,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                divergence = divergence + row.flatten(1)[:, i]
    return drift.detach(), divergence.detach()


def ode_log_likelihood(
    sde: SDE, score: ScoreFn, x0: Tensor, num_steps: int = 200, t_min: float = 1e-5, exact_trace: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:  # fmt: skip
    """log p_0(x0) per example, in nats, by the instantaneous change of variables along the probability-flow ODE
    from t_min to 1 (Heun's method on ``noise_level_grid``; one Rademacher probe per example held fixed along the
    path, App. D.2). Strictly it is log p_{t_min}(x0), x0 taken as a point at time t_min: a network trained down to
    some smallest noise level should be given the t_min of that level."""
    probe = None
    if not exact_trace:
        probe = (torch.randint(0, 2, x0.shape, generator=generator) * 2 - 1).to(x0.device, x0.dtype)
    times = noise_level_grid(sde, num_steps, t_min)
    x = x0
    integral = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
    for t_now, t_next in itertools.pairwise(times):
        h = float(t_next - t_now)
        t0 = torch.full((len(x),), float(t_now), device=x.device)
        t1 = torch.full((len(x),), float(t_next), device=x.device)
        d0, div0 = _drift_and_divergence(sde, score, x, t0, probe)
        x_euler = x + h * d0
        d1, div1 = _drift_and_divergence(sde, score, x_euler, t1, probe)
        x = x + 0.5 * h * (d0 + d1)
        integral += 0.5 * h * (div0 + div1).double()
    return sde.prior_log_prob(x).double() + integral


def bits_per_dim_from_log_likelihood(log_likelihood: Tensor, num_dims: int) -> Tensor:
    """Bits/dim on 8-bit data of a density over x = 2 (k + u) / 256 - 1 (k the pixel value, u uniform
    dequantisation noise): each of the 256 bins is 1/128 wide, so -log P(k) <= -log p(x) + D log 128."""
    return (-log_likelihood / num_dims + math.log(128)) / math.log(2)
