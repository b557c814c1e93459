"""vqvae-encode: a data set's token grids, for a second stage (06's GPT and MaskGIT) to model.

    uv run vqvae-encode --run runs/vqvae/fashion-20261201-120000        # -> <run>/tokens/

writes train.safetensors and test.safetensors (one int64 grid per level, coarsest first, and the labels) and
tokens.json (the data set, the grids' shapes, K, and the autoencoder: run, checkpoint, config and the sha256 of
its weights, which the second stage checks before it decodes). Decoding tokens back to images is one call:
``VQVAE.decode_tokens([top, bottom])``. ``encode_tokens`` serves any autoencoder with the same interface
(08's ``vqgan-encode``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from genlab.core.config import option
from genlab.core.data import iterate_batches
from genlab.core.errors import GenlabError
from genlab.core.harness import SampleConfig, console_script, open_run, require_at_least
from genlab.vqvae.model import VQVAE
from genlab.vqvae.tokens import token_info, write_token_info, write_token_split
from genlab.vqvae.train import PROJECT, evaluate_reconstructions, fit_sigma, load_split


@dataclass
class EncodeConfig(SampleConfig):
    """Encode the train and test splits of the run's data set to token grids."""

    out: str = option("", "output folder (default: <run>/tokens)")
    splits: Literal["both", "train", "test"] = option("both", "which splits to encode")
    batch_size: int = option(500, "images per encoder batch")

    def validate(self) -> None:
        super().validate()
        if self.npz:
            raise GenlabError("--npz does not apply to vqvae-encode (it writes tokens, not images)")
        require_at_least(self, ("batch_size",))


@torch.no_grad()
def encode_tokens(config: EncodeConfig, model_class: type[nn.Module], project: str) -> dict[str, Path]:
    """Encode with the run's autoencoder of ``model_class``, the model called ``project`` in runs of ``project``."""
    run = open_run(config, model_class, project, project, default_out="tokens")
    model = run.model
    splits = ("train", "test") if config.splits == "both" else (config.splits,)
    sizes, reconstruction, num_classes = {}, None, 0
    for split in splits:
        data = load_split(run.train_config, split, config.data_dir).to(run.device)
        if data.shape != model.config.image_shape:
            raise GenlabError(f"{split} images are {data.shape}, the autoencoder expects {model.config.image_shape}")
        grids = [model.encode(batch.images) for batch in iterate_batches(data, config.batch_size)]
        levels = [torch.cat(level) for level in zip(*grids, strict=True)]  # each (N, h, w)
        run.written[split] = write_token_split(run.out, split, levels, data.labels)
        sizes[split], num_classes = len(data), data.num_classes
        print(f"{split}: {len(data)} images -> grids {[tuple(g.shape[1:]) for g in levels]}")
        if split == "test":  # the decoder's term of the bound, sigma fitted on train images (as vqvae-train)
            sigma = fit_sigma(model, load_split(run.train_config, "train", config.data_dir).to(run.device))
            measured = evaluate_reconstructions(model, data, sigma)
            reconstruction = {"sigma": sigma, "test_nll_given_codes_nats": measured["nll_given_codes_nats"],
                              "num_dims": data.num_dims}  # fmt: skip
    info = token_info(model, project, run.run_dir, run.checkpoint, run.train_config, sizes, num_classes,
                      reconstruction)  # fmt: skip
    run.written["info"] = write_token_info(run.out, info)
    return run.finish()


def encode(config: EncodeConfig) -> dict[str, Path]:
    return encode_tokens(config, VQVAE, PROJECT)


main = console_script(EncodeConfig, encode, "vqvae-encode")
