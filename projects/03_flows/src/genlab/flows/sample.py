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

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from genlab.core.checkpoint import load_pretrained, read_run_info, resolve_checkpoint, resolve_device
from genlab.core.config import option, parse_config
from genlab.core.data import load_dataset
from genlab.core.errors import GenlabError, exit_on_user_error
from genlab.core.visualise import interpolate_latents, save_grid
from genlab.flows.model import FlowModel
from genlab.flows.objective import dequantise
from genlab.flows.train import PROJECT, evaluate_bits_per_dim


@dataclass
class FlowSampleConfig:
    """Draw samples at several temperatures, interpolations and the multi-scale picture from a trained flow."""

    run: str = option("", "run folder (its latest checkpoint) or a checkpoint folder")
    out: str = option("", "output folder (default: <run>/samples)")
    temperatures: tuple[float, ...] = option((0.5, 0.7, 0.85, 1.0), "one row of samples per temperature")
    per_row: int = option(8, "samples per temperature")
    interpolations: int = option(4, "pairs of test images to interpolate between (0: none)")
    interpolation_steps: int = option(8, "images per interpolation, ends included")
    scale_images: int = option(4, "test images for the multi-scale picture (0: none)")
    scale_temperature: float = option(0.7, "temperature of the latents drawn in the multi-scale picture")
    nll: bool = option(False, "also compute the test bits/dim over the whole test set")
    npz: int = option(0, "also save this many samples as samples.npz (uint8 pixels, N x C x H x W) for genlab-eval")
    npz_temperature: float = option(1.0, "temperature of the samples in samples.npz")
    data_dir: str = option("", "data root for test images (default: the run's, else $GENLAB_DATA)")
    ema: bool = option(True, "use the EMA weights when the run has them")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "device")
    seed: int = option(0, "random seed")

    def validate(self) -> None:
        if not self.run:
            raise GenlabError("--run is required: a run folder or a checkpoint folder")
        if not self.temperatures or any(not (t >= 0 and math.isfinite(t)) for t in self.temperatures):
            raise GenlabError(f"--temperatures must be numbers >= 0, got {self.temperatures}")
        if not (self.scale_temperature >= 0 and math.isfinite(self.scale_temperature)):
            raise GenlabError(f"--scale-temperature must be a number >= 0, got {self.scale_temperature}")
        if self.npz < 0 or not (self.npz_temperature >= 0 and math.isfinite(self.npz_temperature)):
            raise GenlabError("--npz must be >= 0 and --npz-temperature a number >= 0")
        if self.per_row < 1 or self.interpolation_steps < 2 or self.interpolations < 0 or self.scale_images < 0:
            raise GenlabError("--per-row >= 1, --interpolation-steps >= 2, --interpolations and --scale-images >= 0")


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    sample(parse_config(FlowSampleConfig, argv, prog="flow-sample"))


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
    device = resolve_device(config.device)
    run_dir, checkpoint = resolve_checkpoint(config.run)
    model: FlowModel = load_pretrained(checkpoint, FlowModel, "model", PROJECT, config.ema)
    model = model.to(device).eval()
    settings = model.config
    out = Path(config.out) if config.out else run_dir / "samples"
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(config.seed)

    def labels_for(count: int) -> torch.Tensor | None:
        return torch.arange(count, device=device) % settings.num_classes if settings.num_classes else None

    written: dict[str, Path] = {}
    rows = [
        blacken_overflows(model.sample(config.per_row, t, labels_for(config.per_row), generator), f"temperature {t}")
        for t in config.temperatures
    ]
    written["temperatures"] = save_grid(torch.cat(rows), out / "temperatures.png", nrow=config.per_row)

    if config.npz:
        pixels = []
        for start in range(0, config.npz, 500):
            count = min(500, config.npz - start)
            y = model.sample(count, config.npz_temperature, labels_for(count), generator)
            y = blacken_overflows(y, f"samples.npz {start}-{start + count - 1}")
            pixels.append((y * settings.levels).floor().clamp(0, settings.levels - 1).mul(255 // (settings.levels - 1)))
        np.savez_compressed(out / "samples.npz", samples=torch.cat(pixels).to(torch.uint8).cpu().numpy())
        written["npz"] = out / "samples.npz"

    test = None
    if config.interpolations or config.scale_images or config.nll:
        train_config = read_run_info(run_dir)["config"]
        test = load_dataset(
            train_config["dataset"], "test", data_dir=config.data_dir or train_config["data_dir"] or None,
            value_range="uint8", image_size=train_config.get("image_size"), device=device,
        )  # fmt: skip
        if test.shape != tuple(settings.image_shape):
            raise GenlabError(f"test images are {test.shape}, the model expects {tuple(settings.image_shape)}")

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
        path = out / "interpolations.png"
        written["interpolations"] = save_grid(interpolations, path, nrow=config.interpolation_steps)

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
        written["scales"] = save_grid(grid, out / "scales.png", nrow=levels + 1)

    if config.nll:
        result = evaluate_bits_per_dim(model, test)
        (out / "test_bits_per_dim.json").write_text(json.dumps(result, indent=1))
        print(f"test ({len(test)} images): {result['bits_per_dim']:.4f} bits/dim, {result['nll_nats']:.2f} nats")
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


if __name__ == "__main__":
    main()
