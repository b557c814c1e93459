"""Ancestral sampling, x_i ~ p(x_i | x_<i) one value at a time in the model's generation order.

Every draw is an inverse-CDF transform of a uniform number given in advance, u[c, r, j] for value (c, r, j):
a binary value is 1[u < p], an L-way value the smallest k with u < CDF(k). The same uniforms therefore give
the same image whichever sampler computes the conditionals, which is how the fast sampler is checked.

- ``sample_naive``: the whole network on the whole image for every value, D forward passes.
- ``sample_cached``: the fast sampler. Convolutional models compute one pixel's column of the network from
  caches of earlier layer outputs (Ramachandran et al. 2017, "Fast Generation for Convolutional
  Autoregressive Models"); NADE updates its running pre-activation a_d by one column per step.

Completion: with ``prefix`` and ``known = k``, the first k values of the generation order are copied from
``prefix`` and only the rest are sampled (for raster order and k = D/2, the bottom half given the top half).
"""

from __future__ import annotations

import torch
from torch import nn


def inverse_cdf_draw(
    logits: torch.Tensor, uniforms: torch.Tensor, levels: int, temperature: float = 1.0
) -> torch.Tensor:
    """Logits (B,) binary or (B, L) L-way, uniforms (B,) in [0, 1) -> values (B,) as floats."""
    if levels == 2:
        return (uniforms < torch.sigmoid(logits / temperature)).to(uniforms.dtype)
    cdf = torch.softmax(logits.double() / temperature, dim=-1).cumsum(-1)  # (B, L)
    return (cdf < uniforms[:, None].double()).sum(-1).clamp(max=levels - 1).to(uniforms.dtype)


def has_cached_sampler(model: nn.Module) -> bool:
    """Whether ``sample_cached`` works for this model: the convolutional ones and NADE."""
    return model.config.model == "nade" or hasattr(model.net, "start_sampling")


def labels_by_row(count: int, num_classes: int, device: torch.device) -> torch.Tensor | None:
    """Labels 0, 0, ..., 1, 1, ... spread evenly over ``count`` images (None for an unconditional model)."""
    if not num_classes:
        return None
    return torch.arange(count, device=device) * num_classes // count


def _start(uniforms: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    if prefix is None:
        return uniforms.new_zeros(uniforms.shape)
    return prefix.to(uniforms.dtype).clone()


@torch.no_grad()
def sample_naive(
    model: nn.Module,
    uniforms: torch.Tensor,
    labels: torch.Tensor | None = None,
    prefix: torch.Tensor | None = None,
    known: int = 0,
    temperature: float = 1.0,
    mask_index: int = 0,
) -> torch.Tensor:
    """One full forward pass per generated value. uniforms (B, C, H, W) -> images (B, C, H, W) of levels."""
    levels, batch = model.config.levels, uniforms.shape[0]
    x = _start(uniforms, prefix)
    flat_x, flat_u = x.view(batch, -1), uniforms.reshape(batch, -1)  # flat_x shares x's storage
    for index in model.generation_order(mask_index)[known:].tolist():
        logits = model(x, labels, mask_index=mask_index).flatten(-3)  # (B, D) or (B, L, D)
        flat_x[:, index] = inverse_cdf_draw(logits[..., index], flat_u[:, index], levels, temperature)
    return x


@torch.no_grad()
def sample_cached(
    model: nn.Module,
    uniforms: torch.Tensor,
    labels: torch.Tensor | None = None,
    prefix: torch.Tensor | None = None,
    known: int = 0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The fast sampler: the same draws as ``sample_naive`` (mask set 0), reusing computation between steps."""
    net, levels = model.net, model.config.levels
    x = _start(uniforms, prefix)
    if not has_cached_sampler(model):
        raise ValueError(f"{model.config.model} has no cached sampler; use sample_naive")
    if model.config.model == "nade":
        prefix_flat = None if prefix is None else x.flatten(1)
        return net.sample(uniforms.flatten(1), prefix_flat, known, temperature).view(x.shape)
    channels, height, width = model.config.image_shape
    state = net.start_sampling(x, labels)
    for row in range(height):
        for col in range(width):
            first = (row * width + col) * channels  # position of this pixel's first colour in the order
            for c in range(channels):
                if first + c < known and c > 0:
                    continue  # a known pixel needs one pass to fill the caches, not one per colour
                logits = net.logits_at(state, x, row, col)  # (B, C, 1, 1) or (B, L, C, 1, 1)
                if first + c >= known:
                    value_logits = logits[..., c, 0, 0]
                    x[:, c, row, col] = inverse_cdf_draw(value_logits, uniforms[:, c, row, col], levels, temperature)
    return x
