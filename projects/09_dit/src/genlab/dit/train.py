"""dit-train: train a DiT with 07's objective, schedules, samplers, EMA and training script; only the network is new.

uv run dit-train                                            # DiT-XS/4 on MNIST, class-conditional, CPU-sized
uv run dit-train --size S/2 --conditioning in-context       # another size and block design
uv run dit-train --first-stage runs/vae/<run> --dataset twemoji --size XS/2    # latent space (07's first stage)
uv run dit-train --preset paper --first-stage <run> --dataset <data>            # DiT's recipe (a GPU)

The run folder is 07's (config.json, checkpoints, samples, results.json with the test loss at fixed timesteps);
dit-sample draws from it with every sampler and guidance of 07.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from genlab.core.config import option
from genlab.core.data import ImageDataset
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script
from genlab.diffusion.train import DiffusionConfig
from genlab.diffusion.train import train as diffusion_train
from genlab.dit.model import CONDITIONINGS, DiT, dit_config

PROJECT = "dit"


@dataclass
class DiTTrainConfig(DiffusionConfig):
    """Train a Diffusion Transformer (Peebles & Xie 2023) on images or on a first stage's latents."""

    size: str = option("XS/4", "a DiT size (XXS, XS, S, B, L, XL) and patch size, e.g. S/2 or XL/2")
    conditioning: Literal["adaln-zero", "adaln", "cross-attention", "in-context"] = option(
        "adaln-zero", "the block design (Sec. 3.2): adaLN-Zero is DiT's"
    )
    learned_variance: bool = option(True, "learn the reverse variance too (DiT's learn_sigma: the hybrid loss)")

    def validate(self) -> None:
        super().validate()
        try:
            dit_config(self.size)
        except ValueError as error:
            raise GenlabError(f"--size: {error}") from None
        if self.conditioning not in CONDITIONINGS:
            raise GenlabError(f"unknown --conditioning {self.conditioning!r}; known: {', '.join(CONDITIONINGS)}")


# DiT's recipe (Sec. 4, "Training"): AdamW at a constant 1e-4 with no weight decay (so Adam, as 07 trains), batch
# 256, EMA 0.9999, no warm-up and no gradient clipping, horizontal flips the only augmentation, the linear schedule
# with T = 1000 and learned sigma, label dropout 0.1 for CFG; XL/2 for 7M steps on 256x256 ImageNet latents (32x32x4
# of Stable Diffusion's VAE).
PRESETS = {"paper": {"size": "XL/2", "batch_size": 256, "lr": 1e-4, "lr_schedule": "constant", "warmup_steps": 0,
                     "grad_clip": 0.0, "ema_decay": 0.9999, "ema_warmup": False, "label_dropout": 0.1, "hflip": True,
                     "learned_variance": True, "steps": 7_000_000, "checkpoint_every": 50_000,
                     "sample_every": 50_000, "eval_every": 50_000, "log_every": 1_000}}  # fmt: skip


def build_dit(config: DiTTrainConfig, data: ImageDataset, shape: tuple[int, int, int] | None = None
              ) -> tuple[torch.nn.Module, dict[str, Any], str]:  # fmt: skip
    """The DiT for inputs of ``shape`` (the data's, or a first stage's latents), as 07's training script builds a
    network: (network, what config.json records, its checkpoint name)."""
    C, H, W = shape or data.shape
    if H != W:
        raise GenlabError(f"DiT takes square inputs, {config.dataset}'s are {H}x{W}")
    if config.class_conditional and data.labels is None:
        raise GenlabError(f"{config.dataset} has no labels to condition on")
    try:
        architecture = dit_config(
            config.size, image_channels=C, image_size=H, learned_variance=config.learned_variance,
            num_classes=data.num_classes if config.class_conditional else 0, conditioning=config.conditioning,
        )  # fmt: skip
    except ValueError as error:
        raise GenlabError(f"--size {config.size}: {error}") from None
    return DiT(architecture), {"model": architecture}, "dit"


def train(config: DiTTrainConfig) -> dict[str, float]:
    """07's training of a diffusion model, with the DiT as its network."""
    return diffusion_train(config, build=build_dit, project=PROJECT)


main = console_script(DiTTrainConfig, train, "dit-train", PRESETS)

if __name__ == "__main__":
    main()
