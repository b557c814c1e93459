"""diffusion-sample: samples, guidance, the reverse process and likelihoods of a trained diffusion run.

uv run diffusion-sample --run runs/diffusion/<run>                             # DDIM, 50 steps: samples.png
uv run diffusion-sample --run R --sampler ddpm --steps 1000 --npz 10000         # for genlab-eval
uv run diffusion-sample --run R --sampler heun --steps 20                       # the probability-flow ODE
uv run diffusion-sample --run R --sampler pc --sde ve --steps 500               # predictor-corrector, VE view
uv run diffusion-sample --run R --guidance-scale 3                              # classifier-free guidance
uv run diffusion-sample --run R --guidance-scales 0,1,3,7                       # one grid per scale, side by side
uv run diffusion-sample --run R --classifier runs/diffusion/<classifier run> --classifier-scale 2
uv run diffusion-sample --run R --gif                                           # the reverse process
uv run diffusion-sample --run R --likelihood --likelihood-images 200            # bits/dim: ELBO and ODE
uv run diffusion-sample --run <latent run>                                      # decoded by its first stage
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from genlab.core.checkpoint import load_pretrained, read_run_info, resolve_checkpoint
from genlab.core.config import option
from genlab.core.errors import GenlabError
from genlab.core.harness import OpenedRun, SampleConfig, console_script, open_run, require_at_least, unit_to_uint8
from genlab.core.visualise import save_gif, to_unit
from genlab.diffusion.first_stage import load_first_stage
from genlab.diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance
from genlab.diffusion.model import NoisyClassifier, UNet
from genlab.diffusion.objective import elbo_bits_per_dim
from genlab.diffusion.prediction import Denoiser, DenoiserOutput
from genlab.diffusion.samplers import SAMPLERS, SPACINGS, make_sampler
from genlab.diffusion.schedules import NoiseSchedule
from genlab.diffusion.sde import (
    VESDE,
    VPSDE,
    bits_per_dim_from_log_likelihood,
    ode_log_likelihood,
    predictor_corrector_sample,
    probability_flow_sample,
    score_from_denoiser,
    ve_score_from_vp,
    ve_time_score,
)
from genlab.diffusion.train import PROJECT, VALUE_RANGE, schedule_of

Tensor = torch.Tensor


@dataclass
class DiffusionSampleConfig(SampleConfig):
    """Sample a trained diffusion model."""

    sampler: Literal["ddpm", "ddim", "euler", "heun", "pc", "ode"] = option(
        "ddim", "ddpm, ddim, euler, heun (discrete schedule); pc, ode (the continuous score SDE, sde.py)"
    )
    steps: int = option(50, "sampling steps (network evaluations: heun 2N-1, pc N (1 + corrector steps), ode 2N)")
    eta: float = option(0.0, "DDIM's stochasticity (0: deterministic; 1: DDPM's posterior variance)")
    spacing: str = option("", f"timestep spacing ({', '.join(SPACINGS)}, or karras for euler/heun; default each one's)")
    variance: Literal["auto", "beta_tilde", "beta", "learned"] = option(
        "auto", "DDPM's reverse variance (auto: learned if the run learned it, else beta_tilde)"
    )
    sde: Literal["vp", "ve"] = option("vp", "pc and ode: the VP SDE, or the same network in the VE view")
    corrector_steps: int = option(1, "pc: Langevin corrector steps per predictor step")
    snr: float = option(0.16, "pc: the corrector's signal-to-noise ratio r")
    clip: bool = option(True, "clamp the predicted x0 to [-1, 1] at every step (DDPM's sampler)")
    count: int = option(64, "images in samples.png")
    class_label: int | None = option(None, "conditional sampling: this class (default: every class in turn)")
    guidance_scale: float = option(1.0, "classifier-free guidance scale s (0: unconditional, 1: conditional)")
    guidance_scales: str = option("", "comma-separated scales: one grid per scale, side by side, in guidance.png")
    classifier: str = option("", "a classifier run (diffusion-train --model classifier) for classifier guidance")
    classifier_scale: float = option(1.0, "classifier guidance scale")
    gif: bool = option(False, "also write reverse.gif: x_t and the predicted x0 along the reverse process")
    likelihood: bool = option(False, "bits/dim of test images by the ELBO (T evaluations) and by the ODE")
    likelihood_images: int = option(200, "test images for --likelihood")
    ode_steps: int = option(200, "Heun steps of the likelihood ODE")
    batch_size: int = option(250, "images per network call")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("steps", "count", "likelihood_images", "ode_steps", "batch_size"))
        require_at_least(self, ("corrector_steps",), at_least=0)
        for name in ("eta", "snr", "guidance_scale", "classifier_scale"):
            require_at_least(self, (name,), at_least=0)
        if self.spacing and self.spacing not in (*SPACINGS, "karras"):
            raise GenlabError(f"unknown --spacing {self.spacing!r}; known: {', '.join(SPACINGS)}, karras")
        if self.spacing == "karras" and self.sampler not in ("euler", "heun"):
            raise GenlabError("--spacing karras is a grid of noise levels for --sampler euler or heun")
        self.scales()

    def scales(self) -> list[float]:
        if not self.guidance_scales:
            return []
        try:
            values = [float(v) for v in self.guidance_scales.split(",")]
        except ValueError:
            raise GenlabError(f"--guidance-scales must be numbers separated by commas, got {self.guidance_scales!r}"
                              ) from None  # fmt: skip
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise GenlabError(f"--guidance-scales must be finite and >= 0, got {self.guidance_scales!r}")
        return values


class DiffusionRun:
    """An opened run with its schedule and what every sampler needs: a denoiser for given guidance."""

    def __init__(self, config: DiffusionSampleConfig, run: OpenedRun) -> None:
        self.config, self.run = config, run
        trained = run.train_config
        self.schedule: NoiseSchedule = schedule_of(trained)
        # 07's UNet or 09's DiT: both configs name image_channels, image_size, num_classes and learned_variance
        self.network: Any = run.model
        self.num_classes = self.network.config.num_classes
        self.learned_variance = self.network.config.learned_variance
        self.prediction = trained.get("prediction", "eps")
        self.shape = (self.network.config.image_channels, self.network.config.image_size,
                      self.network.config.image_size)  # fmt: skip
        T = self.schedule.num_timesteps
        if config.sampler in SAMPLERS and config.steps > T:
            raise GenlabError(f"--steps {config.steps} exceeds the run's {T} training timesteps")
        if config.variance == "learned" and not self.learned_variance:
            raise GenlabError("--variance learned needs a run trained with --learned-variance")
        self.variance = config.variance if config.variance != "auto" else (
            "learned" if self.learned_variance else "beta_tilde")  # fmt: skip
        # A latent run (latent diffusion): the U-Net's samples are latents s z, decoded by the recorded autoencoder.
        self.first_stage_record = read_run_info(run.run_dir).get("first_stage")
        self.first_stage = None
        if self.first_stage_record:
            if config.likelihood or config.classifier or config.sampler in ("pc", "ode"):
                raise GenlabError("a latent diffusion run samples with ddpm, ddim, euler or heun, without --classifier "
                                  "or --likelihood (those are of pixel-space runs)")  # fmt: skip
            record = self.first_stage_record
            self.first_stage = load_first_stage(record["run"], run.device, record["weights_sha256"])
        self.classifier = self._load_classifier() if config.classifier else None
        conditional = self.num_classes > 0 or self.classifier is not None
        if (config.guidance_scale != 1.0 or config.guidance_scales) and not self.num_classes:
            raise GenlabError("classifier-free guidance needs a run trained with --class-conditional")
        if config.class_label is not None:
            classes = self.num_classes or self.classifier.config.num_classes
            if not conditional or not 0 <= config.class_label < classes:
                raise GenlabError(f"--class-label needs a conditional run or a classifier, in [0, {classes or 0})")

    def _load_classifier(self) -> NoisyClassifier:
        run_dir, _ = resolve_checkpoint(self.config.classifier)
        trained = read_run_info(run_dir)["config"]
        if trained.get("model") != "classifier":
            raise GenlabError(f"--classifier {self.config.classifier} is not a classifier run (--model classifier)")
        mine = self.run.train_config
        if (trained.get("schedule"), trained.get("timesteps")) != (mine.get("schedule"), mine.get("timesteps")):
            raise GenlabError(f"the classifier was trained on schedule {trained.get('schedule')} with T = "
                              f"{trained.get('timesteps')}, the model on {mine.get('schedule')} with T = "
                              f"{mine.get('timesteps')}")  # fmt: skip
        classifier = load_pretrained(self.config.classifier, NoisyClassifier, "classifier", PROJECT, self.config.ema)
        if (classifier.config.image_channels, classifier.config.image_size) != self.shape[:2]:
            raise GenlabError(f"the classifier takes {classifier.config.image_size}px images, the model "
                              f"{self.shape[1]}px")  # fmt: skip
        return classifier.to(self.run.device).eval()

    def labels(self, count: int, offset: int = 0) -> Tensor | None:
        classes = self.num_classes or (self.classifier.config.num_classes if self.classifier else 0)
        if not classes:
            return None
        if self.config.class_label is not None:
            return torch.full((count,), self.config.class_label, device=self.run.device)
        return torch.arange(offset, offset + count, device=self.run.device) % classes

    def denoiser(self, guidance_scale: float) -> Any:
        network = self.network
        if self.num_classes and guidance_scale != 1.0:
            network = ClassifierFreeGuidance(self.network, guidance_scale, self.num_classes)
        clip = self.config.clip and self.first_stage is None  # latents are not bounded to [-1, 1]
        denoise: Any = Denoiser(network, self.schedule, self.prediction, self.learned_variance, clip)
        if self.classifier is not None:
            condition = "labels" if self.num_classes else "none"
            denoise = ClassifierGuidance(denoise, self.classifier, self.schedule, self.config.classifier_scale,
                                         condition)  # fmt: skip
        return denoise

    def function_evaluations(self) -> int:
        config = self.config
        if config.sampler == "pc":
            return config.steps * (1 + config.corrector_steps)
        if config.sampler == "ode":
            return 2 * config.steps
        return make_sampler(config.sampler, self.schedule, config.steps, config.spacing or None).function_evaluations

    def draw(self, count: int, offset: int, guidance_scale: float, callback: Any = None,
             generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
        """``count`` samples in [-1, 1] (B, C, H, W), labels from number ``offset`` on; the noise comes from
        ``generator``, else from the run's, in order."""
        config, device = self.config, self.run.device
        generator = generator or self.run.generator
        denoise, labels = self.denoiser(guidance_scale), self.labels(count, offset)
        pieces = []
        for start in range(0, count, config.batch_size):
            n = min(config.batch_size, count - start)
            batch_labels = None if labels is None else labels[start : start + n]
            x_T = torch.randn((n, *self.shape), generator=generator).to(device)
            if config.sampler in ("pc", "ode"):
                pieces.append(self._draw_sde(denoise, x_T, batch_labels, generator))
            else:
                sampler = make_sampler(config.sampler, self.schedule, config.steps, config.spacing or None,
                                       config.eta, self.variance)  # fmt: skip
                pieces.append(self.to_images(sampler.sample(denoise, x_T, batch_labels, generator, callback)))
        return torch.cat(pieces).clamp(-1, 1)

    def to_images(self, samples: Tensor) -> Tensor:
        """Samples of the U-Net -> images in [-1, 1]: a latent run's through its autoencoder, D(z_0 / s)."""
        if self.first_stage is None:
            return samples
        return self.first_stage.decode(samples / self.first_stage_record["scale_factor"])

    def _draw_sde(self, denoise: Any, x_T: Tensor, labels: Tensor | None, generator: torch.Generator) -> Tensor:
        config = self.config
        if self.schedule.name != "linear" or self.schedule.num_timesteps != 1000:
            raise GenlabError("--sampler pc/ode use the VP SDE with beta in [0.1, 20], DDPM's linear schedule at "
                              "T = 1000 in continuous time; this run has another schedule")  # fmt: skip
        vp = VPSDE()
        score = score_from_denoiser(denoise, vp, self.schedule, labels)
        if config.sde == "ve":
            ve = VESDE()
            sde, score = ve, ve_time_score(ve_score_from_vp(score, vp), ve)
            x_T = x_T * ve.sigma_max
        else:
            sde = vp
        if config.sampler == "pc":
            return predictor_corrector_sample(sde, score, x_T, config.steps, config.corrector_steps, config.snr,
                                              generator=generator)  # fmt: skip
        return probability_flow_sample(sde, score, x_T, config.steps)


def reverse_process_gif(diffusion: DiffusionRun, path_name: str = "reverse.gif", count: int = 16) -> None:
    """About 40 frames of x_t (upper row of each pair) over the predicted x0 (lower) along the reverse process,
    then the result held for a second."""
    frames: list[Tensor] = []
    per_row = 8
    keep_every = max(1, diffusion.function_evaluations() // 40)
    calls = 0

    def pairs(upper: Tensor, lower: Tensor) -> Tensor:
        stacked = torch.stack([upper.clamp(-1, 1).unflatten(0, (-1, per_row)),
                               lower.clamp(-1, 1).unflatten(0, (-1, per_row))], dim=1)  # fmt: skip
        return to_unit(stacked.flatten(0, 2), VALUE_RANGE)  # (rows, 2, per_row, C, H, W) -> (2N, C, H, W)

    def record(_step: int, x_t: Tensor, prediction: DenoiserOutput) -> None:
        nonlocal calls
        if calls % keep_every == 0:  # a latent run: both decoded (a noisy latent decodes to no noisy image)
            frames.append(pairs(diffusion.to_images(x_t), diffusion.to_images(prediction.x0)))
        calls += 1

    final = diffusion.draw(count, 0, diffusion.config.guidance_scale, callback=record)
    frames.extend([pairs(final, final)] * 10)
    diffusion.run.written["reverse"] = save_gif(frames, diffusion.run.out / path_name, duration_ms=100, nrow=per_row)


def likelihoods(diffusion: DiffusionRun) -> dict[str, Any]:
    """Bits/dim of the first N test images by the ELBO (DDPM eq. 5, all T terms) and by the probability-flow ODE
    (uniformly dequantised, Hutchinson trace), on the same images; of the unconditional model p(x) (the null label
    of a class-conditional run)."""
    config, run = diffusion.config, diffusion.run
    test = run.test_split(VALUE_RANGE, diffusion.shape)
    x0 = test.convert(test.images[: config.likelihood_images])
    denoiser = Denoiser(diffusion.network, diffusion.schedule, diffusion.prediction, diffusion.learned_variance)
    elbo, ode = [], []
    torch.manual_seed(config.seed)
    for start in range(0, len(x0), config.batch_size):
        batch = x0[start : start + config.batch_size]
        # a class-conditional run is also the unconditional model p(x): its null label
        null = torch.full((len(batch),), diffusion.num_classes, device=batch.device) if diffusion.num_classes else None
        elbo.append(elbo_bits_per_dim(denoiser, batch, null, variance=diffusion.variance)["bits_per_dim"])
        if diffusion.schedule.name == "linear" and diffusion.schedule.num_timesteps == 1000:
            levels = (batch + 1) * 127.5  # k in 0..255
            dequantised = (levels + torch.rand(batch.shape, generator=run.generator).to(batch.device)) / 128 - 1
            vp = VPSDE()
            score = score_from_denoiser(denoiser, vp, diffusion.schedule, null)
            # start where the network's noise levels start (DDPM's first step, sigma = 0.01), not below them
            t_min = float(vp.time_of_noise_ratio(diffusion.schedule.sigmas_ve[:1].double()))
            log_p = ode_log_likelihood(vp, score, dequantised, config.ode_steps, t_min, generator=run.generator)
            ode.append(bits_per_dim_from_log_likelihood(log_p, batch[0].numel()))
    results: dict[str, Any] = {"images": len(x0), "elbo_bits_per_dim": float(torch.cat(elbo).mean()),
                               "elbo_variance": diffusion.variance}  # fmt: skip
    if ode:
        results.update({"ode_bits_per_dim": float(torch.cat(ode).mean()), "ode_steps": config.ode_steps})
    return results


@torch.no_grad()
def sample(config: DiffusionSampleConfig, model_class: type = UNet, name: str = "unet", project: str = PROJECT
           ) -> dict[str, Path]:  # fmt: skip
    """Write the grids (and the npz, GIF, likelihoods); returns their paths by name. ``model_class``, ``name`` and
    ``project``: the network of the run (07's U-Net by default; 09 passes its DiT)."""
    run = open_run(config, model_class, name, project)
    diffusion = DiffusionRun(config, run)
    nrow = diffusion.num_classes or None
    run.save_grid((diffusion.draw(config.count, 0, config.guidance_scale) + 1) / 2, "samples.png", nrow=nrow)
    scales = config.scales()
    if scales:
        grids = [
            diffusion.draw(config.count, 0, scale, generator=torch.Generator().manual_seed(config.seed))
            for scale in scales
        ]  # the same noise at every scale
        run.save_grid((torch.cat(grids) + 1) / 2, "guidance.png", nrow=nrow)
    if config.gif:
        reverse_process_gif(diffusion)
    if config.npz:
        run.write_samples_npz(
            lambda start, n: unit_to_uint8((diffusion.draw(n, start, config.guidance_scale) + 1) / 2), config.npz,
            function_evaluations=diffusion.function_evaluations() * (2 if 0 < config.guidance_scale != 1 else 1),
        )  # fmt: skip
    if config.likelihood:
        measured = likelihoods(diffusion)
        run.write_json("likelihood.json", measured)
        print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in measured.items()))
    return run.finish()


main = console_script(DiffusionSampleConfig, sample, "diffusion-sample")

if __name__ == "__main__":
    main()
