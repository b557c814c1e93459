"""flow-sample: pictures from a trained flow, and its test bits/dim.

    uv run flow-sample --run runs/flows/mnist-glow
    uv run flow-sample --run runs/flows/mnist-glow --temperatures 0.5 0.7 1.0 --nll

writes into <run>/samples/ (or --out):
- temperatures.png: one row of samples per temperature (Glow Sec. 5 / Fig. 8: T < 1 gives cleaner samples);
- interpolations.png: pairs of test images encoded, every latent interpolated linearly, decoded;
- scales.png: what each scale encodes (RealNVP Sec. 5, Fig. 4). Each row: a test image, then the image decoded
  with its own latents from the coarsest scale down to scale k and the finer ones drawn from the prior, for
  k = L, ..., 1, so the row goes from "only the top level kept" to "everything kept".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from genlab.core.config import option
from genlab.core.errors import GenlabError
from genlab.core.harness import SampleConfig, console_script, open_run, require_at_least
from genlab.core.visualise import interpolate_latents
from genlab.flows.model import FlowModel
from genlab.flows.objective import dequantise
from genlab.flows.train import PROJECT, evaluate_bits_per_dim


@dataclass
class FlowSampleConfig(SampleConfig):
    """Draw samples at several temperatures, interpolations and the multi-scale picture from a trained flow."""

    temperatures: tuple[float, ...] = option((0.5, 0.7, 0.85, 1.0), "one row of samples per temperature")
    per_row: int = option(8, "samples per temperature")
    interpolations: int = option(4, "pairs of test images to interpolate between (0: none)")
    interpolation_steps: int = option(8, "images per interpolation, ends included")
    scale_images: int = option(4, "test images for the multi-scale picture (0: none)")
    scale_temperature: float = option(0.7, "temperature of the latents drawn in the multi-scale picture")
    nll: bool = option(False, "also compute the test bits/dim over the whole test set")
    npz_temperature: float = option(1.0, "temperature of the samples in samples.npz")

    def validate(self) -> None:
        super().validate()
        if not self.temperatures or any(not (t >= 0 and math.isfinite(t)) for t in self.temperatures):
            raise GenlabError(f"--temperatures must be numbers >= 0, got {self.temperatures}")
        require_at_least(self, ("scale_temperature", "npz_temperature", "interpolations", "scale_images"), at_least=0)
        require_at_least(self, ("per_row",))
        require_at_least(self, ("interpolation_steps",), at_least=2)


def blacken_overflows(images: torch.Tensor, name: str) -> torch.Tensor:
    """Zero (draw black) every image with a non-finite pixel, and say how many there were.

    The inverse divides by the coupling scales, so a latent far from where the data went can overflow float32
    on its way back: an honest property of the trained model at that temperature, which the pictures and
    samples.npz must show rather than hide, and which must not reach the uint8 cast as NaN.
    """
    overflowed = ~torch.isfinite(images).flatten(1).all(dim=1)
    if overflowed.any():
        print(f"{name}: {int(overflowed.sum())} of {len(images)} images overflowed float32 in the inverse; drawn black")
    return torch.where(overflowed.view(-1, 1, 1, 1), torch.zeros_like(images), images)


@torch.no_grad()
def sample(config: FlowSampleConfig) -> dict[str, Path]:
    """Write every picture (and the test bits/dim); returns their paths by name."""
    run = open_run(config, FlowModel, "model", PROJECT)
    model: FlowModel = run.model
    settings, device, generator = model.config, run.device, run.generator

    def labels_for(count: int) -> torch.Tensor | None:
        return torch.arange(count, device=device) % settings.num_classes if settings.num_classes else None

    rows = [
        blacken_overflows(model.sample(config.per_row, t, labels_for(config.per_row), generator), f"temperature {t}")
        for t in config.temperatures
    ]
    run.save_grid(torch.cat(rows), "temperatures.png", nrow=config.per_row)

    def npz_chunk(start: int, count: int) -> torch.Tensor:
        y = model.sample(count, config.npz_temperature, labels_for(count), generator)
        y = blacken_overflows(y, f"samples.npz {start}-{start + count - 1}")
        levels = (y * settings.levels).floor().clamp(0, settings.levels - 1)  # the bin each dequantised value is in
        return levels.mul(255 // (settings.levels - 1)).to(torch.uint8)

    if config.npz:
        run.write_samples_npz(npz_chunk, config.npz, function_evaluations=1)  # one pass of the inverse

    needs_test = config.interpolations or config.scale_images or config.nll
    test = run.test_split("uint8", settings.image_shape) if needs_test else None

    def test_batch(count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        picks = torch.randperm(len(test), generator=generator)[:count].to(device)
        batch = test.batch(picks)
        noise = torch.rand(batch.images.shape, generator=generator).to(device)
        labels = batch.labels if settings.num_classes else None
        return dequantise(batch.images, settings.levels, noise), labels

    if config.interpolations:
        y, labels = test_batch(2 * config.interpolations)
        latents = model.encode(y, labels)
        frames = []
        for pair in range(config.interpolations):
            path = [interpolate_latents(z[2 * pair].flatten(), z[2 * pair + 1].flatten(), config.interpolation_steps)
                    for z in latents]  # fmt: skip
            frames.append(model.decode([p.view(-1, *z.shape[1:]) for p, z in zip(path, latents, strict=True)]))
        interpolations = blacken_overflows(torch.cat(frames), "interpolations").clamp(0, 1)
        run.save_grid(interpolations, "interpolations.png", nrow=config.interpolation_steps)

    if config.scale_images:
        y, labels = test_batch(config.scale_images)
        latents = model.encode(y, labels)
        levels = len(latents)
        columns = [y.clamp(0, 1)]
        for keep_from in reversed(range(levels)):  # keep z_keep_from, ..., z_L; draw the finer ones
            known = [z if i >= keep_from else None for i, z in enumerate(latents)]
            drawn = model.sample(len(y), config.scale_temperature, labels, generator, known)
            columns.append(blacken_overflows(drawn, f"scales, levels {keep_from + 1}-{levels} kept"))
        grid = torch.stack(columns, dim=1).flatten(0, 1)  # (N * (L + 1), C, H, W), one test image per row
        run.save_grid(grid, "scales.png", nrow=levels + 1)

    if config.nll:
        result = evaluate_bits_per_dim(model, test)
        run.write_json("test_bits_per_dim.json", result)
        print(f"test ({len(test)} images): {result['bits_per_dim']:.4f} bits/dim, {result['nll_nats']:.2f} nats")
    return run.finish()


main = console_script(FlowSampleConfig, sample, "flow-sample")
