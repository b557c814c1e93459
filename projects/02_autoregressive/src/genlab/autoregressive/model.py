"""One front for the six autoregressive models: a config, a registry of named sizes, and a Hub-loadable module.

Every model maps an image x (B, C, H, W) of integer levels to the logits of all its conditionals in one pass:
(B, C, H, W) for binary data (a sigmoid each) or (B, L, C, H, W) for L-way data (a softmax each), logit
[c, r, j] being p(x_{c,r,j} | everything before it in ``generation_order()``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from genlab.autoregressive.gated_pixelcnn import GatedPixelCNN
from genlab.autoregressive.made import MADE, NADE
from genlab.autoregressive.pixelcnn import PixelCNN
from genlab.autoregressive.pixelrnn import PixelRNN

ModelName = Literal["nade", "made", "pixelcnn", "gated_pixelcnn", "row_lstm", "diagonal_bilstm"]
MODEL_NAMES: tuple[str, ...] = ModelName.__args__
VECTOR_MODELS = ("nade", "made")  # binary vectors in a (possibly learned-agnostic) ordering


@dataclass
class ARConfig:
    model: ModelName = "pixelcnn"
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    levels: int = 2  # 2: binary with a sigmoid; 256: 8-bit with a softmax
    hidden_channels: int = 32  # h of PixelCNN and PixelRNN (2h features between layers), p of Gated PixelCNN
    num_layers: int = 7  # residual blocks, gated layers or LSTM layers
    kernel_size: int = 3  # PixelCNN's masked k x k, Gated PixelCNN's k
    head_channels: int = 64  # width of the 1x1 output head
    hidden_sizes: tuple[int, ...] = (500,)  # MADE's hidden layers; NADE uses the first
    num_masks: int = 1  # MADE: mask sets drawn during training and ensembled at test
    order_agnostic: bool = False  # MADE: mask sets also draw the input ordering
    num_classes: int = 0  # Gated PixelCNN: > 0 for class conditioning
    mask_seed: int = 0  # MADE: seeds the connectivity numbers

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape)
        self.hidden_sizes = tuple(self.hidden_sizes)


# Named sizes. "small" is what a 2-core CPU trains in well under an hour on 28x28 data; "paper" is the paper's
# setting where it states one (PixelRNN paper, Sec. 5 and Table 5; MADE Table 6; NADE Sec. 6).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "nade": {"small": {"hidden_sizes": (500,)}, "paper": {"hidden_sizes": (500,)}},
    "made": {
        "small": {"hidden_sizes": (1000, 1000), "num_masks": 8, "order_agnostic": True},
        "paper": {"hidden_sizes": (8000, 8000), "num_masks": 32, "order_agnostic": True},
    },
    "pixelcnn": {
        "small": {"hidden_channels": 16, "num_layers": 6, "head_channels": 32},
        "paper": {"hidden_channels": 64, "num_layers": 15, "head_channels": 256},
    },
    "gated_pixelcnn": {
        "small": {"hidden_channels": 16, "num_layers": 6, "kernel_size": 5, "head_channels": 32},
        "paper": {"hidden_channels": 64, "num_layers": 15, "kernel_size": 5, "head_channels": 256},
    },
    "row_lstm": {
        "small": {"hidden_channels": 16, "num_layers": 2, "head_channels": 32},
        "paper": {"hidden_channels": 16, "num_layers": 7, "head_channels": 64},
    },
    "diagonal_bilstm": {
        "small": {"hidden_channels": 16, "num_layers": 1, "head_channels": 32},
        "paper": {"hidden_channels": 16, "num_layers": 7, "head_channels": 64},
    },
}


def build_config(model: str, size: str, image_shape: tuple[int, int, int], levels: int, **overrides: Any) -> ARConfig:
    """The registry's size for ``model``, then any explicit overrides (None means "keep the size's value").

    Channel widths are rounded up to a multiple of the colour count, so that every colour group of a masked
    layer has the same width and the same sizes serve grey and colour data.
    """
    values = {**SIZES[model][size], **{k: v for k, v in overrides.items() if v is not None}}
    colors = image_shape[0]
    for name in ("hidden_channels", "head_channels"):
        if name in values:
            values[name] = -(-values[name] // colors) * colors
    return ARConfig(model=model, image_shape=image_shape, levels=levels, **values)


class AutoregressiveModel(nn.Module, PyTorchModelHubMixin):
    """Wraps the network named by ``config.model`` behind the image-in, logits-out interface."""

    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = ARConfig(**config)
        self.config = config
        shape, levels = config.image_shape, config.levels
        if config.model in VECTOR_MODELS and levels != 2:
            raise ValueError(f"{config.model} models binary data (levels = 2), not {levels}-level data")
        if config.num_classes and config.model != "gated_pixelcnn":
            raise ValueError("class conditioning is part of Gated PixelCNN only")
        dims = math.prod(shape)
        if config.model == "nade":
            self.net = NADE(dims, config.hidden_sizes[0])
        elif config.model == "made":
            self.net = MADE(dims, config.hidden_sizes, config.num_masks, config.order_agnostic, config.mask_seed)
        elif config.model == "pixelcnn":
            self.net = PixelCNN(shape, levels, config.hidden_channels, config.num_layers, config.kernel_size,
                                head_channels=config.head_channels)  # fmt: skip
        elif config.model == "gated_pixelcnn":
            self.net = GatedPixelCNN(shape, levels, config.hidden_channels, config.num_layers, config.kernel_size,
                                     config.head_channels, config.num_classes)  # fmt: skip
        else:
            self.net = PixelRNN(shape, levels, config.model, config.hidden_channels, config.num_layers,
                                config.head_channels)  # fmt: skip

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, mask_index: int = 0) -> torch.Tensor:
        """x (B, C, H, W) integer levels -> logits (B, C, H, W), or (B, L, C, H, W) for L-way data."""
        if self.config.model == "nade":
            return self.net(x.flatten(1)).view(x.shape)
        if self.config.model == "made":
            return self.net(x.flatten(1), mask_index).view(x.shape)
        return self.net(x, labels)

    @property
    def num_mask_sets(self) -> int:
        return self.config.num_masks if self.config.model == "made" else 1

    def generation_order(self, mask_index: int = 0) -> torch.Tensor:
        """Indices into x.flatten(1) in the order the model generates them (D,)."""
        if self.config.model in VECTOR_MODELS:
            return self.net.ordering(mask_index)
        channels, height, width = self.config.image_shape
        position = torch.arange(height * width)  # raster order of pixels, r * W + j
        return (position[:, None] + height * width * torch.arange(channels)[None, :]).flatten()  # R, G, B inside

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items() if k in ("model", "levels"))
