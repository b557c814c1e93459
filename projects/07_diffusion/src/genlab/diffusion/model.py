"""The U-Net of DDPM (Ho et al. 2020, App. B) with guided-diffusion's refinements (Dhariwal & Nichol 2021), and
guided-diffusion's noise-conditional classifier: networks only (the schedule, objective and samplers live beside).

DDPM, App. B: "Our neural network architecture follows the backbone of PixelCNN++, which is a U-Net based on a Wide
ResNet. We replaced weight normalization with group normalization. Our 32x32 models use four feature map
resolutions (32x32 to 4x4) [...] All models have two convolutional residual blocks per resolution level and
self-attention blocks at the 16x16 resolution between the convolutional blocks. Diffusion time t is specified by
adding the Transformer sinusoidal position embedding into each residual block." The CIFAR-10 model has 35.7M
parameters and dropout 0.1. With C = base_channels, widths w_i = C * channel_multipliers[i] and L levels:

    emb = MLP(sinusoid(t))                    (B, 4C)         [+ label embedding: classifier-free guidance]
    h = conv3x3(x_t)                          (B, C, H, W)    pushed onto the skip stack
    down, level i = 0 .. L-1:                 residual_blocks x [ResBlock(emb) (-> Attention at the listed sides)],
                                              each output pushed; then a stride-2 conv (pushed), except the last
    middle:                                   ResBlock, Attention, ResBlock at H / 2^(L-1)
    up, level i = L-1 .. 0:                   (residual_blocks + 1) x [concat(h, pop()) -> ResBlock (-> Attention)],
                                              then nearest x2 + conv3x3, except at level 0
    out = conv3x3(SiLU(GroupNorm(h)))         (B, C_img or 2 C_img, H, W)

    ResBlock(h, emb) = skip(h) + conv3x3(Dropout(SiLU(N(conv3x3(SiLU(GroupNorm(h))), emb))))
        N(a, emb) = GroupNorm(a + Linear(SiLU(emb)))                      DDPM: the time embedding is added
        N(a, emb) = GroupNorm(a) * (1 + scale) + shift, (scale, shift) = Linear(SiLU(emb))    guided-diffusion's
                                                                                        "use_scale_shift_norm"
    Attention(h) = h + proj(softmax(Q K^T / sqrt(d)) V),  Q, K, V = 1x1 conv of GroupNorm(h), over the H*W positions

Guided diffusion (Dhariwal & Nichol 2021, Sec. 3) keeps this layout and adds: multi-head attention with a fixed
number of channels per head (head_channels), the scale-shift ("adaptive group") normalisation above, and zero
initialisation of every residual branch's last layer (the second conv of each ResBlock, the attention's output
projection) and of the output conv, so that each block starts as the identity and a fresh U-Net predicts 0. For
Improved DDPM's learned variances (Nichol & Dhariwal 2021, Eq. 15) the output has 2 C_img channels: the prediction
and v, the interpolation between log beta_t and log beta~_t.

The classifier for classifier guidance (Dhariwal & Nichol 2021, Sec. 4) is the U-Net's downsampling half and middle
block, then GroupNorm, SiLU, mean pooling over positions and a linear layer to the class logits: p_phi(y | x_t, t).

Timesteps are float tensors: a (possibly fractional) index in [0, T), the convention of diffusers; a continuous-time
model passes e.g. 1000 * t. With class_labels, index num_classes is the "null" label of classifier-free guidance
(Ho & Salimans 2022): the unconditional model is the same network, called with that label (or with None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

# --------------------------------------------------------------------------------------------------- configuration


@dataclass
class UNetConfig:
    image_channels: int = 1
    image_size: int = 28  # side of the (square) images; a multiple of 2^(levels - 1)
    base_channels: int = 64  # C: width of the first level; the time embedding has 4 C channels
    channel_multipliers: tuple[int, ...] = (1, 2, 2)  # width of level i is C * m_i; one level per entry
    residual_blocks: int = 2  # residual blocks per level on the way down (the way up has one more)
    attention_resolutions: tuple[int, ...] = (7,)  # feature-map sides with self-attention after each residual block
    head_channels: int = 32  # channels per attention head (guided-diffusion's num_head_channels)
    dropout: float = 0.1
    num_classes: int = 0  # 0: unconditional; else a label embedding with num_classes + 1 rows (the last is "null")
    learned_variance: bool = False  # output 2 C_img channels: the prediction and Improved DDPM's v
    groups: int = 32  # GroupNorm groups (min(groups, channels) for narrow layers)
    scale_shift: bool = True  # guided-diffusion's scale-shift norm; False: DDPM's additive time embedding
    resample_with_conv: bool = True  # stride-2 conv / nearest + conv; False: average pooling / nearest only

    def __post_init__(self) -> None:
        self.channel_multipliers = tuple(self.channel_multipliers)
        self.attention_resolutions = tuple(self.attention_resolutions)
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {self.num_classes}")
        _check_backbone(self)

    @property
    def time_dim(self) -> int:
        return 4 * self.base_channels

    @property
    def out_channels(self) -> int:
        return 2 * self.image_channels if self.learned_variance else self.image_channels


@dataclass
class ClassifierConfig:
    image_channels: int = 1
    image_size: int = 28
    base_channels: int = 32
    channel_multipliers: tuple[int, ...] = (1, 2, 2)
    residual_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (7,)
    head_channels: int = 32
    dropout: float = 0.0
    num_classes: int = 10  # the classifier's outputs
    groups: int = 32
    scale_shift: bool = True
    resample_with_conv: bool = True

    def __post_init__(self) -> None:
        self.channel_multipliers = tuple(self.channel_multipliers)
        self.attention_resolutions = tuple(self.attention_resolutions)
        if self.num_classes < 1:
            raise ValueError(f"a classifier needs num_classes >= 1, got {self.num_classes}")
        _check_backbone(self)

    @property
    def time_dim(self) -> int:
        return 4 * self.base_channels


def _check_backbone(config: UNetConfig | ClassifierConfig) -> None:
    """Raise ValueError for a layout the network cannot be built with, naming the field to change."""
    mults, levels = config.channel_multipliers, len(config.channel_multipliers)
    if levels == 0 or min(mults) < 1:
        raise ValueError(f"channel_multipliers must be a non-empty tuple of positive ints, got {mults}")
    if config.residual_blocks < 1:
        raise ValueError(f"residual_blocks must be >= 1, got {config.residual_blocks}")
    if config.base_channels < 4:
        raise ValueError(f"base_channels must be >= 4 (the sinusoidal embedding's width), got {config.base_channels}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")
    factor = 2 ** (levels - 1)
    if config.image_size % factor:
        raise ValueError(
            f"image_size {config.image_size} must be divisible by 2^(len(channel_multipliers) - 1) = {factor} "
            f"for {levels} levels: each level but the last halves the side"
        )
    sides = [config.image_size // 2**i for i in range(levels)]
    unknown = sorted(set(config.attention_resolutions) - set(sides))
    if unknown:
        raise ValueError(f"attention_resolutions {unknown} are not feature-map sides of this U-Net: {sides}")
    widths = [config.base_channels * m for m in mults]
    attended = [w for w, s in zip(widths, sides, strict=True) if s in config.attention_resolutions] + [widths[-1]]
    for w in attended:
        if w % config.head_channels:
            raise ValueError(f"head_channels {config.head_channels} must divide the attended width {w}")
    # Every width a GroupNorm sees: the levels' widths and, on the U-Net's way up, each concatenation with a skip.
    normalised = {config.base_channels, *widths}
    skips = [config.base_channels]
    for i, w in enumerate(widths):
        skips += [w] * config.residual_blocks + ([w] if i < levels - 1 else [])
    h = widths[-1]
    for w in reversed(widths):
        for _ in range(config.residual_blocks + 1):
            normalised.add(h + skips.pop())
            h = w
    for channels in sorted(normalised):
        g = min(config.groups, channels)
        if channels % g:
            raise ValueError(f"GroupNorm: {channels} channels are not divisible into groups={config.groups} groups")


# Named sizes. Parameter counts measured with sum(p.numel() for p in UNet(unet_config(name)).parameters()).
SIZES: dict[str, dict] = {
    # For tests and smoke runs of the scripts on 28x28 data: a few seconds per hundred steps.
    "tiny": dict(
        image_channels=1,
        image_size=28,
        base_channels=16,
        channel_multipliers=(1, 2),
        residual_blocks=1,
        attention_resolutions=(14,),
        head_channels=16,
        dropout=0.0,
        groups=8,
    ),
    # 28x28 MNIST-like data, sized for a 20-minute CPU run: one residual block per resolution; 1,191,233
    # parameters (unconditional); 0.86 s per training step at batch 64 on 2 CPU cores. No dropout: a run this short
    # does not overfit, and dropout slows it down.
    "mnist-small": dict(
        image_channels=1,
        image_size=28,
        base_channels=32,
        channel_multipliers=(1, 2, 2),
        residual_blocks=1,
        attention_resolutions=(7,),
        head_channels=32,
        dropout=0.0,
    ),
    # The same layout with DDPM's two residual blocks per resolution and dropout 0.1: 1,742,881 parameters, 1.3 s
    # per step at batch 64 on 2 CPU cores.
    "mnist-ddpm": dict(
        image_channels=1,
        image_size=28,
        base_channels=32,
        channel_multipliers=(1, 2, 2),
        residual_blocks=2,
        attention_resolutions=(7,),
        head_channels=32,
        dropout=0.1,
    ),
    # DDPM's CIFAR-10 model (App. B): 35,746,307 parameters here, 35.7M in the paper. One attention head (DDPM's
    # self-attention is single-headed), the additive time embedding, 4 resolutions 32 -> 4.
    "cifar-ddpm": dict(
        image_channels=3,
        image_size=32,
        base_channels=128,
        channel_multipliers=(1, 2, 2, 2),
        residual_blocks=2,
        attention_resolutions=(16,),
        head_channels=256,
        dropout=0.1,
        scale_shift=False,
    ),
    # 32x32 RGB emoji (an image folder); 9,925,059 parameters: DDPM's CIFAR layout at half the width, with
    # guided-diffusion's scale-shift norm and attention at 16 and 8.
    "twemoji-32": dict(
        image_channels=3,
        image_size=32,
        base_channels=64,
        channel_multipliers=(1, 2, 2, 2),
        residual_blocks=2,
        attention_resolutions=(16, 8),
        head_channels=32,
        dropout=0.1,
    ),
    # 32x32 RGB emoji on the CPU: mnist-small's layout at 32x32, attention at 8x8; 1,192,387 parameters
    # (unconditional).
    "twemoji-small": dict(
        image_channels=3,
        image_size=32,
        base_channels=32,
        channel_multipliers=(1, 2, 2),
        residual_blocks=1,
        attention_resolutions=(8,),
        head_channels=32,
        dropout=0.0,
    ),
    # Latent diffusion on a first stage's grid (diffusion-train --first-stage): image_channels and image_size come
    # from the latents, and diffusion-train keeps as many levels as the grid's side can be halved (a 7x7 grid: one),
    # with attention at the smallest side: 779,844 parameters on a 4x7x7 grid (one level).
    "ldm-small": dict(
        image_channels=4,
        image_size=8,
        base_channels=64,
        channel_multipliers=(1, 2, 2),
        residual_blocks=1,
        attention_resolutions=(2,),
        head_channels=32,
        dropout=0.0,
    ),
}


def unet_config(size: str, **overrides) -> UNetConfig:
    """The named size from SIZES, with any field overridden (e.g. num_classes=10 for classifier-free guidance)."""
    if size not in SIZES:
        raise ValueError(f"unknown U-Net size {size!r}; known sizes: {', '.join(SIZES)}")
    return UNetConfig(**{**SIZES[size], **overrides})


# ----------------------------------------------------------------------------------------------------- layers


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """guided-diffusion's zero initialisation: the block this ends starts as the identity (or as 0 at the output)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DDPM's Transformer sinusoidal embedding of (B,) float timesteps -> (B, dim), computed in float32.

    emb[:, i] = sin(t * w_i) and emb[:, half + i] = cos(t * w_i), w_i = max_period^(-i / (half - 1)), i < half.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (B, 2 half)
    return F.pad(emb, (0, dim % 2))  # (B, dim)


def timesteps_for(t: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """A python number, a 0-dim tensor or a (B,) tensor (int or float) -> (B,) float32 timesteps on device."""
    t = torch.as_tensor(t, device=device, dtype=torch.float32)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timesteps must be a scalar or of shape ({batch},), got {tuple(t.shape)}")
    return t


class TimestepEmbedding(nn.Module):
    """(B,) timesteps -> (B, 4C): sinusoid of width C, then Linear(C, 4C), SiLU, Linear(4C, 4C) (DDPM's temb)."""

    def __init__(self, base_channels: int, time_dim: int) -> None:
        super().__init__()
        self.base_channels = base_channels
        self.mlp = nn.Sequential(nn.Linear(base_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.base_channels)  # (B, C), float32
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # (B, 4C)


class ResidualBlock(nn.Module):
    """(B, in, h, w), emb (B, time_dim) -> (B, out, h, w); the time embedding enters at the second normalisation."""

    def __init__(
        self, in_channels: int, out_channels: int, time_dim: int, dropout: float, scale_shift: bool, groups: int = 32
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(
            group_norm(in_channels, groups), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.time_proj = nn.Sequential(
            nn.SiLU(), nn.Linear(time_dim, 2 * out_channels if scale_shift else out_channels)
        )
        self.out_norm = group_norm(out_channels, groups)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)  # (B, out, h, w)
        e = self.time_proj(emb)[:, :, None, None]  # (B, out or 2 out, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift  # guided-diffusion: adaptive group normalisation
        else:
            h = self.out_norm(h + e)  # DDPM: h += temb_proj(SiLU(temb))
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """(B, C, h, w) -> (B, C, h, w): multi-head self-attention over the h*w positions, residual."""

    def __init__(self, channels: int, head_channels: int, groups: int = 32) -> None:
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"head_channels {head_channels} must divide channels {channels}")
        self.heads = channels // head_channels
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)  # q, k, v; then heads
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, d)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(Q K^T / sqrt(d)) V: (B, heads, HW, d)
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    """(B, C, h, w) -> (B, C, h/2, w/2): a stride-2 3x3 conv, or 2x2 average pooling."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if with_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """(B, C, h, w) -> (B, C, 2h, 2w): nearest-neighbour x2, then (optionally) a 3x3 conv."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResAttnBlock(nn.Module):
    """A residual block, followed by self-attention where the feature map's side is listed."""

    def __init__(
        self, in_channels: int, out_channels: int, config: UNetConfig | ClassifierConfig, attention: bool
    ) -> None:
        super().__init__()
        self.res = ResidualBlock(
            in_channels, out_channels, config.time_dim, config.dropout, config.scale_shift, config.groups
        )
        self.attn = AttentionBlock(out_channels, config.head_channels, config.groups) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


class Encoder(nn.Module):
    """The U-Net's input conv, downsampling half and middle block, shared by UNet and NoisyClassifier.

    (B, C_img, H, W), emb (B, 4C) -> h (B, w_{L-1}, H / 2^(L-1), W / 2^(L-1)) and the skip stack (one entry per
    down block and downsample, plus the input conv's output), finest first.
    """

    def __init__(self, config: UNetConfig | ClassifierConfig) -> None:
        super().__init__()
        C, levels = config.base_channels, len(config.channel_multipliers)
        self.conv_in = nn.Conv2d(config.image_channels, C, 3, padding=1)
        self.skip_channels = [C]
        self.down = nn.ModuleList()
        ch, side = C, config.image_size
        for i, mult in enumerate(config.channel_multipliers):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(config.residual_blocks):
                level.blocks.append(ResAttnBlock(ch, C * mult, config, side in config.attention_resolutions))
                ch = C * mult
                self.skip_channels.append(ch)
            if i < levels - 1:
                level.downsample = Downsample(ch, config.resample_with_conv)
                self.skip_channels.append(ch)
                side //= 2
            self.down.append(level)
        self.middle = nn.ModuleList(
            [ResAttnBlock(ch, ch, config, attention=True), ResAttnBlock(ch, ch, config, attention=False)]
        )
        self.out_channels = ch

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.conv_in(x)  # (B, C, H, W)
        skips = [h]
        for level in self.down:
            for block in level.blocks:
                h = block(h, emb)  # (B, w_i, H / 2^i, W / 2^i)
                skips.append(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)  # (B, w_i, H / 2^(i+1), W / 2^(i+1))
                skips.append(h)
        for block in self.middle:  # res, attention, res
            h = block(h, emb)
        return h, skips


# ----------------------------------------------------------------------------------------------------- networks


class UNet(nn.Module, PyTorchModelHubMixin):
    """The denoiser: (x_t, t, class_labels) -> eps (or x0 / v) prediction, plus v with learned_variance."""

    def __init__(self, config: UNetConfig | dict) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = UNetConfig(**config)
        self.config = config
        C = config.base_channels
        self.time_embed = TimestepEmbedding(C, config.time_dim)
        # Row num_classes is the null label: classifier-free guidance's unconditional model.
        self.label_embed = nn.Embedding(config.num_classes + 1, config.time_dim) if config.num_classes > 0 else None
        self.encoder = Encoder(config)

        skips = list(self.encoder.skip_channels)
        ch, side = self.encoder.out_channels, config.image_size // 2 ** (len(config.channel_multipliers) - 1)
        self.up = nn.ModuleList()  # coarsest level first
        for i, mult in reversed(list(enumerate(config.channel_multipliers))):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(config.residual_blocks + 1):
                level.blocks.append(
                    ResAttnBlock(ch + skips.pop(), C * mult, config, side in config.attention_resolutions)
                )
                ch = C * mult
            if i > 0:
                level.upsample = Upsample(ch, config.resample_with_conv)
                side *= 2
            self.up.append(level)
        self.out = nn.Sequential(
            group_norm(ch, config.groups), nn.SiLU(), zero_module(nn.Conv2d(ch, config.out_channels, 3, padding=1))
        )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float, class_labels: torch.Tensor | None = None,
        extra_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """x (B, C_img, H, W), t (B,) or scalar, class_labels (B,) long or None -> (B, C_img or 2 C_img, H, W).
        ``extra_embedding`` (B, 4C) is added to the time embedding: a later paper's second condition (MeanFlow's
        interval length) enters the blocks the way t does."""
        B = x.shape[0]
        emb = self.time_embed(timesteps_for(t, B, x.device))  # (B, 4C)
        if extra_embedding is not None:
            emb = emb + extra_embedding
        if self.label_embed is None:
            if class_labels is not None:
                raise ValueError("this U-Net is unconditional (num_classes=0) but class_labels were given")
        else:
            if class_labels is None:  # the null label: unconditional
                class_labels = torch.full((B,), self.config.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.label_embed(class_labels)  # (B, 4C)

        h, skips = self.encoder(x, emb)  # (B, w_{L-1}, H / 2^(L-1), W / 2^(L-1))
        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)  # (B, w_i, H / 2^i, W / 2^i)
            if hasattr(level, "upsample"):
                h = level.upsample(h)  # (B, w_i, H / 2^(i-1), W / 2^(i-1))
        return self.out(h)  # (B, C_img or 2 C_img, H, W)


class NoisyClassifier(nn.Module, PyTorchModelHubMixin):
    """p_phi(y | x_t, t) for classifier guidance: (x_t, t) -> logits (B, num_classes)."""

    def __init__(self, config: ClassifierConfig | dict) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = ClassifierConfig(**config)
        self.config = config
        self.time_embed = TimestepEmbedding(config.base_channels, config.time_dim)
        self.encoder = Encoder(config)
        ch = self.encoder.out_channels
        self.norm = group_norm(ch, config.groups)
        self.head = nn.Linear(ch, config.num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        emb = self.time_embed(timesteps_for(t, x.shape[0], x.device))  # (B, 4C)
        h, _ = self.encoder(x, emb)  # (B, w_{L-1}, h, w)
        h = F.silu(self.norm(h)).mean(dim=(2, 3))  # (B, w_{L-1})
        return self.head(h)  # (B, num_classes)
