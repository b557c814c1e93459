"""vqgan-train: train VQGAN's autoencoder (Esser et al. 2021) against a patch discriminator, through genlab.core's
loop, and measure its reconstructions with 05's evaluation.

uv run vqgan-train --dataset fashion_mnist                       # f = 4 (7x7 codes), perceptual + adversarial
uv run vqgan-train --dataset fashion_mnist --no-adversarial      # the ablation: + perceptual only
uv run vqgan-train --dataset fashion_mnist --perceptual none --no-adversarial   # reconstruction only
uv run vqgan-train --dataset twemoji --size twemoji-small        # 64x64, f = 8 (8x8 codes)
uv run vqgan-train --perceptual lpips                             # LPIPS (VGG) by name, for users online

Two update rules per step: the autoencoder and codebook on L_VQ + lambda L_GAN (objective.py), then the
discriminator on the hinge loss, each on its own batch. At the end: reconstruction MSE, PSNR, codebook usage and
perplexity over the test split (05's evaluate_reconstructions) into results.json, naming the perceptual network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from genlab.core.config import option
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, require_at_least, write_results
from genlab.core.trainer import TrainConfig, Trainer
from genlab.vqgan.discriminator import PatchGAN, PatchGANConfig
from genlab.vqgan.model import VQGAN, VQGANConfig
from genlab.vqgan.objective import autoencoder_loss, discriminator_loss
from genlab.vqgan.perceptual import load_perceptual
from genlab.vqvae.quantizer import VectorQuantizer
from genlab.vqvae.train import evaluate_reconstructions, load_split, reconstruction_rows

PROJECT = "vqgan"

# Named sizes: (autoencoder overrides, discriminator layers). "paper" is the f = 16 ImageNet model of the paper's
# code (ch 128, ch_mult 1,1,2,2,4, two residual blocks, attention at 16, z 256, K 1024, D 256).
SIZES: dict[str, tuple[dict[str, Any], int]] = {
    "tiny": ({"base_channels": 16, "channel_multipliers": (1, 2, 2), "z_channels": 16, "num_codes": 64,
              "code_dim": 8, "head_channels": 32, "groups": 8}, 2),
    "fashion-small": ({"base_channels": 64, "channel_multipliers": (1, 2, 2), "z_channels": 64, "num_codes": 512,
                       "code_dim": 64, "head_channels": 64}, 2),
    "twemoji-small": ({"base_channels": 64, "channel_multipliers": (1, 1, 2, 2), "z_channels": 64,
                       "num_codes": 512, "code_dim": 64, "head_channels": 64}, 3),
    "paper": ({"base_channels": 128, "channel_multipliers": (1, 1, 2, 2, 4), "residual_blocks": 2,
               "attention_resolutions": (16,), "z_channels": 256, "num_codes": 1024, "code_dim": 256,
               "head_channels": 512}, 3),
}  # fmt: skip


@dataclass
class VQGANTrainConfig(TrainConfig):
    """Train a VQGAN autoencoder (Esser et al. 2021): L1 + perceptual + codebook + commitment + adaptive GAN loss."""

    dataset: str = option("fashion_mnist", "data set name (fashion_mnist, mnist, twemoji, cifar10, synthetic, ...)")
    size: Literal["tiny", "fashion-small", "twemoji-small", "paper"] = option("fashion-small", "named size (SIZES)")
    perceptual: Literal["efficientnet-lite0", "lpips", "none"] = option(
        "efficientnet-lite0", "perceptual network: offline EfficientNet-Lite0 (LPIPS construction), lpips (VGG, online)"
    )
    weights_dir: str = option("", "where efficientnet-lite0.pth lies (default: $GENLAB_WEIGHTS, else "
                              "~/.cache/genlab/weights; ../shared/tools/fetch-weights lays it out)")  # fmt: skip
    perceptual_weight: float = option(1.0, "w_p of the perceptual term in L_rec")
    adversarial: bool = option(True, "train against the patch discriminator (false: no discriminator at all)")
    discriminator_start: int = option(1_000, "the step at which the adversarial loss switches on (both networks)")
    adversarial_weight: float = option(0.8, "the factor on lambda L_GAN (the paper's code: disc_weight 0.8)")
    discriminator_channels: int = option(64, "the discriminator's first width (ndf)")
    commitment_cost: float = option(0.25, "beta, on the commitment term as in the paper's eq. 4")
    ema: bool = option(False, "05's EMA codebook update instead of the codebook loss")
    dead_code_threshold: float = option(0.0, "05's dead-code restarts below this running count (0: never)")
    steps: int = option(2_000, "optimizer steps")
    batch_size: int = option(32, "global batch")
    lr: float = option(2e-4, "Adam's learning rate, both networks (betas 0.5, 0.9 as the paper's code)")
    log_every: int = option(100, "log every N steps")
    sample_every: int = option(500, "write test images over their reconstructions every N steps")
    eval_every: int = option(500, "test reconstruction error on --eval-images images every N steps")
    checkpoint_every: int = option(500, "checkpoint every N steps (and always at the end and on SIGINT/SIGTERM)")
    eval_images: int = option(1_000, "test images for the periodic reconstruction error")

    resumable = (*TrainConfig.resumable, "eval_images")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("eval_images", "discriminator_channels"))
        require_at_least(self, ("perceptual_weight", "adversarial_weight", "commitment_cost", "discriminator_start",
                                "dead_code_threshold"), at_least=0)  # fmt: skip
        if self.adversarial and self.discriminator_start >= self.steps:
            raise GenlabError(f"--discriminator-start {self.discriminator_start} is not before --steps {self.steps}: "
                              "the discriminator would never train (or pass --no-adversarial)")  # fmt: skip


def weights_dir(config: VQGANTrainConfig) -> Path:
    return Path(config.weights_dir or os.environ.get("GENLAB_WEIGHTS") or Path.home() / ".cache/genlab/weights")


def perceptual_network(config: VQGANTrainConfig) -> torch.nn.Module | None:
    """The frozen perceptual distance, or None; a missing weights file or package is a one-line error."""
    if config.perceptual == "none":
        return None
    if config.perceptual == "efficientnet-lite0":
        path = weights_dir(config) / "efficientnet-lite0.pth"
        if not path.is_file():
            raise GenlabError(f"{path} not found: lay it out with ../shared/tools/fetch-weights, or --perceptual none")
    try:
        return load_perceptual(config.perceptual, weights_dir(config))
    except ImportError:
        raise GenlabError("--perceptual lpips needs the lpips package (pip install lpips) and a network") from None


def reconstruct_without_updating(model: torch.nn.Module, quantizer: VectorQuantizer,
                                 images: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The discriminator's fakes: ``model``'s reconstruction of ``images``, without a graph and with ``quantizer``
    (the model's own, also when ``model`` is DDP-wrapped) in eval mode, so that only the autoencoder's update moves
    the EMA codebook, the running usage counts and the dead-code restarts. The quantiser's mode is restored."""
    training = quantizer.training
    quantizer.eval()
    try:
        with torch.no_grad():
            return model(images).reconstruction
    finally:
        quantizer.train(training)


def train(config: VQGANTrainConfig) -> dict[str, float]:
    """Train as ``config`` says; returns the last logged values and the final test measurements."""
    train_data, test_data = load_split(config, "train"), load_split(config, "test")
    overrides, discriminator_layers = SIZES[config.size]
    try:
        architecture = VQGANConfig(image_shape=train_data.shape, ema=config.ema,
                                   dead_code_threshold=config.dead_code_threshold, **overrides)  # fmt: skip
    except ValueError as error:
        raise GenlabError(f"--size {config.size} on {config.dataset}: {error}") from None
    perceptual = perceptual_network(config)
    critic = PatchGANConfig(train_data.shape[0], config.discriminator_channels, discriminator_layers)
    trainer = Trainer(config, PROJECT, {"model": architecture, "discriminator": critic if config.adversarial else None,
                                        "perceptual": perceptual.name if perceptual is not None else None})  # fmt: skip
    model = trainer.add_model("vqgan", VQGAN(architecture))
    if perceptual is not None:
        perceptual.to(trainer.device)
    discriminator = trainer.add_model("discriminator", PatchGAN(critic), ema=False) if config.adversarial else None

    def autoencoder_step(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, terms, _ = autoencoder_loss(model, batch.images, discriminator, perceptual, trainer.step,
                                          config.discriminator_start, config.perceptual_weight,
                                          config.adversarial_weight, config.commitment_cost,
                                          trainer.unwrap("vqgan").last_layer)  # fmt: skip
        return loss, terms

    betas = (0.5, 0.9)
    parameters = [p for p in model.parameters() if p.requires_grad]
    trainer.add_update("autoencoder", torch.optim.Adam(parameters, lr=config.lr, betas=betas), autoencoder_step,
                       ["vqgan"])  # fmt: skip
    if discriminator is not None:
        quantizer = trainer.unwrap("vqgan").quantizer

        def discriminator_step(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            if trainer.step < config.discriminator_start:  # the zero of discriminator_loss; no reconstruction needed
                return discriminator_loss(discriminator, batch.images, batch.images, trainer.step,
                                          config.discriminator_start), {}  # fmt: skip
            fake = reconstruct_without_updating(model, quantizer, batch.images)
            return discriminator_loss(discriminator, batch.images, fake, trainer.step, config.discriminator_start), {}

        trainer.add_update("discriminator", torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas),
                           discriminator_step, ["discriminator"])  # fmt: skip
    fixed = test_data.images[:32]

    def sample_fn(trainer: Trainer) -> torch.Tensor:
        return reconstruction_rows(trainer.eval_model("vqgan"), test_data.convert(fixed).to(trainer.device))

    def eval_fn(trainer: Trainer) -> dict[str, float]:
        measured = evaluate_reconstructions(trainer.eval_model("vqgan"), test_data.to(trainer.device),
                                            max_images=config.eval_images)  # fmt: skip
        return {f"test_{k}": v for k, v in measured.items() if k != "num_images"}

    results = trainer.fit(train_data, sample_fn=sample_fn, eval_fn=eval_fn)
    if trainer.accelerator.is_main_process:
        final = {**evaluate_reconstructions(trainer.eval_model("vqgan"), test_data.to(trainer.device)),
                 "step": trainer.step, "perceptual": perceptual.name if perceptual is not None else None,
                 "adversarial": config.adversarial}  # fmt: skip
        write_results(trainer.run_dir, final)
        print(f"test ({final['num_images']} images): MSE {final['mse']:.5f}, PSNR {final['psnr_db']:.2f} dB, "
              f"usage {final['codes/usage']:.1%}, perplexity {final['codes/perplexity']:.1f}")  # fmt: skip
        results.update({f"final/{k}": v for k, v in final.items() if isinstance(v, int | float)})
    print(f"run folder: {trainer.run_dir}")
    return results


main = console_script(VQGANTrainConfig, train, "vqgan-train")

if __name__ == "__main__":
    main()
