"""ar-sample: samples and completions from a trained autoregressive model, and the fast sampler's speed-up.

    uv run ar-sample --run runs/autoregressive/mnist-pixelcnn
    uv run ar-sample --run runs/autoregressive/mnist-pixelcnn --compare-samplers

writes into <run>/samples/ (or --out): a grid of samples (a class-conditional model gets one row per class),
and completions: test images whose top half is given and whose bottom half is sampled (each row: the
original, the given half, then completions). ``--compare-samplers`` draws the same images with the naive and
the cached sampler from the same uniforms, checks they are identical and reports both times.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from genlab.autoregressive.model import AutoregressiveModel
from genlab.autoregressive.sampler import has_cached_sampler, labels_by_row, sample_cached, sample_naive
from genlab.autoregressive.train import PROJECT, evaluate_nll, value_range_for
from genlab.core.config import option
from genlab.core.errors import GenlabError
from genlab.core.harness import SampleConfig, console_script, open_run, require_at_least


@dataclass
class ARSampleConfig(SampleConfig):
    """Draw samples and half-image completions from a trained autoregressive model."""

    count: int = option(64, "number of samples in the grid")
    sampler: Literal["auto", "cached", "naive"] = option("auto", "auto: the cached sampler where the model has one")
    temperature: float = option(1.0, "divide the logits by this before each draw (1: the model's distribution)")
    completions: int = option(8, "test images to complete from their top half (0: none)")
    completions_per_image: int = option(5, "sampled bottom halves per test image")
    compare_samplers: bool = option(False, "time naive vs cached sampling on --compare-count images and check equality")
    compare_count: int = option(16, "images for --compare-samplers")
    nll: bool = option(False, "also compute the exact test NLL (and MADE's ensemble)")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("count", "compare_count", "completions_per_image"))
        require_at_least(self, ("completions",), at_least=0)
        if not self.temperature > 0 or not math.isfinite(self.temperature):
            raise GenlabError(f"--temperature must be a positive number, got {self.temperature}")


@torch.no_grad()
def sample(config: ARSampleConfig) -> dict[str, Path]:
    """Write every picture (and the timing JSON); returns their paths by name."""
    run = open_run(config, AutoregressiveModel, "model", PROJECT)
    model: AutoregressiveModel = run.model
    settings, levels, device, generator = model.config, model.config.levels, run.device, run.generator
    if config.sampler == "cached" and not has_cached_sampler(model):
        raise GenlabError(f"{settings.model} has no cached sampler: use --sampler naive")
    if config.compare_samplers and not has_cached_sampler(model):
        raise GenlabError(f"{settings.model} has no cached sampler to compare with")
    draw = sample_cached if config.sampler != "naive" and has_cached_sampler(model) else sample_naive

    def uniforms(count: int) -> torch.Tensor:
        return torch.rand((count, *settings.image_shape), generator=generator).to(device)

    def class_labels(count: int) -> torch.Tensor | None:
        return labels_by_row(count, settings.num_classes, device)

    def to_uint8(samples: torch.Tensor) -> torch.Tensor:
        return (samples * (255 // (levels - 1))).to(torch.uint8)  # levels 0..L-1 -> 0..255 (binary: 0, 255)

    samples = draw(model, uniforms(config.count), class_labels(config.count), temperature=config.temperature)
    run.save_grid(samples / (levels - 1), "samples.png")
    if config.npz:
        run.write_samples_npz(
            lambda _, n: to_uint8(draw(model, uniforms(n), class_labels(n), temperature=config.temperature)),
            config.npz,
            function_evaluations=math.prod(settings.image_shape),  # one network pass per pixel and channel
        )

    test = run.test_split(value_range_for(levels), settings.image_shape) if config.completions or config.nll else None
    if config.completions:
        picks = torch.randperm(len(test), generator=generator)[: config.completions].to(device)
        batch = test.batch(picks, torch.rand((len(picks), *test.shape), generator=generator).to(device))
        originals = batch.images.float()  # (N, C, H, W) levels
        repeats = config.completions_per_image
        prefix = originals.repeat_interleave(repeats, dim=0)  # (N * R, C, H, W)
        labels = batch.labels.repeat_interleave(repeats).to(device) if settings.num_classes else None
        known = math.prod(settings.image_shape) // 2  # the top half in raster order (mask set 0 for MADE)
        completed = draw(model, uniforms(len(prefix)), labels, prefix=prefix, known=known,
                         temperature=config.temperature)  # fmt: skip
        given = originals.clone()
        given[:, :, settings.image_shape[1] // 2 :] = (levels - 1) / 2  # grey where the model fills in
        rows = torch.cat([originals[:, None], given[:, None], completed.view(len(picks), repeats, *test.shape)], 1)
        run.save_grid(rows.flatten(0, 1) / (levels - 1), "completions.png", nrow=repeats + 2)

    if config.compare_samplers:
        u, labels = uniforms(config.compare_count), class_labels(config.compare_count)
        timings, images = {}, {}
        for name, function in (("naive", sample_naive), ("cached", sample_cached)):
            start = time.perf_counter()
            images[name] = function(model, u, labels, temperature=config.temperature)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings[name] = time.perf_counter() - start
        report = {
            "model": settings.model,
            "images": config.compare_count,
            "device": str(device),
            "naive_seconds": timings["naive"],
            "cached_seconds": timings["cached"],
            "speedup": timings["naive"] / timings["cached"],
            "identical": bool(torch.equal(images["naive"], images["cached"])),
            "differing_values": int((images["naive"] != images["cached"]).sum()),
        }
        run.write_json("sampler_speed.json", report)
        print(
            f"naive {timings['naive']:.2f} s, cached {timings['cached']:.2f} s for {config.compare_count} images: "
            f"{report['speedup']:.1f}x faster, identical samples: {report['identical']}"
        )

    if config.nll:
        result = evaluate_nll(model, test)
        if model.num_mask_sets > 1:
            ensemble = evaluate_nll(model, test, ensemble=True)
            result.update(
                {"ensemble_nll_nats": ensemble["nll_nats"], "ensemble_bits_per_dim": ensemble["bits_per_dim"]}
            )
        run.write_json("test_nll.json", result)
        print(f"test NLL ({len(test)} images): {result['nll_nats']:.2f} nats, {result['bits_per_dim']:.4f} bits/dim")
    return run.finish()


main = console_script(ARSampleConfig, sample, "ar-sample")
