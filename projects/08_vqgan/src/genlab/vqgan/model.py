"""VQGAN's autoencoder (Esser, Rombach & Ommer 2021, "Taming Transformers for High-Resolution Image Synthesis"):
a convolutional encoder and decoder with residual blocks and self-attention at the lowest resolution, and 05's
vector quantiser between them.

    x (B, C, H, W) -> E -> z_e (B, D, H/f, W/f) -> VQ -> z_q, k (B, H/f, W/f) -> G -> x_hat (B, C, H, W)

with f = 2^(levels - 1). Each level of the encoder holds ``residual_blocks`` residual blocks (GroupNorm, swish,
3x3 convolution, twice, with a 1x1 shortcut when the width changes) and then halves the side; the middle holds a
residual block, self-attention over the h x w positions, and another residual block; a GroupNorm, swish and 3x3
convolution bring the width to z_channels, and a 1x1 convolution to the codes' dimension D. The decoder mirrors
it, with one more residual block per level, and upsamples by nearest-neighbour doubling and a 3x3 convolution.
The paper's adaptive weight is taken on the decoder's last convolution (``last_layer``).

The self-attention, downsampling, upsampling and GroupNorm are 07's blocks; the quantiser is 05's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from genlab.diffusion.model import AttentionBlock, Downsample, Upsample, group_norm
from genlab.vqvae.quantizer import QuantizerOutput, VectorQuantizer


@dataclass
class VQGANConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    base_channels: int = 64  # width of the first level (128 in the paper)
    channel_multipliers: tuple[int, ...] = (1, 2, 2)  # one level each; f = 2^(levels - 1) (paper f16: 1,1,2,2,4)
    residual_blocks: int = 1  # per encoder level; the decoder has one more (2 in the paper)
    attention_resolutions: tuple[int, ...] = ()  # sides with self-attention besides the middle's (paper: 16)
    z_channels: int = 64  # the encoder's output width before the 1x1 map to D (256 in the paper)
    num_codes: int = 512  # K (1024 in the paper's f16 models)
    code_dim: int = 64  # D (256 in the paper)
    head_channels: int = 64  # channels per attention head (the paper: one head over all channels)
    groups: int = 32  # GroupNorm groups (min(groups, channels) for narrow layers)
    dropout: float = 0.0
    ema: bool = False  # 05's EMA codebook instead of the codebook loss (the paper learns the codebook)
    decay: float = 0.99
    epsilon: float = 1e-5
    dead_code_threshold: float = 0.0  # 05's dead-code restarts (0: never)

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape)
        self.channel_multipliers = tuple(self.channel_multipliers)
        self.attention_resolutions = tuple(self.attention_resolutions)
        factor = self.downsampling
        if self.image_shape[1] % factor or self.image_shape[2] % factor:
            raise ValueError(f"image side {self.image_shape[1:]} must be a multiple of f = {factor}")
        widths = [self.base_channels * m for m in self.channel_multipliers]
        for width in (*widths, self.z_channels):
            if width % min(self.groups, width):
                raise ValueError(f"GroupNorm: {width} channels are not divisible into {self.groups} groups")
        if widths[-1] % self.head_channels:
            raise ValueError(f"head_channels {self.head_channels} must divide the lowest level's {widths[-1]}")

    @property
    def downsampling(self) -> int:
        """f: the image side over the token grid's side."""
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def levels(self) -> int:
        """One level of codes (05's VQ-VAE-2 has two): 05's evaluation and token files read this."""
        return 1

    def token_shapes(self) -> list[tuple[int, int]]:
        """The token grid, as 05's VQVAEConfig lists its levels'."""
        return [(self.image_shape[1] // self.downsampling, self.image_shape[2] // self.downsampling)]


class ResnetBlock(nn.Module):
    """(B, in, h, w) -> (B, out, h, w): x + conv(swish(norm(conv(swish(norm(x)))))), a 1x1 shortcut if in != out."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            group_norm(in_channels, groups), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1),
            group_norm(out_channels, groups), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )  # fmt: skip
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(x)


def middle(channels: int, config: VQGANConfig) -> nn.Sequential:
    """The lowest resolution's residual block, self-attention, residual block."""
    return nn.Sequential(
        ResnetBlock(channels, channels, config.groups, config.dropout),
        AttentionBlock(channels, config.head_channels, config.groups),
        ResnetBlock(channels, channels, config.groups, config.dropout),
    )


class Encoder(nn.Module):
    """(B, C, H, W) -> (B, z_channels, H/f, W/f)."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_multipliers]
        layers: list[nn.Module] = [nn.Conv2d(config.image_shape[0], config.base_channels, 3, padding=1)]
        channels, side = config.base_channels, config.image_shape[1]
        for level, width in enumerate(widths):
            for _ in range(config.residual_blocks):
                layers.append(ResnetBlock(channels, width, config.groups, config.dropout))
                channels = width
                if side in config.attention_resolutions:
                    layers.append(AttentionBlock(channels, config.head_channels, config.groups))
            if level < len(widths) - 1:
                layers.append(Downsample(channels, with_conv=True))
                side //= 2
        layers += [middle(channels, config), group_norm(channels, config.groups), nn.SiLU(),
                   nn.Conv2d(channels, config.z_channels, 3, padding=1)]  # fmt: skip
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, z_channels, H/f, W/f) -> (B, C, H, W)."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_multipliers]
        channels, side = widths[-1], config.image_shape[1] // config.downsampling
        layers: list[nn.Module] = [nn.Conv2d(config.z_channels, channels, 3, padding=1), middle(channels, config)]
        for level in reversed(range(len(widths))):
            for _ in range(config.residual_blocks + 1):
                layers.append(ResnetBlock(channels, widths[level], config.groups, config.dropout))
                channels = widths[level]
                if side in config.attention_resolutions:
                    layers.append(AttentionBlock(channels, config.head_channels, config.groups))
            if level > 0:
                layers.append(Upsample(channels, with_conv=True))
                side *= 2
        layers += [group_norm(channels, config.groups), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(channels, config.image_shape[0], 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.net(x))


@dataclass
class VQGANOutput:
    reconstruction: torch.Tensor  # (B, C, H, W), in the data's range ([-1, 1])
    quantizer: QuantizerOutput  # codes, losses, usage of this batch

    @property
    def tokens(self) -> list[torch.Tensor]:
        """[indices (B, h, w)], as 05's VQVAEOutput lists its levels'."""
        return [self.quantizer.indices]


class VQGAN(nn.Module, PyTorchModelHubMixin):
    """Encode to a token grid (B, H/f, W/f), decode tokens to images; ``last_layer`` for the adaptive weight."""

    def __init__(self, config: VQGANConfig | dict) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = VQGANConfig(**config)
        self.config = config
        self.encoder = Encoder(config)
        self.pre_quantize = nn.Conv2d(config.z_channels, config.code_dim, 1)
        self.quantizer = VectorQuantizer(config.num_codes, config.code_dim, config.ema, config.decay, config.epsilon,
                                         config.dead_code_threshold)  # fmt: skip
        self.post_quantize = nn.Conv2d(config.code_dim, config.z_channels, 1)
        self.decoder = Decoder(config)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight, G_L of the adaptive weight (eq. 7)."""
        return self.decoder.conv_out.weight

    def quantize(self, x: torch.Tensor) -> QuantizerOutput:
        return self.quantizer(self.pre_quantize(self.encoder(x)))  # z_q (B, D, H/f, W/f)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, D, h, w) -> images (B, C, H, W)."""
        return self.decoder(self.post_quantize(codes))

    def decode_tokens(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        """[token grid (B, h, w) long] -> images (B, C, H, W): one level, listed as 05's VQ-VAE takes its levels."""
        (grid,) = tokens
        return self.decode_codes(self.quantizer.lookup(grid))

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, C, H, W) -> [token grid (B, H/f, W/f)], listed as 05's VQ-VAE returns its levels."""
        return [self.quantize(x).indices]

    def forward(self, x: torch.Tensor) -> VQGANOutput:
        quantized = self.quantize(x)
        return VQGANOutput(self.decode_codes(quantized.quantized), quantized)
