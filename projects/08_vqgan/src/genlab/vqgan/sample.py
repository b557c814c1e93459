"""vqgan-sample: a VQGAN run's test images over their reconstructions, and reconstructions for genlab-eval.

    uv run vqgan-sample --run runs/vqgan/fashion                      # reconstructions.png, uniform_tokens.png
    uv run vqgan-sample --run runs/vqgan/fashion --npz 10000          # the first 10k test reconstructions
    uv run genlab-eval --samples runs/vqgan/fashion --reference test --features classifier   # reconstruction FID

05's ``vqvae-sample`` with the VQGAN in place of the VQ-VAE, so the two compare under one protocol. Images from
a prior over the codes come from 06's ``gpt-sample`` on a prior trained on ``vqgan-encode``'s tokens.
"""

from __future__ import annotations

from pathlib import Path

from genlab.core.harness import console_script
from genlab.vqgan.model import VQGAN
from genlab.vqgan.train import PROJECT
from genlab.vqvae.sample import VQVAESampleConfig, sample_reconstructions


def sample(config: VQVAESampleConfig) -> dict[str, Path]:
    return sample_reconstructions(config, VQGAN, PROJECT)


main = console_script(VQVAESampleConfig, sample, "vqgan-sample")
