"""Rectified flow (Liu, Gong & Liu 2022) and flow matching (Lipman et al. 2023): the straight path from noise to
data and the velocity that follows it; objective only (the samplers are in samplers.py).

Convention of the rectified-flow paper: time runs from t = 0 (noise, X_0 ~ pi_0 = N(0, I)) to t = 1 (data,
X_1 ~ pi_1), along the straight interpolation

    X_t = t X_1 + (1 - t) X_0,          d/dt X_t = X_1 - X_0                                  (Liu et al., eq. 1)

and the velocity field v(x, t) is fitted by least squares to the straight line's direction,

    min_v  E_t E_(X_0, X_1) || (X_1 - X_0) - v(X_t, t) ||^2                                     (eq. 1)

whose minimiser is v*(x, t) = E[X_1 - X_0 | X_t = x]. The ODE dZ_t = v(Z_t, t) dt from Z_0 ~ pi_0 then carries
pi_0 to pi_1 (the marginals of X_t are preserved, Thm. 3.3). This is flow matching's conditional OT path with
sigma_min = 0 (Lipman et al., eq. 20-23; their time runs the same way, noise at t = 0).

The time t is drawn uniformly, or from the logit-normal of Esser et al. 2024 (SD3, Sec. 3.1), t = sigmoid(m + s n),
n ~ N(0, 1), which puts more weight on the middle of the path where the velocity is hardest to predict.

Reflow (Sec. 2.2): with a trained flow, couple each noise X_0 with the end Z_1 = ODE(X_0) of its own trajectory
and fit a new flow to the couplings (X_0, Z_1): the 2-rectified flow, whose paths are straighter, so that few
Euler steps suffice; distillation fits the one-step map X_0 -> Z_1 directly. Straightness (eq. 5):

    S(Z) = int_0^1 E || (Z_1 - Z_0) - v(Z_t, t) ||^2 dt,

zero exactly when every trajectory is a straight line traversed at constant speed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Tensor = torch.Tensor
# v(x_t, t, condition) -> velocity, x_t (B, ...) and t (B,) in [0, 1]
VelocityFn = Callable[[Tensor, Tensor, Any], Tensor]


def expand_like(values: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against x."""
    return values.reshape(-1, *([1] * (x.dim() - 1)))


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """X_t = t X_1 + (1 - t) X_0; x0 noise, x1 data, t (B,) in [0, 1]."""
    t = expand_like(t, x0)
    return t * x1 + (1 - t) * x0


def sample_time(count: int, distribution: str = "uniform", location: float = 0.0, scale: float = 1.0,
                generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:  # fmt: skip
    """t (count,) in (0, 1): uniform, or logit-normal t = sigmoid(location + scale n) (Esser et al. 2024, eq. 19)."""
    if distribution == "uniform":
        return torch.rand(count, generator=generator).to(device)
    if distribution == "logit-normal":
        return torch.sigmoid(location + scale * torch.randn(count, generator=generator)).to(device)
    raise ValueError(f"unknown time distribution {distribution!r}; known: uniform, logit-normal")


def velocity_loss(velocity: VelocityFn, x0: Tensor, x1: Tensor, t: Tensor, condition: Any = None
                  ) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """The rectified-flow / flow-matching loss || (X_1 - X_0) - v(X_t, t) ||^2, mean over elements."""
    target = x1 - x0  # the straight line's direction
    error = (velocity(interpolate(x0, x1, t), t, condition) - target).square()
    loss = error.mean()
    return loss, {"velocity_mse": loss.detach()}


def distillation_loss(velocity: VelocityFn, x0: Tensor, z1: Tensor, condition: Any = None
                      ) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """One-step distillation of a flow's couplings (Liu et al., Sec. 2.3): || Z_1 - (X_0 + v(X_0, 0)) ||^2, so that one
    Euler step from t = 0 lands where the whole ODE did."""
    t = torch.zeros(len(x0), device=x0.device)
    loss = (x0 + velocity(x0, t, condition) - z1).square().mean()
    return loss, {"distillation_mse": loss.detach()}


@torch.no_grad()
def straightness(velocity: VelocityFn, trajectory: list[Tensor], times: list[float], condition: Any = None) -> float:
    """S(Z) of eq. 5 for sampled trajectories (states at ``times``, from 0 to 1): the mean over the grid of
    || (Z_1 - Z_0) - v(Z_t, t) ||^2 per element, the left Riemann sum of the integral."""
    z0, z1 = trajectory[0], trajectory[-1]
    total = 0.0
    for z_t, t, t_next in zip(trajectory[:-1], times[:-1], times[1:], strict=True):
        v = velocity(z_t, torch.full((len(z_t),), t, device=z_t.device), condition)
        total += (t_next - t) * float(((z1 - z0) - v).square().mean())
    return total


def gaussian_velocity(mean: Tensor, std: float) -> VelocityFn:
    """The exact v*(x, t) = E[X_1 - X_0 | X_t = x] from pi_0 = N(0, I) to pi_1 = N(mean, std^2 I) with independent
    coupling: (X_1 - X_0, X_t) are jointly Gaussian, per coordinate Var X_t = t^2 s^2 + (1 - t)^2 and
    Cov(X_1 - X_0, X_t) = t s^2 - (1 - t), so v*(x, t) = mean + Cov / Var (x - t mean). The reference every trained
    flow of the tests is held to."""

    def velocity(x: Tensor, t: Tensor, _condition: Any = None) -> Tensor:
        t = expand_like(t, x)
        variance = t**2 * std**2 + (1 - t) ** 2
        covariance = t * std**2 - (1 - t)
        return mean + covariance / variance * (x - t * mean)

    return velocity
