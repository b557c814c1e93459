"""Consistency models (Song, Dhariwal, Chen & Sutskever 2023) and the improved consistency training of Song &
Dhariwal 2023 (iCT): objective, parameterisation and multistep sampling.

In the variance-exploding view of Karras et al. (07's Euler / Heun sampler works in it too), x_sigma = x + sigma z
and the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma maps every x_sigma to the same x_eps at the
smallest noise level eps. A consistency function learns that map in one evaluation: f(x_sigma, sigma) = x_eps.

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma)                                   (Sec. 3, App. C)
    c_skip(sigma) = sigma_data^2 / ((sigma - eps)^2 + sigma_data^2)
    c_out(sigma)  = sigma_data (sigma - eps) / sqrt(sigma_data^2 + sigma^2)

so that f(x, eps) = x exactly (c_skip = 1, c_out = 0): the boundary condition holds by construction, whatever F.

Training compares f at two adjacent noise levels of the grid sigma_1 = eps < ... < sigma_N = T (Karras et al.'s
rho = 7 grid), one with gradients (theta), one through a stopped-gradient target (theta^-):

    CD (distillation, Alg. 2)  x_{n+1} = x + sigma_{n+1} z;  x_hat_n = one Heun step of the teacher's ODE from
                               sigma_{n+1} to sigma_n;  L = d(f_theta(x_{n+1}, sigma_{n+1}), f_theta-(x_hat_n, sigma_n))
    CT (training, Alg. 3)      no teacher: x_hat_n = x + sigma_n z with the same z (an unbiased estimate of the ODE
                               step, Thm. 2); N grows with the step k, N(k) of eq. 26, theta^- an EMA of theta with
                               mu(k) = exp(s0 log mu0 / N(k))
    iCT (Song & Dhariwal 2023) theta^- = theta without gradient (no EMA), the pseudo-Huber distance
                               d(x, y) = sqrt(||x - y||^2 + c^2) - c with c = 0.00054 sqrt(dim), noise levels drawn
                               log-normally (P_mean = -1.1, P_std = 2), N(k) doubling from 10 to 1280, and the
                               weight lambda(sigma_n) = 1 / (sigma_{n+1} - sigma_n)

Multistep sampling (Alg. 1): x = f(T z, T), then for each chosen level tau: x = f(x + sqrt(tau^2 - eps^2) z, tau).
This file imports only torch and 07's samplers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from genlab.diffusion.samplers import karras_sigmas

Tensor = torch.Tensor
# F(x, sigma, condition) -> F's output, x (B, ...), sigma (B,)
NetworkFn = Callable[[Tensor, Tensor, Any], Tensor]
SIGMA_DATA, SIGMA_MIN, SIGMA_MAX = 0.5, 0.002, 80.0  # the paper's values for data in [-1, 1]


def expand_like(values: Tensor, x: Tensor) -> Tensor:
    return values.reshape(-1, *([1] * (x.dim() - 1)))


def boundary_scalings(sigma: Tensor, sigma_min: float = SIGMA_MIN, sigma_data: float = SIGMA_DATA
                      ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(c_skip, c_out) at noise levels sigma (B,): c_skip(eps) = 1 and c_out(eps) = 0 exactly."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (sigma - sigma_min) / (sigma_data**2 + sigma**2).sqrt()
    return c_skip, c_out


class ConsistencyFunction:
    """f(x, sigma) = c_skip x + c_out F(c_in x, sigma) around a network F; c_in = 1 / sqrt(sigma^2 + sigma_data^2)
    (EDM's input scaling, as the paper's code) keeps F's input at unit variance."""

    def __init__(self, network: NetworkFn, sigma_min: float = SIGMA_MIN, sigma_data: float = SIGMA_DATA) -> None:
        self.network, self.sigma_min, self.sigma_data = network, sigma_min, sigma_data

    def __call__(self, x: Tensor, sigma: Tensor, condition: Any = None) -> Tensor:
        c_skip, c_out = boundary_scalings(sigma, self.sigma_min, self.sigma_data)
        c_in = 1 / (sigma**2 + self.sigma_data**2).sqrt()
        inner = self.network(expand_like(c_in, x) * x, sigma, condition)
        return expand_like(c_skip, x) * x + expand_like(c_out, x) * inner


def noise_levels(num_levels: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> Tensor:
    """The grid sigma_1 = eps < ... < sigma_N = T of Karras et al. (rho = 7), increasing: (N,)."""
    return torch.tensor(list(reversed(karras_sigmas(sigma_min, sigma_max, num_levels))), dtype=torch.float64)


def ct_levels(step: int, total_steps: int, s0: int = 2, s1: int = 150) -> int:
    """N(k) of consistency training (eq. 26 / App. C): ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1."""
    return math.ceil(math.sqrt(step / total_steps * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1


def ct_ema_decay(levels: int, s0: int = 2, mu0: float = 0.9) -> float:
    """mu(k) = exp(s0 log mu0 / N(k)), the target network's EMA decay at N(k) levels."""
    return math.exp(s0 * math.log(mu0) / levels)


def ict_levels(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2(s1 / s0) + 1)): doubling, 11 to 1281."""
    period = math.floor(total_steps / (math.log2(s1 / s0) + 1))
    return min(s0 * 2 ** math.floor(step / max(period, 1)), s1) + 1


def lognormal_level_weights(sigmas: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """iCT's p(n) proportional to erf((log sigma_{n+1} - P_mean) / (sqrt 2 P_std)) - erf((log sigma_n - P_mean) /
    (sqrt 2 P_std)): the mass a log-normal puts between adjacent levels, (N - 1,)."""
    edges = torch.erf((sigmas.log() - p_mean) / (math.sqrt(2) * p_std))
    weights = edges[1:] - edges[:-1]
    return weights / weights.sum()


def pseudo_huber(x: Tensor, y: Tensor) -> Tensor:
    """iCT's d(x, y) = sqrt(||x - y||^2 + c^2) - c per example, c = 0.00054 sqrt(dim): like L2 far away, like L1
    near zero (less sensitive to outliers than the squared error)."""
    c = 0.00054 * math.sqrt(x[0].numel())
    return ((x - y).flatten(1).square().sum(1) + c**2).sqrt() - c


def squared_l2(x: Tensor, y: Tensor) -> Tensor:
    """The squared L2 distance per example, the paper's d for CD and CT (mean over elements)."""
    return (x - y).flatten(1).square().mean(1)


def consistency_loss(
    f: Callable[[Tensor, Tensor, Any], Tensor], f_target: Callable[[Tensor, Tensor, Any], Tensor], x: Tensor,
    sigmas: Tensor, n: Tensor, z: Tensor, solver: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    distance: Callable[[Tensor, Tensor], Tensor] = squared_l2, weight: Tensor | None = None, condition: Any = None,
) -> Tensor:  # fmt: skip
    """Mean over the batch of lambda_n d(f(x_{n+1}, sigma_{n+1}), f_target(x_hat_n, sigma_n)) for data x, level
    indices n (B,) in [0, N - 1) of the increasing grid ``sigmas``, noise z. ``solver(x_{n+1}, sigma_{n+1},
    sigma_n)`` gives x_hat_n from a teacher (CD); without one, x_hat_n = x + sigma_n z (CT)."""
    sigma_next, sigma = sigmas[n + 1].to(x), sigmas[n].to(x)
    x_next = x + expand_like(sigma_next, x) * z
    if solver is None:
        x_hat = x + expand_like(sigma, x) * z
    else:
        with torch.no_grad():
            x_hat = solver(x_next, sigma_next, sigma)
    with torch.no_grad():
        target = f_target(x_hat, sigma, condition)
    per_example = distance(f(x_next, sigma_next, condition), target)
    if weight is not None:
        per_example = weight[n].to(x) * per_example
    return per_example.mean()


def heun_solver(denoiser: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """One Heun step of the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma from sigma to sigma_prev, given
    a teacher's denoiser D (07's Denoiser seen in the sigma view): CD's Phi (Karras et al., Alg. 1)."""

    def step(x: Tensor, sigma: Tensor, sigma_prev: Tensor) -> Tensor:
        h = expand_like(sigma_prev - sigma, x)
        slope = (x - denoiser(x, sigma)) / expand_like(sigma, x)
        x_euler = x + h * slope
        slope_prev = (x_euler - denoiser(x_euler, sigma_prev)) / expand_like(sigma_prev, x)
        return x + h * 0.5 * (slope + slope_prev)

    return step


@torch.no_grad()
def multistep_sample(f: Callable[[Tensor, Tensor, Any], Tensor], z: Tensor, levels: list[float],
                     condition: Any = None, generator: torch.Generator | None = None,
                     sigma_min: float = SIGMA_MIN) -> Tensor:  # fmt: skip
    """Alg. 1: x = f(levels[0] z, levels[0]), then at each later (smaller) level tau, x = f(x + sqrt(tau^2 - eps^2)
    z', tau). One network evaluation per level."""
    batch = len(z)
    x = f(levels[0] * z, torch.full((batch,), levels[0], device=z.device), condition)
    for tau in levels[1:]:
        noise = torch.randn(z.shape, generator=generator).to(z)
        x = f(x + math.sqrt(tau**2 - sigma_min**2) * noise, torch.full((batch,), tau, device=z.device), condition)
    return x


def sampling_levels(steps: int, sigma_min: float, sigma_max: float) -> list[float]:
    """The noise levels of ``steps``-step sampling: the first ``steps`` of Karras et al.'s rho = 7 grid of
    ``steps + 1`` levels from sigma_max to sigma_min (one step: sigma_max alone)."""
    return karras_sigmas(sigma_min, sigma_max, steps + 1)[:-1]
