"""The flows' objective: the exact density of uniformly dequantised data, reported as a bound on the discrete
NLL in bits/dim.

8-bit data x in {0, ..., 255}^D become y = (x + u) / 256 with u ~ U[0, 1)^D (RealNVP Sec. 4.1, Glow Sec. 5).
A density p on y gives the discrete model P(x) = ∫_cube(x) p(y) dy, and by Jensen's inequality

    -log P(x) <= E_u[-log p(y)] + D log 256,

the "+ D log 256" being genlab.core.metrics.discrete_nll_bound. Every Jacobian of the pre-processing (the
logit transform, the centring) is inside the model's log p(y), so the bound is the whole accounting.
"""

from __future__ import annotations

import torch
from torch import nn

from genlab.core.metrics import bits_per_dim, discrete_nll_bound


def dequantise(x: torch.Tensor, levels: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Integer levels x (B, C, H, W) -> y = (x + u) / levels in [0, 1), u ~ U[0, 1) unless ``noise`` is given."""
    if noise is None:
        noise = torch.rand(x.shape, device=x.device)
    return (x.to(noise.dtype) + noise) / levels


def discrete_nll(
    model: nn.Module, x: torch.Tensor, levels: int, labels: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """The upper bound on -log P(x) in nats per image (B,), from one dequantisation draw per image."""
    y = dequantise(x, levels, noise)
    return discrete_nll_bound(-model(y, labels), x[0].numel(), levels)


def nll_loss(
    model: nn.Module, x: torch.Tensor, levels: int, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean bound in bits/dim (the loss: the same scale for every image size), with nats logged."""
    nll = discrete_nll(model, x, levels, labels).mean()
    bpd = bits_per_dim(nll, x[0].numel())
    return bpd, {"nll_nats": nll.detach(), "bits_per_dim": bpd.detach()}
