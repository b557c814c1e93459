"""Noise schedules of a discrete-time diffusion: the forward process q(x_t | x_0) and its posterior, nothing else.

A schedule is T training timesteps t = 0 .. T-1 (diffusers' indexing; DDPM's paper counts 1 .. T) and one number
per step, beta_t, the variance the forward process adds at that step (Ho et al. 2020, eq. 2):

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)

Everything else follows from it. With alpha_t = 1 - beta_t and alpha_bar_t = prod_{s <= t} alpha_s, the forward
process has the closed form (eq. 4)

    q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I),   alpha_t = sqrt(alpha_bar_t),  sigma_t = sqrt(1 - alpha_bar_t)

(below, ``alpha`` and ``sigma`` always mean these signal and noise scales, the notation of Kingma et al. 2021), the
signal-to-noise ratio is SNR(t) = alpha_t^2 / sigma_t^2 and its log is lambda_t = log SNR(t). The same schedule seen
as a variance-exploding process x / alpha_t = x_0 + sigma_ve(t) eps has sigma_ve = sigma_t / alpha_t = exp(-lambda/2),
the "sigmas" of diffusers' Euler and Heun schedulers and of Karras et al. 2022.

Three shapes, each as its beta_t:
- linear (Ho et al. 2020, Sec. 4): beta from 1e-4 to 0.02 linearly over T = 1000;
- cosine (Nichol & Dhariwal 2021, eq. 17): alpha_bar(t) = f(t) / f(0), f(t) = cos((t/T + s) / (1 + s) * pi/2)^2,
  s = 0.008, beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} clipped at 0.999;
- sigmoid (Jabri et al. 2022; Chen 2023, Alg. 1): alpha_bar(t) follows a sigmoid of t mapped onto [start, end] /
  tau, normalised to run from 1 to 0. (diffusers' beta_schedule="sigmoid" is another thing: a sigmoid in beta.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Tensor = torch.Tensor


def expand_like(values: Tensor, x: Tensor) -> Tensor:
    """Per-example values (B,) -> (B, 1, ..., 1), broadcastable against x (B, C, H, W)."""
    return values.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


class NoiseSchedule:
    """beta_1..T of a discrete diffusion and the closed forms built on them (kept in float64, returned as float32)."""

    def __init__(self, betas: Tensor, name: str = "custom") -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-d tensor of values in (0, 1)")
        self.name = name
        self.betas = betas  # beta_t, (T,)
        self.alphas = 1.0 - betas  # 1 - beta_t (diffusers' "alphas"; not the signal scale ``alpha`` below)
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # alpha_bar_t
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # sigma_ve(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t): the variance-exploding view's noise level per step
        self.sigmas_ve = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def alpha_bar(self, t: Tensor | float) -> Tensor:
        """alpha_bar at timesteps t (B,): integers index the table; a fractional t interpolates sigma_ve linearly
        between the two neighbouring steps, as diffusers' Euler and Heun schedulers do (so alpha_bar = 1 / (1 +
        sigma_ve^2)). t = -1 means "before the first step", alpha_bar = 1."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if (t == t.round()).all():
            index = t.long()
            table = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])  # index -1 -> 1
            return table[(index + 1).clamp(0, self.num_timesteps)].float()
        return (1.0 / (1.0 + self.sigma_ve(t).double() ** 2)).float()

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """The signal and noise scales of q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) (eq. 4), each (B,)."""
        alpha_bar = self.alpha_bar(t).double()
        return alpha_bar.sqrt().float(), (1 - alpha_bar).sqrt().float()

    def log_snr(self, t: Tensor | float) -> Tensor:
        """lambda_t = log(alpha_t^2 / sigma_t^2)."""
        alpha_bar = self.alpha_bar(t).double()
        return (alpha_bar.log() - torch.log1p(-alpha_bar)).float()

    def sigma_ve(self, t: Tensor | float) -> Tensor:
        """sigma_t / alpha_t at (possibly fractional) timesteps, linear in t between steps (diffusers' np.interp)."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.num_timesteps - 1)
        low = t.floor().long()
        high = (low + 1).clamp(max=self.num_timesteps - 1)
        weight = t - low
        return ((1 - weight) * self.sigmas_ve[low] + weight * self.sigmas_ve[high]).float()

    def timestep_of_sigma(self, sigma: Tensor | float) -> Tensor:
        """The (fractional) timestep whose sigma_ve is ``sigma``, by linear interpolation of log sigma_ve in t
        (the inverse map Karras-style samplers need to call a network that takes timesteps)."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64).log()
        log_table = self.sigmas_ve.log()  # increasing in t
        high = torch.searchsorted(log_table, log_sigma.clamp(log_table[0], log_table[-1])).clamp(1, len(log_table) - 1)
        low = high - 1
        weight = (log_sigma - log_table[low]) / (log_table[high] - log_table[low])
        return (low + weight.clamp(0, 1)).float()

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = alpha_t x_0 + sigma_t eps, a draw of q(x_t | x_0) (eq. 4)."""
        alpha, sigma = self.alpha_sigma(t.cpu())
        return expand_like(alpha.to(x0.device), x0) * x0 + expand_like(sigma.to(x0.device), x0) * noise

    def q_step(self, x_prev: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """One step of the forward chain, x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (eq. 2)."""
        beta = self.betas[t.cpu().long()].to(x_prev.device)
        return expand_like((1 - beta).sqrt(), x_prev) * x_prev + expand_like(beta.sqrt(), x_prev) * noise

    def posterior(self, t: Tensor, t_prev: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t_prev} | x_t, x_0) = N(c_x0 x_0 + c_xt x_t, beta_tilde I) (eq. 6-7), as (c_x0, c_xt, beta_tilde), each
        (B,). ``t_prev`` defaults to t - 1; a larger gap is the respaced chain of Nichol & Dhariwal (Sec. 4), whose
        step variance is beta = 1 - alpha_bar_t / alpha_bar_{t_prev}. At t = 0 (t_prev = -1) beta_tilde is 0."""
        t = torch.as_tensor(t).long().cpu()
        t_prev = t - 1 if t_prev is None else torch.as_tensor(t_prev).long().cpu()
        alpha_bar, alpha_bar_prev = self.alpha_bar(t).double(), self.alpha_bar(t_prev).double()
        beta = 1 - alpha_bar / alpha_bar_prev
        coef_x0 = alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)
        coef_xt = (1 - beta).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
        beta_tilde = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
        return coef_x0.float(), coef_xt.float(), beta_tilde.float()


def linear_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """DDPM's schedule (Sec. 4): beta_t linear from 1e-4 to 0.02; other T scale both ends by 1000 / T."""
    scale = 1000 / num_timesteps
    return NoiseSchedule(torch.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=torch.float64),
                         "linear")  # fmt: skip


def betas_from_alpha_bar(alpha_bar: Callable[[Tensor], Tensor], num_timesteps: int, max_beta: float) -> Tensor:
    """beta_t = 1 - alpha_bar((t+1)/T) / alpha_bar(t/T), clipped at ``max_beta`` (Improved DDPM, Sec. 3.2: the clip
    keeps the last steps from becoming singular, where alpha_bar reaches 0)."""
    grid = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    values = alpha_bar(grid)
    return (1 - values[1:] / values[:-1]).clamp(max=max_beta)


def cosine_schedule(num_timesteps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Improved DDPM's cosine schedule (eq. 17): alpha_bar(t) = cos((t + s) / (1 + s) * pi / 2)^2, s = 0.008."""

    def alpha_bar(t: Tensor) -> Tensor:
        return torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2

    return NoiseSchedule(betas_from_alpha_bar(alpha_bar, num_timesteps, max_beta), "cosine")


def sigmoid_schedule(
    num_timesteps: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999
) -> NoiseSchedule:
    """The sigmoid schedule (Chen 2023, Alg. 1): alpha_bar(t) = (sigmoid(end/tau) - sigmoid((t (end - start) +
    start) / tau)) / (sigmoid(end/tau) - sigmoid(start/tau)), which runs from 1 at t = 0 to 0 at t = 1."""
    v_start, v_end = torch.sigmoid(torch.tensor(start / tau)), torch.sigmoid(torch.tensor(end / tau))

    def alpha_bar(t: Tensor) -> Tensor:
        value = (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
        return value.double().clamp(min=1e-9)

    return NoiseSchedule(betas_from_alpha_bar(alpha_bar, num_timesteps, max_beta), "sigmoid")


SCHEDULES: dict[str, Callable[[int], NoiseSchedule]] = {
    "linear": linear_schedule,
    "cosine": cosine_schedule,
    "sigmoid": sigmoid_schedule,
}


def make_schedule(name: str, num_timesteps: int = 1000) -> NoiseSchedule:
    """A named schedule with T steps."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](num_timesteps)
