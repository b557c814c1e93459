"""What a denoising network predicts, and the conversions between the choices.

With x_t = alpha_t x_0 + sigma_t eps (schedules.py), a network can be trained to output any one of

    eps                          the noise (Ho et al. 2020)
    x0                           the clean image
    v = alpha_t eps - sigma_t x0 the "velocity" of Salimans & Ho 2022 (progressive distillation, Sec. 4)

and, knowing x_t, each one determines the others:

    x0  = (x_t - sigma_t eps) / alpha_t          eps = (x_t - alpha_t x0) / sigma_t
    x0  = alpha_t x_t - sigma_t v                eps = sigma_t x_t + alpha_t v       (alpha^2 + sigma^2 = 1)

Denoising score matching (Vincent 2011; Song & Ermon 2019): the score of q(x_t | x_0) is
grad log q(x_t | x_0) = -(x_t - alpha_t x_0) / sigma_t^2 = -eps / sigma_t, so a network trained to predict eps
is a score model, s(x_t, t) = -eps_hat(x_t, t) / sigma_t: eps-prediction is the score times -sigma.

Samplers (samplers.py, sde.py) never see the network itself, only a ``Denoiser``: it calls the network as
``network(x_t, t, condition)`` (any module with that signature: 07's U-Net, 09's DiT, a guided wrapper from
guidance.py) and returns x0 and eps whatever the network was trained to output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from genlab.diffusion.schedules import NoiseSchedule, expand_like

Tensor = torch.Tensor
PredictionType = Literal["eps", "x0", "v"]
PREDICTION_TYPES: tuple[str, ...] = ("eps", "x0", "v")
Network = Callable[[Tensor, Tensor, Any], Tensor]  # network(x_t (B, C, H, W), t (B,), condition) -> output


def to_x0_and_eps(output: Tensor, prediction: str, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """A network's prediction of type ``prediction`` -> (x0, eps); alpha and sigma are (B,) or broadcastable."""
    a, s = (expand_like(v, x_t) if v.dim() == 1 else v for v in (alpha, sigma))
    if prediction == "eps":
        return (x_t - s * output) / a, output
    if prediction == "x0":
        return output, (x_t - a * output) / s
    if prediction == "v":
        return a * x_t - s * output, s * x_t + a * output
    raise ValueError(f"unknown prediction type {prediction!r}; known: {', '.join(PREDICTION_TYPES)}")


def from_x0_and_eps(x0: Tensor, eps: Tensor, prediction: str, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The training target of a network of type ``prediction``, given the clean image and the noise."""
    a, s = (expand_like(v, x0) if v.dim() == 1 else v for v in (alpha, sigma))
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return a * eps - s * x0
    raise ValueError(f"unknown prediction type {prediction!r}; known: {', '.join(PREDICTION_TYPES)}")


def eps_to_score(eps: Tensor, sigma: Tensor) -> Tensor:
    """s(x_t, t) = -eps / sigma_t (denoising score matching)."""
    return -eps / (expand_like(sigma, eps) if sigma.dim() == 1 else sigma)


def score_to_eps(score: Tensor, sigma: Tensor) -> Tensor:
    """eps = -sigma_t s(x_t, t), the inverse of ``eps_to_score``."""
    return -score * (expand_like(sigma, score) if sigma.dim() == 1 else sigma)


@dataclass
class DenoiserOutput:
    x0: Tensor  # (B, C, H, W) the predicted clean image
    eps: Tensor  # (B, C, H, W) the predicted noise
    variance_interpolation: Tensor | None = None  # (B, C, H, W) in [0, 1], Improved DDPM's v; None: fixed variance


@dataclass
class Denoiser:
    """A network seen through its schedule: (x_t, t) -> x0 and eps. ``learned_variance``: the network's output
    has 2C channels, the prediction and Improved DDPM's variance interpolation (eq. 15, v in [-1, 1])."""

    network: Network
    schedule: NoiseSchedule
    prediction: PredictionType = "eps"
    learned_variance: bool = False
    clip_x0: bool = False  # clamp the predicted x0 to [-1, 1] and recompute eps from it (DDPM's sampler does)

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {self.prediction!r}; known: {', '.join(PREDICTION_TYPES)}")

    def __call__(self, x_t: Tensor, t: Tensor, condition: Any = None) -> DenoiserOutput:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(len(x_t)).to(x_t.device)
        output = self.network(x_t, t, condition)
        interpolation = None
        if self.learned_variance:
            output, raw = output.chunk(2, dim=1)
            interpolation = (raw + 1) / 2  # Improved DDPM's code: v = (raw + 1) / 2 in [0, 1]
        alpha, sigma = (v.to(x_t.device) for v in self.schedule.alpha_sigma(t.cpu()))
        x0, eps = to_x0_and_eps(output, self.prediction, x_t, alpha, sigma)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = (x_t - expand_like(alpha, x_t) * x0) / expand_like(sigma, x_t)
        return DenoiserOutput(x0, eps, interpolation)
