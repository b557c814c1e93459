"""MeanFlow (Geng, Deng, Bai, Kolter & He 2025, "Mean Flows for One-step Generative Modeling"): learn the average
velocity over an interval instead of the instantaneous one, so that one evaluation covers the whole path.

In flow.py's convention (noise at t = 0, data at t = 1, X_t = t X_1 + (1 - t) X_0, v = X_1 - X_0) sampling moves
forward in time, so the average velocity is indexed by the state at the start s of the interval [s, t]:

    u(z_s, s, t) = 1 / (t - s) int_s^t v(z_tau, tau) d tau,        so that  z_t = z_s + (t - s) u(z_s, s, t)

and one step from noise is X_1 = X_0 + u(X_0, 0, 1). Differentiating (t - s) u(z_s, s, t) = int_s^t v in s gives
the MeanFlow identity (their eq. 6, written for our direction of time: they start from noise at t = 1 and step
down to r, so their sign of the correction is the opposite)

    u(z_s, s, t) = v(z_s, s) + (t - s) d/ds u(z_s, s, t),      d/ds u = v . grad_z u + d_s u

a target for u that needs only v and one Jacobian-vector product of the network along (v, 1, 0) (torch.func.jvp);
v is replaced by the conditional velocity X_1 - X_0, as in flow matching, and the target's gradient is stopped:

    L = || u_theta(z_s, s, t) - sg(v + (t - s) (v . grad_z u_theta + d_s u_theta)) ||^2

When s = t the target is v itself: the loss is flow matching's. The paper draws the interval with s != t for a
fraction of the batch (25% in its best setting) and s = t for the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from genlab.consistency.flow import expand_like, interpolate, sample_time

Tensor = torch.Tensor
# u(z, s, t, condition) -> the average velocity from s to t of the trajectory through z at time s; z (B, ...), s, t (B,)
AverageVelocityFn = Callable[[Tensor, Tensor, Tensor, Any], Tensor]


def meanflow_target(average_velocity: AverageVelocityFn, z_s: Tensor, v: Tensor, s: Tensor, t: Tensor,
                    condition: Any = None, tangent_velocity: AverageVelocityFn | None = None
                    ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(u_theta(z_s, s, t), the MeanFlow target v + (t - s) d/ds u_theta), the total derivative by one JVP along the
    tangent (dz, ds, dt) = (v, 1, 0): the start of the interval moving along the trajectory.

    The value is a plain forward pass (it keeps the graph for the gradient); the JVP runs without gradients through
    ``tangent_velocity`` (default: the same function), the same weights unwrapped, because DistributedDataParallel
    cannot run under torch.func."""

    def u(z: Tensor, start: Tensor, end: Tensor) -> Tensor:
        return (tangent_velocity or average_velocity)(z, start, end, condition)

    value = average_velocity(z_s, s, t, condition)
    with torch.no_grad():
        _, total_derivative = torch.func.jvp(u, (z_s, s, t), (v, torch.ones_like(s), torch.zeros_like(t)))
    return value, v + expand_like(t - s, v) * total_derivative


def meanflow_loss(average_velocity: AverageVelocityFn, x0: Tensor, x1: Tensor, s: Tensor, t: Tensor,
                  condition: Any = None, adaptive_power: float = 0.0, adaptive_offset: float = 1e-3,
                  tangent_velocity: AverageVelocityFn | None = None) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """|| u_theta(z_s, s, t) - sg(target) ||^2 at z_s = s x1 + (1 - s) x0, v = x1 - x0, for s <= t (B,).

    ``adaptive_power`` p > 0 is the paper's adaptive weighting (Sec. 4.3): each example's squared error
    ||Delta||^2 (summed over its elements) is weighted by sg(1 / (||Delta||^2 + c)^p), c = ``adaptive_offset``;
    p = 1 (their default) makes the loss about the error's norm rather than its square. p = 0: the plain mean."""
    z_s = interpolate(x0, x1, s)
    value, target = meanflow_target(average_velocity, z_s, x1 - x0, s, t, condition, tangent_velocity)
    error = (value - target.detach()).square()
    mse = error.mean()
    if adaptive_power == 0:
        return mse, {"meanflow_mse": mse.detach()}
    per_example = error.flatten(1).sum(1)  # ||Delta||^2, (B,)
    weight = (per_example.detach() + adaptive_offset).pow(-adaptive_power)
    return (weight * per_example).mean(), {"meanflow_mse": mse.detach()}


def sample_interval(count: int, different_fraction: float = 0.25, distribution: str = "uniform",
                    location: float = 0.0, scale: float = 1.0, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:  # fmt: skip
    """(s, t) with s <= t: two times drawn from ``distribution`` (flow.py's sample_time) and sorted, and for the
    other 1 - ``different_fraction`` of the batch t = s (the paper: 25% distinct, logit-normal(-0.4, 1.0)).

    The paper's time runs the other way (noise at 1, z = (1 - t) x + t eps): its sorted pair is r <= t with r = t
    for the equal share, which keeps the noisier time. Here noise is at 0, so the noisier time is s, and the
    paper's logit-normal(m, scale) is logit-normal(-m, scale) in this time (1 - sigmoid(m + n) = sigmoid(-m - n))."""
    times = sample_time(2 * count, distribution, location, scale, generator).reshape(count, 2).sort(dim=1).values
    s, t = times[:, 0], times[:, 1]
    same = torch.rand(count, generator=generator) >= different_fraction
    return s.to(device), torch.where(same, s, t).to(device)


@torch.no_grad()
def meanflow_sample(average_velocity: AverageVelocityFn, x0: Tensor, steps: int = 1, condition: Any = None) -> Tensor:
    """z_{k+1} = z_k + (t_{k+1} - t_k) u(z_k, t_k, t_{k+1}) on the uniform grid of ``steps`` intervals of [0, 1]:
    one network evaluation per step; one step is X_1 = X_0 + u(X_0, 0, 1)."""
    z = x0
    for k in range(steps):
        s = torch.full((len(x0),), k / steps, device=x0.device)
        t = torch.full((len(x0),), (k + 1) / steps, device=x0.device)
        z = z + (1 / steps) * average_velocity(z, s, t, condition)
    return z
