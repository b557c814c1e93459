"""sCM (Lu & Song 2024, "Simplifying, Stabilizing and Scaling Continuous-time Consistency Models"): the TrigFlow
parameterisation and the continuous-time consistency objective with its three stabilisers.

TrigFlow (Sec. 2.1) puts data and noise on a quarter circle, z ~ N(0, sigma_d^2 I), t in [0, pi / 2]:

    x_t = cos(t) x_0 + sin(t) z                    (the VE view: x_t / cos t = x_0 + sigma n, sigma = sigma_d tan t)
    dx_t/dt = cos(t) z - sin(t) x_0                the velocity, predicted as sigma_d F(x_t / sigma_d, t)
    f(x_t, t) = cos(t) x_t - sin(t) sigma_d F(x_t / sigma_d, t)       f(x, 0) = x exactly, whatever F

The continuous-time limit of consistency training has the gradient of E[w(t) f_theta^T df_theta-/dt]; with the
weight chosen so that the prefactor is cos(t) (eq. 8) it is the gradient of the regression

    L = E || F_theta(x_t / sigma_d, t) - sg(F_theta(x_t / sigma_d, t) + g) ||^2,   g = cos(t) df_theta-/dt
      = -cos^2(t) (sigma_d F - dx_t/dt) - cos(t) sin(t) (x_t + sigma_d dF/dt)

where dF/dt is the total derivative along the ODE: one JVP of F at (x_t / sigma_d, t) along (dx_t/dt / sigma_d, 1),
taken here along (cos t sin t dx_t/dt / sigma_d, cos t sin t), which gives cos(t) sin(t) dF/dt directly (Sec. 4.1).
dx_t/dt is the pair's own velocity cos(t) z - sin(t) x_0 for consistency training (sCT) or a teacher's for
distillation (sCD). The stabilisers (Sec. 4.2): tangent normalisation g <- g / (||g|| + c), c = 0.1; tangent
warm-up, the second term times r ramped from 0 to 1; adaptive weighting, a learned w(t) with the loss
e^w(t) / D || . ||^2 - w(t). Times: t = arctan(e^tau / sigma_d), tau ~ N(P_mean, P_std^2), log-normal sigma.
This file imports only torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from genlab.consistency.flow import expand_like

Tensor = torch.Tensor
# F(x_t / sigma_d, t, condition) -> (B, C, H, W)
TrigNetworkFn = Callable[[Tensor, Tensor, Any], Tensor]
SIGMA_DATA = 0.5


def trig_interpolate(x0: Tensor, z: Tensor, t: Tensor) -> Tensor:
    """x_t = cos(t) x_0 + sin(t) z, z of standard deviation sigma_d, t (B,) in [0, pi / 2]."""
    return expand_like(t.cos(), x0) * x0 + expand_like(t.sin(), x0) * z


def trig_velocity(x0: Tensor, z: Tensor, t: Tensor) -> Tensor:
    """dx_t/dt = cos(t) z - sin(t) x_0: the velocity of the pair (x_0, z), sCT's stand-in for the ODE's."""
    return expand_like(t.cos(), x0) * z - expand_like(t.sin(), x0) * x0


def trig_consistency(network: TrigNetworkFn, x_t: Tensor, t: Tensor, condition: Any = None,
                     sigma_data: float = SIGMA_DATA) -> Tensor:  # fmt: skip
    """f(x_t, t) = cos(t) x_t - sin(t) sigma_d F(x_t / sigma_d, t): the consistency function, exact at t = 0."""
    inner = network(x_t / sigma_data, t, condition)
    return expand_like(t.cos(), x_t) * x_t - expand_like(t.sin(), x_t) * sigma_data * inner


def as_ve_consistency(
    network: TrigNetworkFn, sigma_data: float = SIGMA_DATA
) -> Callable[[Tensor, Tensor, Any], Tensor]:
    """The TrigFlow consistency function seen in the VE view of consistency.py, f(x + sigma n, sigma): t =
    arctan(sigma / sigma_d) and x_t = cos(t) (x + sigma n), so that consistency.py's multistep sampler serves both."""

    def f(x_ve: Tensor, sigma: Tensor, condition: Any = None) -> Tensor:
        t = torch.atan(sigma / sigma_data)
        return trig_consistency(network, expand_like(t.cos(), x_ve) * x_ve, t, condition, sigma_data)

    return f


def sample_trig_time(count: int, p_mean: float = -1.0, p_std: float = 1.4, sigma_data: float = SIGMA_DATA,
                     generator: torch.Generator | None = None, device: torch.device | str = "cpu"
                     ) -> Tensor:  # fmt: skip
    """t = arctan(e^tau / sigma_d), tau ~ N(P_mean, P_std^2) (sCM's CIFAR-10 setting: -1.0, 1.4), (count,)."""
    tau = p_mean + p_std * torch.randn(count, generator=generator)
    return torch.atan(tau.exp() / sigma_data).to(device)


def teacher_trig_velocity(x0_prediction: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """dx_t/dt of the probability-flow ODE from a denoiser's E[x_0 | x_t]: with E[z | x_t] = (x_t - cos t D) / sin t,
    cos(t) E[z | x_t] - sin(t) D = (cos(t) x_t - D) / sin(t) (sCD's velocity from a diffusion teacher)."""
    return (expand_like(t.cos(), x_t) * x_t - x0_prediction) / expand_like(t.sin(), x_t)


class AdaptiveWeight(nn.Module):
    """sCM's learned log-weight w_phi(t): a sinusoidal embedding of t and one linear layer, (B,) -> (B,)."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.register_buffer(
            "frequencies", torch.exp(torch.linspace(0, math.log(1000), channels // 2)), persistent=False
        )
        self.linear = nn.Linear(channels, 1)

    def forward(self, t: Tensor) -> Tensor:
        angles = t.float()[:, None] * self.frequencies[None]  # (B, channels / 2)
        return self.linear(torch.cat([angles.sin(), angles.cos()], dim=1)).squeeze(1)  # (B,)


def scm_loss(network: TrigNetworkFn, x0: Tensor, z: Tensor, t: Tensor, velocity: Tensor | None = None,
             condition: Any = None, tangent_warmup: float = 1.0, normalisation: float = 0.1,
             log_weight: Tensor | None = None, sigma_data: float = SIGMA_DATA,
             tangent_network: TrigNetworkFn | None = None) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """The sCM objective at data x0, noise z (std sigma_d), times t (B,); ``velocity`` dx_t/dt from a teacher (sCD),
    else the pair's own (sCT). theta- = sg(theta): F_theta- and its tangent come from one JVP without gradients,
    through ``tangent_network`` (default: ``network``; the same weights unwrapped, as DistributedDataParallel cannot
    run under torch.func), F_theta from a plain forward pass. ``tangent_warmup`` r in [0, 1]; ``normalisation`` c
    (0: none); ``log_weight`` w(t) (B,) of AdaptiveWeight, or None for the unweighted mean."""
    x_t = trig_interpolate(x0, z, t)
    dxt_dt = trig_velocity(x0, z, t) if velocity is None else velocity
    cos, sin = expand_like(t.cos(), x0), expand_like(t.sin(), x0)

    def inner(x: Tensor, time: Tensor) -> Tensor:
        return (tangent_network or network)(x, time, condition)

    value = network(x_t / sigma_data, t, condition)
    scale = t.cos() * t.sin()  # the JVP along (cos sin dx/dt / sigma_d, cos sin) is cos(t) sin(t) dF/dt
    with torch.no_grad():
        target_value, scaled_tangent = torch.func.jvp(
            inner, (x_t / sigma_data, t), (expand_like(scale, x0) * dxt_dt / sigma_data, scale)
        )
    F, dF = target_value, scaled_tangent
    g = -cos.square() * (sigma_data * F - dxt_dt) - tangent_warmup * (cos * sin * x_t + sigma_data * dF)
    if normalisation > 0:
        g = g / (expand_like(g.flatten(1).norm(dim=1), g) + normalisation)
    error = (value - (F + g)).flatten(1).square()  # (B, D): the regression onto the moved target
    # with a learned log-weight w(t): e^w / D ||.||^2 - w, the minimiser over w is e^w = D / ||.||^2
    loss = error.mean() if log_weight is None else (log_weight.exp() * error.mean(1) - log_weight).mean()
    return loss, {"scm_mse": error.mean().detach(), "tangent_norm": g.flatten(1).norm(dim=1).mean().detach()}
