"""VQ-VAE (van den Oord et al. 2017) and VQ-VAE-2 (Razavi et al. 2019): networks only.

VQ-VAE (Sec. 4.1 of the paper): the encoder is two strided 4x4 convolutions (stride 2) followed by two residual
blocks (ReLU, 3x3 convolution, ReLU, 1x1 convolution); the decoder is two residual blocks followed by two
transposed 4x4 convolutions of stride 2. A 1x1 convolution maps the encoder's channels to the codes' dimension D,
and the vector quantiser (quantizer.py) replaces each of the (H/4) x (W/4) vectors by its nearest code:

    x (B, C, H, W) -> z_e (B, D, H/4, W/4) -> z_q, k (B, H/4, W/4) -> x_hat (B, C, H, W)

As in the paper's reference implementation, a 3x3 convolution sits between the strided convolutions and the
residual blocks (and at the decoder's input), and the residual stack ends with a ReLU.

VQ-VAE-2 (Razavi et al. 2019, Fig. 2a and Alg. 1): two levels of latents. The bottom encoder brings x to 1/4 of
its side, a top encoder brings that to 1/8; the top latents are quantised first, decoded to the bottom level,
and the bottom latents are quantised from the bottom features together with that decoding, so that the bottom
codes hold what the top codes do not. The decoder sees both: the bottom codes and the top codes upsampled.

    h_b = E_b(x)                   (B, F, H/4, W/4)
    h_t = E_t(h_b)                 (B, F, H/8, W/8)
    e_t = VQ_t(h_t)                (B, D, H/8, W/8)   top codes
    e_b = VQ_b([h_b, D_t(e_t)])    (B, D, H/4, W/4)   bottom codes, conditioned on the top
    x_hat = D([e_b, up(e_t)])      (B, C, H, W)

Tokens are lists with the coarsest level first ([top, bottom], or [codes] for VQ-VAE), the order in which a
prior generates them (06's GPT: the top prior, then the bottom prior conditioned on the top).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from genlab.vqvae.quantizer import QuantizerOutput, VectorQuantizer


@dataclass
class VQVAEConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    levels: int = 1  # 1: VQ-VAE, latents at 1/4 of the side; 2: VQ-VAE-2, top at 1/8 and bottom at 1/4
    hidden_channels: int = 128  # F: the encoder's and decoder's width (256 in the paper)
    residual_channels: int = 32  # width inside each residual block
    residual_layers: int = 2  # residual blocks per stack (2 in the paper)
    num_codes: int = 512  # K
    code_dim: int = 64  # D
    ema: bool = False  # codebook by exponential moving averages (App. A.1) instead of the codebook loss
    decay: float = 0.99  # gamma of the EMA update, and of the usage counts for dead-code restarts
    epsilon: float = 1e-5  # Laplace smoothing of the EMA cluster sizes
    dead_code_threshold: float = 0.0  # restart a code whose running assignment count falls below this (0: never)

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape)
        factor = 4 * 2 ** (self.levels - 1)
        if self.levels not in (1, 2):
            raise ValueError(f"levels must be 1 (VQ-VAE) or 2 (VQ-VAE-2), got {self.levels}")
        if self.image_shape[1] % factor or self.image_shape[2] % factor:
            raise ValueError(
                f"image side {self.image_shape[1:]} must be a multiple of {factor} for {self.levels} level(s)"
            )

    def token_shapes(self) -> list[tuple[int, int]]:
        """The token grid of each level, coarsest first."""
        _, H, W = self.image_shape
        bottom = (H // 4, W // 4)
        return [bottom] if self.levels == 1 else [(H // 8, W // 8), bottom]


class ResidualStack(nn.Module):
    """``layers`` blocks x + conv1x1(ReLU(conv3x3(ReLU(x)))), then a ReLU; (B, F, h, w) -> (B, F, h, w)."""

    def __init__(self, channels: int, residual_channels: int, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(channels, residual_channels, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(residual_channels, channels, 1),
            )
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return torch.relu(x)


class Encoder(nn.Module):
    """(B, C_in, h, w) -> (B, F, h / 2^downsamples, w / 2^downsamples): strided 4x4 convolutions, a 3x3, residuals."""

    def __init__(self, in_channels: int, config: VQVAEConfig, downsamples: int) -> None:
        super().__init__()
        F = config.hidden_channels
        widths = [in_channels] + [F // 2] * (downsamples - 1) + [F]
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(fan_in, fan_out, 4, stride=2, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(F, F, 3, padding=1), ResidualStack(F, config.residual_channels, config.residual_layers)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, C_in, h, w) -> (B, C_out, h * 2^upsamples, w * 2^upsamples): a 3x3, residuals, transposed 4x4 convs."""

    def __init__(self, in_channels: int, out_channels: int, config: VQVAEConfig, upsamples: int) -> None:
        super().__init__()
        F = config.hidden_channels
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, F, 3, padding=1),
            ResidualStack(F, config.residual_channels, config.residual_layers),
        ]
        widths = [F] + [F // 2] * (upsamples - 1) + [out_channels]
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.ConvTranspose2d(fan_in, fan_out, 4, stride=2, padding=1))
            if i < upsamples - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class VQVAEOutput:
    reconstruction: torch.Tensor  # (B, C, H, W), in the data's range ([-1, 1])
    quantizers: list[QuantizerOutput]  # one per level, coarsest first

    @property
    def tokens(self) -> list[torch.Tensor]:
        return [q.indices for q in self.quantizers]


class VQVAE(nn.Module, PyTorchModelHubMixin):
    """VQ-VAE (levels = 1) or VQ-VAE-2 (levels = 2): encode to tokens, decode tokens to images."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = VQVAEConfig(**config)
        self.config = config
        C, F, D = config.image_shape[0], config.hidden_channels, config.code_dim

        def quantizer() -> VectorQuantizer:
            return VectorQuantizer(
                config.num_codes, D, config.ema, config.decay, config.epsilon, config.dead_code_threshold
            )

        self.encoder = Encoder(C, config, downsamples=2)  # E_b: to 1/4
        if config.levels == 1:
            self.pre_quantize = nn.Conv2d(F, D, 1)
            self.quantizer = quantizer()
            self.decoder = Decoder(D, C, config, upsamples=2)
        else:
            self.top_encoder = Encoder(F, config, downsamples=1)  # E_t: 1/4 -> 1/8
            self.pre_quantize_top = nn.Conv2d(F, D, 1)
            self.top_quantizer = quantizer()
            self.top_decoder = Decoder(D, D, config, upsamples=1)  # D_t: top codes -> the bottom level
            self.pre_quantize = nn.Conv2d(F + D, D, 1)  # the bottom sees its own features and the decoded top
            self.quantizer = quantizer()
            self.upsample_top = nn.ConvTranspose2d(D, D, 4, stride=2, padding=1)
            self.decoder = Decoder(2 * D, C, config, upsamples=2)

    @property
    def quantizers(self) -> list[VectorQuantizer]:
        """One per level, coarsest first."""
        return [self.quantizer] if self.config.levels == 1 else [self.top_quantizer, self.quantizer]

    def quantize(self, x: torch.Tensor) -> list[QuantizerOutput]:
        """x (B, C, H, W) -> the quantiser outputs of every level, coarsest first."""
        h_bottom = self.encoder(x)  # (B, F, H/4, W/4)
        if self.config.levels == 1:
            return [self.quantizer(self.pre_quantize(h_bottom))]
        top = self.top_quantizer(self.pre_quantize_top(self.top_encoder(h_bottom)))  # (B, D, H/8, W/8)
        conditioned = torch.cat([h_bottom, self.top_decoder(top.quantized)], dim=1)  # (B, F + D, H/4, W/4)
        return [top, self.quantizer(self.pre_quantize(conditioned))]

    def decode_codes(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """Code vectors of every level (coarsest first, each (B, D, h, w)) -> images (B, C, H, W)."""
        if self.config.levels == 1:
            return self.decoder(codes[0])
        top, bottom = codes
        return self.decoder(torch.cat([bottom, self.upsample_top(top)], dim=1))  # (B, 2D, H/4, W/4) in

    def decode_tokens(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        """Token grids of every level (coarsest first, each (B, h, w) long) -> images (B, C, H, W)."""
        return self.decode_codes([q.lookup(t) for q, t in zip(self.quantizers, tokens, strict=True)])

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, C, H, W) -> token grids of every level, coarsest first."""
        return [q.indices for q in self.quantize(x)]

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        quantized = self.quantize(x)
        return VQVAEOutput(self.decode_codes([q.quantized for q in quantized]), quantized)
