"""gan-sample: a sample grid (one row per class for a conditional model) and, for genlab-eval, an .npz.

uv run gan-sample --run runs/gans/<run> --npz 10000
uv run genlab-eval --samples runs/gans/<run>
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from genlab.core.checkpoint import load_pretrained, read_run_info, resolve_checkpoint, resolve_device
from genlab.core.config import option, parse_config
from genlab.core.errors import GenlabError, exit_on_user_error
from genlab.core.visualise import save_grid
from genlab.gans.model import Generator
from genlab.gans.toy import GaussianMixture, mode_coverage, scatter_image
from genlab.gans.train import PROJECT, toy_points


@dataclass
class GANSampleConfig:
    """Draw samples from a trained generator."""

    run: str = option("", "run folder (its latest checkpoint) or a checkpoint folder")
    out: str = option("", "output folder (default: <run>/samples)")
    count: int = option(64, "images in the grid (toy data: points in the picture and the mode count)")
    npz: int = option(0, "also save this many samples as samples.npz (uint8 pixels, N x C x H x W) for genlab-eval")
    class_label: int | None = option(None, "conditional models: draw only this class (default: every class in turn)")
    ema: bool = option(True, "use the EMA weights when the run has them")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "device")
    seed: int = option(0, "random seed")

    def validate(self) -> None:
        if not self.run:
            raise GenlabError("--run is required: a run folder or a checkpoint folder")
        if self.count < 1 or self.npz < 0:
            raise GenlabError("--count must be >= 1 and --npz >= 0")


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    sample(parse_config(GANSampleConfig, argv, prog="gan-sample"))


@torch.no_grad()
def sample(config: GANSampleConfig) -> dict[str, Path]:
    """Write the grid (and the npz); returns their paths by name."""
    device = resolve_device(config.device)
    run_dir, checkpoint = resolve_checkpoint(config.run)
    generator: Generator = load_pretrained(checkpoint, Generator, "generator", PROJECT, config.ema)
    generator = generator.to(device).eval()
    classes = generator.config.num_classes
    if config.class_label is not None and not 0 <= config.class_label < classes:
        raise GenlabError(f"--class-label must be in [0, {classes}) for this model (it has {classes} classes)")
    rng = torch.Generator().manual_seed(config.seed)

    def labels_for(count: int, offset: int = 0) -> torch.Tensor | None:
        if not classes:
            return None
        if config.class_label is not None:
            return torch.full((count,), config.class_label, device=device)
        return (torch.arange(offset, offset + count, device=device) % classes).long()

    out = Path(config.out) if config.out else run_dir / "samples"
    out.mkdir(parents=True, exist_ok=True)
    if generator.config.points:  # the 2-D toy: a picture of the points and the mode count
        trained = read_run_info(run_dir)["config"]
        dataset = trained["dataset"]
        points = toy_points(generator, config.count, config.seed)
        coverage = mode_coverage(points, GaussianMixture.named(dataset, trained.get("toy_std")))
        (out / "coverage.json").write_text(json.dumps(dataclasses.asdict(coverage), indent=1))
        print(f"{dataset}: {coverage.modes_covered} of {coverage.num_modes} modes, "
              f"{coverage.high_quality:.1%} of samples within 3 std of a mode")  # fmt: skip
        return {"scatter": save_grid(scatter_image(points), out / "scatter.png"), "coverage": out / "coverage.json"}
    written = {"grid": save_grid((generator.sample(config.count, labels_for(config.count), rng) + 1) / 2,
                                 out / "samples.png", nrow=classes or None)}  # fmt: skip
    if config.npz:
        pixels = []
        for start in range(0, config.npz, 500):
            count = min(500, config.npz - start)
            images = generator.sample(count, labels_for(count, start), rng)  # (B, C, H, W) in [-1, 1]
            pixels.append(((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu())
        np.savez_compressed(out / "samples.npz", samples=torch.cat(pixels).numpy())
        written["npz"] = out / "samples.npz"
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


if __name__ == "__main__":
    main()
