"""Exact maximum likelihood for autoregressive models.

    log p(x) = sum_i log p(x_i | x_<i)                                         (PixelRNN paper, eq. 1)

Every conditional comes out of one forward pass, so the log-likelihood is exact: a sum of Bernoulli
log-probabilities for binary data, of categorical ones (a 256-way softmax) for 8-bit data. No bound, no
dequantisation: -log p(x) in nats is the discrete NLL itself, and bits/dim is it over D ln 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def log_likelihood(logits: torch.Tensor, x: torch.Tensor, levels: int) -> torch.Tensor:
    """log p(x) in nats per image (B,), from logits (B, C, H, W) [binary] or (B, L, C, H, W) [L-way]."""
    if levels == 2:
        log_probs = -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
    else:
        log_probs = -F.cross_entropy(logits, x.long(), reduction="none")  # (B, C, H, W)
    return log_probs.flatten(1).sum(1)


def nll_loss(
    model: nn.Module, x: torch.Tensor, levels: int, labels: torch.Tensor | None = None, mask_index: int = 0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean -log p(x) over the batch in nats (the loss), with bits/dim as a logged term.

    ``model`` may be wrapped (DDP), so ``levels`` is passed rather than read off it.
    """
    nll = -log_likelihood(model(x, labels, mask_index=mask_index), x, levels).mean()
    return nll, {"nll_nats": nll.detach(), "bits_per_dim": nll.detach() / (x[0].numel() * math.log(2))}


@torch.no_grad()
def ensemble_log_likelihood(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None, num_masks: int = 1
) -> torch.Tensor:
    """MADE's test-time ensemble (Sec. 4.2): log (1/M) sum_m p_m(x), a mixture and so a normalised model. (B,)"""
    per_mask = torch.stack(
        [log_likelihood(model(x, labels, mask_index=m), x, model.config.levels) for m in range(num_masks)]
    )  # (M, B)
    return torch.logsumexp(per_mask, dim=0) - math.log(num_masks)
