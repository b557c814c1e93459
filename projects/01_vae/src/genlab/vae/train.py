"""vae-train: train a VAE through genlab.core's loop and estimate its test log-likelihood.

uv run vae-train                                   # MLP VAE on dynamically binarised MNIST, CPU-sized
uv run vae-train --preset paper                    # the IWAE paper's VAE: 200-200 tanh, 50-d latent
uv run vae-train --dataset twemoji --architecture conv --hidden-dims 64 128 256 --latent-dim 128
uv run vae-train --dataset fashion_mnist --architecture conv --hidden-dims 64 128 --latent-channels 4 --beta 0.01
                                                   # a first stage for latent diffusion: z of 4 x 7 x 7
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from genlab.core.bench import BenchmarkSpec
from genlab.core.config import option
from genlab.core.data import ImageDataset, iterate_batches, load_dataset
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, write_results
from genlab.core.metrics import bits_per_dim, discrete_nll_bound, importance_weighted_log_likelihood
from genlab.core.trainer import TrainConfig, Trainer
from genlab.vae.model import VAE, VAEConfig
from genlab.vae.objective import likelihood_mean, log_importance_weights, vae_loss

PROJECT = "vae"
BINARY_DATASETS = ("mnist", "synthetic")


@dataclass
class VAETrainConfig(TrainConfig):
    """Train a VAE (Kingma & Welling 2013); ELBO, beta-VAE or IWAE objective."""

    steps: int = option(120_000, "optimizer steps to train for (the total, also when resuming)")
    lr_schedule: Literal["constant", "cosine", "linear"] = option("cosine", "learning-rate shape after warm-up")
    log_every: int = option(500, "log losses every N steps")
    sample_every: int = option(10_000, "write a sample grid every N steps (0: only at the end)")
    eval_every: int = option(10_000, "estimate the test NLL every N steps (0: only at the end)")
    checkpoint_every: int = option(10_000, "checkpoint every N steps (and always at the end and on SIGINT/SIGTERM)")
    architecture: Literal["mlp", "conv"] = option("mlp", "the paper's MLP, or a convolutional network")
    latent_dim: int = option(50, "dimension of z (with --latent-channels: ignored, c * h * w)")
    latent_channels: int = option(
        0,
        "conv only: z is this many maps of the smallest feature map's side, a spatial latent as latent diffusion "
        "diffuses in (0: a vector)",
    )
    hidden_dims: tuple[int, ...] = option((512, 512), "MLP hidden widths, or conv channels per stride-2 layer")
    activation: Literal["tanh", "relu", "elu", "silu"] = option("tanh", "hidden nonlinearity")
    likelihood: Literal["auto", "bernoulli", "logistic", "gaussian"] = option(
        "auto", "p(x|z): auto = Bernoulli on binarised MNIST, discretised logistic on 8-bit data"
    )
    beta: float = option(1.0, "weight of the KL term (beta-VAE; 1 is the ELBO)")
    iwae_samples: int = option(1, "K of the IWAE bound (1: the ELBO)")
    adam_eps: float = option(1e-8, "Adam's epsilon")
    iwae_lr_schedule: bool = option(False, "the IWAE paper's LR: 10^(-i/7) times the peak for 3^i epochs, i=0..7")
    eval_images: int = option(1000, "test images for the periodic importance-weighted NLL estimate")
    eval_samples: int = option(100, "K of the periodic NLL estimate")
    test_samples: int = option(1000, "K of the final NLL estimate on the whole test set (0: skip)")

    resumable = (*TrainConfig.resumable, "eval_images", "eval_samples", "test_samples")

    def validate(self) -> None:
        super().validate()
        if self.latent_dim <= 0 or not self.hidden_dims or min(self.hidden_dims) <= 0:
            raise GenlabError("--latent-dim and every --hidden-dims value must be positive")
        if self.iwae_samples < 1 or self.eval_samples < 1 or self.test_samples < 0 or self.eval_images < 1:
            raise GenlabError("--iwae-samples, --eval-samples, --eval-images must be >= 1, --test-samples >= 0")
        if self.latent_channels < 0:
            raise GenlabError(f"--latent-channels must be >= 0, got {self.latent_channels}")
        if self.latent_channels and self.architecture != "conv":
            raise GenlabError("--latent-channels (a spatial latent) needs --architecture conv")
        if self.beta < 0:
            raise GenlabError(f"--beta must be >= 0, got {self.beta}")
        if self.iwae_samples > 1 and self.beta != 1.0:
            raise GenlabError("--beta applies to the ELBO; the IWAE bound (--iwae-samples > 1) has none")


# The IWAE paper's setting for its one-stochastic-layer VAE on MNIST (Burda et al. 2016, Sec. 5 and App. C):
# 784-200-200-50 tanh, batch 20, Adam (eps 1e-4), 3^i epochs at LR 1e-3 * 10^(-i/7) for i = 0..7 (3,280 epochs
# in all), NLL estimated with K = 5000. It reports 86.76 nats for this model trained with the ELBO.
PRESETS = {
    "paper": {
        "dataset": "mnist",
        "architecture": "mlp",
        "hidden_dims": (200, 200),
        "activation": "tanh",
        "latent_dim": 50,
        "batch_size": 20,
        "lr": 1e-3,
        "adam_eps": 1e-4,
        "iwae_lr_schedule": True,
        "lr_schedule": "constant",
        "steps": 3280 * 3000,
        "checkpoint_every": 30_000,
        "sample_every": 30_000,
        "eval_every": 30_000,
        "log_every": 3000,
        "test_samples": 5000,
    },
}


def resolved_likelihood(config: VAETrainConfig) -> str:
    if config.likelihood != "auto":
        return config.likelihood
    return "bernoulli" if config.dataset in BINARY_DATASETS else "logistic"


def value_range_for(likelihood: str) -> str:
    return "binary" if likelihood == "bernoulli" else "uint8"


def iwae_lr_lambda(steps_per_epoch: int):
    """The IWAE paper's schedule: stage i (i = 0..7) lasts 3^i epochs at 10^(-i/7) times the peak LR."""

    def multiplier(step: int) -> float:
        epoch = step // steps_per_epoch
        stage, start = 0, 0
        while stage < 7 and epoch >= start + 3**stage:
            start += 3**stage
            stage += 1
        return 10 ** (-stage / 7)

    return multiplier


def decoder_values_per_image(config: VAEConfig) -> int:
    """The size of the largest tensor the decoder makes for one z, counted in image values: the image itself, or
    a hidden layer, which in the conv decoder is up to max(hidden_dims) maps at the image's full size."""
    channels, height, width = config.image_shape
    widest_hidden = max(config.hidden_dims) * (height * width if config.architecture == "conv" else 1)
    return max(widest_hidden, channels * height * width)


@torch.no_grad()
def estimate_test_nll(
    model: VAE,
    data: ImageDataset,
    num_samples: int,
    max_images: int | None = None,
    batch_size: int = 100,
    max_values: int = 50_000_000,
) -> dict[str, float]:
    """Importance-weighted estimate of the test log-likelihood in nats (and bits/dim for 8-bit data).

    For the Gaussian likelihood the estimate is of a density on dequantised data, so it goes through
    genlab.core's dequantisation bound to become a discrete log-likelihood.
    """
    model.eval()
    likelihood = model.config.likelihood
    device = next(model.parameters()).device
    # Samples per chunk so that the largest tensor of one chunk's decoding stays within max_values (50M floats:
    # 200 MB), whatever the image size and architecture (a conv decoder's hidden maps outgrow its output).
    chunk = max(1, min(num_samples, max_values // (batch_size * decoder_values_per_image(model.config))))
    total, count = 0.0, 0
    for batch in iterate_batches(data, batch_size, noise_seed=1234):
        x = batch.images.to(device)
        log_weights = partial(_log_weights, model, likelihood)
        log_px = importance_weighted_log_likelihood(log_weights, x, num_samples, chunk_size=chunk)
        total += float(log_px.double().sum())
        count += x.shape[0]
        if max_images and count >= max_images:
            break
    nll = -total / count
    if likelihood == "gaussian":
        nll = discrete_nll_bound(nll, data.num_dims, levels=256, interval_width=1.0)
    result = {"nll_nats": nll, "num_images": count, "num_samples": num_samples}
    if likelihood != "bernoulli":
        result["bits_per_dim"] = bits_per_dim(nll, data.num_dims)
    return result


def _log_weights(model: VAE, likelihood: str, x: torch.Tensor, k: int) -> torch.Tensor:
    return log_importance_weights(model, x, likelihood, k)


def build_model_config(config: VAETrainConfig, data: ImageDataset) -> VAEConfig:
    return VAEConfig(
        image_shape=data.shape,
        architecture=config.architecture,
        latent_dim=config.latent_dim,
        hidden_dims=config.hidden_dims,
        activation=config.activation,
        likelihood=resolved_likelihood(config),
        latent_channels=config.latent_channels,
    )


def train(config: VAETrainConfig) -> dict[str, float]:
    """Train as ``config`` says; returns the last logged values and the final test estimate."""
    likelihood = resolved_likelihood(config)
    load = partial(load_dataset, config.dataset, data_dir=config.data_dir or None,
                   value_range=value_range_for(likelihood), image_size=config.image_size)  # fmt: skip
    train_data, test_data = load(split="train"), load(split="test")
    model_config = build_model_config(config, train_data)

    trainer = Trainer(config, PROJECT, {"model": model_config})
    model = trainer.add_model("vae", VAE(model_config))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, eps=config.adam_eps)
    lr_lambda = iwae_lr_lambda(len(train_data) // config.batch_size) if config.iwae_lr_schedule else None
    trainer.add_update(
        "train",
        optimizer,
        lambda batch: vae_loss(model, batch.images, likelihood, config.beta, config.iwae_samples),
        models=["vae"],
        lr_lambda=lr_lambda,
    )
    fixed_latents = torch.randn(64, model_config.latent_dim, generator=torch.Generator().manual_seed(config.seed))

    def sample_fn(trainer: Trainer) -> torch.Tensor:
        vae = trainer.eval_model("vae")
        return likelihood_mean(likelihood, vae.decode(fixed_latents.to(trainer.device)))

    def eval_fn(trainer: Trainer) -> dict[str, float]:
        estimate = estimate_test_nll(
            trainer.eval_model("vae"), test_data.to(trainer.device), config.eval_samples, config.eval_images
        )
        return {f"test_nll_k{config.eval_samples}": estimate["nll_nats"]}

    results = trainer.fit(train_data, sample_fn=sample_fn, eval_fn=eval_fn)
    if config.test_samples and trainer.accelerator.is_main_process:
        final = estimate_test_nll(trainer.eval_model("vae"), test_data.to(trainer.device), config.test_samples)
        final["step"] = trainer.step
        write_results(trainer.run_dir, final)
        unit = f", {final['bits_per_dim']:.4f} bits/dim" if "bits_per_dim" in final else ""
        print(f"test NLL (K={config.test_samples}, {final['num_images']} images): {final['nll_nats']:.2f} nats{unit}")
        results.update({f"final/{k}": v for k, v in final.items()})
    print(f"run folder: {trainer.run_dir}")
    return results


def benchmark_spec() -> BenchmarkSpec:
    """What `genlab-bench vae` times: the default MLP VAE on binarised MNIST with Adam."""
    defaults = VAETrainConfig()
    model_config = VAEConfig(
        image_shape=(1, 28, 28), latent_dim=defaults.latent_dim, hidden_dims=defaults.hidden_dims,
        activation=defaults.activation, likelihood="bernoulli",
    )  # fmt: skip

    def loss(model: torch.nn.Module, images: torch.Tensor):
        return vae_loss(model, images, "bernoulli")

    return BenchmarkSpec(
        project=PROJECT,
        build_model=lambda: VAE(model_config),
        loss=loss,
        dataset="mnist",
        value_range="binary",
        batch_size=defaults.batch_size,
        lr=defaults.lr,
    )


main = console_script(VAETrainConfig, train, "vae-train", PRESETS)

if __name__ == "__main__":
    main()
