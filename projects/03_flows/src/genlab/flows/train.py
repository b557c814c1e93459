"""flow-train: train RealNVP or Glow by exact maximum likelihood of dequantised data, through genlab.core's loop.

uv run flow-train --model glow                          # Glow on 8-bit MNIST, CPU-sized
uv run flow-train --model realnvp                       # RealNVP, the same budget
uv run flow-train --model glow --dataset twemoji --image-size 32
uv run flow-train --model glow --class-conditional      # a class-conditional top prior
uv run flow-train --model glow --preset paper           # the paper's width and depth, for a GPU
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from genlab.core.config import option
from genlab.core.data import ImageDataset, iterate_batches, load_dataset
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, write_results
from genlab.core.metrics import bits_per_dim, mean_over_batches
from genlab.core.trainer import TrainConfig, Trainer
from genlab.flows.model import SIZES, FlowConfig, FlowModel, build_config
from genlab.flows.objective import dequantise, discrete_nll, nll_loss

PROJECT = "flows"
LEVELS = 256  # 8-bit data
GRID_TEMPERATURES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # one row each of the periodic 6x6 sample grid


@dataclass
class FlowTrainConfig(TrainConfig):
    """Train RealNVP or Glow on 8-bit images, reporting the discrete NLL bound in bits/dim."""

    model: Literal["realnvp", "glow"] = option("glow", "which flow (sizes in model.SIZES)")
    size: Literal["small", "paper"] = option("small", "named size from the registry (model.SIZES)")
    steps: int | None = option(None, "optimizer steps in all, also when resuming (default: the model's DEFAULT_STEPS)")
    batch_size: int = option(64, "global batch per micro-step, summed over processes")
    lr_schedule: Literal["constant", "cosine", "linear"] = option("cosine", "learning-rate shape after warm-up")
    warmup_steps: int = option(200, "linear learning-rate warm-up steps")
    grad_clip: float = option(50.0, "clip the global gradient norm to this (0: off)")
    log_every: int = option(100, "log losses every N steps")
    sample_every: int = option(1000, "write a sample grid every N steps (0: only at the end)")
    eval_every: int = option(1000, "test bits/dim on --eval-images images every N steps (0: only at the end)")
    num_scales: int | None = option(None, "override the size's scales (RealNVP) / levels L (Glow)")
    steps_per_scale: int | None = option(None, "override Glow's steps of flow per level K")
    hidden_channels: int | None = option(None, "override the coupling networks' width")
    num_blocks: int | None = option(None, "override RealNVP's residual blocks per coupling network")
    lu_decomposed: bool = option(True, "Glow: LU-decomposed 1x1 convolutions (else plain, with slogdet)")
    normalisation: Literal["batchnorm", "actnorm"] = option("batchnorm", "RealNVP: normalisation after couplings")
    class_conditional: bool = option(False, "Glow: condition the top prior on the class label")
    init_images: int = option(256, "images for actnorm's data-dependent initialisation (Glow Sec. 3.1)")
    eval_images: int = option(2000, "test images for the periodic test bits/dim")
    sample_images: int = option(36, "images in each sample grid (36: one row of 6 per temperature)")

    resumable = (*TrainConfig.resumable, "eval_images", "sample_images")

    def validate(self) -> None:
        if self.steps is None:
            self.steps = DEFAULT_STEPS[self.model]
        super().validate()
        if self.precision != "no":
            # a log-density sums thousands of log-scales; in 16-bit floats the bound itself would be off
            raise GenlabError("flows train and evaluate in float32: leave --precision at no")
        if self.class_conditional and self.model != "glow":
            raise GenlabError("--class-conditional is Glow's (its top prior): use --model glow")
        for name in ("num_scales", "steps_per_scale", "hidden_channels", "num_blocks"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise GenlabError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.eval_images <= 0 or self.sample_images <= 0 or self.init_images <= 0:
            raise GenlabError("--eval-images, --sample-images and --init-images must be positive")


# CPU defaults: under an hour of a 2-core CPU on 28x28 data with the "small" sizes, batch 64.
DEFAULT_STEPS = {"realnvp": 4000, "glow": 4000}

# --preset paper: the registry's paper size with a GPU-sized schedule (Glow Sec. 5: Adam, lr 1e-3, warm-up).
PRESETS = {
    "paper": {
        "size": "paper",
        "steps": 100_000,
        "batch_size": 64,
        "lr": 1e-3,
        "warmup_steps": 2000,
        "eval_every": 5000,
        "sample_every": 5000,
        "checkpoint_every": 5000,
        "eval_images": 10_000,
    },
}


def model_config(config: FlowTrainConfig, data: ImageDataset) -> FlowConfig:
    if config.model not in SIZES:
        raise GenlabError(f"unknown model {config.model!r}")
    return build_config(
        config.model, config.size, data.shape, num_scales=config.num_scales,
        steps_per_scale=config.steps_per_scale, hidden_channels=config.hidden_channels,
        num_blocks=config.num_blocks, lu_decomposed=config.lu_decomposed, normalisation=config.normalisation,
        num_classes=data.num_classes if config.class_conditional else 0, levels=LEVELS,
    )  # fmt: skip


@torch.no_grad()
def initialise(model: nn.Module, data: ImageDataset, count: int, seed: int, conditional: bool) -> None:
    """Actnorm's data-dependent initialisation: one training-mode pass over a fixed random batch (Glow Sec. 3.1),
    the same batch on every process, so every process starts from the same parameters."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(data), generator=generator)[: min(count, len(data))]
    batch = data.batch(indices)
    noise = torch.rand(batch.images.shape, generator=generator)
    model.train()
    model(dequantise(batch.images, model.config.levels, noise), batch.labels if conditional else None)


@torch.no_grad()
def evaluate_bits_per_dim(
    model: nn.Module, data: ImageDataset, max_images: int | None = None, batch_size: int = 200
) -> dict[str, float]:
    """Test NLL bound (nats per image) and bits/dim, one dequantisation draw per image from a fixed seed."""
    model.eval()
    device = next(model.parameters()).device
    conditional = model.config.num_classes > 0
    generator = torch.Generator().manual_seed(1234)

    def per_batch():
        seen = 0
        for batch in iterate_batches(data, batch_size):
            x = batch.images.to(device)
            noise = torch.rand(x.shape, generator=generator).to(device)
            labels = batch.labels.to(device) if conditional else None
            yield discrete_nll(model, x, model.config.levels, labels, noise)
            seen += len(x)
            if max_images and seen >= max_images:
                return

    nll = mean_over_batches(per_batch())
    return {"nll_nats": nll, "bits_per_dim": bits_per_dim(nll, data.num_dims)}


def temperature_grid(model: nn.Module, per_row: int, seed: int, device: torch.device) -> torch.Tensor:
    """One row of samples per temperature in GRID_TEMPERATURES (a conditional model: labels 0, 1, ... along the
    row). (len(GRID_TEMPERATURES) * per_row, C, H, W) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    labels = None
    if model.config.num_classes:
        labels = (torch.arange(per_row, device=device) % model.config.num_classes).long()
    rows = [model.sample(per_row, t, labels, generator) for t in GRID_TEMPERATURES]
    return torch.cat(rows)


def load_splits(config: FlowTrainConfig) -> tuple[ImageDataset, ImageDataset]:
    def load(split: str) -> ImageDataset:
        return load_dataset(config.dataset, split, data_dir=config.data_dir or None, value_range="uint8",
                            image_size=config.image_size)  # fmt: skip

    train_data, test_data = load("train"), load("test")
    if config.class_conditional and train_data.labels is None:
        raise GenlabError(f"{config.dataset} has no labels to condition on")
    return train_data, test_data


def build_flow(config: FlowTrainConfig, data: ImageDataset) -> FlowModel:
    """The flow ``config`` names; a size the architecture cannot take is a one-line error."""
    try:
        return FlowModel(model_config(config, data))
    except ValueError as error:
        raise GenlabError(str(error)) from None


def train(config: FlowTrainConfig) -> dict[str, float]:
    """Train as ``config`` says; returns the last logged values and the final test bits/dim."""
    train_data, test_data = load_splits(config)
    return fit_flow(config, build_flow, train_data, test_data)


def fit_flow(
    config: FlowTrainConfig,
    build: Callable[[FlowTrainConfig, ImageDataset], nn.Module],
    train_data: ImageDataset,
    test_data: ImageDataset,
) -> dict:
    """Build the network after the Trainer has seeded torch, initialise actnorm, train through genlab.core's loop,
    and write results.json with the whole test set's bound.

    ``build(config, data)`` returns any module with the FlowModel interface (log p(y) from ``forward``, ``sample``,
    ``config``).
    """
    trainer = Trainer(config, PROJECT)
    network = build(config, train_data)
    trainer.record(model=network.config)
    initialise(network, train_data, config.init_images, config.seed, config.class_conditional)
    model = trainer.add_model("model", network)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    def loss_fn(batch):
        return nll_loss(model, batch.images, LEVELS, batch.labels if config.class_conditional else None)

    trainer.add_update("nll", optimizer, loss_fn, models=["model"])

    def sample_fn(trainer: Trainer) -> torch.Tensor:
        per_row = max(1, config.sample_images // len(GRID_TEMPERATURES))
        return temperature_grid(trainer.eval_model("model"), per_row, config.seed, trainer.device)

    def eval_fn(trainer: Trainer) -> dict[str, float]:
        result = evaluate_bits_per_dim(trainer.eval_model("model"), test_data.to(trainer.device), config.eval_images)
        return {"test_nll_nats": result["nll_nats"], "test_bits_per_dim": result["bits_per_dim"]}

    results = trainer.fit(train_data, sample_fn=sample_fn, eval_fn=eval_fn)
    if trainer.accelerator.is_main_process:
        final = {"step": trainer.step, "num_images": len(test_data)}
        final.update(evaluate_bits_per_dim(trainer.eval_model("model"), test_data.to(trainer.device)))
        write_results(trainer.run_dir, final)
        print(f"test ({len(test_data)} images): {final['bits_per_dim']:.4f} bits/dim, {final['nll_nats']:.2f} nats")
        results.update({f"final/{k}": v for k, v in final.items()})
    print(f"run folder: {trainer.run_dir}")
    return results


main = console_script(FlowTrainConfig, train, "flow-train", PRESETS)

if __name__ == "__main__":
    main()
