"""07's U-Net as each of this project's functions: a velocity v(x, t), MeanFlow's average velocity u(z, s, t), the
consistency models' F(x, sigma) and sCM's TrigFlow F(x / sigma_d, t). Only the way time enters changes.

    v(x, t)          = U(x, 1000 t)                                  rectified flow, t in [0, 1]
    u(z, s, t)       = U(z, k s; + e(k (t - s))), k = 1000           MeanFlow: a second embedding of the interval
    F(x, sigma)      = U(x, 1000 * 0.25 log sigma)                   consistency models: EDM's c_noise, scaled
    F(x / s_d, t)    = U(x / s_d, t)                                 TrigFlow, t in [0, pi / 2]: c_noise(t) = t

The U-Net's sinusoidal embedding was designed for timesteps in [0, 1000), so the first three map their time into
about that range. sCM does not: Lu & Song (sec. 4.1) trace part of continuous-time training's instability to
time transformations such as 1000 t, whose large input makes the embedding's derivative in t (which the tangent
dF/dt carries) large, and use c_noise(t) = t. This file imports only torch and 07's model.
"""

from __future__ import annotations

from typing import Any

import torch

from genlab.consistency.consistency import ConsistencyFunction
from genlab.consistency.trigflow import as_ve_consistency
from genlab.diffusion.model import TimestepEmbedding, UNet, UNetConfig

Tensor = torch.Tensor
TIME_SCALE = 1000.0


def velocity_of(network: torch.nn.Module) -> Any:
    """07's U-Net as a velocity field v(x_t, t, labels), t in [0, 1]."""

    def velocity(x: Tensor, t: Tensor, labels: Any = None) -> Tensor:
        return network(x, TIME_SCALE * t, labels)

    return velocity


class IntervalUNet(UNet):
    """07's U-Net with a second time embedding, of the interval length t - s, added to that of the start s: the
    network of MeanFlow's u(z_s, s, t) (the paper conditions on two times the same way, by summed embeddings).
    ``time_scale`` multiplies both times before their embeddings; MeanFlow's target carries d_s u, which a large
    scale makes steep (the paper's PyTorch code feeds t in [0, 1] itself, sCM argues against 1000 t)."""

    def __init__(self, config: UNetConfig | dict, time_scale: float = TIME_SCALE) -> None:
        super().__init__(config)
        self.time_scale = time_scale
        self.interval_embed = TimestepEmbedding(self.config.base_channels, self.config.time_dim)

    def forward(self, z: Tensor, s: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """z (B, C, H, W) at time s (B,), the interval's end t (B,) -> the average velocity (B, C, H, W)."""
        interval = self.interval_embed(self.time_scale * (t - s))  # (B, 4C)
        return super().forward(z, self.time_scale * s, class_labels, extra_embedding=interval)


def consistency_network_of(network: torch.nn.Module) -> Any:
    """07's U-Net as the consistency models' F(c_in x, sigma, labels), its timestep EDM's c_noise = log(sigma) / 4
    times 1000 (the consistency models' code does the same)."""

    def inner(x: Tensor, sigma: Tensor, labels: Any = None) -> Tensor:
        return network(x, TIME_SCALE * 0.25 * sigma.log(), labels)

    return inner


def trigflow_network_of(network: torch.nn.Module) -> Any:
    """07's U-Net as TrigFlow's F(x_t / sigma_d, t, labels): the network itself, t in [0, pi / 2] being its timestep
    as it is (sCM's c_noise(t) = t)."""
    return network


def consistency_function_of(network: torch.nn.Module, method: str, sigma_min: float) -> Any:
    """f(x + sigma n, sigma, labels) of a trained network, in the VE view for every method."""
    if method in ("sct", "scd"):
        return as_ve_consistency(trigflow_network_of(network))
    return ConsistencyFunction(consistency_network_of(network), sigma_min)
