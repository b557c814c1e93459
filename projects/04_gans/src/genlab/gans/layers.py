"""Layers the GAN papers add: SAGAN's self-attention, spectral normalisation, class-conditional batch norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def spectral(module: nn.Module, enabled: bool = True) -> nn.Module:
    """W / sigma(W), sigma estimated by one power iteration per training step (Miyato et al. 2018)."""
    return spectral_norm(module) if enabled else module


class SelfAttention2d(nn.Module):
    """SAGAN's self-attention block (Zhang et al. 2018, Sec. 3).

    With x (C, N) the N = H W positions as columns and C_bar = C / 8:
        f = W_f x,  g = W_g x,  h = W_h x                     (C_bar, N) each, 1x1 convolutions
        s_ij = f(x_i)^T g(x_j),  beta_{j,i} = softmax_i(s_ij)  how much position j attends to position i
        o_j = W_v sum_i beta_{j,i} h(x_i)                     (C, N)
        y = gamma o + x,  gamma initialised to 0               so the block starts as the identity
    """

    def __init__(self, channels: int, use_spectral_norm: bool = True) -> None:
        super().__init__()
        reduced = max(1, channels // 8)
        self.f = spectral(nn.Conv2d(channels, reduced, 1, bias=False), use_spectral_norm)
        self.g = spectral(nn.Conv2d(channels, reduced, 1, bias=False), use_spectral_norm)
        self.h = spectral(nn.Conv2d(channels, reduced, 1, bias=False), use_spectral_norm)
        self.v = spectral(nn.Conv2d(reduced, channels, 1, bias=False), use_spectral_norm)
        self.gamma = nn.Parameter(torch.zeros(()))

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (o (B, C, H, W), beta (B, N, N) with beta[b, j, i] = beta_{j,i}).

        The paper's equations as written, the (N, N) attention map materialised: the readable reference, and what
        to look at. ``forward`` computes the same o without the map.
        """
        batch, _, height, width = x.shape
        keys = self.f(x).flatten(2)  # f(x): (B, C_bar, N)
        queries = self.g(x).flatten(2)  # g(x): (B, C_bar, N)
        values = self.h(x).flatten(2)  # h(x): (B, C_bar, N)
        scores = queries.transpose(1, 2) @ keys  # s[b, j, i] = g(x_j) . f(x_i): (B, N, N)
        beta = scores.softmax(dim=-1)  # normalised over i, the attended positions
        attended = values @ beta.transpose(1, 2)  # sum_i beta_{j,i} h(x_i): (B, C_bar, N)
        return self.v(attended.view(batch, -1, height, width)), beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = gamma o + x, o as in ``attention`` through torch's fused softmax attention, which never stores the
        (N, N) map: query g(x_j), key f(x_i), value h(x_i), and scale 1 (SAGAN has no 1 / sqrt(C_bar))."""
        batch, _, height, width = x.shape
        # (B, N, C_bar) each, made contiguous: with a strided last dimension torch falls back to the (N, N) matrix
        queries = self.g(x).flatten(2).transpose(1, 2).contiguous()  # g(x_j)
        keys = self.f(x).flatten(2).transpose(1, 2).contiguous()  # f(x_i)
        values = self.h(x).flatten(2).transpose(1, 2).contiguous()  # h(x_i)
        attended = F.scaled_dot_product_attention(queries, keys, values, scale=1.0)  # sum_i beta_{j,i} h(x_i)
        o = self.v(attended.transpose(1, 2).reshape(batch, -1, height, width))
        return self.gamma * o + x


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias are looked up by class (de Vries et al. 2017; SAGAN's generator, BigGAN):
    y = (1 + gamma_c) * BN(x) + beta_c, gamma and beta embeddings initialised to 0."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gain = 1 + self.gain(labels)[:, :, None, None]  # (B, C) -> (B, C, 1, 1)
        return gain * self.norm(x) + self.bias(labels)[:, :, None, None]
