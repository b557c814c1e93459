"""The base densities of the multi-scale flows: diagonal Gaussians, fixed (RealNVP) or learned (Glow).

Each prior gives the mean and log standard deviation of its latent, log p(z) = Σ_i log N(z_i; μ_i, σ_i²), and
draws z = μ + T·σ·ε for sampling at temperature T (Glow Sec. 5: T < 1 trades diversity for quality).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genlab.flows.layers import ZeroConv2d

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Σ_i log N(z_i; μ_i, σ_i²) per example: -½ Σ_i [log 2π + 2 log σ_i + ((z_i - μ_i) / σ_i)²]. (B,)"""
    standardised = (z - mean) * torch.exp(-log_std)
    return (-0.5 * (LOG_2PI + 2 * log_std + standardised**2)).flatten(1).sum(1)


def gaussian_sample(
    mean: torch.Tensor, log_std: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    device = generator.device if generator is not None else mean.device  # a CPU generator also serves a GPU model
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=device).to(mean.device)
    return mean + temperature * torch.exp(log_std) * noise


class SplitPrior(nn.Module):
    """p(z_i | h_i) for the half factored out at level i, given the half h_i that goes on.

    ``learned``: Glow's split prior, [μ, log σ] = ZeroConv(h_i), starting as N(0, I). Otherwise N(0, I),
    RealNVP's choice for every factored-out latent.
    """

    def __init__(self, context_channels: int, channels: int, learned: bool) -> None:
        super().__init__()
        self.channels = channels
        self.conv = ZeroConv2d(context_channels, 2 * channels) if learned else None

    def params(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.conv is None:
            zeros = context.new_zeros(context.shape[0], self.channels, *context.shape[2:])
            return zeros, zeros
        mean, log_std = self.conv(context).chunk(2, dim=1)
        return mean, log_std


class TopPrior(nn.Module):
    """p(z_L | y) for the last level's output.

    ``learned``: a learned per-channel μ and log σ (Glow's "learn top"), plus, with classes, a zero-initialised
    embedding of the label y added to them (Glow Sec. 5, class-conditional). Otherwise N(0, I).
    """

    def __init__(self, shape: tuple[int, int, int], learned: bool, num_classes: int = 0) -> None:
        super().__init__()
        self.shape = tuple(shape)
        channels = shape[0]
        self.base = nn.Parameter(torch.zeros(1, 2 * channels, 1, 1)) if learned else None
        self.label_embedding = nn.Embedding(num_classes, 2 * channels) if num_classes else None
        if self.label_embedding is not None:
            nn.init.zeros_(self.label_embedding.weight)

    def params(
        self, batch: int, labels: torch.Tensor | None, reference: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log σ, each (B, C, H, W), with ``reference``'s dtype and device."""
        params = reference.new_zeros(batch, 2 * self.shape[0], 1, 1)
        if self.base is not None:
            params = params + self.base
        if self.label_embedding is not None:
            if labels is None:
                raise ValueError("this prior is class-conditional: pass labels")
            params = params + self.label_embedding(labels)[:, :, None, None]
        params = params.expand(-1, -1, *self.shape[1:])
        mean, log_std = params.chunk(2, dim=1)
        return mean, log_std
