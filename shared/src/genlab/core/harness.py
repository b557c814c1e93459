"""The script harness: what every ``*-sample`` script and the end of every ``*-train`` script share, written once.

A sample script is a config extending ``SampleConfig`` and a function from an opened run to pictures::

    @dataclass
    class VAESampleConfig(SampleConfig):
        count: int = option(64, "number of prior samples")

    @torch.no_grad()
    def sample(config: VAESampleConfig) -> dict[str, Path]:
        run = open_run(config, VAE, "vae", PROJECT)         # weights (EMA if asked), device, output folder, seed
        run.save_grid(run.model.decode(...), "prior_samples.png")
        if config.npz:
            run.write_samples_npz(lambda start, count: ..., config.npz)
        test = run.test_split("binary", run.model.config.image_shape)
        return run.finish()                                 # prints and returns every file written

A train script writes its final measurements with ``write_results`` (results.json in the run folder).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from genlab.core.checkpoint import (
    load_pretrained,
    read_run_info,
    resolve_checkpoint,
    resolve_device,
    write_text_atomic,
)
from genlab.core.config import option, parse_config
from genlab.core.data import ImageDataset, load_dataset
from genlab.core.errors import GenlabError, exit_on_user_error
from genlab.core.visualise import save_grid

RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.npz"
SAMPLES_INFO = "samples.json"
NPZ_CHUNK = 500  # samples drawn per call when filling samples.npz: bounded memory at any count


@dataclass
class SampleConfig:
    """Flags every sample script shares; a project's sample config subclasses this and adds its sampler's."""

    run: str = option("", "run folder (its latest checkpoint) or a checkpoint folder")
    out: str = option("", "output folder (default: <run>/samples)")
    npz: int = option(0, "also save this many samples as samples.npz (uint8 0..255, N x C x H x W) for genlab-eval")
    ema: bool = option(True, "use the EMA weights when the run has them")
    data_dir: str = option("", "data root for test images (default: the run's, else $GENLAB_DATA)")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "device")
    seed: int = option(0, "random seed")

    def validate(self) -> None:
        if not self.run:
            raise GenlabError("--run is required: a run folder or a checkpoint folder")
        if self.npz < 0:
            raise GenlabError(f"--npz must be >= 0, got {self.npz}")
        if self.out and Path(self.out).exists() and not Path(self.out).is_dir():
            raise GenlabError(f"--out {self.out} is a file, not a folder")
        resolve_device(self.device)


def console_script(
    config_class: type, run: Callable[[Any], Any], prog: str, presets: dict[str, dict[str, Any]] | None = None
) -> Callable[[Sequence[str] | None], None]:
    """A console entry point: parse the flags into ``config_class`` (with its presets), then ``run(config)``;
    a user mistake is one line and exit 2 (``exit_on_user_error``)."""

    @exit_on_user_error
    def main(argv: Sequence[str] | None = None) -> None:
        run(parse_config(config_class, argv, presets, prog=prog))

    main.__doc__ = f"Console entry point of {prog}."
    return main


def require_at_least(config: Any, names: Sequence[str], at_least: float = 1) -> None:
    """One line naming the first flag in ``names`` whose value is not a finite number >= ``at_least``."""
    for name in names:
        value = getattr(config, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= at_least):
            raise GenlabError(f"--{name.replace('_', '-')} must be a number >= {at_least:g}, got {value}")


def unit_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> uint8 0..255 on the CPU, the format of samples.npz."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8).cpu()


@dataclass
class OpenedRun:
    """A trained run opened for sampling: its model on the device, its training config and the output folder."""

    config: SampleConfig
    run_dir: Path
    checkpoint: Path
    train_config: dict[str, Any]
    device: torch.device
    planned_out: Path  # made on first use of ``out``: a refusal after opening the run leaves nothing behind
    model: Any
    generator: torch.Generator
    written: dict[str, Path] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        """The output folder, made when something is first written into it."""
        self.planned_out.mkdir(parents=True, exist_ok=True)
        return self.planned_out

    def test_split(self, value_range: str, expected_shape: Sequence[int]) -> ImageDataset:
        """The test split of the data set the run trained on, on the device, checked against the model's shape."""
        trained = self.train_config
        test = load_dataset(
            trained["dataset"], "test", data_dir=self.config.data_dir or trained.get("data_dir") or None,
            value_range=value_range, image_size=trained.get("image_size"), device=self.device,
        )  # fmt: skip
        if test.shape != tuple(expected_shape):
            raise GenlabError(f"test images are {test.shape}, the model expects {tuple(expected_shape)}")
        return test

    def save_grid(self, images: torch.Tensor, name: str, nrow: int | None = None) -> Path:
        """A grid of images in [0, 1] (N, C, H, W) as ``out/name``."""
        self.written[Path(name).stem] = save_grid(images, self.out / name, nrow=nrow)
        return self.written[Path(name).stem]

    def write_json(self, name: str, values: dict[str, Any], key: str = "") -> Path:
        """``values`` as ``out/name``, listed by ``finish`` under ``key`` (default: the file's stem)."""
        self.written[key or Path(name).stem] = write_results(self.out, values, name)
        return self.written[key or Path(name).stem]

    def write_samples_npz(
        self, draw: Callable[[int, int], torch.Tensor], count: int, function_evaluations: int
    ) -> Path:
        """``count`` samples into ``out/samples.npz``; ``draw(start, n)`` returns samples start..start+n-1 as uint8.

        Beside it, samples.json says how they were made and what they cost: the network evaluations per sample
        (``function_evaluations``: 1 for a GAN, a pixel count for an autoregressive model, the steps of a
        sampler), the wall time per sample on this device, the parameter count and the checkpoint.
        """
        start = time.perf_counter()
        self.written["npz"] = write_samples_npz(self.out / SAMPLES_FILE, draw, count)
        seconds = time.perf_counter() - start
        self.write_json(SAMPLES_INFO, {
            "count": count,
            "function_evaluations_per_sample": function_evaluations,
            "seconds": seconds,
            "seconds_per_sample": seconds / count,
            "device": str(self.device),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "checkpoint": str(self.checkpoint),
            "ema": self.config.ema,
            "seed": self.config.seed,
        }, key="samples_info")  # fmt: skip
        return self.written["npz"]

    def finish(self) -> dict[str, Path]:
        """Print every file written, by name, and return them."""
        for name, path in self.written.items():
            print(f"{name}: {path}")
        return self.written


def open_run(
    config: SampleConfig, model_class: type, name: str, project: str, default_out: str = "samples"
) -> OpenedRun:
    """Resolve ``config.run`` (a run or checkpoint folder), load model ``name`` (EMA weights when asked and
    present), seed torch, and name the output folder (``--out``, else ``<run>/<default_out>``), made when the
    first file is written; every refusal is one line, before anything is written."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    run_dir, checkpoint = resolve_checkpoint(config.run)
    model = load_pretrained(checkpoint, model_class, name, project, ema=config.ema).to(device).eval()
    train_config = read_run_info(run_dir)["config"]
    out = Path(config.out) if config.out else run_dir / default_out
    generator = torch.Generator().manual_seed(config.seed)
    return OpenedRun(config, run_dir, checkpoint, train_config, device, out, model, generator)


def write_samples_npz(path: Path, draw: Callable[[int, int], torch.Tensor], count: int, chunk: int = NPZ_CHUNK) -> Path:
    """Fill ``path`` with ``count`` uint8 samples (N, C, H, W) drawn ``chunk`` at a time, written atomically."""
    pieces = []
    for start in range(0, count, chunk):
        piece = draw(start, min(chunk, count - start))
        if piece.dtype != torch.uint8:
            raise TypeError(f"samples for {path.name} must be uint8, got {piece.dtype}")
        pieces.append(piece.cpu())
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        np.savez_compressed(handle, samples=torch.cat(pieces).numpy())
    os.replace(temporary, path)
    return path


def write_results(folder: Path, results: dict[str, Any], name: str = RESULTS_FILE) -> Path:
    """A script's measurements as JSON in ``folder`` (results.json by default), written atomically."""
    path = Path(folder) / name
    write_text_atomic(path, json.dumps(results, indent=1) + "\n")
    return path
