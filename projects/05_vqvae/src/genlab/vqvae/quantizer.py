"""The vector quantiser of VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning").

An encoder output z_e(x) at each position is replaced by its nearest codebook vector (paper, eqs. 1-2):

    k = argmin_j ||z_e(x) - e_j||_2,        z_q(x) = e_k

The argmin has no gradient, so the decoder's gradient is copied straight through to the encoder (Sec. 3.2):
z_q = z_e + sg[e_k - z_e] in the forward pass equals e_k, and d z_q / d z_e = I in the backward pass. Two terms
train the codebook and keep the encoder close to it (eq. 3, sg = stop-gradient):

    codebook loss    ||sg[z_e(x)] - e||^2       moves only the codebook vectors
    commitment loss  beta ||z_e(x) - sg[e]||^2  moves only the encoder, beta = 0.25 in the paper

Both are means over positions and dimensions here (as is the reconstruction MSE), so their balance with the
reconstruction term does not change with the latent grid's size.

With ``ema=True`` the codebook is not learned by gradients but set to running means of the encoder outputs
assigned to each code (paper, App. A.1, eqs. 6-8), with decay gamma:

    N_i <- gamma N_i + (1 - gamma) n_i                 n_i: vectors assigned to code i in the batch
    m_i <- gamma m_i + (1 - gamma) sum_j z_{i,j}        the sum of those vectors
    e_i  = m_i / N_i

N_i is Laplace-smoothed before the division, N_i <- (N_i + eps) / (n + K eps) n with n = sum_i N_i, so that a
code that is never used does not divide by zero. The running statistics start as if each code had been
assigned once, at its initial position (N_i = 1, m_i = e_i), so the first updates do not blow up the unused
codes. The codebook loss then has no gradient (it is still reported) and only the commitment loss is trained.

Dead-code restarts (not in the paper; a standard remedy for codebook collapse): a running count of each code's
assignments is kept with the same decay, and a code whose count falls below ``dead_code_threshold`` is moved
onto a random encoder output of the current batch.

Under torch.distributed the batch statistics are summed over processes before they are used, and restarts are
drawn on process 0 and broadcast, so every process keeps the same codebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, D, H, W): e_k at every position, with the straight-through gradient to z_e
    indices: torch.Tensor  # (B, H, W) long: k at every position
    codebook_loss: torch.Tensor  # ||sg[z_e] - e||^2, mean over positions and dimensions (no gradient with EMA)
    commitment_loss: torch.Tensor  # ||z_e - sg[e]||^2, mean over positions and dimensions (not yet times beta)
    perplexity: torch.Tensor  # exp(entropy of this batch's code histogram): K at most, 1 when one code is used
    usage: torch.Tensor  # fraction of the K codes used at least once in this batch
    codebook_by_ema: bool  # the codebook follows the EMA update, so the codebook loss is not to be trained


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def code_histogram(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """How often each code occurs in ``indices`` (any shape) -> (K,) float."""
    return torch.bincount(indices.flatten(), minlength=num_codes).float()


def perplexity_and_usage(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From a code histogram (K,): exp(-sum_i p_i log p_i) with p = counts / sum, and the fraction of codes used."""
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return entropy.exp(), (counts > 0).float().mean()


class VectorQuantizer(nn.Module):
    """z_e (B, D, H, W) -> QuantizerOutput; K codes of dimension D."""

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        ema: bool = False,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        dead_code_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_codes, self.code_dim = num_codes, code_dim
        self.ema, self.decay, self.epsilon = ema, decay, epsilon
        self.dead_code_threshold = dead_code_threshold
        # Uniform in [-1/K, 1/K], the initialisation of the paper's reference implementation (Sonnet).
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim).uniform_(-1 / num_codes, 1 / num_codes))
        self.codebook.requires_grad_(not ema)
        self.register_buffer("cluster_size", torch.ones(num_codes))  # N_i (EMA update)
        self.register_buffer("cluster_sum", self.codebook.detach().clone())  # m_i (EMA update)
        self.register_buffer("usage_count", torch.ones(num_codes))  # running assignments, for dead-code restarts

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,): argmin_j ||z - e_j||^2 = ||z||^2 - 2 z.e_j + ||e_j||^2 (eq. 1)."""
        e = self.codebook
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)  # (N, K)
        return distances.argmin(1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, H, W) -> code vectors (B, D, H, W), the decoder's input for given tokens."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        B, D, H, W = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, D)  # (B*H*W, D)
        indices = self.nearest_codes(flat.detach())
        z_q = F.embedding(indices, self.codebook)  # (B*H*W, D): e_k
        codebook_loss = F.mse_loss(z_q, flat.detach())  # ||sg[z_e] - e||^2 (no gradient with the EMA update)
        commitment_loss = F.mse_loss(flat, z_q.detach())  # ||z_e - sg[e]||^2
        counts = code_histogram(indices, self.num_codes)
        if self.training:
            with torch.no_grad():
                self._update_statistics(flat.detach(), indices, counts)
        straight_through = flat + (z_q - flat).detach()  # forward: e_k; backward: identity to z_e
        quantized = straight_through.view(B, H, W, D).permute(0, 3, 1, 2)  # (B, D, H, W)
        perplexity, usage = perplexity_and_usage(counts)
        return QuantizerOutput(
            quantized, indices.view(B, H, W), codebook_loss, commitment_loss, perplexity, usage, self.ema
        )

    def _update_statistics(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        """The EMA codebook update (eqs. 6-8) and the dead-code restarts, from this batch's assignments."""
        counts = _all_reduce(counts.clone())  # n_i over every process's batch
        self.usage_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:
            sums = _all_reduce(torch.zeros_like(self.cluster_sum).index_add_(0, indices, flat))  # sum_j z_{i,j}
            self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)  # eq. 6
            self.cluster_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)  # eq. 7
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.epsilon) / (n + self.num_codes * self.epsilon) * n  # Laplace
            self.codebook.data.copy_(self.cluster_sum / smoothed[:, None])  # eq. 8
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(flat)

    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        dead = (self.usage_count < self.dead_code_threshold).nonzero().flatten()
        if len(dead) == 0:
            return
        replacements = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]  # (n_dead, D)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(replacements, src=0)
        self.codebook.data[dead] = replacements
        self.cluster_sum[dead] = replacements  # the restarted code starts afresh: one assignment, at its new place
        self.cluster_size[dead] = 1.0
        self.usage_count[dead] = 1.0
