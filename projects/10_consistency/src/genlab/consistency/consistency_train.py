"""cm-train: consistency models (Song et al. 2023) by distillation from a 07 diffusion run (CD) or by training alone
(CT), iCT's improved training (Song & Dhariwal 2023), and sCM's continuous-time objective on TrigFlow (Lu & Song
2024) by training (sCT) or distillation (sCD). The network is 07's U-Net (networks.py says how time enters).

uv run cm-train --method ict                                   # iCT on MNIST, class-conditional (the default)
uv run cm-train --method cd --teacher runs/diffusion/<run>     # CD from a 07 run (its data set and labels)
uv run cm-train --method sct                                   # sCM's continuous-time consistency training
uv run fm-sample --run runs/consistency/<run> --steps 2        # two-step consistency sampling

    method  target theta-                 levels                              distance        teacher
    cd      EMA, mu = 0.95                N = 18 (Karras rho = 7)             squared L2      07 run, Heun step
    ct      EMA, mu(k) of N(k)            N(k) from 2 to 150 (eq. 26)         squared L2      -
    ict     theta, no EMA                 N(k) doubling 10 -> 1280, log-normal  pseudo-Huber  -
    sct     theta (continuous time)       t = arctan(e^tau / sigma_d)         L2 + stabilisers -
    scd     theta (continuous time)       as sct                              as sct          07 run's velocity

LPIPS, the consistency papers' distance on images, needs weights this machine cannot fetch; L2 and pseudo-Huber
are the papers' other choices.

This is the script, where the papers meet genlab.core's loop and checkpoints; the pieces to copy out import no
core code: consistency.py (CD / CT / iCT), trigflow.py (sCM), networks.py (the U-Net as F and as f).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from genlab.consistency.consistency import (
    ConsistencyFunction,
    consistency_loss,
    ct_ema_decay,
    ct_levels,
    heun_solver,
    ict_levels,
    lognormal_level_weights,
    multistep_sample,
    noise_levels,
    pseudo_huber,
    squared_l2,
)
from genlab.consistency.networks import consistency_function_of, consistency_network_of, trigflow_network_of
from genlab.consistency.trigflow import (
    SIGMA_DATA,
    AdaptiveWeight,
    sample_trig_time,
    scm_loss,
    teacher_trig_velocity,
    trig_interpolate,
)
from genlab.core.checkpoint import load_pretrained, read_run_info, resolve_checkpoint
from genlab.core.config import option
from genlab.core.data import ImageDataset, iterate_batches
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, require_at_least, write_results
from genlab.core.trainer import TrainConfig, Trainer
from genlab.core.visualise import to_unit
from genlab.diffusion.model import SIZES, UNet, unet_config
from genlab.diffusion.prediction import Denoiser
from genlab.diffusion.schedules import NoiseSchedule, expand_like
from genlab.diffusion.train import PROJECT as DIFFUSION_PROJECT
from genlab.diffusion.train import VALUE_RANGE, load_split, schedule_of

PROJECT = "consistency"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # the papers' range for data in [-1, 1]
EVAL_SIGMAS = (0.5, 2.0, 10.0)  # where the test one-step error || f(x + sigma z, sigma) - x ||^2 is reported
METHODS = ("cd", "ct", "ict", "sct", "scd")


@dataclass
class ConsistencyTrainConfig(TrainConfig):
    """Train a consistency model: CD / CT (Song et al. 2023), iCT (Song & Dhariwal 2023), sCT / sCD (Lu & Song 2024)."""

    method: Literal["cd", "ct", "ict", "sct", "scd"] = option("ict", "the objective (see the table in the docstring)")
    teacher: str = option("", "cd / scd: a diffusion-train run of 07 on the same data set, distilled")
    size: str = option("mnist-small", f"07's U-Net size ({', '.join(SIZES)})")
    dropout: float = option(0.0, "U-Net dropout (the online and target passes draw different masks)")
    class_conditional: bool = option(True, "ct / ict / sct: condition on the label (cd / scd follow the teacher)")
    levels: int = option(18, "cd: N, the levels of the noise grid (the paper's CIFAR-10 value)")
    target_ema: float = option(0.95, "cd: mu, the target's EMA decay (ImageNet 64's; CIFAR-10's code: 0)")
    initial_levels: int = option(0, "ct / ict: s0 of N(k) (0: the method's, 2 for ct and 10 for ict)")
    final_levels: int = option(0, "ct / ict: s1 of N(k) (0: the method's, 150 for ct and 1280 for ict)")
    ct_mu0: float = option(0.9, "ct: mu0 of the target's EMA decay mu(k) = exp(s0 log mu0 / N(k))")
    distance: Literal["auto", "l2", "pseudo-huber"] = option("auto", "d (auto: pseudo-Huber for ict, else L2)")
    p_mean: float | None = option(None, "ict / sct / scd: log-normal noise location (default -1.1 ict, -1.0 sct)")
    p_std: float | None = option(None, "ict / sct / scd: log-normal noise scale (default 2.0 ict, 1.4 sct)")
    tangent_warmup: float = option(0.1, "sct / scd: ramp the tangent's second term over this fraction of --steps")
    tangent_normalisation: float = option(0.1, "sct / scd: c of g / (||g|| + c) (0: none)")
    adaptive_weighting: bool = option(True, "sct / scd: learn sCM's weight w(t)")
    teacher_ema: bool = option(True, "cd / scd: the teacher's EMA weights when it has them")
    steps: int = option(1_400, "optimizer steps")
    batch_size: int = option(64, "global batch")
    lr: float = option(2e-4, "Adam's learning rate (the papers: 4e-4 at batch 512 on CIFAR-10 for CD / CT)")
    warmup_steps: int = option(100, "linear warm-up")
    grad_clip: float = option(1.0, "clip the gradient norm")
    ema_decay: float = option(0.995, "EMA decay of the weights sampled from (not the target network's)")
    ema_warmup: bool = option(True, "ramp the sampling EMA decay up from 0")
    sample_every: int = option(500, "write a grid of one-step samples every N steps")
    eval_every: int = option(500, "test one-step error every N steps")
    eval_images: int = option(500, "test images for the one-step error")

    resumable = (*TrainConfig.resumable, "eval_images")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("eval_images",))
        require_at_least(self, ("levels",), at_least=2)
        require_at_least(self, ("initial_levels", "final_levels", "dropout", "tangent_warmup",
                                "tangent_normalisation"), at_least=0)  # fmt: skip
        if self.size not in SIZES:
            raise GenlabError(f"unknown --size {self.size!r}; known: {', '.join(SIZES)}")
        distilling = self.method in ("cd", "scd")
        if distilling and not self.teacher:
            raise GenlabError(f"--method {self.method} distils a diffusion run: give it with --teacher")
        if self.teacher and not distilling:
            raise GenlabError(f"--method {self.method} trains without a teacher; --teacher is for cd and scd")
        if not 0 <= self.target_ema < 1 or not 0 < self.ct_mu0 < 1:
            raise GenlabError("--target-ema must be in [0, 1) and --ct-mu0 in (0, 1)")
        if self.p_std is not None and self.p_std <= 0:
            raise GenlabError(f"--p-std must be positive, got {self.p_std}")
        if self.initial_levels and self.final_levels and self.final_levels < self.initial_levels:
            raise GenlabError("--final-levels must be at least --initial-levels")
        if self.tangent_warmup > 1:
            raise GenlabError(f"--tangent-warmup is a fraction of --steps, at most 1, got {self.tangent_warmup}")


class Teacher:
    """A 07 diffusion run seen in the VE view: D(x + sigma n; sigma), and its sigma range."""

    def __init__(self, path: str, data: ImageDataset, ema: bool) -> None:
        run_dir, _ = resolve_checkpoint(path)
        info = read_run_info(run_dir)
        trained = info["config"]
        if info.get("project") != DIFFUSION_PROJECT or trained.get("model", "unet") != "unet":
            raise GenlabError(f"--teacher {path} is not a diffusion-train U-Net run of 07")
        if info.get("first_stage"):
            raise GenlabError(f"--teacher {path} is a latent diffusion run; consistency models here are in pixels")
        if trained.get("dataset") != data.name:
            raise GenlabError(f"--teacher {path} was trained on {trained.get('dataset')}, not {data.name}")
        network = load_pretrained(path, UNet, "unet", DIFFUSION_PROJECT, ema=ema).eval().requires_grad_(False)
        if (network.config.image_channels, network.config.image_size, network.config.image_size) != data.shape:
            raise GenlabError(f"--teacher {path} makes {network.config.image_size}px images, the data are {data.shape}")
        self.schedule: NoiseSchedule = schedule_of(trained)
        self.num_classes = network.config.num_classes
        self.denoise = Denoiser(network, self.schedule, trained.get("prediction", "eps"),
                                network.config.learned_variance)  # fmt: skip
        self.sigma_min = float(self.schedule.sigmas_ve[0])
        self.sigma_max = min(SIGMA_MAX, float(self.schedule.sigmas_ve[-1]))

    def to(self, device: torch.device) -> Teacher:
        self.denoise.network.to(device)
        return self

    def x0(self, x_ve: torch.Tensor, sigma: torch.Tensor, labels: Any) -> torch.Tensor:
        """E[x_0 | x_ve] = x_ve - sigma eps_hat(x_ve / sqrt(1 + sigma^2), t(sigma)), as 07's ODE samplers."""
        timesteps = self.schedule.timestep_of_sigma(sigma.detach().cpu()).to(x_ve.device)
        scale = expand_like((1 + sigma.square()).sqrt(), x_ve)
        return x_ve - expand_like(sigma, x_ve) * self.denoise(x_ve / scale, timesteps, labels).eps


@torch.no_grad()
def one_step_errors(f: Any, data: ImageDataset, max_images: int, conditional: bool) -> dict[str, float]:
    """|| f(x + sigma z, sigma) - x ||^2 per element on the first ``max_images`` test images at each of EVAL_SIGMAS."""
    generator = torch.Generator().manual_seed(1234)
    totals, count = dict.fromkeys(EVAL_SIGMAS, 0.0), 0
    for batch in iterate_batches(data, 250):
        x = batch.images[: max_images - count]
        labels = batch.labels[: len(x)] if conditional and batch.labels is not None else None
        z = torch.randn(x.shape, generator=generator).to(x.device)
        for sigma in EVAL_SIGMAS:
            levels = torch.full((len(x),), sigma, device=x.device)
            totals[sigma] += float((f(x + sigma * z, levels, labels) - x).square().mean()) * len(x)
        count += len(x)
        if count >= max_images:
            break
    return {f"one_step_mse_sigma{s:g}": total / count for s, total in totals.items()}


def train(config: ConsistencyTrainConfig) -> dict[str, float]:
    """Train as ``config`` says; returns the last logged values and the final test errors."""
    train_data, test_data = load_split(config, "train"), load_split(config, "test")
    method = config.method
    teacher = None
    if method in ("cd", "scd"):
        teacher = Teacher(config.teacher, train_data, config.teacher_ema)
        classes = teacher.num_classes
        sigma_min, sigma_max = teacher.sigma_min, teacher.sigma_max
    else:
        if config.class_conditional and train_data.labels is None:
            raise GenlabError(f"{config.dataset} has no labels to condition on")
        classes = test_data.num_classes if config.class_conditional else 0
        sigma_min, sigma_max = SIGMA_MIN, SIGMA_MAX
    C, H, _ = train_data.shape
    try:
        architecture = unet_config(config.size, image_channels=C, image_size=H, num_classes=classes,
                                   dropout=config.dropout)  # fmt: skip
    except ValueError as error:
        raise GenlabError(f"--size {config.size}: {error}") from None
    trainer = Trainer(config, PROJECT, {"model": architecture, "sigma_min": sigma_min, "sigma_max": sigma_max})
    if teacher is not None:
        teacher.to(trainer.device)
    network = trainer.add_model("unet", UNet(architecture))
    parameters = list(network.parameters())
    s0 = config.initial_levels or (10 if method == "ict" else 2)
    s1 = config.final_levels or (1280 if method == "ict" else 150)
    p_mean = config.p_mean if config.p_mean is not None else (-1.1 if method == "ict" else -1.0)
    p_std = config.p_std if config.p_std is not None else (2.0 if method == "ict" else 1.4)
    distance = pseudo_huber if config.distance == "pseudo-huber" or (config.distance == "auto" and method == "ict") \
        else squared_l2  # fmt: skip
    f = ConsistencyFunction(consistency_network_of(network), sigma_min)

    # CD and CT compare against an EMA target theta-, a model of its own so that it is checkpointed with the run.
    target = None
    if method in ("cd", "ct"):
        target = trainer.add_model("target", copy.deepcopy(trainer.unwrap("unet")).requires_grad_(False), ema=False)
        f_target = ConsistencyFunction(consistency_network_of(target), sigma_min)
    elif method == "ict":
        f_target = f  # iCT: theta- = theta; consistency_loss stops the gradient through the target
    adaptive = None
    if method in ("sct", "scd") and config.adaptive_weighting:
        adaptive = trainer.add_model("weight", AdaptiveWeight(), ema=False)
        parameters += list(adaptive.parameters())
    optimizer = torch.optim.Adam(parameters, lr=config.lr)

    def levels_now() -> int:
        if method == "cd":
            return config.levels
        return (ict_levels if method == "ict" else ct_levels)(trainer.step, config.steps, s0, s1)

    def loss_fn(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch.images
        labels = batch.labels if classes else None
        if method in ("sct", "scd"):
            t = sample_trig_time(len(x), p_mean, p_std, device=x.device)
            if teacher is not None:  # keep t inside the teacher's sigma range
                t = t.clamp(math.atan(sigma_min / SIGMA_DATA), math.atan(sigma_max / SIGMA_DATA))
            z = SIGMA_DATA * torch.randn_like(x)  # z ~ N(0, sigma_d^2 I)
            velocity = None
            if teacher is not None:  # sCD: the ODE's velocity from the teacher's E[x_0 | x_t], at sigma = sigma_d tan t
                with torch.no_grad():
                    x_t = trig_interpolate(x, z, t)
                    x0_hat = teacher.x0(x_t / expand_like(t.cos(), x), SIGMA_DATA * t.tan(), labels)
                    velocity = teacher_trig_velocity(x0_hat, x_t, t)
            warmup = min(1.0, trainer.step / max(1.0, config.tangent_warmup * config.steps))
            log_weight = adaptive(t) if adaptive is not None else None
            loss, terms = scm_loss(trigflow_network_of(network), x, z, t, velocity, labels, warmup,
                                   config.tangent_normalisation, log_weight,
                                   tangent_network=trigflow_network_of(trainer.unwrap("unet")))  # fmt: skip
            return loss, {**terms, "tangent_warmup": torch.tensor(warmup)}
        N = levels_now()
        sigmas = noise_levels(N, sigma_min, sigma_max)
        weight = None
        if method == "ict":
            probabilities = lognormal_level_weights(sigmas, p_mean, p_std)
            n = torch.multinomial(probabilities.float(), len(x), replacement=True).to(x.device)
            weight = 1 / (sigmas[1:] - sigmas[:-1])  # lambda(sigma_n) = 1 / (sigma_{n+1} - sigma_n)
        else:
            n = torch.randint(0, N - 1, (len(x),), device=x.device)
        solver = None
        if teacher is not None:
            solver = heun_solver(lambda x_ve, sigma: teacher.x0(x_ve, sigma, labels))
        loss = consistency_loss(f, f_target, x, sigmas, n, torch.randn_like(x), solver, distance, weight, labels)
        return loss, {"levels": torch.tensor(float(N))}

    def update_target() -> None:
        """theta- <- mu theta- + (1 - mu) theta, after every optimizer step (CD: mu fixed; CT: mu(k) of N(k))."""
        if target is None:
            return
        mu = config.target_ema if method == "cd" else ct_ema_decay(levels_now(), s0, config.ct_mu0)
        with torch.no_grad():
            online = [p.detach() for p in trainer.unwrap("unet").parameters()]
            torch._foreach_lerp_(list(trainer.unwrap("target").parameters()), online, 1.0 - mu)

    trainer.add_update("train", optimizer, loss_fn, ["unet", *(["weight"] if adaptive is not None else [])],
                       after_step=update_target)  # fmt: skip
    fixed_noise = torch.randn((64, *train_data.shape), generator=torch.Generator().manual_seed(0))

    def sample_fn(trainer: Trainer) -> torch.Tensor:
        model = consistency_function_of(trainer.eval_model("unet"), method, sigma_min)
        labels = torch.arange(64, device=trainer.device) % classes if classes else None
        samples = multistep_sample(model, fixed_noise.to(trainer.device), [sigma_max], labels, sigma_min=sigma_min)
        return to_unit(samples.clamp(-1, 1), VALUE_RANGE)

    def evaluate(trainer: Trainer) -> dict[str, float]:
        model = consistency_function_of(trainer.eval_model("unet"), method, sigma_min)
        return one_step_errors(model, test_data.to(trainer.device), config.eval_images, bool(classes))

    def eval_fn(trainer: Trainer) -> dict[str, float]:
        return {f"test_{k}": v for k, v in evaluate(trainer).items()}

    results = trainer.fit(train_data, sample_fn=sample_fn, eval_fn=eval_fn)
    if trainer.accelerator.is_main_process:
        final = {**evaluate(trainer), "step": trainer.step,
                 "parameters": sum(p.numel() for p in network.parameters())}  # fmt: skip
        write_results(trainer.run_dir, final)
        print("test one-step MSE: " + ", ".join(f"sigma={s:g} {final[f'one_step_mse_sigma{s:g}']:.4f}"
                                                for s in EVAL_SIGMAS))  # fmt: skip
        results.update({f"final/{k}": v for k, v in final.items()})
    print(f"run folder: {trainer.run_dir}")
    return results


main = console_script(ConsistencyTrainConfig, train, "cm-train")

if __name__ == "__main__":
    main()
