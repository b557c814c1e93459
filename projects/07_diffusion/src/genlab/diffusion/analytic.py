"""Data whose diffused distributions are known in closed form: a mixture of isotropic Gaussians.

If x_0 ~ sum_k w_k N(mu_k, s_k^2 I), then x_t = alpha x_0 + sigma eps is distributed as

    p_t = sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)

so the exact score grad log p_t(x) = sum_k r_k(x) (-(x - alpha mu_k) / v_k), v_k = alpha^2 s_k^2 + sigma^2, with
responsibilities r_k proportional to w_k N(x; alpha mu_k, v_k I), and the exact eps-prediction, the posterior
mean E[eps | x_t] = -sigma grad log p_t(x_t) (Tweedie). A sampler driven by it must recover the data's moments and
the likelihood ODE the data's density: the tests of samplers.py and sde.py use this as the ideal network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from genlab.diffusion.schedules import NoiseSchedule, expand_like

Tensor = torch.Tensor


class GaussianMixture:
    """sum_k w_k N(mu_k, s_k^2 I) over examples of shape ``shape`` (every coordinate shares mu_k and s_k)."""

    def __init__(self, means: Sequence[float], stds: Sequence[float], weights: Sequence[float] | None = None,
                 shape: tuple[int, ...] = (1, 2, 2)) -> None:  # fmt: skip
        self.means = torch.tensor(means, dtype=torch.float64)
        self.stds = torch.tensor(stds, dtype=torch.float64)
        weights = weights if weights is not None else [1.0] * len(means)
        self.weights = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        self.shape = shape

    @property
    def mean(self) -> float:
        return float((self.weights * self.means).sum())

    @property
    def variance(self) -> float:
        """Per coordinate: E[s_k^2 + mu_k^2] - mean^2."""
        return float((self.weights * (self.stds**2 + self.means**2)).sum()) - self.mean**2

    def sample(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """(count, *shape): one component per example, shared by its coordinates."""
        component = torch.multinomial(self.weights, count, replacement=True, generator=generator)
        noise = torch.randn((count, *self.shape), generator=generator, dtype=torch.float64)
        return (expand_like(self.means[component], noise) + expand_like(self.stds[component], noise) * noise).float()

    def _component_log_probs(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log w_k N(x; alpha mu_k, v_k I) per example and component (B, K), v_k (B, K), x as (B, D) float64."""
        x = x.double().flatten(1)
        alpha, sigma = alpha.double().reshape(-1, 1), sigma.double().reshape(-1, 1)
        variances = alpha**2 * self.stds**2 + sigma**2  # (B, K)
        centred_sq = (x.unsqueeze(1) - alpha.unsqueeze(1) * self.means.reshape(1, -1, 1)).pow(2).sum(-1)  # (B, K)
        D = x.shape[1]
        log_probs = self.weights.log() - 0.5 * D * (2 * math.pi * variances).log() - 0.5 * centred_sq / variances
        return log_probs, variances, x

    def log_prob(self, x: Tensor, alpha: Tensor | None = None, sigma: Tensor | None = None) -> Tensor:
        """log p_t(x) per example (of the data itself when alpha = 1, sigma = 0)."""
        alpha = torch.ones(len(x)) if alpha is None else alpha
        sigma = torch.zeros(len(x)) if sigma is None else sigma
        log_probs, _, _ = self._component_log_probs(x, alpha, sigma)
        return torch.logsumexp(log_probs, dim=1)

    def score(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """grad_x log p_t(x), (B, *shape), for x_t = alpha x_0 + sigma eps."""
        log_probs, variances, flat = self._component_log_probs(x, alpha, sigma)
        responsibilities = torch.softmax(log_probs, dim=1)  # (B, K)
        alpha = alpha.double().reshape(-1, 1, 1)
        per_component = -(flat.unsqueeze(1) - alpha * self.means.reshape(1, -1, 1)) / variances.unsqueeze(-1)
        return (responsibilities.unsqueeze(-1) * per_component).sum(1).reshape(x.shape).to(x.dtype)

    def eps_network(self, schedule: NoiseSchedule) -> Any:
        """The ideal eps-prediction network for a discrete schedule: (x_t, t, condition) -> -sigma_t score."""

        def network(x_t: Tensor, t: Tensor, _condition: Any = None) -> Tensor:
            alpha, sigma = schedule.alpha_sigma(t.cpu())
            return -expand_like(sigma, x_t).to(x_t.device) * self.score(x_t.cpu(), alpha, sigma).to(x_t.device)

        return network
