"""fm-train: train a rectified flow (flow matching with the straight path) on 07's U-Net, or reflow / distil one
on the couplings another flow generated.

uv run fm-train                                               # 1-rectified flow on MNIST, class-conditional
uv run fm-train --time-distribution logit-normal              # Esser et al.'s time sampling
uv run fm-sample --run R --couplings 20000                    # (noise, its ODE end) pairs of the trained flow
uv run fm-train --couplings R/samples/couplings.safetensors --init R   # the 2-rectified flow (reflow)
uv run fm-train --couplings <file> --distill --init R         # one-step distillation of the couplings
uv run fm-train --coupling ot                                 # minibatch OT couplings (Tong et al. 2024)
uv run fm-train --objective meanflow                          # MeanFlow's average velocity, one-step sampling

The network is 07's U-Net, called with 1000 t as its timestep (MeanFlow's adds the interval, networks.py);
classifier-free guidance is 07's, at sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from genlab.consistency.couplings import ot_couple
from genlab.consistency.flow import distillation_loss, sample_time, velocity_loss
from genlab.consistency.meanflow import meanflow_loss, meanflow_sample, sample_interval
from genlab.consistency.networks import IntervalUNet, velocity_of
from genlab.consistency.samplers import FlowSampler
from genlab.core.checkpoint import load_pretrained
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


@dataclass
class FlowTrainConfig(TrainConfig):
    """Train a rectified flow (Liu et al. 2022): the velocity of the straight path from noise to data."""

    size: str = option("mnist-small", f"07's U-Net size ({', '.join(SIZES)})")
    class_conditional: bool = option(True, "condition on the label, dropped 10% of the time (guidance at sampling)")
    label_dropout: float = option(0.1, "probability a label is replaced by the null label in training")
    time_distribution: Literal["uniform", "logit-normal"] = option("uniform", "how t is drawn (flow.py)")
    time_location: float = option(0.0, "logit-normal: m of t = sigmoid(m + s n)")
    time_scale: float = option(1.0, "logit-normal: s of t = sigmoid(m + s n)")
    objective: Literal["velocity", "meanflow"] = option("velocity", "v of the straight path, or MeanFlow's average u")
    meanflow_fraction: float = option(0.25, "meanflow: the fraction of the batch with s != t (the paper: 25%)")
    adaptive_power: float = option(1.0, "meanflow: p of the adaptive loss weight 1 / (||Delta||^2 + c)^p (0: none)")
    meanflow_time_scale: float = option(1000.0, "meanflow: k of the U-Net's time inputs k s and k (t - s)")
    coupling: Literal["independent", "ot"] = option("independent", "pair noise and data independently or by "
                                                    "exact minibatch optimal transport (couplings.py)")  # fmt: skip
    couplings: str = option("", "a couplings file of fm-sample: train on its (X_0, Z_1) pairs (reflow)")
    distill: bool = option(False, "with --couplings: fit the one-step map X_0 -> Z_1 (distillation)")
    init: str = option("", "start from this fm-train run's weights (EMA if any): reflow and distillation fine-tune "
                       "the flow that made the couplings, as Liu et al.'s code does")  # fmt: skip
    steps: int = option(1_400, "optimizer steps (about 20 minutes of a 2-core CPU at the defaults, as 07)")
    batch_size: int = option(64, "global batch")
    lr: float = option(1e-3, "Adam's learning rate")
    warmup_steps: int = option(100, "linear warm-up")
    grad_clip: float = option(1.0, "clip the gradient norm")
    ema_decay: float = option(0.995, "EMA decay of the weights sampled from")
    ema_warmup: bool = option(True, "ramp the EMA decay up from 0")
    sample_every: int = option(500, "write a grid of Euler samples (MeanFlow: one-step) every N steps")
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
        if self.coupling == "ot" and self.couplings:
            raise GenlabError("--coupling ot pairs fresh noise with data; --couplings already fixes the pairs")
        if self.objective == "meanflow" and (self.couplings or self.distill):
            raise GenlabError("--objective meanflow trains on data and noise, without --couplings or --distill")
        if not 0 <= self.meanflow_fraction <= 1 or self.adaptive_power < 0 or not self.meanflow_time_scale > 0:
            raise GenlabError("--meanflow-fraction must be in [0, 1], --adaptive-power at least 0 and "
                              "--meanflow-time-scale positive")  # fmt: skip


def load_couplings(path: str) -> dict[str, torch.Tensor]:
    """fm-sample's couplings file: x0 (N, C, H, W) noise, z1 (N, C, H, W) where the flow took it, labels (N,)."""
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as error:
        raise GenlabError(f"--couplings {path}: not a couplings file of fm-sample ({error})") from None
    if {"x0", "z1"} - set(tensors) or tensors["x0"].shape != tensors["z1"].shape:
        raise GenlabError(f"--couplings {path}: it needs x0 and z1 of one shape")
    return tensors


def instantaneous_velocity_of(network: torch.nn.Module) -> Any:
    """v(x, t) of either network: the U-Net's velocity, or MeanFlow's u over the empty interval, u(z, t, t) = v."""
    if isinstance(network, IntervalUNet):
        return lambda x, t, labels=None: network(x, t, t, labels)
    return velocity_of(network)


@torch.no_grad()
def test_velocity_losses(velocity: Any, data: ImageDataset, max_images: int, conditional: bool) -> dict[str, float]:
    """The velocity loss on the first ``max_images`` test images at each of EVAL_TIMES, the same noise each call
    (for MeanFlow, of u(z, t, t), the instantaneous velocity its identity reduces to)."""
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
    meanflow = config.objective == "meanflow"
    network_class = IntervalUNet if meanflow else UNet
    start = None
    if config.init and not config.resume:  # before the run folder exists: a wrong --init writes nothing
        start = load_pretrained(config.init, network_class, "unet", PROJECT)
        if vars(start.config) != vars(architecture):
            raise GenlabError(f"--init {config.init}: its U-Net is not the one these flags build ({start.config})")
    trainer = Trainer(config, PROJECT, {"model": architecture})
    # built after the Trainer has seeded torch
    model = IntervalUNet(architecture, config.meanflow_time_scale) if meanflow else UNet(architecture)
    if start is not None:
        model.load_state_dict(start.state_dict())
    network = trainer.add_model("unet", model)
    velocity = instantaneous_velocity_of(network)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)

    def loss_fn(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = drop_labels(batch.labels, config.label_dropout, classes) if classes else None
        if config.couplings:
            x0, x1 = batch.images.split(C, dim=1)
        else:
            x1 = batch.images
            x0 = torch.randn_like(x1)
            if config.coupling == "ot":
                x0 = ot_couple(x0, x1)
        if config.distill:
            return distillation_loss(velocity, x0, x1, labels)
        if meanflow:
            s, t = sample_interval(len(x1), config.meanflow_fraction, config.time_distribution, config.time_location,
                                   config.time_scale, device=x1.device)  # fmt: skip
            return meanflow_loss(
                network, x0, x1, s, t, labels, config.adaptive_power, tangent_velocity=trainer.unwrap("unet")
            )
        t = sample_time(len(x1), config.time_distribution, config.time_location, config.time_scale,
                        device=x1.device)  # fmt: skip
        return velocity_loss(velocity, x0, x1, t, labels)

    trainer.add_update("train", optimizer, loss_fn, ["unet"])
    fixed_noise = torch.randn((64, *shape), generator=torch.Generator().manual_seed(0))

    def sample_fn(trainer: Trainer) -> torch.Tensor:
        model, noise = trainer.eval_model("unet"), fixed_noise.to(trainer.device)
        labels = torch.arange(64, device=trainer.device) % classes if classes else None
        if meanflow:
            samples = meanflow_sample(model, noise, 1, labels)
        else:
            steps = 1 if config.distill else config.sample_steps
            samples = FlowSampler(steps, "euler").sample(velocity_of(model), noise, labels)
        return to_unit(samples.clamp(-1, 1), VALUE_RANGE)

    def test_losses(trainer: Trainer) -> dict[str, float]:
        model = instantaneous_velocity_of(trainer.eval_model("unet"))
        return test_velocity_losses(model, test_data.to(trainer.device), config.eval_images, bool(classes))

    def eval_fn(trainer: Trainer) -> dict[str, float]:
        return {f"test_{k}": v for k, v in test_losses(trainer).items()}

    results = trainer.fit(train_data, sample_fn=sample_fn, eval_fn=eval_fn)
    if trainer.accelerator.is_main_process:
        parameters = sum(p.numel() for p in network.parameters())
        final = {**test_losses(trainer), "step": trainer.step, "parameters": parameters}
        write_results(trainer.run_dir, final)
        print("test velocity MSE: " + ", ".join(f"t={t} {final[f'velocity_mse_t{t}']:.4f}" for t in EVAL_TIMES))
        results.update({f"final/{k}": v for k, v in final.items()})
    print(f"run folder: {trainer.run_dir}")
    return results


main = console_script(FlowTrainConfig, train, "fm-train")

if __name__ == "__main__":
    main()
