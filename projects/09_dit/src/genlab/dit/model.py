"""The Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"): networks only.

A noisy image (or latent) x_t (B, C, H, W) is cut into p x p patches, each linearly embedded, plus a fixed 2-D
sin-cos position embedding (Sec. 3.1, "Patchify"): T = (H / p)(W / p) tokens of width d. N transformer blocks
process them, conditioned on the timestep and the class; a final layer maps each token back to a p x p x C' patch
(C' = 2C with the learned variance of Improved DDPM, as DiT trains), and the patches are put back together:

    tokens = PatchEmbed(x_t) + pos                        (B, T, d)
    c = TimestepEmbed(t) + LabelEmbed(y)                  (B, d)    y = num_classes is the null label of CFG
    tokens = Block_c(tokens), N times
    out = Unpatchify(Linear(adaLN_c(LayerNorm(tokens))))  (B, C', H, W)

The block designs the paper compares (Sec. 3.2, Fig. 3 and 5):

    in-context      t and y as two more tokens in the sequence, plain pre-LN blocks, removed after the last block
    cross-attention plain blocks with a cross-attention layer after self-attention, attending to the 2 tokens [t, y]
    adaLN           LayerNorm(h) (1 + gamma) + beta, gamma and beta regressed from c by a linear layer per block
    adaLN-Zero      adaLN, and each residual branch scaled by a regressed alpha, its regressor initialised to zero:
                    h = h + alpha_1 Attention(adaLN_1(h)); h = h + alpha_2 MLP(adaLN_2(h)); every block starts as the
                    identity (the paper's best, and DiT's default)

Initialisation follows the reference code: Xavier-uniform linear layers, the patch embedding as a linear layer,
N(0, 0.02) for the label table and the timestep MLP, zero for every adaLN regressor (so alpha = 0 for adaLN-Zero) and
for the final linear layer, so that a fresh DiT predicts 0. One difference: the reference's attention has one fused
(d, 3d) qkv layer, ours a query layer and a (d, 2d) key-value layer (so that cross-attention can share the module), and
Xavier's bound follows each layer's fan, so the initial q's bound is sqrt(2) times the reference's and k's and v's
about 1.15 times. Patch sizes that do not divide the side (28 with p = 8) are handled by padding the input with
zeros to the next multiple and cropping the output back.

This file imports only torch and the Hub mixin: copy it out as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

Conditioning = Literal["adaln-zero", "adaln", "cross-attention", "in-context"]
CONDITIONINGS: tuple[str, ...] = ("adaln-zero", "adaln", "cross-attention", "in-context")


@dataclass
class DiTConfig:
    image_channels: int = 4  # C of the input: a latent's channels, or an image's
    image_size: int = 32  # side of the (square) input
    patch_size: int = 2
    hidden_size: int = 384  # d
    depth: int = 12  # N blocks
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 0  # 0: unconditional; else a label table of num_classes + 1 rows (the last is "null")
    learned_variance: bool = True  # output 2C channels: eps and Improved DDPM's interpolation v (DiT's learn_sigma)
    conditioning: Conditioning = "adaln-zero"
    time_frequency_shift: int = (
        0  # sinusoid frequencies exp(-ln(10^4) i / (half - shift)): 0 is DiT's code, 1 diffusers'
    )

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {self.conditioning!r}; known: {', '.join(CONDITIONINGS)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide hidden_size {self.hidden_size}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size must be a multiple of 4 (the 2-D sin-cos embedding), got {self.hidden_size}")
        if min(self.patch_size, self.depth, self.image_size, self.image_channels) < 1 or self.num_classes < 0:
            raise ValueError("patch_size, depth, image_size and image_channels must be >= 1, num_classes >= 0")

    @property
    def out_channels(self) -> int:
        return 2 * self.image_channels if self.learned_variance else self.image_channels

    @property
    def grid_size(self) -> int:
        """Patches per side, after padding the side up to a multiple of the patch size."""
        return math.ceil(self.image_size / self.patch_size)

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2


# The paper's sizes (Table 1), with a patch size p each ("DiT-XL/2"), and two CPU-sized ones of the same shape family.
SIZES: dict[str, dict[str, int]] = {
    "XXS": {"depth": 4, "hidden_size": 96, "num_heads": 3},
    "XS": {"depth": 6, "hidden_size": 192, "num_heads": 3},
    "S": {"depth": 12, "hidden_size": 384, "num_heads": 6},
    "B": {"depth": 12, "hidden_size": 768, "num_heads": 12},
    "L": {"depth": 24, "hidden_size": 1024, "num_heads": 16},
    "XL": {"depth": 28, "hidden_size": 1152, "num_heads": 16},
}


def dit_config(name: str, **overrides) -> DiTConfig:
    """A named size with its patch size, "S/4" or "DiT-XL/2", with any other field overridden."""
    size, _, patch = name.removeprefix("DiT-").partition("/")
    if size not in SIZES or not patch.isdigit():
        raise ValueError(f"unknown DiT size {name!r}: a size of {', '.join(SIZES)} and a patch size, e.g. S/4")
    return DiTConfig(**{**SIZES[size], "patch_size": int(patch), **overrides})


# ---------------------------------------------------------------------------------------------------- embeddings


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(P,) positions -> (P, dim): [sin(pos w_i), cos(pos w_i)], w_i = 10000^(-i / (dim / 2)), i < dim / 2."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]  # (P, dim / 2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """The fixed 2-D position embedding of MAE and DiT, (grid_size^2, dim) in raster order: half the channels
    encode the row, half the column, each by sincos_1d."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    # the reference code's grid puts the column first: its first half encodes the column (w), then the row (h)
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1).float()


class TimestepEmbedder(nn.Module):
    """t (B,) float -> (B, d): a 256-channel sinusoid [cos(t w_i), sin(t w_i)], then Linear, SiLU, Linear."""

    def __init__(self, hidden_size: int, frequency_shift: int = 0, channels: int = 256) -> None:
        super().__init__()
        self.channels, self.frequency_shift = channels, frequency_shift
        self.mlp = nn.Sequential(nn.Linear(channels, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.channels // 2
        exponent = torch.arange(half, dtype=torch.float32, device=t.device) / (half - self.frequency_shift)
        angles = t.float()[:, None] * torch.exp(-math.log(10000.0) * exponent)[None]  # (B, half)
        return self.mlp(torch.cat([torch.cos(angles), torch.sin(angles)], dim=1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, T, d) * (1 + scale) + shift, scale and shift (B, d) per example."""
    return x * (1 + scale[:, None]) + shift[:, None]


# ---------------------------------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    """Multi-head attention through scaled_dot_product_attention: queries from x, keys and values from ``context``
    (x itself for self-attention)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        B, T, d = x.shape
        context = x if context is None else context

        def heads(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, L, d) -> (B, heads, L, d / h)

        key, value = self.key_value(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(heads(self.query(x)), heads(key), heads(value))  # (B, heads, T, d / h)
        return self.proj(out.transpose(1, 2).reshape(B, T, d))


class MLP(nn.Sequential):
    """Linear, GELU (tanh approximation, as DiT), Linear."""

    def __init__(self, dim: int, ratio: float) -> None:
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class DiTBlock(nn.Module):
    """One transformer block in one of the four conditioning designs; c (B, d) is the summed t and y embedding,
    ``context`` (B, 2, d) the two as tokens (for cross-attention)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        d, self.design = config.hidden_size, config.conditioning
        adaptive = self.design in ("adaln", "adaln-zero")
        # adaLN normalises without its own affine: scale and shift come from c
        self.norm1 = nn.LayerNorm(d, elementwise_affine=not adaptive, eps=1e-6)
        self.attention = Attention(d, config.num_heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=not adaptive, eps=1e-6)
        self.mlp = MLP(d, config.mlp_ratio)
        if self.design == "cross-attention":
            self.norm_cross = nn.LayerNorm(d, eps=1e-6)
            self.cross_attention = Attention(d, config.num_heads)
        if adaptive:  # adaLN-Zero regresses (beta, gamma, alpha) for both branches; adaLN only (beta, gamma)
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, (6 if self.design == "adaln-zero" else 4) * d))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.design == "adaln-zero":
            shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=1)
            x = x + gate1[:, None] * self.attention(modulate(self.norm1(x), shift1, scale1))
            return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        if self.design == "adaln":
            shift1, scale1, shift2, scale2 = self.modulation(c).chunk(4, dim=1)
            x = x + self.attention(modulate(self.norm1(x), shift1, scale1))
            return x + self.mlp(modulate(self.norm2(x), shift2, scale2))
        x = x + self.attention(self.norm1(x))
        if self.design == "cross-attention":
            x = x + self.cross_attention(self.norm_cross(x), context)
        return x + self.mlp(self.norm2(x))


class FinalLayer(nn.Module):
    """LayerNorm (adaptive for the adaLN designs), then Linear to p * p * C' values per token."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.adaptive = config.conditioning in ("adaln", "adaln-zero")
        self.norm = nn.LayerNorm(d, elementwise_affine=not self.adaptive, eps=1e-6)
        self.linear = nn.Linear(d, config.patch_size**2 * config.out_channels)
        if self.adaptive:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.adaptive:
            shift, scale = self.modulation(c).chunk(2, dim=1)
            return self.linear(modulate(self.norm(x), shift, scale))
        return self.linear(self.norm(x))


# ---------------------------------------------------------------------------------------------------- the network


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H / p)(W / p), p * p * C), patches in raster order, each flattened as (p, p, C)."""
    B, C, H, W = x.shape
    patches = x.reshape(B, C, H // p, p, W // p, p)
    return torch.einsum("nchpwq->nhwpqc", patches).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tokens: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """The inverse of patchify: (B, h w, p * p * C) -> (B, C, h p, w p), h = w."""
    B, T, _ = tokens.shape
    h = math.isqrt(T)
    patches = tokens.reshape(B, h, h, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", patches).reshape(B, channels, h * p, h * p)


class DiT(nn.Module, PyTorchModelHubMixin):
    """x_t (B, C, H, W), t (B,) float in [0, T), labels (B,) or None -> (B, C', H, W)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = DiTConfig(**config)
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.patch_embed = nn.Conv2d(config.image_channels, d, kernel_size=p, stride=p)  # a linear map per patch
        self.register_buffer("pos_embed", sincos_2d(d, config.grid_size)[None], persistent=False)  # (1, T, d)
        self.t_embedder = TimestepEmbedder(d, config.time_frequency_shift)
        self.y_embedder = nn.Embedding(config.num_classes + 1, d) if config.num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.final = FinalLayer(config)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def xavier(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(xavier)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for module in [*self.blocks, self.final]:
            if hasattr(module, "modulation"):  # adaLN(-Zero): the regressor starts at zero
                nn.init.zeros_(module.modulation[-1].weight)
                nn.init.zeros_(module.modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        config = self.config
        B, _, H, W = x.shape
        if x.shape[-2:] != (config.image_size,) * 2:  # else F.pad below would silently crop a larger input
            raise ValueError(f"DiT for {config.image_size}x{config.image_size} inputs was given {H}x{W}")
        side = config.grid_size * config.patch_size
        if side != H:  # pad to a multiple of the patch size; cropped again below
            x = F.pad(x, (0, side - W, 0, side - H))
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).expand(B)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, C, H, W) -> (B, T, d)
        t_emb = self.t_embedder(t)  # (B, d)
        y_emb = torch.zeros_like(t_emb)
        if self.y_embedder is not None:
            labels = torch.full((B,), config.num_classes, device=x.device) if labels is None else labels
            y_emb = self.y_embedder(labels)
        c, context = t_emb + y_emb, torch.stack([t_emb, y_emb], dim=1)  # (B, d), (B, 2, d)
        if config.conditioning == "in-context":
            tokens = torch.cat([context, tokens], dim=1)  # (B, 2 + T, d)
        for block in self.blocks:
            tokens = block(tokens, c, context)
        if config.conditioning == "in-context":
            tokens = tokens[:, 2:]  # the conditioning tokens are dropped after the last block
        out = unpatchify(self.final(tokens, c), config.patch_size, config.out_channels)  # (B, C', side, side)
        return out[:, :, :H, :W]


def forward_gflops(config: DiTConfig) -> float:
    """Multiply-adds of one forward pass per image, in billions: the paper's "Gflops" (counted by fvcore, one per
    multiply-add; Table 4: DiT-XL/2 118.6 on 32x32x4 latents). With T tokens of width d, each block costs 12 T d^2
    (the q, k, v and output projections 4 T d^2, the MLP 2 r T d^2 with r = 4) plus 2 T^2 d (scores and the weighted
    sum); then the patch embedding, the adaLN regressors and the final layer."""
    T, d, p = config.num_tokens, config.hidden_size, config.patch_size
    mlp = int(d * config.mlp_ratio)
    tokens = T + (2 if config.conditioning == "in-context" else 0)
    block = 4 * tokens * d * d + 2 * tokens * d * mlp + 2 * tokens * tokens * d
    if config.conditioning == "cross-attention":  # queries and output on the tokens, keys and values on 2 tokens
        block += 2 * tokens * d * d + 2 * 2 * d * d + 2 * tokens * 2 * d
    modulation = {"adaln-zero": 6, "adaln": 4}.get(config.conditioning, 0) * d * d
    embed = T * d * p * p * config.image_channels + 256 * d + d * d  # patches, the timestep MLP
    final = T * d * p * p * config.out_channels + (2 * d * d if config.conditioning in ("adaln", "adaln-zero") else 0)
    return (config.depth * (block + modulation) + embed + final) / 1e9
