"""Samplers of a discrete-time diffusion: ancestral DDPM, DDIM, and Euler / Heun on the probability-flow ODE.

Every sampler starts from x_T ~ N(0, I) and walks a decreasing list of timesteps (``timesteps``), asking a
``Denoiser`` (prediction.py) for x0 and eps at each. Its ``step`` is one update written as the paper writes it.

Which timesteps, for N < T steps ("spacing", Lin et al. 2024, Table 2; diffusers' ``timestep_spacing``):
    leading    t_i = i * (T // N)               ends at 0, never visits T - 1 (DDIM's and Stable Diffusion's)
    trailing   t_i = round(T - i * T / N) - 1    starts at T - 1 (the step that sees pure noise)
    linspace   t_i = round(linspace(0, T-1, N))  both ends
The step from t to t_prev always goes to the next timestep of the list (to -1, "alpha_bar = 1", after the last).
(diffusers' DDIMScheduler instead steps to t - T // N whatever the spacing; with trailing spacing and N dividing T
the two agree, with linspace they do not.)

DDPM (Ho et al. 2020, Alg. 2), on a respaced chain (Nichol & Dhariwal 2021, Sec. 4) when N < T:
    x_{t_prev} = mu_tilde(x_t, x0_hat) + sigma z,     mu_tilde = c_x0 x0_hat + c_xt x_t          (eq. 6-7)
    sigma^2 = beta_tilde_t (eq. 7), or beta_t, both "fixed" choices of Sec. 3.2, or learned: Improved DDPM's
    exp(v log beta_t + (1 - v) log beta_tilde_t) (eq. 15); beta_t = 1 - alpha_bar_t / alpha_bar_{t_prev}.

DDIM (Song, Meng & Ermon 2021, eq. 12):
    x_{t_prev} = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - s^2) eps_hat + s z,
    s = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)       (eq. 16)
    eta = 0: deterministic, an Euler step of the probability-flow ODE in (sqrt(alpha_bar), x / sqrt(alpha_bar))
    coordinates; run backwards (x0 -> x_T), the inversion used by image editing. eta = 1: DDPM with beta_tilde.

Euler and Heun (Karras et al. 2022, Alg. 1) integrate the same ODE in the variance-exploding view
x_ve = x_t / alpha_t, noise level sigma = sigma_t / alpha_t, where it reads dx/dsigma = (x - D(x; sigma)) / sigma
= eps_hat: Euler is one evaluation per step, Heun's second-order correction two (one on the last step, to sigma
= 0). diffusers' EulerDiscreteScheduler and HeunDiscreteScheduler are these two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch

from genlab.diffusion.prediction import DenoiserOutput
from genlab.diffusion.schedules import NoiseSchedule, expand_like

Tensor = torch.Tensor
Spacing = Literal["leading", "trailing", "linspace"]
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")
DenoiseFn = Callable[[Tensor, Tensor, Any], DenoiserOutput]
Callback = Callable[[int, Tensor, DenoiserOutput], None]  # (timestep, x_t, prediction at x_t) after each step


def spaced_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading") -> list[int]:
    """N of the T training timesteps, decreasing, by the named spacing (diffusers' ``set_timesteps``)."""
    T, N = num_train_timesteps, num_steps
    if not 1 <= N <= T:
        raise ValueError(f"steps must be between 1 and the {T} training timesteps, got {N}")
    if spacing == "leading":
        steps = [i * (T // N) for i in range(N)]
    elif spacing == "trailing":
        steps = [round(T - i * T / N) - 1 for i in range(N)]
    elif spacing == "linspace":
        steps = [round(i * (T - 1) / (N - 1)) if N > 1 else T - 1 for i in range(N)]
    else:
        raise ValueError(f"unknown spacing {spacing!r}; known: {', '.join(SPACINGS)}")
    return sorted(set(steps), reverse=True)


def gaussian_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x, drawn on the CPU from ``generator`` (the same numbers on any device)."""
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)


class Sampler:
    """A decreasing list of timesteps and a ``step``; ``sample`` runs the chain from x_T."""

    timesteps: list[int]

    @property
    def function_evaluations(self) -> int:
        """Network evaluations per sample."""
        return len(self.timesteps)

    def step(self, denoise: DenoiseFn, x_t: Tensor, index: int, condition: Any, generator: torch.Generator | None
             ) -> tuple[Tensor, DenoiserOutput]:  # fmt: skip
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self, denoise: DenoiseFn, x_T: Tensor, condition: Any = None, generator: torch.Generator | None = None,
        callback: Callback | None = None,
    ) -> Tensor:  # fmt: skip
        """x_T (B, C, H, W) of N(0, I) -> samples x_0 (B, C, H, W)."""
        x = x_T
        for index in range(len(self.timesteps)):
            x, prediction = self.step(denoise, x, index, condition, generator)
            if callback is not None:
                callback(self.timesteps[index], x, prediction)
        return x

    def previous_timestep(self, index: int) -> int:
        """The timestep after ``timesteps[index]`` in sampling order, -1 after the last."""
        return self.timesteps[index + 1] if index + 1 < len(self.timesteps) else -1


class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al. 2020, Alg. 2) on all T steps or a respaced chain of N."""

    def __init__(
        self, schedule: NoiseSchedule, num_steps: int | None = None, spacing: str = "leading",
        variance: Literal["beta_tilde", "beta", "learned"] = "beta_tilde",
    ) -> None:  # fmt: skip
        if variance not in ("beta_tilde", "beta", "learned"):
            raise ValueError(f"unknown variance {variance!r}; known: beta_tilde, beta, learned")
        self.schedule, self.variance = schedule, variance
        self.timesteps = spaced_timesteps(schedule.num_timesteps, num_steps or schedule.num_timesteps, spacing)

    def update(self, prediction: DenoiserOutput, x_t: Tensor, t: int, t_prev: int, noise: Tensor | None) -> Tensor:
        """x_{t_prev} = mu_tilde(x_t, x0_hat) + sigma z (eq. 6-7); no noise on the step to -1 (x_0 = mu)."""
        batch = torch.full((len(x_t),), t)
        coef_x0, coef_xt, beta_tilde = self.schedule.posterior(batch, torch.full((len(x_t),), t_prev))
        mean = expand_like(coef_x0, x_t).to(x_t.device) * prediction.x0 + expand_like(coef_xt, x_t).to(x_t.device) * x_t
        if t_prev < 0 or noise is None:
            return mean
        beta = 1 - self.schedule.alpha_bar(batch).double() / self.schedule.alpha_bar(torch.full((len(x_t),), t_prev))
        if self.variance == "beta_tilde":
            log_variance = expand_like(beta_tilde.double().log().float(), x_t).to(x_t.device)
        elif self.variance == "beta":
            log_variance = expand_like(beta.log().float(), x_t).to(x_t.device)
        else:
            if prediction.variance_interpolation is None:
                raise ValueError("variance='learned' needs a network with learned variance (2C output channels)")
            v = prediction.variance_interpolation
            log_beta = expand_like(beta.log().float(), x_t).to(x_t.device)
            log_beta_tilde = expand_like(beta_tilde.double().log().float(), x_t).to(x_t.device)
            log_variance = v * log_beta + (1 - v) * log_beta_tilde  # eq. 15
        return mean + (0.5 * log_variance).exp() * noise

    def step(self, denoise: DenoiseFn, x_t: Tensor, index: int, condition: Any, generator: torch.Generator | None
             ) -> tuple[Tensor, DenoiserOutput]:  # fmt: skip
        t, t_prev = self.timesteps[index], self.previous_timestep(index)
        prediction = denoise(x_t, torch.full((len(x_t),), float(t), device=x_t.device), condition)
        noise = gaussian_like(x_t, generator) if t_prev >= 0 else None
        return self.update(prediction, x_t, t, t_prev, noise), prediction


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021): N steps of eq. 12 with stochasticity eta (0: the deterministic sampler)."""

    def __init__(
        self, schedule: NoiseSchedule, num_steps: int = 50, eta: float = 0.0, spacing: str = "leading"
    ) -> None:
        if not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.schedule, self.eta = schedule, eta
        self.timesteps = spaced_timesteps(schedule.num_timesteps, num_steps, spacing)

    def update(self, prediction: DenoiserOutput, x_t: Tensor, t: int, t_prev: int, noise: Tensor | None) -> Tensor:
        """eq. 12: x_{t_prev} = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - s^2) eps_hat + s z (a = alpha_bar)."""
        alpha_bar = float(self.schedule.alpha_bar(t))
        alpha_bar_prev = float(self.schedule.alpha_bar(t_prev))  # 1 at t_prev = -1
        s = self.eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))  # eq. 16
        direction = math.sqrt(max(1 - alpha_bar_prev - s**2, 0.0)) * prediction.eps  # "direction pointing to x_t"
        x_prev = math.sqrt(alpha_bar_prev) * prediction.x0 + direction
        if s > 0 and noise is not None:
            x_prev = x_prev + s * noise
        return x_prev

    def step(self, denoise: DenoiseFn, x_t: Tensor, index: int, condition: Any, generator: torch.Generator | None
             ) -> tuple[Tensor, DenoiserOutput]:  # fmt: skip
        t, t_prev = self.timesteps[index], self.previous_timestep(index)
        prediction = denoise(x_t, torch.full((len(x_t),), float(t), device=x_t.device), condition)
        noise = gaussian_like(x_t, generator) if self.eta > 0 and t_prev >= 0 else None
        return self.update(prediction, x_t, t, t_prev, noise), prediction

    @torch.no_grad()
    def invert(self, denoise: DenoiseFn, x0: Tensor, condition: Any = None) -> Tensor:
        """DDIM inversion: the eta = 0 ODE run from the data to noise over the same timesteps, increasing; each
        step x_{t_next} = sqrt(a_next) x0_hat(x_t) + sqrt(1 - a_next) eps_hat(x_t), with x_{-1} = x0."""
        x, t = x0, -1
        for t_next in reversed(self.timesteps):
            prediction = denoise(x, torch.full((len(x),), float(max(t, 0)), device=x.device), condition)
            alpha_bar_next = float(self.schedule.alpha_bar(t_next))
            x = math.sqrt(alpha_bar_next) * prediction.x0 + math.sqrt(1 - alpha_bar_next) * prediction.eps
            t = t_next
        return x


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> list[float]:
    """Karras et al. 2022, eq. 5: sigma_i = (s_max^(1/rho) + i / (N - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho."""
    if num_steps == 1:
        return [sigma_max]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / (num_steps - 1) * (lo - hi)) ** rho for i in range(num_steps)]


class ProbabilityFlowSampler(Sampler):
    """Euler (``order=1``) or Heun (``order=2``) on dx/dsigma = eps_hat in the variance-exploding view.

    The grid: the spaced timesteps ("linspace" by default, as diffusers' Euler and Heun schedulers; fractional
    timesteps there interpolate sigma), or Karras et al.'s rho = 7 grid of noise levels (``spacing="karras"``),
    then sigma = 0. Network evaluations: N for Euler, 2N - 1 for Heun.
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 50, order: int = 2, spacing: str = "linspace") -> None:
        if order not in (1, 2):
            raise ValueError(f"order must be 1 (Euler) or 2 (Heun), got {order}")
        T = schedule.num_timesteps
        self.schedule, self.order = schedule, order
        if spacing == "karras":
            sigmas = karras_sigmas(float(schedule.sigmas_ve[0]), float(schedule.sigmas_ve[-1]), num_steps)
            self.times = [float(t) for t in schedule.timestep_of_sigma(torch.tensor(sigmas, dtype=torch.float64))]
        elif spacing == "linspace":  # fractional, as diffusers' np.linspace(0, T - 1, N)[::-1]
            self.times = [(T - 1) * (1 - i / (num_steps - 1)) if num_steps > 1 else T - 1.0 for i in range(num_steps)]
        else:
            self.times = [float(t) for t in spaced_timesteps(T, num_steps, spacing)]
        self.sigmas = [float(s) for s in schedule.sigma_ve(torch.tensor(self.times, dtype=torch.float64))] + [0.0]
        self.timesteps = [round(t) for t in self.times]

    @property
    def function_evaluations(self) -> int:
        return len(self.times) if self.order == 1 else 2 * len(self.times) - 1

    def _eps(self, denoise: DenoiseFn, x_ve: Tensor, index: int, condition: Any) -> DenoiserOutput:
        """eps_hat at x_ve and sigmas[index]: the network sees x_t = x_ve / sqrt(1 + sigma^2) at its timestep."""
        sigma = self.sigmas[index]
        t = torch.full((len(x_ve),), self.times[index], device=x_ve.device)
        return denoise(x_ve / math.sqrt(1 + sigma**2), t, condition)

    def step(self, denoise: DenoiseFn, x_ve: Tensor, index: int, condition: Any, generator: torch.Generator | None
             ) -> tuple[Tensor, DenoiserOutput]:  # fmt: skip
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        prediction = self._eps(denoise, x_ve, index, condition)
        derivative = prediction.eps  # dx/dsigma = (x - x0_hat) / sigma
        x_next = x_ve + (sigma_next - sigma) * derivative  # Euler
        if self.order == 2 and sigma_next > 0:  # Heun: average the slopes at both ends (Alg. 1, lines 9-11)
            corrected = self._eps(denoise, x_next, index + 1, condition).eps
            x_next = x_ve + (sigma_next - sigma) * 0.5 * (derivative + corrected)
        return x_next, prediction

    @torch.no_grad()
    def sample(
        self, denoise: DenoiseFn, x_T: Tensor, condition: Any = None, generator: torch.Generator | None = None,
        callback: Callback | None = None,
    ) -> Tensor:  # fmt: skip
        """x_T of N(0, I) is x_ve / sqrt(1 + sigma_max^2): scale it up, integrate to sigma = 0 (where x_ve = x_0)."""
        x = x_T * math.sqrt(1 + self.sigmas[0] ** 2)
        for index in range(len(self.times)):
            x, prediction = self.step(denoise, x, index, condition, generator)
            if callback is not None:
                callback(self.timesteps[index], x / math.sqrt(1 + self.sigmas[index + 1] ** 2), prediction)
        return x


SAMPLERS = ("ddpm", "ddim", "euler", "heun")


def make_sampler(
    name: str, schedule: NoiseSchedule, num_steps: int, spacing: str | None = None, eta: float = 0.0,
    variance: Literal["beta_tilde", "beta", "learned"] = "beta_tilde",
) -> Sampler:  # fmt: skip
    """A sampler by name; ``spacing`` None takes each one's usual (leading for DDPM and DDIM, linspace for the ODE)."""
    if name == "ddpm":
        return DDPMSampler(schedule, num_steps, spacing or "leading", variance)
    if name == "ddim":
        return DDIMSampler(schedule, num_steps, eta, spacing or "leading")
    if name in ("euler", "heun"):
        return ProbabilityFlowSampler(schedule, num_steps, 1 if name == "euler" else 2, spacing or "linspace")
    raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
