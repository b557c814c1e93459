"""vqvae-sample: pictures from a trained VQ-VAE or VQ-VAE-2, and reconstructions for genlab-eval.

    uv run vqvae-sample --run runs/vqvae/mnist-20261201-120000
    uv run vqvae-sample --run runs/vqvae/mnist-... --npz 10000     # reconstructions of the first 10k test images
    uv run genlab-eval --samples runs/vqvae/mnist-... --reference test   # reconstruction FID

writes into <run>/samples/ (or --out): test images over their reconstructions; for VQ-VAE-2 also what each
level holds (each test image, then decoded from its top codes alone, the bottom code vectors set to zero, then
from both levels); and
images decoded from uniformly drawn tokens, which is what the autoencoder makes without a learned prior (06
learns one). A VQ-VAE has no sampler of its own, so ``--npz`` saves reconstructions, not samples.
``sample_reconstructions`` serves any autoencoder with the same interface (08's ``vqgan-sample``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from genlab.core.config import option
from genlab.core.errors import GenlabError
from genlab.core.harness import SampleConfig, console_script, open_run, require_at_least, unit_to_uint8
from genlab.core.visualise import to_unit
from genlab.vqvae.model import VQVAE
from genlab.vqvae.train import PROJECT, VALUE_RANGE, reconstruction_rows


@dataclass
class VQVAESampleConfig(SampleConfig):
    """Reconstructions, what each level holds, uniform-token decodings; --npz saves test reconstructions."""

    count: int = option(32, "test images to show over their reconstructions (a multiple of 8)")
    uniform_count: int = option(32, "images decoded from uniformly drawn tokens")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("count", "uniform_count"), at_least=8)
        if self.count % 8:
            raise GenlabError(
                f"--count must be a multiple of 8 (rows of 8 originals over 8 reconstructions), got {self.count}"
            )


@torch.no_grad()
def sample_reconstructions(config: VQVAESampleConfig, model_class: type[nn.Module], project: str) -> dict[str, Path]:
    """The pictures and reconstructions of the run's autoencoder of ``model_class``, called ``project``."""
    run = open_run(config, model_class, project, project)
    model = run.model
    test = run.test_split(VALUE_RANGE, model.config.image_shape)
    if config.npz > len(test):
        raise GenlabError(f"--npz {config.npz}: the test split has only {len(test)} images to reconstruct")
    picks = torch.randperm(len(test), generator=run.generator)[: config.count].to(run.device)
    images = test.batch(picks).images  # (N, C, H, W) in [-1, 1]
    run.save_grid(reconstruction_rows(model, images), "reconstructions.png", nrow=8)

    if model.config.levels == 2:
        top, bottom = (q.quantized for q in model.quantize(images[:8]))
        rows = [images[:8], model.decode_codes([top, torch.zeros_like(bottom)]), model.decode_codes([top, bottom])]
        run.save_grid(to_unit(torch.cat(rows).clamp(-1, 1), VALUE_RANGE), "levels.png", nrow=8)

    K = model.config.num_codes
    uniform = [torch.randint(K, (config.uniform_count, h, w), generator=run.generator).to(run.device)
               for h, w in model.config.token_shapes()]  # fmt: skip
    run.save_grid(to_unit(model.decode_tokens(uniform).clamp(-1, 1), VALUE_RANGE), "uniform_tokens.png")

    if config.npz:

        def reconstruct(start: int, n: int) -> torch.Tensor:
            x = test.batch(torch.arange(start, start + n, device=run.device)).images
            return unit_to_uint8(to_unit(model(x).reconstruction.clamp(-1, 1), VALUE_RANGE))

        run.write_samples_npz(reconstruct, config.npz, function_evaluations=1)  # one pass of encoder and decoder
    return run.finish()


def sample(config: VQVAESampleConfig) -> dict[str, Path]:
    return sample_reconstructions(config, VQVAE, PROJECT)


main = console_script(VQVAESampleConfig, sample, "vqvae-sample")
