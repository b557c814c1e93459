"""vqvae-train: train a VQ-VAE or VQ-VAE-2 through genlab.core's loop and measure its reconstructions.

uv run vqvae-train                                          # VQ-VAE on MNIST (8-bit), CPU-sized
uv run vqvae-train --dataset fashion_mnist --ema            # the EMA codebook update (paper, App. A.1)
uv run vqvae-train --model vqvae2 --dataset twemoji         # VQ-VAE-2: top codes at 8x8, bottom at 16x16
uv run vqvae-train --preset paper                           # the paper's width, rate, batch and steps (a GPU)

At the end: reconstruction MSE and PSNR over the whole test split, each level's codebook usage and perplexity
there, and the bits/dim bound with a uniform prior, into results.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch

from genlab.core.config import option
from genlab.core.data import ImageDataset, iterate_batches, load_dataset
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, require_at_least, write_results
from genlab.core.trainer import TrainConfig, Trainer
from genlab.core.visualise import to_unit
from genlab.vqvae.model import VQVAE, VQVAEConfig
from genlab.vqvae.objective import bits_per_dim_bound, discretised_gaussian_nll, vqvae_loss
from genlab.vqvae.quantizer import code_histogram, perplexity_and_usage

PROJECT = "vqvae"
VALUE_RANGE = "signed"  # 8-bit images as k / 127.5 - 1: the decoder's mean lives in [-1, 1]

# Named sizes. "small" is the reference implementation's example (Sonnet's VQ-VAE notebook: 128 channels,
# residual blocks of 32, K = 512, D = 64); "paper" has "256 hidden units" throughout (Sec. 4.1).
SIZES: dict[str, dict[str, int]] = {
    "small": {"hidden_channels": 128, "residual_channels": 32, "residual_layers": 2, "num_codes": 512, "code_dim": 64},
    "paper": {"hidden_channels": 256, "residual_channels": 256, "residual_layers": 2, "num_codes": 512, "code_dim": 64},
}


@dataclass
class VQVAETrainConfig(TrainConfig):
    """Train a VQ-VAE (van den Oord et al. 2017) or VQ-VAE-2 (Razavi et al. 2019) on 8-bit images."""

    model: Literal["vqvae", "vqvae2"] = option("vqvae", "VQ-VAE (one level at 1/4) or VQ-VAE-2 (1/8 and 1/4)")
    size: Literal["small", "paper"] = option("small", "named size (train.SIZES)")
    steps: int = option(4_000, "optimizer steps (about 17 minutes of a 2-core CPU on MNIST)")
    lr: float = option(2e-4, "Adam's learning rate (the paper's 2e-4)")
    lr_schedule: Literal["constant", "cosine", "linear"] = option("cosine", "learning-rate shape after warm-up")
    log_every: int = option(100, "log losses, codebook usage and perplexity every N steps")
    sample_every: int = option(1_000, "write a grid of test images over their reconstructions every N steps")
    eval_every: int = option(1_000, "test reconstruction error on --eval-images images every N steps")
    checkpoint_every: int = option(1_000, "checkpoint every N steps (and always at the end and on SIGINT/SIGTERM)")
    hidden_channels: int | None = option(None, "override the size's encoder/decoder width")
    residual_channels: int | None = option(None, "override the size's width inside residual blocks")
    residual_layers: int | None = option(None, "override the size's residual blocks per stack")
    num_codes: int | None = option(None, "override the size's codebook size K")
    code_dim: int | None = option(None, "override the size's code dimension D")
    commitment_cost: float = option(0.25, "beta, the commitment loss's weight (0.25 in the paper)")
    ema: bool = option(False, "update the codebook by exponential moving averages (App. A.1), not by its loss")
    decay: float = option(0.99, "gamma of the EMA update and of the usage counts behind dead-code restarts")
    dead_code_threshold: float = option(0.0, "restart a code whose running assignment count drops below this")
    eval_images: int = option(2_000, "test images for the periodic reconstruction error")

    resumable = (*TrainConfig.resumable, "eval_images")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("eval_images",))
        require_at_least(self, ("commitment_cost", "dead_code_threshold"), at_least=0)
        for name in ("hidden_channels", "residual_channels", "residual_layers", "num_codes", "code_dim"):
            if getattr(self, name) is not None:
                require_at_least(self, (name,), at_least=2 if name == "num_codes" else 1)
        if not 0 < self.decay < 1:
            raise GenlabError(f"--decay must be in (0, 1), got {self.decay}")


# The paper's ImageNet setting (Sec. 4.1): Adam at 2e-4, batch 128, evaluated after 250,000 steps.
PRESETS = {"paper": {"size": "paper", "lr": 2e-4, "batch_size": 128, "steps": 250_000, "warmup_steps": 0,
                     "lr_schedule": "constant", "checkpoint_every": 10_000, "sample_every": 10_000,
                     "eval_every": 10_000, "log_every": 500}}  # fmt: skip


def model_config(config: VQVAETrainConfig, image_shape: tuple[int, int, int]) -> VQVAEConfig:
    size = {k: getattr(config, k) if getattr(config, k) is not None else v for k, v in SIZES[config.size].items()}
    try:
        return VQVAEConfig(
            image_shape=image_shape, levels=1 if config.model == "vqvae" else 2, ema=config.ema, decay=config.decay,
            dead_code_threshold=config.dead_code_threshold, **size,
        )  # fmt: skip
    except ValueError as error:
        hint = " (use --image-size 32 for 28x28 data)" if config.model == "vqvae2" else ""
        raise GenlabError(f"{config.model} on {config.dataset}: {error}{hint}") from None


def load_split(config: dict[str, Any] | VQVAETrainConfig, split: str, data_dir: str = "") -> ImageDataset:
    get = config.get if isinstance(config, dict) else partial(getattr, config)
    return load_dataset(get("dataset"), split, data_dir=data_dir or get("data_dir") or None,
                        value_range=VALUE_RANGE, image_size=get("image_size"))  # fmt: skip


@torch.no_grad()
def fit_sigma(model: VQVAE, data: ImageDataset, max_images: int = 10_000, batch_size: int = 200) -> float:
    """The decoder's one Gaussian scale for the bound: sigma^2 = the mean squared error on training images, the
    maximum-likelihood scale of a Gaussian around the decoder's mean (fitted on train, never on test)."""
    model.eval()
    total, count = 0.0, 0
    for batch in iterate_batches(data, batch_size):
        x = batch.images
        total += float((model(x).reconstruction - x).pow(2).double().sum())
        count += x.numel()
        if count >= max_images * data.num_dims:
            break
    return math.sqrt(total / count)


@torch.no_grad()
def evaluate_reconstructions(
    model: VQVAE, data: ImageDataset, sigma: float | None = None, max_images: int | None = None, batch_size: int = 200
) -> dict[str, Any]:
    """Over ``data`` (the first ``max_images``): reconstruction MSE in [-1, 1] and PSNR in dB of images in [0, 1],
    each level's codebook usage and perplexity, and, given ``sigma``, the bits/dim bound with a uniform prior."""
    model.eval()
    config = model.config
    histograms = [torch.zeros(config.num_codes, device=data.images.device) for _ in range(config.levels)]
    squared_error, nll, count = 0.0, 0.0, 0
    for batch in iterate_batches(data, batch_size):
        x = batch.images
        if max_images:
            x = x[: max_images - count]
        out = model(x)
        squared_error += float((out.reconstruction - x).pow(2).double().sum())
        if sigma is not None:
            nll += float(discretised_gaussian_nll(x, out.reconstruction, sigma).double().sum())
        for histogram, tokens in zip(histograms, out.tokens, strict=True):
            histogram += code_histogram(tokens, config.num_codes)
        count += len(x)
        if max_images and count >= max_images:
            break
    mse = squared_error / (count * data.num_dims)
    results: dict[str, Any] = {"num_images": count, "mse": mse, "psnr_db": 10 * math.log10(4 / mse)}  # peak 1 in [0, 1]
    names = ["codes"] if config.levels == 1 else ["top", "bottom"]
    for name, histogram in zip(names, histograms, strict=True):
        perplexity, usage = perplexity_and_usage(histogram)
        results[f"{name}/perplexity"], results[f"{name}/usage"] = float(perplexity), float(usage)
    if sigma is not None:
        num_latents = sum(h * w for h, w in config.token_shapes())
        results.update({
            "sigma": sigma, "nll_given_codes_nats": nll / count, "num_latents": num_latents,
            "bits_per_dim_bound": bits_per_dim_bound(nll / count, num_latents, config.num_codes, data.num_dims),
        })  # fmt: skip
    return results


def reconstruction_rows(model: VQVAE, images: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1] -> (2N, C, H, W) in [0, 1]: each row of ``per_row`` originals above their
    reconstructions, for a grid of ``per_row`` columns."""
    reconstructions = model(images).reconstruction.clamp(-1, 1)
    pairs = torch.stack([images.unflatten(0, (-1, per_row)), reconstructions.unflatten(0, (-1, per_row))], dim=1)
    return to_unit(pairs.flatten(0, 2), VALUE_RANGE)  # (rows, 2, per_row, C, H, W) -> (2N, C, H, W)


def train(config: VQVAETrainConfig) -> dict[str, float]:
    """Train as ``config`` says; returns the last logged values and the final test measurements."""
    train_data, test_data = load_split(config, "train"), load_split(config, "test")
    architecture = model_config(config, train_data.shape)
    trainer = Trainer(config, PROJECT, {"model": architecture})
    model = trainer.add_model("vqvae", VQVAE(architecture))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    trainer.add_update("train", optimizer, lambda b: vqvae_loss(model, b.images, config.commitment_cost), ["vqvae"])
    fixed = test_data.images[:32]

    def sample_fn(trainer: Trainer) -> torch.Tensor:
        return reconstruction_rows(trainer.eval_model("vqvae"), test_data.convert(fixed).to(trainer.device))

    def eval_fn(trainer: Trainer) -> dict[str, float]:
        measured = evaluate_reconstructions(trainer.eval_model("vqvae"), test_data.to(trainer.device),
                                            max_images=config.eval_images)  # fmt: skip
        return {f"test_{k}": v for k, v in measured.items() if k != "num_images"}

    results = trainer.fit(train_data, sample_fn=sample_fn, eval_fn=eval_fn)
    if trainer.accelerator.is_main_process:
        trained = trainer.eval_model("vqvae")
        sigma = fit_sigma(trained, train_data.to(trainer.device))
        final = {**evaluate_reconstructions(trained, test_data.to(trainer.device), sigma), "step": trainer.step}
        write_results(trainer.run_dir, final)
        usage = ", ".join(f"{k} {v:.1%}" for k, v in final.items() if k.endswith("/usage"))
        print(
            f"test ({final['num_images']} images): MSE {final['mse']:.5f}, PSNR {final['psnr_db']:.2f} dB, usage "
            f"{usage}, bound {final['bits_per_dim_bound']:.3f} bits/dim (uniform prior, sigma {sigma:.4f})"
        )
        results.update({f"final/{k}": v for k, v in final.items()})
    print(f"run folder: {trainer.run_dir}")
    return results


main = console_script(VQVAETrainConfig, train, "vqvae-train", PRESETS)

if __name__ == "__main__":
    main()
