"""Log-likelihood bookkeeping shared by every likelihood model: nats, bits/dim, dequantisation, and an
importance-weighted estimate of log p(x) for latent-variable models.

Conventions: a negative log-likelihood (NLL) is in nats per example unless the name says otherwise;
bits/dim = NLL / (D ln 2) with D = C * H * W.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

LN2 = math.log(2.0)


def bits_per_dim(nll_nats: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """NLL in nats per example -> bits per dimension: nll / (D ln 2)."""
    return nll_nats / (num_dims * LN2)


def discrete_nll_bound(
    continuous_nll: torch.Tensor | float, num_dims: int, levels: int = 256, interval_width: float = 1.0
) -> torch.Tensor | float:
    """Upper bound on -log P(x) of discrete data from a continuous density on uniformly dequantised data.

    Data x in {0, ..., L-1}^D is dequantised as y = a (x + u) / L + b with u ~ U[0, 1)^D, so the cube of
    x has volume (a / L)^D in y-space and, by Jensen's inequality,

        -log P(x) <= E_u[-log p(y)] - D log(a / L) = E_u[-log p(y)] + D log(L / a).

    ``continuous_nll`` is E_u[-log p(y)] in nats; ``interval_width`` is a (1 for [0, 1], 2 for [-1, 1]).
    """
    return continuous_nll + num_dims * math.log(levels / interval_width)


def importance_weighted_log_likelihood(
    log_weights: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    num_samples: int,
    chunk_size: int = 100,
) -> torch.Tensor:
    """log p(x) ~= log (1/K) sum_k w_k, with w_k = p(x, z_k) / q(z_k | x) and z_k ~ q(z | x).

    ``log_weights(x, k)`` returns log w for k fresh samples per example, shape (k, B). Its expectation is a
    lower bound on log p(x) that rises with K and tends to log p(x) (Burda et al. 2016, the IWAE bound).
    Samples are taken in chunks and combined with a running log-sum-exp, so K = 5000 fits in memory.
    Returns (B,) in nats.
    """
    total = None
    remaining = num_samples
    while remaining > 0:
        k = min(chunk_size, remaining)
        chunk = torch.logsumexp(log_weights(x, k), dim=0)  # (k, B) -> (B,)
        total = chunk if total is None else torch.logaddexp(total, chunk)
        remaining -= k
    return total - math.log(num_samples)


def mean_over_batches(values: Iterable[torch.Tensor]) -> float:
    """Mean of per-example values (each batch a (B,) tensor) over a whole data set, every example counted once."""
    total, count = 0.0, 0
    for batch_values in values:
        total += float(batch_values.double().sum())
        count += batch_values.numel()
    if count == 0:
        raise ValueError("no examples to average")
    return total / count
