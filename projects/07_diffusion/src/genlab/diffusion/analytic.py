"""Data whose diffused distributions are known in closed form: a mixture of isotropic Gaussians, and one Gaussian
with a full covariance (correlated pixels, for editing and inverse problems, where the right answer is a
conditional Gaussian).

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


class CorrelatedGaussian:
    """x_0 ~ N(mu, Sigma) over D coordinates, as images of shape (1, 1, D). Diffused, x_t ~ N(alpha mu, alpha^2
    Sigma + sigma^2 I), whose score is -(alpha^2 Sigma + sigma^2 I)^{-1} (x - alpha mu); and the conditional of a
    block given another, N(mu_u + S_uk S_kk^{-1} (x_k - mu_k), S_uu - S_uk S_kk^{-1} S_ku), is what inpainting
    should sample."""

    def __init__(self, mean: Tensor, covariance: Tensor) -> None:
        self.mu, self.covariance = mean.double(), covariance.double()
        self.shape = (1, 1, len(mean))

    def sample(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn((count, len(self.mu)), generator=generator, dtype=torch.float64)
        return (self.mu + noise @ torch.linalg.cholesky(self.covariance).T).float().reshape(count, *self.shape)

    def score(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        flat = x.double().flatten(1)  # (B, D)
        alpha, sigma = alpha.double().reshape(-1, 1, 1), sigma.double().reshape(-1, 1, 1)
        covariances = alpha**2 * self.covariance + sigma**2 * torch.eye(len(self.mu), dtype=torch.float64)
        centred = (flat - alpha[:, :, 0] * self.mu).unsqueeze(-1)  # (B, D, 1)
        return -torch.linalg.solve(covariances, centred).reshape(x.shape).to(x.dtype)

    def conditional(self, known: Tensor, known_index: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (B, U) and covariance (U, U) of the unknown coordinates given x_k = ``known`` (B, K)."""
        unknown_index = torch.tensor([i for i in range(len(self.mu)) if i not in set(known_index.tolist())])
        S = self.covariance
        gain = S[unknown_index][:, known_index] @ torch.linalg.inv(S[known_index][:, known_index])  # S_uk S_kk^-1
        mean = self.mu[unknown_index] + (known.double() - self.mu[known_index]) @ gain.T
        covariance = S[unknown_index][:, unknown_index] - gain @ S[known_index][:, unknown_index]
        return mean, covariance

    eps_network = GaussianMixture.eps_network
