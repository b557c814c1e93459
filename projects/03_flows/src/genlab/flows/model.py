"""One front for RealNVP and Glow: a config, a registry of named sizes, and a Hub-loadable module.

The model is a density on continuous images y in [0, 1]^D (dequantised 8-bit data, see ``objective``):
``forward(y)`` is log p(y), exact, by the change of variables through every layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from genlab.flows.glow import build_glow
from genlab.flows.realnvp import build_realnvp

ModelName = Literal["realnvp", "glow"]


@dataclass
class FlowConfig:
    model: ModelName = "glow"
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    levels: int = 256  # quantisation levels of the data: the dequantisation interval is 1 / levels wide
    num_scales: int = 2  # RealNVP's scales, Glow's levels L
    steps_per_scale: int = 8  # Glow's K (RealNVP's couplings per scale are fixed: 3 + 3, and 4 at the last)
    hidden_channels: int = 128  # width of the coupling networks
    num_blocks: int = 4  # RealNVP: residual blocks in each s, t network
    lu_decomposed: bool = True  # Glow: the LU parameterisation of the 1x1 convolution
    learn_top: bool = True  # Glow: a learned top prior
    num_classes: int = 0  # Glow: > 0 for a class-conditional top prior
    normalisation: Literal["batchnorm", "actnorm"] = "batchnorm"  # RealNVP: after each coupling
    logit_alpha: float = 0.05  # RealNVP: the logit pre-processing's α

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape)


# "small": what a 2-core CPU trains in under an hour on 28x28 data; "paper": the papers' widths (RealNVP Sec.
# 4.1: 64 features, 8 residual blocks; Glow Sec. 5 / Table 4: K = 32 steps per level, 512 channels).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "realnvp": {
        "small": {"num_scales": 3, "hidden_channels": 32, "num_blocks": 2},
        "paper": {"num_scales": 3, "hidden_channels": 64, "num_blocks": 8},
    },
    "glow": {
        "small": {"num_scales": 2, "steps_per_scale": 16, "hidden_channels": 96},
        "paper": {"num_scales": 3, "steps_per_scale": 32, "hidden_channels": 512},
    },
}


def fitting_scales(model: str, requested: int, image_shape: tuple[int, int, int]) -> int:
    """The most scales up to ``requested`` that the image size allows: Glow squeezes at every level, RealNVP at
    every scale but the last, and each squeeze halves H and W (28x28 MNIST: Glow 2 levels, RealNVP 3 scales)."""
    _, height, width = image_shape
    scales = requested
    while scales > 1:
        squeezes = scales if model == "glow" else scales - 1
        if height % 2**squeezes == 0 and width % 2**squeezes == 0:
            break
        scales -= 1
    return scales


def build_config(model: str, size: str, image_shape: tuple[int, int, int], **overrides: Any) -> FlowConfig:
    """The registry's size for ``model``, then explicit overrides (None keeps the size's value)."""
    values = {**SIZES[model][size], **{k: v for k, v in overrides.items() if v is not None}}
    if overrides.get("num_scales") is None:
        values["num_scales"] = fitting_scales(model, values["num_scales"], image_shape)
    return FlowConfig(model=model, image_shape=image_shape, **values)


class FlowModel(nn.Module, PyTorchModelHubMixin):
    """RealNVP or Glow as ``config`` names it, behind log p(y) (``forward``), encode, decode and sample."""

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = FlowConfig(**config)
        self.config = config
        if config.num_classes and config.model != "glow":
            raise ValueError("class conditioning is part of Glow here (its top prior)")
        if config.model == "realnvp":
            self.flow = build_realnvp(config.image_shape, config.num_scales, config.hidden_channels,
                                      config.num_blocks, config.normalisation, config.logit_alpha)  # fmt: skip
        else:
            self.flow = build_glow(config.image_shape, config.num_scales, config.steps_per_scale,
                                   config.hidden_channels, config.lu_decomposed, config.learn_top,
                                   config.num_classes)  # fmt: skip

    def forward(self, y: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """log p(y) in nats per image (B,) for y (B, C, H, W) in [0, 1]."""
        return self.flow(y, labels)

    def encode(self, y: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self.flow.encode(y, labels)[0]

    def decode(self, latents: list[torch.Tensor]) -> torch.Tensor:
        return self.flow.decode(latents)

    def sample(
        self,
        count: int,
        temperature: float = 1.0,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        known: list[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """``count`` images in [0, 1] (B, C, H, W), every prior drawn at ``temperature``; ``known[i]`` replaces
        the draw of z_i where given. Only finite values are clamped: a pixel whose inverse overflowed stays ±inf
        or NaN, so the caller can see (and count) that image rather than get a white or black pixel."""
        return clamp_finite(self.flow.sample(count, temperature, labels, generator, known)[0])


def clamp_finite(images: torch.Tensor) -> torch.Tensor:
    """Clamp the finite values to [0, 1] and leave ±inf and NaN as they are."""
    return torch.where(torch.isfinite(images), images.clamp(0, 1), images)
