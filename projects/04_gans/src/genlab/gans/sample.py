"""gan-sample: a sample grid (one row per class for a conditional model) and, for genlab-eval, an .npz.

uv run gan-sample --run runs/gans/<run> --npz 10000
uv run genlab-eval --samples runs/gans/<run>
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from genlab.core.config import option
from genlab.core.errors import GenlabError
from genlab.core.harness import SampleConfig, console_script, open_run, require_at_least, unit_to_uint8
from genlab.gans.model import Generator
from genlab.gans.toy import GaussianMixture, mode_coverage, scatter_image
from genlab.gans.train import PROJECT, toy_points


@dataclass
class GANSampleConfig(SampleConfig):
    """Draw samples from a trained generator."""

    count: int = option(64, "images in the grid (toy data: points in the picture and the mode count)")
    class_label: int | None = option(None, "conditional models: draw only this class (default: every class in turn)")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("count",))


@torch.no_grad()
def sample(config: GANSampleConfig) -> dict[str, Path]:
    """Write the grid (and the npz); returns their paths by name."""
    run = open_run(config, Generator, "generator", PROJECT)
    generator: Generator = run.model
    classes, device = generator.config.num_classes, run.device
    if config.class_label is not None and not 0 <= config.class_label < classes:
        raise GenlabError(f"--class-label must be in [0, {classes}) for this model (it has {classes} classes)")

    def labels_for(count: int, offset: int = 0) -> torch.Tensor | None:
        if not classes:
            return None
        if config.class_label is not None:
            return torch.full((count,), config.class_label, device=device)
        return (torch.arange(offset, offset + count, device=device) % classes).long()

    if generator.config.points:  # the 2-D toy: a picture of the points and the mode count
        dataset = run.train_config["dataset"]
        points = toy_points(generator, config.count, config.seed)
        coverage = mode_coverage(points, GaussianMixture.named(dataset, run.train_config.get("toy_std")))
        run.write_json("coverage.json", dataclasses.asdict(coverage))
        print(f"{dataset}: {coverage.modes_covered} of {coverage.num_modes} modes, "
              f"{coverage.high_quality:.1%} of samples within 3 std of a mode")  # fmt: skip
        run.save_grid(scatter_image(points), "scatter.png")
        return run.finish()

    def images(start: int, count: int) -> torch.Tensor:
        return (generator.sample(count, labels_for(count, start), run.generator) + 1) / 2  # [-1, 1] -> [0, 1]

    run.save_grid(images(0, config.count), "samples.png", nrow=classes or None)
    if config.npz:
        run.write_samples_npz(lambda start, n: unit_to_uint8(images(start, n)), config.npz, function_evaluations=1)
    return run.finish()


main = console_script(GANSampleConfig, sample, "gan-sample")
