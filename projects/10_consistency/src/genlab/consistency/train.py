"""fm-train: train a rectified flow (flow matching with the straight path) on 07's U-Net, or reflow / distil one
on the couplings another flow generated.

uv run fm-train                                               # 1-rectified flow on MNIST, class-conditional
uv run fm-train --time-distribution logit-normal              # Esser et al.'s time sampling
uv run fm-sample --run R --couplings 20000                    # (noise, its ODE end) pairs of the trained flow
uv run fm-train --couplings R/samples/couplings.safetensors   # the 2-rectified flow on them (reflow)
uv run fm-train --couplings <file> --distill                  # one-step distillation of the couplings

The network is 07's U-Net, called with 1000 t as its timestep; classifier-free guidance is 07's, at sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from genlab.consistency.flow import distillation_loss, sample_time, velocity_loss
from genlab.consistency.samplers import FlowSampler
from genlab.core.config import option
from genlab.core.data import ImageDataset, iterate_batches
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, require_at_least, write_results
from genlab.core.trainer import TrainConfig, Trainer
from genlab.core.visualise import to_unit
from genlab.diffusion.model import SIZES, UNet, unet_config
from genlab.diffusion.objective import drop_labels
from genlab.diffusion.train import VALUE_RANGE, load_split

PROJECT = "flow"
EVAL_TIMES = (0.1, 0.5, 0.9)  # where the test velocity loss is reported
TIME_SCALE = 1000.0  # the U-Net's timestep is 1000 t, the range its sinusoidal embedding was designed for


@dataclass
class FlowTrainConfig(TrainConfig):
    """Train a rectified flow (Liu et al. 2022): the velocity of the straight path from noise to data."""

    size: str = option("mnist-small", f"07's U-Net size ({', '.join(SIZES)})")
    class_conditional: bool = option(True, "condition on the label, dropped 10% of the time (guidance at sampling)")
    label_dropout: float = option(0.1, "probability a label is replaced by the null label in training")
    time_distribution: Literal["uniform", "logit-normal"] = option("uniform", "how t is drawn (flow.py)")
    time_location: float = option(0.0, "logit-normal: m of t = sigmoid(m + s n)")
    time_scale: float = option(1.0, "logit-normal: s of t = sigmoid(m + s n)")
    couplings: str = option("", "a couplings file of fm-sample: train on its (X_0, Z_1) pairs (reflow)")
    distill: bool = option(False, "with --couplings: fit the one-step map X_0 -> Z_1 (distillation)")
    steps: int = option(1_400, "optimizer steps (about 20 minutes of a 2-core CPU at the defaults, as 07)")
    batch_size: int = option(64, "global batch")
    lr: float = option(1e-3, "Adam's learning rate")
    warmup_steps: int = option(100, "linear warm-up")
    grad_clip: float = option(1.0, "clip the gradient norm")
    ema_decay: float = option(0.995, "EMA decay of the weights sampled from")
    ema_warmup: bool = option(True, "ramp the EMA decay up from 0")
    sample_every: int = option(500, "write a grid of Euler samples every N steps")
    eval_every: int = option(500, "test velocity loss every N steps")
    sample_steps: int = option(20, "Euler steps of the grids written during training")
    eval_images: int = option(500, "test images for the velocity loss")

    resumable = (*TrainConfig.resumable, "sample_steps", "eval_images")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("sample_steps", "eval_images"))
        require_at_least(self, ("label_dropout", "time_scale"), at_least=0)
        if self.size not in SIZES:
            raise GenlabError(f"unknown --size {self.size!r}; known: {', '.join(SIZES)}")
        if self.label_dropout >= 1:
            raise GenlabError(f"--label-dropout must be below 1, got {self.label_dropout}")
        if self.distill and not self.couplings:
            raise GenlabError("--distill fits a flow's couplings: give them with --couplings")


def velocity_of(network: torch.nn.Module) -> Any:
    """07's U-Net as a velocity field v(x_t, t, labels), t in [0, 1]."""

    def velocity(x: torch.Tensor, t: torch.Tensor, labels: Any = None) -> torch.Tensor:
        return network(x, TIME_SCALE * t, labels)

    return velocity


def load_couplings(path: str) -> dict[str, torch.Tensor]:
    """fm-sample's couplings file: x0 (N, C, H, W) noise, z1 (N, C, H, W) where the flow took it, labels (N,)."""
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as error:
        raise GenlabError(f"--couplings {path}: not a couplings file of fm-sample ({error})") from None
    if {"x0", "z1"} - set(tensors) or tensors["x0"].shape != tensors["z1"].shape:
        raise GenlabError(f"--couplings {path}: it needs x0 and z1 of one shape")
    return tensors


@torch.no_grad()
def test_velocity_losses(velocity: Any, data: ImageDataset, max_images: int, conditional: bool) -> dict[str, float]:
    """The velocity loss on the first ``max_images`` test images at each of EVAL_TIMES, the same noise each call."""
    generator = torch.Generator().manual_seed(1234)
    totals, count = dict.fromkeys(EVAL_TIMES, 0.0), 0
    for batch in iterate_batches(data, 250):
        x1 = batch.images[: max_images - count]
        labels = batch.labels[: len(x1)] if conditional and batch.labels is not None else None
        x0 = torch.randn(x1.shape, generator=generator).to(x1.device)
        for t in EVAL_TIMES:
            times = torch.full((len(x1),), t, device=x1.device)
            totals[t] += float(velocity_loss(velocity, x0, x1, times, labels)[0]) * len(x1)
        count += len(x1)
        if count >= max_images:
            break
    return {f"velocity_mse_t{t}": total / count for t, total in totals.items()}


def train(config: FlowTrainConfig) -> dict[str, float]:
    """Train as ``config`` says; returns the last logged values and the final test losses."""
    train_data, test_data = load_split(config, "train"), load_split(config, "test")
    shape = train_data.shape
    if config.couplings:
        couplings = load_couplings(config.couplings)
        shape = tuple(couplings["x0"].shape[1:])
        if shape != train_data.shape:
            raise GenlabError(f"--couplings are {shape}, {config.dataset}'s images {train_data.shape}")
        labels = couplings.get("labels") if config.class_conditional else None
        pairs = torch.cat([couplings["x0"], couplings["z1"]], dim=1)  # (N, 2C, H, W): the noise and its ODE end
        train_data = ImageDataset(train_data.name, "train", pairs, labels, None, train_data.class_names, "float")
    if config.class_conditional and train_data.labels is None:
        raise GenlabError(f"{config.dataset} (or the couplings) has no labels to condition on")
    C, H, _ = shape
    classes = test_data.num_classes if config.class_conditional else 0
    try:
        architecture = unet_config(config.size, image_channels=C, image_size=H, num_classes=classes)
    except ValueError as error:
        raise GenlabError(f"--size {config.size}: {error}") from None
    trainer = Trainer(config, PROJECT, {"model": architecture})
    network = trainer.add_model("unet", UNet(architecture))
    velocity = velocity_of(network)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)

    def loss_fn(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = drop_labels(batch.labels, config.label_dropout, classes) if classes else None
        if config.couplings:
            x0, x1 = batch.images.split(C, dim=1)
        else:
            x1 = batch.images
            x0 = torch.randn_like(x1)
        if config.distill:
            return distillation_loss(velocity, x0, x1, labels)
        t = sample_time(len(x1), config.time_distribution, config.time_location, config.time_scale,
                        device=x1.device)  # fmt: skip
        return velocity_loss(velocity, x0, x1, t, labels)

    trainer.add_update("train", optimizer, loss_fn, ["unet"])
    fixed_noise = torch.randn((64, *shape), generator=torch.Generator().manual_seed(0))

    def sample_fn(trainer: Trainer) -> torch.Tensor:
        model = velocity_of(trainer.eval_model("unet"))
        labels = torch.arange(64, device=trainer.device) % classes if classes else None
        steps = 1 if config.distill else config.sample_steps
        samples = FlowSampler(steps, "euler").sample(model, fixed_noise.to(trainer.device), labels)
        return to_unit(samples.clamp(-1, 1), VALUE_RANGE)

    def eval_fn(trainer: Trainer) -> dict[str, float]:
        losses = test_velocity_losses(velocity_of(trainer.eval_model("unet")), test_data.to(trainer.device),
                                      config.eval_images, bool(classes))  # fmt: skip
        return {f"test_{k}": v for k, v in losses.items()}

    results = trainer.fit(train_data, sample_fn=sample_fn, eval_fn=eval_fn)
    if trainer.accelerator.is_main_process:
        final = {**test_velocity_losses(velocity_of(trainer.eval_model("unet")), test_data.to(trainer.device),
                                        config.eval_images, bool(classes)),
                 "step": trainer.step, "parameters": sum(p.numel() for p in network.parameters())}  # fmt: skip
        write_results(trainer.run_dir, final)
        print("test velocity MSE: " + ", ".join(f"t={t} {final[f'velocity_mse_t{t}']:.4f}" for t in EVAL_TIMES))
        results.update({f"final/{k}": v for k, v in final.items()})
    print(f"run folder: {trainer.run_dir}")
    return results


main = console_script(FlowTrainConfig, train, "fm-train")

if __name__ == "__main__":
    main()
