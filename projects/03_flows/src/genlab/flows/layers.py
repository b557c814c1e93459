"""Small invertible layers from which RealNVP and Glow are both built.

Every layer maps x to z = f(x) and returns the log-determinant of its Jacobian per example,

    forward(x) -> (z, log|det ∂z/∂x|)   with log-det of shape (B,),      inverse(z) -> x,

so that a stack of them gives log p_X(x) = log p_Z(f(x)) + Σ_layers log|det ∂f_k/∂h_{k-1}| (RealNVP eq. 3).
Maps are (B, C, H, W) -> (B, C', H', W'); a per-pixel channel map contributes H·W times its per-pixel log-det.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FlowLayer(nn.Module):
    """An invertible map with a tractable log-determinant."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class FlowSequence(FlowLayer):
    """f = f_K ∘ ... ∘ f_1; the log-determinants add (chain rule)."""

    def __init__(self, layers: list[FlowLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, layer_log_det = layer(x)
            log_det = log_det + layer_log_det
        return x, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z


def per_example(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A log-det shared by every example -> (B,)."""
    return value.expand(x.shape[0])


class Squeeze(FlowLayer):
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block becomes 4 channels (RealNVP Sec. 3.6). A permutation,
    so its log-det is 0.

    Channel (2i + j)·C + c holds pixel (2r + i, 2s + j) of input channel c: position-major, so the first half of
    the channels is the top row of every block in every colour. RealNVP has no 1x1 convolution to mix channels,
    and factoring out the second half then removes the bottom rows of all colours alike, not whole colours.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        z = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4)  # (B, 2, 2, C, H/2, W/2)
        return z.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        b, c4, h2, w2 = z.shape
        x = z.view(b, 2, 2, c4 // 4, h2, w2).permute(0, 3, 4, 1, 5, 2)  # (B, C, H/2, 2, W/2, 2)
        return x.reshape(b, c4 // 4, 2 * h2, 2 * w2)


class Shift(FlowLayer):
    """z = x + c, a translation: log-det 0. Glow's pre-processing centres y in [0, 1) on 0 with c = -1/2."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + self.shift, x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z - self.shift


class LogitTransform(FlowLayer):
    """RealNVP's pre-processing (Sec. 4.1): y in [0, 1] -> logit(α + (1 - 2α) y).

    α keeps the logit finite at y = 0 and 1. Its Jacobian is part of the model's density and is counted:
    log|det| = Σ_i [log(1 - 2α) - log p_i - log(1 - p_i)] with p = α + (1 - 2α) y.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * y
        z = torch.log(p) - torch.log1p(-p)
        log_det = math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)
        return z, log_det.flatten(1).sum(1)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)


class ActNorm(FlowLayer):
    """Glow Sec. 3.1: z = s ⊙ x + b per channel, log|det| = H·W·Σ_c log|s_c|.

    Data-dependent initialisation: the first forward pass in training mode sets s and b so that that batch's
    output has zero mean and unit variance per channel; from then on they are ordinary parameters.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialised", torch.tensor(False))

    @torch.no_grad()
    def initialise(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.log_scale.copy_(-torch.log(std + 1e-6))  # s = 1 / std
        self.bias.copy_(-mean * torch.exp(self.log_scale))  # b = -mean / std
        self.initialised.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self.initialised:
            self.initialise(x)
        z = x * torch.exp(self.log_scale) + self.bias
        return z, per_example(x.shape[2] * x.shape[3] * self.log_scale.sum(), x)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.bias) * torch.exp(-self.log_scale)


class BatchNormFlow(FlowLayer):
    """RealNVP Sec. 3.7: batch normalisation as a flow layer, z = (x - μ̃) / sqrt(σ̃² + ε) · exp(log γ) + β.

    In training μ̃, σ̃² are the batch's per-channel statistics (and update running averages); in evaluation they
    are the running averages, which makes the layer a fixed affine map. log|det| = H·W·Σ_c [log γ_c -
    ½ log(σ̃²_c + ε)]. ``inverse`` uses the running averages: the layer is invertible as a test-time map.
    """

    def __init__(self, channels: int, momentum: float = 0.05, eps: float = 1e-4) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("running_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("running_var", torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            var = x.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        z = (x - mean) * torch.rsqrt(var + self.eps) * torch.exp(self.log_gamma) + self.beta
        log_det = x.shape[2] * x.shape[3] * (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum()
        return z, per_example(log_det, x)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        std = torch.sqrt(self.running_var + self.eps)
        return (z - self.beta) * torch.exp(-self.log_gamma) * std + self.running_mean


class InvertibleConv1x1(FlowLayer):
    """Glow Sec. 3.2: a learned channel mixing z = W x at every pixel, log|det| = H·W·log|det W|.

    W starts as a random rotation. Plain: W is the parameter and log|det W| costs O(C³). LU-decomposed (Sec.
    3.2, eq. 10): W = P L (U + diag(s)) with P a fixed permutation, L unit lower triangular, U strictly upper
    triangular, and log|det W| = Σ log|s| in O(C).
    """

    def __init__(self, channels: int, lu_decomposed: bool = True) -> None:
        super().__init__()
        self.lu_decomposed = lu_decomposed
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        if not lu_decomposed:
            self.weight = nn.Parameter(rotation)
            return
        permutation, lower, upper = torch.linalg.lu(rotation)
        s = upper.diagonal()
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign_s", s.sign())
        self.register_buffer("strictly_lower", torch.tril(torch.ones(channels, channels), diagonal=-1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(upper.triu(diagonal=1))
        self.log_abs_s = nn.Parameter(s.abs().log())

    def weight_matrix(self) -> torch.Tensor:
        if not self.lu_decomposed:
            return self.weight
        eye = torch.eye(len(self.sign_s), dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.strictly_lower + eye
        upper = self.upper * self.strictly_lower.t() + torch.diag(self.sign_s * torch.exp(self.log_abs_s))
        return self.permutation @ lower @ upper  # W = P L (U + diag(s)), eq. 10

    def log_abs_det(self) -> torch.Tensor:
        if self.lu_decomposed:
            return self.log_abs_s.sum()
        return torch.linalg.slogdet(self.weight)[1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.conv2d(x, self.weight_matrix()[:, :, None, None])
        return z, per_example(x.shape[2] * x.shape[3] * self.log_abs_det(), x)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, torch.linalg.inv(self.weight_matrix())[:, :, None, None])


class ZeroConv2d(nn.Conv2d):
    """A 3x3 convolution that starts at zero, times a learned per-channel exp(3·scale) (Glow Sec. 3.3): the layer
    it ends starts as the identity (a coupling) or as a standard normal (a prior)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)
        self.log_scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * torch.exp(3 * self.log_scale)


class GlowCouplingNet(nn.Sequential):
    """Glow's NN() of the coupling: 3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            ZeroConv2d(hidden, out_channels),
        )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity, so a deep stack trains stably
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ResNetCouplingNet(nn.Sequential):
    """RealNVP's s and t network (Sec. 4.1): a 3x3 conv in, residual blocks, a zero-initialised 3x3 conv out."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, num_blocks: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            *[ResidualBlock(hidden) for _ in range(num_blocks)],
            nn.ReLU(),
            ZeroConv2d(hidden, out_channels),
        )


def checkerboard(height: int, width: int, parity: int) -> torch.Tensor:
    """b[r, j] = 1 where (r + j + parity) is even: the values the coupling leaves unchanged. (1, 1, H, W)"""
    rows, cols = torch.arange(height)[:, None], torch.arange(width)[None, :]
    return ((rows + cols + parity) % 2 == 0).float()[None, None]


class AffineCoupling(FlowLayer):
    """RealNVP eqs. 4-9 and Glow's affine coupling: one part x_a of the input is kept, the other is scaled and
    shifted by functions of x_a,

        z_a = x_a,     z_b = x_b ⊙ exp(log s(x_a)) + t(x_a),     log|det| = Σ log s(x_a)   (eq. 6)

    - ``mask="checkerboard"``: x_a are the pixels where the checkerboard b is 1 (eq. 9, z = b ⊙ x + (1 - b) ⊙
      (x ⊙ exp(log s(b ⊙ x)) + t(b ⊙ x))), the network seeing b ⊙ x.
    - ``mask="channel"``: x_a is one half of the channels, x_b the other; ``parity`` picks which.
    - ``scale="tanh"``: log s = λ ⊙ tanh(·) with a learned per-channel λ (RealNVP's bounded scale);
      ``scale="sigmoid"``: s = sigmoid(· + 2) (Glow), so s in (0, 1) and starts near 0.88.
    """

    def __init__(
        self, channels: int, height: int, width: int, mask: str, parity: int, scale: str, net: nn.Module
    ) -> None:
        super().__init__()
        if mask == "channel" and channels % 2:
            raise ValueError(f"a channel-wise coupling splits the channels in half; got {channels}")
        self.mask, self.parity, self.scale = mask, parity, scale
        self.net = net
        if mask == "checkerboard":
            self.register_buffer("keep", checkerboard(height, width, parity))
        transformed = channels if mask == "checkerboard" else channels // 2
        self.tanh_scale = nn.Parameter(torch.ones(1, transformed, 1, 1)) if scale == "tanh" else None

    def scale_and_shift(self, conditioner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_scale, shift = self.net(conditioner).chunk(2, dim=1)
        if self.scale == "tanh":
            return self.tanh_scale * torch.tanh(raw_scale), shift  # log s = λ tanh(·)
        return F.logsigmoid(raw_scale + 2.0), shift  # s = sigmoid(· + 2)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = x.shape[1] // 2
        kept, changed = x[:, :half], x[:, half:]
        return (kept, changed) if self.parity == 0 else (changed, kept)

    def join(self, kept: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        return torch.cat([kept, changed] if self.parity == 0 else [changed, kept], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mask == "checkerboard":
            log_s, shift = self.scale_and_shift(x * self.keep)
            log_s, shift = log_s * (1 - self.keep), shift * (1 - self.keep)  # the kept pixels: log s = 0, t = 0
            return x * torch.exp(log_s) + shift, log_s.flatten(1).sum(1)
        kept, changed = self.split(x)
        log_s, shift = self.scale_and_shift(kept)
        return self.join(kept, changed * torch.exp(log_s) + shift), log_s.flatten(1).sum(1)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        if self.mask == "checkerboard":
            log_s, shift = self.scale_and_shift(z * self.keep)  # z ⊙ b = x ⊙ b: the network sees the same input
            log_s, shift = log_s * (1 - self.keep), shift * (1 - self.keep)
            return (z - shift) * torch.exp(-log_s)
        kept, changed = self.split(z)
        log_s, shift = self.scale_and_shift(kept)
        return self.join(kept, (changed - shift) * torch.exp(-log_s))
