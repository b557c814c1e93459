"""VQ-VAE's training objective (van den Oord et al. 2017, eq. 3) and its bits/dim bound.

    L = log p(x | z_q(x)) + ||sg[z_e(x)] - e||^2 + beta ||z_e(x) - sg[e]||^2

written as a loss to minimise: the reconstruction term is the mean squared error (a Gaussian decoder of fixed
variance, up to scale), and for VQ-VAE-2 the codebook and commitment terms of both levels are added (Razavi et
al. 2019, Alg. 1). With the EMA codebook update the codebook term has no gradient and is left out.

The bound. The posterior q(z | x) is one-hot on the nearest codes and the prior p(z) is uniform over the K codes
(the paper, Sec. 3.1, before a prior is learned), so KL(q || p) = log K per latent and

    -log p(x) <= -log p(x | z_q(x)) + (number of latents) log K

in nats per image; over the D dimensions of the image, divided by D log 2, in bits/dim (the accounting behind
the paper's 4.67 bits/dim on CIFAR-10). The reconstruction term needs a discrete likelihood of the 8-bit image:
a Gaussian of the decoder's mean and one scale sigma, integrated over each pixel's bin (discretised_gaussian_nll).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genlab.vqvae.model import VQVAE, VQVAEOutput


def vqvae_loss(
    model: VQVAE, x: torch.Tensor, commitment_cost: float = 0.25
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """x (B, C, H, W) in [-1, 1] -> (loss, logged terms): reconstruction, codebook and commitment losses per level,
    and each level's codebook perplexity and usage in this batch."""
    out: VQVAEOutput = model(x)
    reconstruction = F.mse_loss(out.reconstruction, x)
    loss = reconstruction
    terms = {"reconstruction_mse": reconstruction.detach()}
    names = ["codes"] if len(out.quantizers) == 1 else ["top", "bottom"]
    for name, q in zip(names, out.quantizers, strict=True):
        if not q.codebook_by_ema:
            loss = loss + q.codebook_loss  # ||sg[z_e] - e||^2
        loss = loss + commitment_cost * q.commitment_loss  # beta ||z_e - sg[e]||^2
        terms.update({
            f"{name}/codebook_loss": q.codebook_loss.detach(),
            f"{name}/commitment_loss": q.commitment_loss.detach(),
            f"{name}/perplexity": q.perplexity,
            f"{name}/usage": q.usage,
        })  # fmt: skip
    return loss, terms


def discretised_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, sigma: float, levels: int = 256) -> torch.Tensor:
    """-log P(x) in nats per image, x (B, C, H, W) on the grid of ``levels`` values in [-1, 1].

    Each value owns the bin [x - delta, x + delta], delta = 1 / (levels - 1); the end bins reach to -inf and +inf,
    so the probabilities of the ``levels`` values sum to one:  P(x) = Phi((x + delta - mu) / sigma) -
    Phi((x - delta - mu) / sigma).
    """
    delta = 1.0 / (levels - 1)
    x, mean = x.double(), mean.double()  # the bins of far-off values hold masses float32 cannot tell apart
    upper = (x + delta - mean) / sigma
    lower = (x - delta - mean) / sigma
    log_cdf_upper = torch.special.log_ndtr(upper)  # log Phi(upper): the first bin, down to -inf
    log_survival_lower = torch.special.log_ndtr(-lower)  # log (1 - Phi(lower)): the last bin, up to +inf
    # An inner bin: Phi(a) - Phi(b) with (a, b) = (upper, lower), or, when the bin lies above the mean, its mirror
    # (-lower, -upper), so that both terms are small tail masses; then log Phi(a) + log(1 - Phi(b) / Phi(a)).
    above = lower > 0
    a, b = torch.where(above, -lower, upper), torch.where(above, -upper, lower)
    log_a = torch.special.log_ndtr(a)
    log_middle = log_a + torch.log(-torch.expm1(torch.special.log_ndtr(b) - log_a))
    log_p = torch.where(
        x < -1 + delta / 2, log_cdf_upper, torch.where(x > 1 - delta / 2, log_survival_lower, log_middle)
    )
    return -log_p.flatten(1).sum(1)


def bits_per_dim_bound(nll_given_codes: float, num_latents: int, num_codes: int, num_dims: int) -> float:
    """(-log p(x | z_q) + num_latents log K) / (num_dims log 2): the bound with a uniform prior, in bits/dim."""
    return (nll_given_codes + num_latents * math.log(num_codes)) / (num_dims * math.log(2))
