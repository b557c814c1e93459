"""A GPT-style transformer (Vaswani et al. 2017; Radford et al. 2018, 2019): networks only.

A decoder-only transformer over a sequence of token ids x_1 .. x_T:

    h_0 = W_token[x] + W_position[0 .. T-1]                       learned positions (GPT)
    h_l = h_{l-1} + Attention(LayerNorm(h_{l-1}))                 pre-norm blocks (GPT-2, Sec. 2.3)
    h_l = h_l + MLP(LayerNorm(h_l))                               MLP: C -> 4C, GELU, 4C -> C
    logits = LayerNorm(h_L) W_token^T                             the output layer tied to the token embedding

Attention is multi-head scaled dot-product attention (Vaswani et al., eq. 1, softmax(Q K^T / sqrt(d)) V), causal
for the GPT, so position t sees positions <= t only, computed by torch's ``scaled_dot_product_attention``. With
``causal=False`` the same network is MaskGIT's bidirectional transformer (Chang et al. 2022).

Initialisation as GPT-2's: every weight N(0, 0.02), biases zero, and the projections that write into the
residual stream (attention's output and the MLP's second layer) N(0, 0.02 / sqrt(2 L)), so that the residual
stream's variance does not grow with the depth L (GPT-2, Sec. 2.3).

Sampling keeps a key-value cache: each layer's keys and values of the positions seen so far, so that a new token
costs one position's work instead of the whole prefix's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256  # the longest sequence (context) the positions cover
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in the linear layers and layer norms, as GPT-2
    causal: bool = True  # False: a bidirectional transformer (MaskGIT)

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")


# One layer's cache: keys and values (B, heads, positions so far, head size).
LayerCache = tuple[torch.Tensor, torch.Tensor]


class SelfAttention(nn.Module):
    """(B, T, C) -> (B, T, C): multi-head attention; with ``cache`` the T new positions follow the cached ones."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.causal, self.dropout = config.n_head, config.causal, config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # writes into the residual stream
        self.proj.residual_projection = True
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> tuple[torch.Tensor, LayerCache]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, h, T, d)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)  # (B, h, P + T, d)
        past = k.shape[2] - T
        mask, is_causal = None, False
        if self.causal and T > 1:
            if past == 0:
                is_causal = True  # the plain lower-triangular mask
            else:  # new position t (at P + t) sees every cached position and the new ones up to itself
                mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )  # softmax(q k^T / sqrt(d)) v: (B, h, T, d)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)  # writes into the residual stream
        self.proj.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2's GELU is the tanh approximation (Hendrycks & Gimpel 2016, Sec. 2)
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-norm: x + Attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attention = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> tuple[torch.Tensor, LayerCache]:
        attended, cache = self.attention(self.ln_1(x), cache)
        x = x + attended
        return x + self.mlp(self.ln_2(x)), cache


class GPT(nn.Module, PyTorchModelHubMixin):
    """Token ids (B, T) -> logits (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = GPTConfig(**config)
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # weight tying (Press & Wolf 2017), as GPT-2
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual_projection", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, caches: list[LayerCache] | None = None
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """idx (B, T) following ``caches`` (the layers' keys and values of the positions before, or None)
        -> logits (B, T, V) and the caches extended by these T positions."""
        T = idx.shape[1]
        past = 0 if caches is None else caches[0][0].shape[2]
        if past + T > self.config.block_size:
            raise ValueError(f"{past + T} positions, but the model's context is {self.config.block_size}")
        positions = torch.arange(past, past + T, device=idx.device)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(positions))  # (B, T, C)
        new_caches = []
        for i, block in enumerate(self.blocks):
            x, cache = block(x, None if caches is None else caches[i])
            new_caches.append(cache)
        return self.lm_head(self.ln_f(x)), new_caches  # (B, T, V)

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameters, without the position embedding by default (the token embedding is shared with the head)."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.position_embedding.weight.numel() if non_embedding else total
