"""ar-train: train an autoregressive image model by exact maximum likelihood through genlab.core's loop.

uv run ar-train --model pixelcnn                     # PixelCNN on dynamically binarised MNIST, CPU-sized
uv run ar-train --model gated_pixelcnn --class-conditional
uv run ar-train --model made                          # order-agnostic MADE with 8 mask sets
uv run ar-train --model pixelcnn --dataset fashion_mnist    # 8-bit data: 256-way softmax, bits/dim
uv run ar-train --model pixelcnn --preset paper      # the paper-sized network, for a GPU
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from genlab.autoregressive.model import SIZES, VECTOR_MODELS, ARConfig, AutoregressiveModel, build_config
from genlab.autoregressive.objective import ensemble_log_likelihood, log_likelihood, nll_loss
from genlab.autoregressive.sampler import has_cached_sampler, labels_by_row, sample_cached, sample_naive
from genlab.core.config import option
from genlab.core.data import ImageDataset, iterate_batches, load_dataset
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, write_results
from genlab.core.metrics import bits_per_dim, mean_over_batches
from genlab.core.trainer import TrainConfig, Trainer

PROJECT = "autoregressive"
BINARY_DATASETS = ("mnist", "synthetic")


@dataclass
class ARTrainConfig(TrainConfig):
    """Train NADE, MADE, PixelRNN (Row LSTM, Diagonal BiLSTM), PixelCNN or Gated PixelCNN by exact likelihood."""

    model: Literal["nade", "made", "pixelcnn", "gated_pixelcnn", "row_lstm", "diagonal_bilstm"] = option(
        "pixelcnn", "which model (sizes in model.SIZES)"
    )
    size: Literal["small", "paper"] = option("small", "named size from the registry (model.SIZES)")
    steps: int | None = option(None, "optimizer steps in all, also when resuming (default: the model's DEFAULT_STEPS)")
    batch_size: int = option(64, "global batch per micro-step, summed over processes")
    lr_schedule: Literal["constant", "cosine", "linear"] = option("cosine", "learning-rate shape after warm-up")
    log_every: int = option(200, "log losses every N steps")
    sample_every: int = option(2500, "write a sample grid every N steps (0: only at the end)")
    eval_every: int = option(1000, "exact test NLL on --eval-images images every N steps (0: only at the end)")
    checkpoint_every: int = option(1000, "checkpoint every N steps (and always at the end and on SIGINT/SIGTERM)")
    levels: Literal["auto", "2", "256"] = option(
        "auto", "2: binarised data, sigmoid; 256: 8-bit, softmax; auto by data"
    )
    hidden_channels: int | None = option(None, "override the size's h (PixelCNN/PixelRNN) or p (Gated PixelCNN)")
    num_layers: int | None = option(None, "override the size's number of blocks / layers")
    kernel_size: int | None = option(None, "override the size's kernel (PixelCNN blocks, Gated PixelCNN stacks)")
    head_channels: int | None = option(None, "override the size's output-head width")
    hidden_sizes: tuple[int, ...] | None = option(None, "override NADE's / MADE's hidden layer sizes")
    num_masks: int | None = option(None, "override MADE's number of mask sets")
    order_agnostic: bool | None = option(None, "override whether MADE's mask sets draw orderings too")
    class_conditional: bool = option(False, "condition Gated PixelCNN on the class label (eq. 4)")
    eval_images: int = option(2000, "test images for the periodic exact NLL")
    sample_images: int = option(36, "images in each sample grid (sampling is sequential: keep it small)")

    resumable = (*TrainConfig.resumable, "eval_images", "sample_images")

    def validate(self) -> None:
        if self.steps is None:
            self.steps = DEFAULT_STEPS[self.model]
        super().validate()
        if self.model in VECTOR_MODELS and self.resolved_levels() != 2:
            raise GenlabError(f"{self.model} models binary data: use --dataset mnist (or --levels 2)")
        if self.class_conditional and self.model != "gated_pixelcnn":
            raise GenlabError("--class-conditional is part of Gated PixelCNN: use --model gated_pixelcnn")
        for name in ("hidden_channels", "num_layers", "kernel_size", "head_channels", "num_masks"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise GenlabError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.kernel_size is not None and self.kernel_size % 2 == 0:
            raise GenlabError(f"--kernel-size must be odd (masks need a centre tap), got {self.kernel_size}")
        if self.hidden_sizes is not None and (not self.hidden_sizes or min(self.hidden_sizes) <= 0):
            raise GenlabError("--hidden-sizes must be positive numbers")
        if self.eval_images <= 0 or self.sample_images <= 0:
            raise GenlabError("--eval-images and --sample-images must be positive")

    def resolved_levels(self) -> int:
        if self.levels != "auto":
            return int(self.levels)
        return 2 if self.dataset in BINARY_DATASETS else 256


# CPU defaults: under an hour each of a 2-core CPU on 28x28 data with the "small" sizes, batch 64.
DEFAULT_STEPS = {
    "nade": 3000,
    "made": 40_000,
    "pixelcnn": 5000,
    "gated_pixelcnn": 5000,
    "row_lstm": 5000,
    "diagonal_bilstm": 2500,
}

# --preset paper: the registry's paper size with a GPU-sized schedule. The PixelRNN paper trains with RMSProp
# / Adam to convergence and states no step count; 150k steps of batch 64 (about 160 epochs of MNIST) is ours.
PRESETS = {
    "paper": {
        "size": "paper",
        "steps": 150_000,
        "batch_size": 64,
        "lr": 5e-4,
        "warmup_steps": 1000,
        "grad_clip": 1.0,
        "eval_every": 10_000,
        "sample_every": 10_000,
        "checkpoint_every": 5_000,
        "eval_images": 10_000,
    },
}


def value_range_for(levels: int) -> str:
    return "binary" if levels == 2 else "uint8"


def model_config(config: ARTrainConfig, data: ImageDataset) -> ARConfig:
    if config.model not in SIZES:
        raise GenlabError(f"unknown model {config.model!r}")
    return build_config(
        config.model, config.size, data.shape, config.resolved_levels(),
        hidden_channels=config.hidden_channels, num_layers=config.num_layers, kernel_size=config.kernel_size,
        head_channels=config.head_channels, hidden_sizes=config.hidden_sizes, num_masks=config.num_masks,
        order_agnostic=config.order_agnostic, num_classes=data.num_classes if config.class_conditional else 0,
    )  # fmt: skip


@torch.no_grad()
def evaluate_nll(
    model: AutoregressiveModel, data: ImageDataset, max_images: int | None = None, ensemble: bool = False,
    batch_size: int = 100,
) -> dict[str, float]:  # fmt: skip
    """Exact test NLL in nats per image and bits/dim; MADE's ensemble over its mask sets with ``ensemble``.

    Binarised test images are drawn once with a fixed seed, so every model is scored on the same binarisation.
    """
    model.eval()
    device = next(model.parameters()).device
    conditional = model.config.num_classes > 0

    def per_batch():
        seen = 0
        for batch in iterate_batches(data, batch_size, noise_seed=1234):
            x = batch.images.to(device)
            labels = batch.labels.to(device) if conditional else None
            if ensemble:
                yield -ensemble_log_likelihood(model, x, labels, model.num_mask_sets)
            else:
                yield -log_likelihood(model(x, labels), x, model.config.levels)
            seen += len(x)
            if max_images and seen >= max_images:
                return

    nll = mean_over_batches(per_batch())
    return {"nll_nats": nll, "bits_per_dim": bits_per_dim(nll, data.num_dims)}


def sample_grid(model: AutoregressiveModel, count: int, seed: int, device: torch.device) -> torch.Tensor:
    """``count`` samples in [0, 1] (B, C, H, W); a class-conditional model gets labels 0, 1, 2, ... row-wise."""
    generator = torch.Generator().manual_seed(seed)
    uniforms = torch.rand((count, *model.config.image_shape), generator=generator).to(device)
    labels = labels_by_row(count, model.config.num_classes, device)
    x = (sample_cached if has_cached_sampler(model) else sample_naive)(model, uniforms, labels)
    return x / (model.config.levels - 1)


def train(config: ARTrainConfig) -> dict[str, float]:
    """Train as ``config`` says; returns the last logged values and the final test NLL."""
    levels = config.resolved_levels()

    def load(split: str) -> ImageDataset:
        return load_dataset(config.dataset, split, data_dir=config.data_dir or None,
                            value_range=value_range_for(levels), image_size=config.image_size)  # fmt: skip

    train_data, test_data = load("train"), load("test")
    if config.class_conditional and train_data.labels is None:
        raise GenlabError(f"{config.dataset} has no labels to condition on")
    architecture = model_config(config, train_data)
    trainer = Trainer(config, PROJECT, {"model": architecture})  # seeds torch: --seed fixes the initial weights
    try:
        network = AutoregressiveModel(architecture)
    except ValueError as error:
        raise GenlabError(str(error)) from None
    model = trainer.add_model("model", network)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    mask_sets = network.num_mask_sets

    def loss_fn(batch):
        labels = batch.labels if config.class_conditional else None
        # MADE (Sec. 4.2): a new mask set for every minibatch, drawn from the step's reseeded generator
        mask_index = int(torch.randint(mask_sets, (1,), device=trainer.device)) if mask_sets > 1 else 0
        return nll_loss(model, batch.images, levels, labels, mask_index)

    trainer.add_update("nll", optimizer, loss_fn, models=["model"])

    def sample_fn(trainer: Trainer) -> torch.Tensor:
        return sample_grid(trainer.eval_model("model"), config.sample_images, config.seed, trainer.device)

    def eval_fn(trainer: Trainer) -> dict[str, float]:
        result = evaluate_nll(trainer.eval_model("model"), test_data.to(trainer.device), config.eval_images)
        return {"test_nll_nats": result["nll_nats"], "test_bits_per_dim": result["bits_per_dim"]}

    results = trainer.fit(train_data, sample_fn=sample_fn, eval_fn=eval_fn)
    if trainer.accelerator.is_main_process:
        final_model, test = trainer.eval_model("model"), test_data.to(trainer.device)
        final = {"step": trainer.step, "num_images": len(test), **evaluate_nll(final_model, test)}
        if mask_sets > 1:
            ensemble = evaluate_nll(final_model, test, ensemble=True)
            final.update({"ensemble_nll_nats": ensemble["nll_nats"], "ensemble_bits_per_dim": ensemble["bits_per_dim"]})
        write_results(trainer.run_dir, final)
        print(f"test NLL ({len(test)} images): {final['nll_nats']:.2f} nats, {final['bits_per_dim']:.4f} bits/dim")
        if mask_sets > 1:
            print(f"ensemble of {mask_sets} mask sets: {final['ensemble_nll_nats']:.2f} nats")
        results.update({f"final/{k}": v for k, v in final.items()})
    print(f"run folder: {trainer.run_dir}")
    return results


main = console_script(ARTrainConfig, train, "ar-train", PRESETS)

if __name__ == "__main__":
    main()
