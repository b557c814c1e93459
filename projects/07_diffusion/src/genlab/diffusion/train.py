"""diffusion-train: train a DDPM U-Net (or the noise-conditional classifier of classifier guidance) on images.

uv run diffusion-train                                        # DDPM on MNIST, CPU-sized (about 20 minutes)
uv run diffusion-train --class-conditional                    # labels in, 10% dropped: classifier-free guidance
uv run diffusion-train --model classifier                     # p(y | x_t, t) for classifier guidance
uv run diffusion-train --schedule cosine --learned-variance   # Improved DDPM: cosine schedule, hybrid loss
uv run diffusion-train --weighting sigmoid                    # Kingma & Gao's weighted loss
uv run diffusion-train --preset paper --dataset cifar10       # DDPM's CIFAR-10 setting (a GPU)
uv run diffusion-train --first-stage runs/vae/<run> --size ldm-small --dataset fashion_mnist
                                                              # latent diffusion on 01's or 05's autoencoder

At the end a U-Net run writes results.json with its test loss at fixed timesteps, and a grid of DDIM samples; the
sample-quality and likelihood numbers come from diffusion-sample (samples.npz for genlab-eval, --likelihood).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from genlab.core.checkpoint import read_run_info, resolve_device
from genlab.core.config import option
from genlab.core.data import ImageDataset, iterate_batches, load_dataset, with_mirror_images
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, require_at_least, write_results
from genlab.core.trainer import TrainConfig, Trainer
from genlab.core.visualise import to_unit
from genlab.diffusion.first_stage import latent_splits
from genlab.diffusion.latent import draw_latents
from genlab.diffusion.model import SIZES, ClassifierConfig, NoisyClassifier, UNet, unet_config
from genlab.diffusion.objective import diffusion_loss, drop_labels
from genlab.diffusion.prediction import Denoiser
from genlab.diffusion.samplers import DDIMSampler
from genlab.diffusion.schedules import NoiseSchedule, make_schedule

PROJECT = "diffusion"
VALUE_RANGE = "signed"  # 8-bit images as k / 127.5 - 1, DDPM's scaling to [-1, 1]
EVAL_TIMESTEPS = (10, 100, 250, 500, 750, 990)  # fixed timesteps at which the test loss is reported


@dataclass
class DiffusionConfig(TrainConfig):
    """What every diffusion network trains with, whatever the network: 07's U-Net here, 09's DiT."""

    first_stage: str = option(
        "",
        "latent diffusion: an autoencoder run of vae-train (with --latent-channels) or vqvae-train, frozen; "
        "the model diffuses its latents, scaled to unit variance",
    )
    schedule: Literal["linear", "cosine", "sigmoid"] = option("linear", "noise schedule (schedules.py)")
    timesteps: int = option(1000, "T, the number of diffusion steps")
    prediction: Literal["eps", "x0", "v"] = option("eps", "what the network predicts")
    weighting: Literal["simple", "elbo", "sigmoid"] = option("simple", "loss weighting over log-SNR (objective.py)")
    sigmoid_bias: float = option(2.0, "b of the sigmoid weighting w(lambda) = sigmoid(b - lambda)")
    learned_variance: bool = option(False, "also learn the reverse variance (Improved DDPM's hybrid loss)")
    hflip: bool = option(False, "also train on every training image mirrored left to right (horizontal flips)")
    vlb_weight: float = option(0.001, "lambda of the hybrid loss L_simple + lambda L_vlb")
    class_conditional: bool = option(
        True,
        "condition on the class label, dropped 10% of the time: one network is "
        "then both the conditional and the unconditional model (classifier-free "
        "guidance); false: DDPM's unconditional model",
    )
    label_dropout: float = option(0.1, "p_uncond: probability a label is replaced by the null label in training")
    steps: int = option(1_400, "optimizer steps (about 20 minutes of a 2-core CPU at the defaults)")
    batch_size: int = option(64, "global batch (DDPM: 128)")
    lr: float = option(1e-3, "Adam's learning rate (DDPM: 2e-4, for a 30x larger network and 800k steps)")
    warmup_steps: int = option(100, "linear warm-up (DDPM: 5000)")
    grad_clip: float = option(1.0, "clip the gradient norm (DDPM: 1)")
    ema_decay: float = option(
        0.995, "EMA decay of the weights sampled from (DDPM: 0.9999; a 1,400-step run needs a shorter memory)"
    )
    ema_warmup: bool = option(True, "ramp the EMA decay up from 0 (min(decay, (1 + step) / (10 + step)))")
    sample_every: int = option(500, "write a grid of DDIM samples every N steps")
    eval_every: int = option(500, "test loss at fixed timesteps every N steps")
    sample_steps: int = option(50, "DDIM steps of the grids written during training")
    eval_images: int = option(500, "test images for the periodic loss")

    resumable = (*TrainConfig.resumable, "sample_steps", "eval_images")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("timesteps", "sample_steps", "eval_images"))
        require_at_least(self, ("label_dropout", "vlb_weight"), at_least=0)
        if self.label_dropout >= 1:
            raise GenlabError(f"--label-dropout must be below 1, got {self.label_dropout}")
        if self.sample_steps > self.timesteps:
            raise GenlabError(f"--sample-steps {self.sample_steps} exceeds --timesteps {self.timesteps}")


@dataclass
class DiffusionTrainConfig(DiffusionConfig):
    """Train a diffusion model (Ho et al. 2020) or a noise-conditional classifier (Dhariwal & Nichol 2021)."""

    model: Literal["unet", "classifier"] = option("unet", "the denoising U-Net, or a classifier of x_t for guidance")
    size: str = option("mnist-small", f"named U-Net size ({', '.join(SIZES)})")
    base_channels: int | None = option(None, "override the size's base width")
    channel_multipliers: tuple[int, ...] = option((), "override the size's width multipliers, one level each")
    attention_resolutions: tuple[int, ...] = option(
        (), "override the sides with self-attention (latent runs: default the U-Net's lowest side)"
    )
    dropout: float | None = option(None, "override the size's dropout")

    def validate(self) -> None:
        super().validate()
        if self.model == "unet" and self.size not in SIZES:
            raise GenlabError(f"unknown --size {self.size!r}; known: {', '.join(SIZES)}")
        if self.model == "classifier" and self.learned_variance:
            raise GenlabError("--model classifier takes no --learned-variance")
        if self.model == "classifier" and self.first_stage:
            raise GenlabError("--model classifier is trained on pixels; --first-stage is for the U-Net")
        if any(m < 1 for m in self.channel_multipliers) or any(r < 1 for r in self.attention_resolutions):
            raise GenlabError("--channel-multipliers and --attention-resolutions must be positive")


# DDPM's CIFAR-10 setting (Sec. 4 and App. B): batch 128, Adam 2e-4 with 5000 warm-up steps, EMA 0.9999, gradient
# clipping at 1, dropout 0.1, 800k steps, the 35.7M-parameter U-Net.
PRESETS = {"paper": {"size": "cifar-ddpm", "class_conditional": False, "batch_size": 128, "lr": 2e-4,
                     "warmup_steps": 5_000, "ema_decay": 0.9999, "ema_warmup": False, "grad_clip": 1.0,
                     "steps": 800_000, "checkpoint_every": 10_000, "sample_every": 10_000, "eval_every": 10_000,
                     "log_every": 500}}  # fmt: skip


def load_split(config: dict[str, Any] | DiffusionConfig, split: str, data_dir: str = "") -> ImageDataset:
    get = config.get if isinstance(config, dict) else config.__getattribute__
    return load_dataset(get("dataset"), split, data_dir=data_dir or get("data_dir") or None,
                        value_range=VALUE_RANGE, image_size=get("image_size"))  # fmt: skip


def schedule_of(config: dict[str, Any] | DiffusionConfig) -> NoiseSchedule:
    """The run's noise schedule, rebuilt from its config (it has no weights: name and T say everything)."""
    get = config.get if isinstance(config, dict) else config.__getattribute__
    return make_schedule(get("schedule"), get("timesteps"))


def build_network(config: DiffusionTrainConfig, data: ImageDataset, shape: tuple[int, int, int] | None = None
                  ) -> tuple[torch.nn.Module, dict[str, Any], str]:  # fmt: skip
    """The U-Net (or classifier) for samples of ``shape`` (C, H, W): the data's, or a first stage's latent shape;
    with what config.json records of it and its name in the checkpoint."""
    C, H, W = shape or data.shape
    what = "latents" if shape else "images"
    if H != W:
        raise GenlabError(f"the U-Net takes square {what}, {config.dataset}'s are {H}x{W}")
    conditional = config.class_conditional or config.model == "classifier"  # a classifier always needs labels
    if conditional and data.labels is None:
        raise GenlabError(f"{config.dataset} has no labels to condition on")
    overrides = {k: getattr(config, k) for k in ("base_channels", "dropout") if getattr(config, k) is not None}
    overrides.update({k: getattr(config, k) for k in ("channel_multipliers", "attention_resolutions")
                      if getattr(config, k)})  # fmt: skip
    if config.first_stage:  # a latent grid's side is whatever the autoencoder made it: fit the levels to it
        multipliers = config.channel_multipliers or SIZES.get(config.size, {}).get("channel_multipliers", (1,))
        while not config.channel_multipliers and len(multipliers) > 1 and H % 2 ** (len(multipliers) - 1):
            multipliers = multipliers[:-1]  # e.g. a 7x7 grid cannot be halved: one level
        overrides["channel_multipliers"] = multipliers
        if not config.attention_resolutions:  # attend where the grid is smallest
            overrides["attention_resolutions"] = (H // 2 ** (len(multipliers) - 1),)
    try:
        if config.model == "classifier":
            architecture = ClassifierConfig(image_channels=C, image_size=H, num_classes=data.num_classes,
                                            **overrides)  # fmt: skip
            return NoisyClassifier(architecture), {"classifier": architecture}, "classifier"
        architecture = unet_config(
            config.size, image_channels=C, image_size=H, learned_variance=config.learned_variance,
            num_classes=data.num_classes if config.class_conditional else 0, **overrides,
        )  # fmt: skip
    except ValueError as error:
        raise GenlabError(f"--size {config.size} on {config.dataset}'s {C}x{H}x{W} {what}: {error}") from None
    return UNet(architecture), {"model": architecture}, "unet"


@torch.no_grad()
def mean_at_eval_timesteps(data: ImageDataset, max_images: int, num_timesteps: int,
                           measure: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], float]
                           ) -> dict[int, float]:  # fmt: skip
    """``measure(x0, labels, t)`` (a sum over the batch) averaged over the first ``max_images`` images of ``data`` at
    each of EVAL_TIMESTEPS, with the same noise at every call (torch's global generator is restored afterwards)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    totals = dict.fromkeys(EVAL_TIMESTEPS, 0.0)
    count = 0
    for batch in iterate_batches(data, 250):
        x0 = batch.images[: max_images - count]
        labels = None if batch.labels is None else batch.labels[: len(x0)]
        for step in EVAL_TIMESTEPS:
            t = torch.full((len(x0),), min(step, num_timesteps - 1), device=x0.device)
            totals[step] += measure(x0, labels, t)
        count += len(x0)
        if count >= max_images:
            break
    torch.random.set_rng_state(generator_state)
    return {step: total / count for step, total in totals.items()}


def test_losses(network: torch.nn.Module, schedule: NoiseSchedule, config: DiffusionConfig,
                data: ImageDataset) -> dict[str, float]:  # fmt: skip
    """L_simple's mean squared error (of the run's prediction target) on the first ``eval_images`` test images at
    each of EVAL_TIMESTEPS, whatever the training weighting, with the same noise at every call."""
    network.eval()

    def mse(x0: torch.Tensor, labels: torch.Tensor | None, t: torch.Tensor) -> float:
        _, logged = diffusion_loss(network, schedule, x0, labels if config.class_conditional else None,
                                   config.prediction, "simple", config.learned_variance, t=t)  # fmt: skip
        return float(logged["mse"]) * len(x0)

    means = mean_at_eval_timesteps(data, config.eval_images, config.timesteps, mse)
    return {f"mse_t{step}": value for step, value in means.items()}


def grid_labels(count: int, num_classes: int, device: torch.device) -> torch.Tensor | None:
    """Labels 0, 1, ... along each row of a grid (None for an unconditional model)."""
    return torch.arange(count, device=device) % num_classes if num_classes else None


# (config, training data, latent shape or None) -> (network, what config.json records of it, its checkpoint name)
NetworkBuilder = Callable[[Any, ImageDataset, "tuple[int, int, int] | None"], tuple[torch.nn.Module, dict, str]]


def train(config: DiffusionConfig, build: NetworkBuilder = build_network, project: str = PROJECT) -> dict[str, float]:
    """Train as ``config`` says; returns the last logged values and the final test measurements. ``build`` makes the
    network (07's U-Net or classifier by default; 09 passes its DiT) and ``project`` names the runs."""
    train_data, test_data = load_split(config, "train"), load_split(config, "test")
    if config.hflip:  # before any first stage: DiT encodes flipped images
        train_data = with_mirror_images(train_data)
    schedule = schedule_of(config)
    first_stage, latent_shape = None, None
    if config.first_stage:
        saved = read_run_info(Path(config.resume)).get("first_stage") if config.resume else None
        device = resolve_device(config.device)
        train_data, test_data, record, first_stage = latent_splits(config.first_stage, train_data, test_data,
                                                                   device, saved)  # fmt: skip
        latent_shape = tuple(record["latent_shape"])
        print(
            f"first stage {record['kind']} {config.first_stage}: latents {latent_shape}, scale factor "
            f"{record['scale_factor']:.4f}"
        )
    network, extra, name = build(config, train_data, latent_shape)
    if first_stage is not None:
        extra["first_stage"] = record
    trainer = Trainer(config, project, extra)
    network = trainer.add_model(name, network)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)

    if name == "classifier":

        def classifier_loss(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            t = torch.randint(0, config.timesteps, (len(batch.images),), device=batch.images.device)
            x_t = schedule.q_sample(batch.images, t, torch.randn_like(batch.images))
            logits = network(x_t, t.float())
            loss = F.cross_entropy(logits, batch.labels)
            return loss, {"accuracy": (logits.argmax(1) == batch.labels).float().mean().detach()}

        trainer.add_update("train", optimizer, classifier_loss, [name])

        def classifier_eval(trainer: Trainer) -> dict[str, float]:
            return classifier_accuracy(trainer.eval_model(name), schedule, test_data.to(trainer.device))

        results = trainer.fit(train_data, eval_fn=classifier_eval)
        if trainer.accelerator.is_main_process:
            final = {**classifier_accuracy(trainer.eval_model(name), schedule, test_data.to(trainer.device)),
                     "step": trainer.step}  # fmt: skip
            write_results(trainer.run_dir, final)
            print("test accuracy by timestep: " + ", ".join(f"{k} {v:.3f}" for k, v in final.items() if k != "step"))
            results.update({f"final/{k}": v for k, v in final.items()})
        print(f"run folder: {trainer.run_dir}")
        return results

    null_label = train_data.num_classes if config.class_conditional else 0

    def loss_fn(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = drop_labels(batch.labels, config.label_dropout, null_label) if config.class_conditional else None
        x0 = batch.images if latent_shape is None else draw_latents(batch.images, latent_shape[0])  # z ~ q(z | x)
        return diffusion_loss(network, schedule, x0, labels, config.prediction, config.weighting,
                              config.learned_variance, config.vlb_weight, config.sigmoid_bias)  # fmt: skip

    trainer.add_update("train", optimizer, loss_fn, [name])
    classes = train_data.num_classes if config.class_conditional else 0
    fixed_noise = torch.randn((64, *(latent_shape or train_data.shape)), generator=torch.Generator().manual_seed(0))

    def sample_fn(trainer: Trainer) -> torch.Tensor:
        model = trainer.eval_model(name)
        # x0 is clipped to the data's [-1, 1]; latents have no such bound
        denoiser = Denoiser(model, schedule, config.prediction, config.learned_variance, clip_x0=latent_shape is None)
        x_T = fixed_noise.to(trainer.device)
        samples = DDIMSampler(schedule, config.sample_steps).sample(denoiser, x_T, grid_labels(64, classes, x_T.device))
        if first_stage is not None:
            samples = first_stage.decode(samples / record["scale_factor"])  # D(z_0 / s)
        return to_unit(samples.clamp(-1, 1), VALUE_RANGE)

    def eval_fn(trainer: Trainer) -> dict[str, float]:
        losses = test_losses(trainer.eval_model(name), schedule, config, test_data.to(trainer.device))
        return {f"test_{k}": v for k, v in losses.items()}

    results = trainer.fit(train_data, sample_fn=sample_fn, eval_fn=eval_fn)
    if trainer.accelerator.is_main_process:
        final = {**test_losses(trainer.eval_model(name), schedule, config, test_data.to(trainer.device)),
                 "step": trainer.step, "parameters": sum(p.numel() for p in network.parameters())}  # fmt: skip
        write_results(trainer.run_dir, final)
        print("test MSE by timestep: " + ", ".join(f"t={k[5:]} {v:.4f}" for k, v in final.items() if k[:5] == "mse_t"))
        results.update({f"final/{k}": v for k, v in final.items()})
    print(f"run folder: {trainer.run_dir}")
    return results


def classifier_accuracy(classifier: torch.nn.Module, schedule: NoiseSchedule, data: ImageDataset,
                        max_images: int = 2_000) -> dict[str, float]:  # fmt: skip
    """Test accuracy of p(y | x_t, t) at fixed timesteps (noisier x_t: closer to chance)."""
    classifier.eval()

    def hits(x0: torch.Tensor, labels: torch.Tensor | None, t: torch.Tensor) -> float:
        logits = classifier(schedule.q_sample(x0, t, torch.randn_like(x0)), t.float())
        return float((logits.argmax(1) == labels).sum())

    means = mean_at_eval_timesteps(data, max_images, schedule.num_timesteps, hits)
    return {f"accuracy_t{step}": value for step, value in means.items()}


main = console_script(DiffusionTrainConfig, train, "diffusion-train", PRESETS)

if __name__ == "__main__":
    main()
