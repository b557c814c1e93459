"""vqgan-encode: a data set's VQGAN token grids, for 06's GPT and MaskGIT priors, in 05's token-folder format.

    uv run vqgan-encode --run runs/vqgan/fashion                  # -> runs/vqgan/fashion/tokens/
    uv run gpt-train --tokens runs/vqgan/fashion/tokens --class-token
    uv run gpt-sample --run runs/transformer/<that run> --top-k 100   # decoded through this VQGAN

05's ``vqvae-encode`` with the VQGAN in place of the VQ-VAE: one (N, H/f, W/f) grid per image, the labels,
and tokens.json naming this run and the sha256 of its weights, through which gpt-sample decodes (05's
``genlab.autoencoders`` entry point). Its bits/dim term is 05's Gaussian bound around the decoder's mean,
which a VQGAN was not trained to tighten (its L1, perceptual and adversarial terms are not a likelihood).
"""

from __future__ import annotations

from pathlib import Path

from genlab.core.harness import console_script
from genlab.vqgan.model import VQGAN
from genlab.vqgan.train import PROJECT
from genlab.vqvae.encode import EncodeConfig, encode_tokens


def encode(config: EncodeConfig) -> dict[str, Path]:
    return encode_tokens(config, VQGAN, PROJECT)


main = console_script(EncodeConfig, encode, "vqgan-encode")
