"""ar-sample: samples and completions from a trained autoregressive model, and the fast sampler's speed-up.

    uv run ar-sample --run runs/autoregressive/mnist-pixelcnn
    uv run ar-sample --run runs/autoregressive/mnist-pixelcnn --compare-samplers

writes into <run>/samples/ (or --out): a grid of samples (a class-conditional model gets one row per class),
and completions: test images whose top half is given and whose bottom half is sampled (each row: the
original, the given half, then completions). ``--compare-samplers`` draws the same images with the naive and
the cached sampler from the same uniforms, checks they are identical and reports both times.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from genlab.autoregressive.model import AutoregressiveModel
from genlab.autoregressive.sampler import has_cached_sampler, labels_by_row, sample_cached, sample_naive
from genlab.autoregressive.train import PROJECT, evaluate_nll, value_range_for
from genlab.core.checkpoint import load_pretrained, read_run_info, resolve_checkpoint, resolve_device
from genlab.core.config import option, parse_config
from genlab.core.data import load_dataset
from genlab.core.errors import GenlabError, exit_on_user_error
from genlab.core.visualise import save_grid


@dataclass
class ARSampleConfig:
    """Draw samples and half-image completions from a trained autoregressive model."""

    run: str = option("", "run folder (its latest checkpoint) or a checkpoint folder")
    out: str = option("", "output folder (default: <run>/samples)")
    count: int = option(64, "number of samples in the grid")
    sampler: Literal["auto", "cached", "naive"] = option("auto", "auto: the cached sampler where the model has one")
    temperature: float = option(1.0, "divide the logits by this before each draw (1: the model's distribution)")
    completions: int = option(8, "test images to complete from their top half (0: none)")
    completions_per_image: int = option(5, "sampled bottom halves per test image")
    compare_samplers: bool = option(False, "time naive vs cached sampling on --compare-count images and check equality")
    compare_count: int = option(16, "images for --compare-samplers")
    npz: bool = option(False, "also save the samples as samples.npz (uint8 in 0..255, N x C x H x W) for genlab-eval")
    nll: bool = option(False, "also compute the exact test NLL (and MADE's ensemble)")
    data_dir: str = option("", "data root for test images (default: the run's, else $GENLAB_DATA)")
    ema: bool = option(True, "use the EMA weights when the run has them")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "device")
    seed: int = option(0, "random seed of the uniforms every draw is made from")

    def validate(self) -> None:
        if not self.run:
            raise GenlabError("--run is required: a run folder or a checkpoint folder")
        if self.count < 1 or self.compare_count < 1 or self.completions < 0 or self.completions_per_image < 1:
            raise GenlabError("--count, --compare-count, --completions-per-image must be >= 1, --completions >= 0")
        if not self.temperature > 0 or not math.isfinite(self.temperature):
            raise GenlabError(f"--temperature must be a positive number, got {self.temperature}")


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    sample(parse_config(ARSampleConfig, argv, prog="ar-sample"))


@torch.no_grad()
def sample(config: ARSampleConfig) -> dict[str, Path]:
    """Write every picture (and the timing JSON); returns their paths by name."""
    device = resolve_device(config.device)
    run_dir, checkpoint = resolve_checkpoint(config.run)
    model: AutoregressiveModel = load_pretrained(checkpoint, AutoregressiveModel, "model", PROJECT, config.ema)
    model = model.to(device).eval()
    settings, levels = model.config, model.config.levels
    if config.sampler == "cached" and not has_cached_sampler(model):
        raise GenlabError(f"{settings.model} has no cached sampler: use --sampler naive")
    draw = sample_cached if config.sampler != "naive" and has_cached_sampler(model) else sample_naive
    out = Path(config.out) if config.out else run_dir / "samples"
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(config.seed)

    def uniforms(count: int) -> torch.Tensor:
        return torch.rand((count, *settings.image_shape), generator=generator).to(device)

    def class_labels(count: int) -> torch.Tensor | None:
        return labels_by_row(count, settings.num_classes, device)

    written: dict[str, Path] = {}
    samples = draw(model, uniforms(config.count), class_labels(config.count), temperature=config.temperature)
    written["samples"] = save_grid(samples / (levels - 1), out / "samples.png")
    if config.npz:
        pixels = (samples * (255 // (levels - 1))).to(torch.uint8)  # levels 0..L-1 -> 0..255 (binary: 0, 255)
        np.savez_compressed(out / "samples.npz", samples=pixels.cpu().numpy())
        written["npz"] = out / "samples.npz"

    train_config = read_run_info(run_dir)["config"]
    needs_test = config.completions or config.nll
    test = None
    if needs_test:
        test = load_dataset(
            train_config["dataset"], "test", data_dir=config.data_dir or train_config["data_dir"] or None,
            value_range=value_range_for(levels), image_size=train_config.get("image_size"), device=device,
        )  # fmt: skip
        if test.shape != tuple(settings.image_shape):
            raise GenlabError(f"test images are {test.shape}, the model expects {tuple(settings.image_shape)}")

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
        path = out / "completions.png"
        written["completions"] = save_grid(rows.flatten(0, 1) / (levels - 1), path, nrow=repeats + 2)

    if config.compare_samplers:
        if not has_cached_sampler(model):
            raise GenlabError(f"{settings.model} has no cached sampler to compare with")
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
        (out / "sampler_speed.json").write_text(json.dumps(report, indent=1))
        written["sampler_speed"] = out / "sampler_speed.json"
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
        (out / "test_nll.json").write_text(json.dumps(result, indent=1))
        print(f"test NLL ({len(test)} images): {result['nll_nats']:.2f} nats, {result['bits_per_dim']:.4f} bits/dim")
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


if __name__ == "__main__":
    main()
