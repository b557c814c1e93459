"""gan-train: train a GAN variant through genlab.core's loop, with one update rule per network.

uv run gan-train --variant dcgan                         # DCGAN on MNIST, CPU-sized
uv run gan-train --variant gan --generator-loss minimax  # the GAN paper's eq. 1 as written
uv run gan-train --variant wgan_gp --dataset fashion_mnist
uv run gan-train --variant sagan --class-conditional
uv run gan-train --variant cgan                          # one row per class in the sample grids
uv run gan-train --variant wgan_gp --dataset ring8       # the 2-D toy: 8 Gaussians on a ring, modes counted
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from genlab.core.config import option
from genlab.core.data import Batch, ImageDataset, load_dataset
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script
from genlab.core.trainer import TrainConfig, Trainer
from genlab.core.visualise import training_progress_gif
from genlab.gans.model import VARIANTS, Discriminator, GANConfig, Generator, build_config
from genlab.gans.objective import (
    critic_loss_hinge,
    critic_loss_wasserstein,
    discriminator_loss_gan,
    generator_loss_minimax,
    generator_loss_non_saturating,
    generator_loss_wasserstein,
    gradient_penalty,
)
from genlab.gans.toy import TOY_DATASETS, GaussianMixture, mode_coverage, scatter_image

PROJECT = "gans"


@dataclass(frozen=True)
class Recipe:
    """A paper's optimisation settings: critic steps per generator step, learning rates, optimizer."""

    n_critic: int
    lr_generator: float
    lr_discriminator: float
    betas: tuple[float, float] = (0.5, 0.999)
    optimizer: Literal["adam", "rmsprop"] = "adam"


RECIPES = {
    "gan": Recipe(1, 2e-4, 2e-4),  # the paper used SGD with momentum; Adam as in DCGAN is our departure
    "dcgan": Recipe(1, 2e-4, 2e-4),  # DCGAN Sec. 4: Adam, lr 2e-4, beta1 0.5
    "cgan": Recipe(1, 2e-4, 2e-4),
    "wgan": Recipe(5, 5e-5, 5e-5, optimizer="rmsprop"),  # WGAN Alg. 1: RMSProp, alpha 5e-5, n_critic 5
    "wgan_gp": Recipe(5, 1e-4, 1e-4, (0.0, 0.9)),  # WGAN-GP Alg. 1: Adam(1e-4, 0, 0.9), n_critic 5
    "sagan": Recipe(1, 1e-4, 4e-4, (0.0, 0.9)),  # SAGAN Sec. 5: TTUR, lr_G 1e-4, lr_D 4e-4, Adam(0, 0.9)
}

# CPU defaults: well under an hour of a 2-core CPU on 28x28 data at the "small" size, batch 64.
DEFAULT_STEPS = {"gan": 10_000, "dcgan": 3000, "cgan": 3000, "wgan": 3000, "wgan_gp": 3000, "sagan": 3000}


@dataclass
class GANTrainConfig(TrainConfig):
    """Train GAN, DCGAN, WGAN, WGAN-GP, SAGAN or a conditional GAN on images in [-1, 1]."""

    variant: Literal["gan", "dcgan", "wgan", "wgan_gp", "sagan", "cgan"] = option("dcgan", "which GAN")
    size: Literal["small", "paper"] = option("small", "named size from the registry (model.SIZES)")
    steps: int | None = option(None, "generator steps in all, also when resuming (default: the variant's)")
    batch_size: int = option(64, "global batch per micro-step, summed over processes")
    lr: float = option(1e-3, "unused: each network has its own rate, --lr-generator and --lr-discriminator")
    generator_loss: Literal["non_saturating", "minimax"] = option(
        "non_saturating", "gan/dcgan/cgan: -log D(G(z)) (non-saturating) or log(1 - D(G(z))) (minimax, eq. 1)"
    )
    n_critic: int | None = option(None, "discriminator steps per generator step (default: the paper's)")
    lr_generator: float | None = option(None, "generator learning rate (default: the paper's)")
    lr_discriminator: float | None = option(None, "discriminator learning rate (default: the paper's)")
    clip_value: float = option(0.01, "wgan: clip every critic weight to [-c, c] after each critic step")
    gp_weight: float | None = option(None, "wgan_gp: the penalty weight lambda (default: 10, or 0.1 on toy data)")
    class_conditional: bool = option(False, "condition both nets on the class (always on for cgan)")
    latent_dim: int | None = option(None, "override the size's latent dimension")
    width: int | None = option(None, "override the size's channel width")
    hidden: tuple[int, ...] | None = option(None, "override the size's MLP hidden layers (gan, and the toy data)")
    toy_samples: int = option(2000, "toy data: samples drawn for the mode count and the picture")
    toy_std: float | None = option(None, "toy data: each Gaussian's std (default: ring8 0.02, grid25 0.05)")
    sample_every: int = option(500, "write a sample grid every N steps (0: only at the end)")
    sample_images: int = option(64, "images in each sample grid")

    resumable = (*TrainConfig.resumable, "sample_images", "toy_samples")

    def validate(self) -> None:
        if self.steps is None:
            self.steps = DEFAULT_STEPS[self.variant]
        super().validate()
        if self.lr != 1e-3:
            raise GenlabError("gan-train has no single --lr: use --lr-generator and --lr-discriminator")
        if self.variant == "cgan":
            self.class_conditional = True
        if self.class_conditional and self.variant in ("gan", "wgan", "wgan_gp"):
            raise GenlabError(f"--class-conditional is for dcgan, sagan and cgan, not {self.variant}")
        if self.dataset in TOY_DATASETS and (self.variant not in ("gan", "wgan", "wgan_gp") or self.class_conditional):
            raise GenlabError(f"the toy data {self.dataset} is for gan, wgan and wgan_gp, unconditional")
        if self.hidden is not None and (not self.hidden or min(self.hidden) <= 0):
            raise GenlabError("--hidden must be positive numbers")
        if self.generator_loss == "minimax" and self.variant not in ("gan", "dcgan", "cgan"):
            raise GenlabError(f"--generator-loss minimax belongs to the GAN loss; {self.variant} has its own")
        for name in ("n_critic", "lr_generator", "lr_discriminator", "latent_dim", "width"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise GenlabError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.gp_weight is None:  # the paper's 10; its authors' toy code (gan_toy.py) uses 0.1 on 2-D points
            self.gp_weight = 0.1 if self.dataset in TOY_DATASETS else 10.0
        if not self.clip_value > 0 or self.gp_weight < 0 or self.sample_images <= 0 or self.toy_samples <= 0:
            raise GenlabError("--clip-value, --sample-images and --toy-samples must be positive, --gp-weight >= 0")
        if self.toy_std is not None and not self.toy_std > 0:
            raise GenlabError(f"--toy-std must be positive, got {self.toy_std}")

    def recipe(self) -> Recipe:
        base = RECIPES[self.variant]
        return Recipe(
            self.n_critic or base.n_critic,
            self.lr_generator or base.lr_generator,
            self.lr_discriminator or base.lr_discriminator,
            base.betas,
            base.optimizer,
        )


def model_config(config: GANTrainConfig, data: ImageDataset) -> GANConfig:
    if config.variant not in VARIANTS:
        raise GenlabError(f"unknown variant {config.variant!r}; known: {', '.join(VARIANTS)}")
    if config.class_conditional and data.labels is None:
        raise GenlabError(f"{config.dataset} has no labels to condition on")
    classes = data.num_classes if config.class_conditional else 0
    return build_config(config.variant, config.size, data.shape, latent_dim=config.latent_dim, width=config.width,
                        hidden=config.hidden, num_classes=classes)  # fmt: skip


def make_optimizer(recipe: Recipe, parameters, lr: float) -> torch.optim.Optimizer:
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr)
    return torch.optim.Adam(parameters, lr=lr, betas=recipe.betas)


def sample_grid(generator: Generator, count: int, seed: int) -> torch.Tensor:
    """A fixed z (and labels 0, 1, ... along each row for a conditional model) -> images in [0, 1]."""
    rng = torch.Generator().manual_seed(seed)
    device = next(generator.parameters()).device
    classes = generator.config.num_classes
    labels = torch.arange(count, device=device) % classes if classes else None
    return (generator.sample(count, labels, rng) + 1) / 2


def toy_dataset(mixture: GaussianMixture, name: str, count: int = 100_000, seed: int = 0) -> ImageDataset:
    """``count`` points of the mixture as a data set for genlab.core's loop: (N, 2, 1, 1) float, value range "float"."""
    points = mixture.sample(count, torch.Generator().manual_seed(seed))
    return ImageDataset(name, "train", points.view(count, 2, 1, 1), None, None, None, "float")


def toy_points(generator: Generator, count: int, seed: int) -> torch.Tensor:
    """``count`` generated 2-D points (count, 2) from a fixed z."""
    return generator.sample(count, None, torch.Generator().manual_seed(seed)).view(count, 2)


def train(config: GANTrainConfig) -> dict[str, float]:
    """Train as ``config`` says; returns the last logged values."""
    mixture = GaussianMixture.named(config.dataset, config.toy_std) if config.dataset in TOY_DATASETS else None
    if mixture is not None:
        data = toy_dataset(mixture, config.dataset, seed=config.seed)
    else:
        data = load_dataset(config.dataset, "train", data_dir=config.data_dir or None, value_range="signed",
                            image_size=config.image_size)  # fmt: skip
    network_config = model_config(config, data)
    recipe = config.recipe()
    trainer = Trainer(config, PROJECT, {"model": network_config, "recipe": recipe})  # seeds torch
    generator = trainer.add_model("generator", Generator(network_config))
    discriminator = trainer.add_model("discriminator", Discriminator(network_config), ema=False)
    variant, conditional = config.variant, network_config.num_classes > 0

    def fakes(batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """G(z) for a fresh z, with the batch's labels (so a penalty's interpolates share one label)."""
        labels = batch.labels if conditional else None
        z = torch.randn(len(batch.images), network_config.latent_dim, device=batch.images.device)
        return generator(z, labels), labels

    def discriminator_loss(batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            fake, labels = fakes(batch)
        real_out, fake_out = discriminator(batch.images, labels), discriminator(fake, labels)
        terms = {"real": real_out.mean().detach(), "fake": fake_out.mean().detach()}
        if variant in ("wgan", "wgan_gp"):
            loss = critic_loss_wasserstein(real_out, fake_out)
            terms["wasserstein_estimate"] = -loss.detach()  # E[f(x)] - E[f(G(z))]
            if variant == "wgan_gp":
                penalty = gradient_penalty(lambda x: discriminator(x, labels), batch.images, fake)
                loss = loss + config.gp_weight * penalty
                terms["gradient_penalty"] = penalty.detach()
        elif variant == "sagan":
            loss = critic_loss_hinge(real_out, fake_out)
        else:
            loss = discriminator_loss_gan(real_out, fake_out)
        return loss, terms

    def generator_loss(batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fake, labels = fakes(batch)
        fake_out = discriminator(fake, labels)
        if variant in ("wgan", "wgan_gp", "sagan"):
            return generator_loss_wasserstein(fake_out), {}
        if config.generator_loss == "minimax":
            return generator_loss_minimax(fake_out), {}
        return generator_loss_non_saturating(fake_out), {}

    def clip_critic() -> None:
        with torch.no_grad():
            for parameter in discriminator.parameters():
                parameter.clamp_(-config.clip_value, config.clip_value)

    d_optimizer = make_optimizer(recipe, discriminator.parameters(), recipe.lr_discriminator)
    g_optimizer = make_optimizer(recipe, generator.parameters(), recipe.lr_generator)
    trainer.add_update("discriminator", d_optimizer, discriminator_loss, ["discriminator"], repeats=recipe.n_critic,
                       after_step=clip_critic if variant == "wgan" else None)  # fmt: skip
    trainer.add_update("generator", g_optimizer, generator_loss, ["generator"])

    def sample_fn(trainer: Trainer) -> torch.Tensor:
        if network_config.points:
            return scatter_image(toy_points(trainer.eval_model("generator"), config.toy_samples, config.seed))
        return sample_grid(trainer.eval_model("generator"), config.sample_images, config.seed)

    def eval_fn(trainer: Trainer) -> dict[str, float]:
        points = toy_points(trainer.eval_model("generator"), config.toy_samples, config.seed)
        coverage = mode_coverage(points, mixture)
        return {"modes_covered": coverage.modes_covered, "high_quality": coverage.high_quality}

    results = trainer.fit(data, sample_fn=sample_fn, eval_fn=eval_fn if network_config.points else None)
    if trainer.accelerator.is_main_process and (gif := training_progress_gif(trainer.run_dir)) is not None:
        print(f"training progress: {gif}")
    print(f"run folder: {trainer.run_dir}")
    return results


main = console_script(GANTrainConfig, train, "gan-train")

if __name__ == "__main__":
    main()
