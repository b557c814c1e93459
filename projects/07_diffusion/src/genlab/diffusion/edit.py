"""diffusion-edit: inpainting, outpainting, SDEdit and noisy inverse problems on test images, with a trained
pixel-space run used as an unconditional prior (a class-conditional run through its null label), no retraining.

uv run diffusion-edit --run R --task inpaint --mask centre                        # replacement, DDPM 250 steps
uv run diffusion-edit --run R --task inpaint --mask centre --resamplings 10 --jump-length 10   # RePaint
uv run diffusion-edit --run R --task outpaint                                     # only the centre known
uv run diffusion-edit --run R --task sdedit --strength 0.5                        # pixelated guides made real
uv run diffusion-edit --run R --task superres --method dps --step-size 1          # x4, measurement noise 0.05
uv run diffusion-edit --run R --task deblur --method dps

Writes edit.png (rows of the input as the method sees it, the result and the original), edit.json (PSNR and SSIM
of the results against the originals, and of the baseline), and with --npz N the first N results as samples.npz
for genlab-eval (superres / deblur: the baseline's as baselines.npz beside them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from genlab.core.config import option
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, open_run, require_at_least, unit_to_uint8, write_samples_npz
from genlab.core.metrics import psnr, ssim
from genlab.diffusion.editing import MASKS, function_evaluations, inpaint, named_mask, sdedit, sdedit_timesteps
from genlab.diffusion.model import UNet
from genlab.diffusion.posterior import GaussianBlur, SuperResolution, dps_sample, measure, replacement_sample
from genlab.diffusion.prediction import Denoiser
from genlab.diffusion.sample import DiffusionRun, DiffusionSampleConfig
from genlab.diffusion.samplers import DDIMSampler, DDPMSampler
from genlab.diffusion.train import PROJECT, VALUE_RANGE

Tensor = torch.Tensor
TASKS = ("inpaint", "outpaint", "sdedit", "superres", "deblur")


@dataclass
class DiffusionEditConfig(DiffusionSampleConfig):
    """Edit test images with a trained diffusion model, or restore them from a noisy measurement."""

    task: Literal["inpaint", "outpaint", "sdedit", "superres", "deblur"] = option("inpaint", "what to do")
    sampler: Literal["ddpm", "ddim"] = option("ddpm", "the reverse step (the papers use DDPM's ancestral step)")
    steps: int = option(250, "reverse steps of the respaced chain (RePaint: T = 250)")
    mask: str = option("centre", f"inpaint: the missing region ({', '.join(MASKS)}); outpaint is border")
    resamplings: int = option(1, "inpaint: RePaint's r (1: plain replacement; the paper: 10)")
    jump_length: int = option(1, "inpaint: RePaint's jump length j (the paper: 10)")
    strength: float = option(0.5, "sdedit: t0 / T, how far the guide is noised (0: the guide, 1: a new sample)")
    method: Literal["dps", "replacement"] = option("dps", "superres / deblur: DPS, or the replacement baseline")
    step_size: float = option(1.0, "DPS's step size (2 zeta' of Chung et al., App. C.2)")
    noise_std: float = option(0.05, "superres / deblur: the measurement noise sigma_y, on images in [-1, 1]")
    images: int = option(16, "test images to edit for edit.png and edit.json (with --npz N: the first N)")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("resamplings", "jump_length", "images"))
        require_at_least(self, ("step_size", "noise_std"), at_least=0)
        if not 0.0 <= self.strength <= 1.0:
            raise GenlabError(f"--strength must be in [0, 1], got {self.strength}")
        if self.mask not in MASKS:
            raise GenlabError(f"unknown --mask {self.mask!r}; known: {', '.join(MASKS)}")
        if self.task == "deblur" and self.method == "replacement":
            raise GenlabError("--method replacement needs a pseudo-inverse of the operator: --task superres only")
        unused = [flag for flag, used in (("--classifier", self.classifier), ("--likelihood", self.likelihood),
                                          ("--gif", self.gif), ("--guidance-scales", self.guidance_scales),
                                          ("--guidance-scale", self.guidance_scale != 1.0)) if used]  # fmt: skip
        if unused:
            raise GenlabError(f"diffusion-edit uses the unconditional model and takes no {', '.join(unused)}")


def pixelated(x: Tensor, factor: int = 4) -> Tensor:
    """SDEdit's stand-in for a stroke painting: each factor x factor block replaced by its mean colour."""
    return F.interpolate(F.avg_pool2d(x, factor), scale_factor=factor, mode="nearest")


class Editor:
    """One task on batches of test images: what the method sees, its result, and the simple baseline."""

    def __init__(self, config: DiffusionEditConfig, diffusion: DiffusionRun) -> None:
        self.config, self.diffusion = config, diffusion
        side = diffusion.shape[1]
        self.mask = named_mask("border" if config.task == "outpaint" else config.mask, side).to(diffusion.run.device)
        self.operator: Any = None
        if config.task == "superres":
            if side % 4:
                raise GenlabError(f"--task superres needs a side divisible by 4, the images are {side}px")
            self.operator = SuperResolution(4)
        elif config.task == "deblur":
            self.operator = GaussianBlur(size=9, sigma=1.5)

    def sampler(self) -> DDPMSampler | DDIMSampler:
        schedule, steps = self.diffusion.schedule, self.config.steps
        if self.config.sampler == "ddim":
            return DDIMSampler(schedule, steps, self.config.eta)
        return DDPMSampler(schedule, steps, variance=self.diffusion.variance)

    @property
    def function_evaluations(self) -> int:
        config = self.config
        if config.task in ("inpaint", "outpaint"):
            return function_evaluations(config.steps, config.jump_length, config.resamplings)
        if config.task == "sdedit":
            return len(sdedit_timesteps(self.sampler(), config.strength))
        return config.steps * (2 if config.method == "dps" else 1)  # DPS: a backward pass per step as well

    def __call__(self, x0: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Originals (B, C, H, W) in [-1, 1] -> (what the method sees, drawn as an image; result; baseline)."""
        config, diffusion = self.config, self.diffusion
        # DPS differentiates through x0_hat: unclipped there (clamping zeroes the gradient outside [-1, 1])
        clip = config.clip and not (self.operator is not None and config.method == "dps")
        denoise = Denoiser(
            diffusion.network, diffusion.schedule, diffusion.prediction, diffusion.learned_variance, clip
        )
        null = self.null_labels(len(x0), x0.device)
        x_T = torch.randn(x0.shape, generator=generator).to(x0.device)
        if config.task in ("inpaint", "outpaint"):
            shown = x0 * self.mask + (1 - self.mask) * 0.0  # the missing region grey
            result = inpaint(denoise, self.sampler(), x0, self.mask, x_T, null, generator, config.jump_length,
                             config.resamplings)  # fmt: skip
            return shown, result, shown
        if config.task == "sdedit":
            guide = pixelated(x0)
            return guide, sdedit(denoise, self.sampler(), guide, config.strength, null, generator), guide
        y = measure(self.operator, x0, config.noise_std, generator)
        if config.method == "dps":
            result = dps_sample(denoise, self.sampler(), y, self.operator, config.step_size, x_T, null, generator)
        else:
            result = replacement_sample(denoise, self.sampler(), y, self.operator, x_T, null, generator)
        baseline = self.operator.baseline(y)
        shown = F.interpolate(y, size=x0.shape[-2:], mode="nearest") if config.task == "superres" else y
        return shown.clamp(-1, 1), result, baseline

    def null_labels(self, count: int, device: torch.device) -> Tensor | None:
        """The unconditional model: a class-conditional run's null label (index num_classes)."""
        classes = self.diffusion.num_classes
        return torch.full((count,), classes, device=device) if classes else None


def edit(config: DiffusionEditConfig) -> dict[str, Path]:
    """Edit the first ``images`` test images; write edit.png, edit.json and (--npz) samples.npz."""
    run = open_run(config, UNet, "unet", PROJECT, default_out="edit")
    diffusion = DiffusionRun(config, run)
    if diffusion.first_stage is not None:
        raise GenlabError("diffusion-edit works on pixels: this is a latent diffusion run")
    editor = Editor(config, diffusion)
    test = run.test_split(VALUE_RANGE, diffusion.shape)
    count = config.npz or config.images
    if count > len(test):
        raise GenlabError(f"{count} images to edit: the test split has {len(test)}")
    originals = test.convert(test.images[:count])
    shown, results, baselines = [], [], []

    def edit_images(start: int, n: int) -> Tensor:
        """Edit originals start .. start + n - 1 (in batches), keep everything, return the results as uint8."""
        done = []
        for first in range(start, start + n, config.batch_size):
            seen, result, baseline = editor(originals[first : min(first + config.batch_size, start + n)],
                                            run.generator)  # fmt: skip
            shown.append(seen)
            baselines.append(baseline)
            done.append(result.clamp(-1, 1))
        results.extend(done)
        return unit_to_uint8((torch.cat(done) + 1) / 2)

    if config.npz:  # timed by the harness: the wall time per edited image in samples.json
        run.write_samples_npz(edit_images, config.npz, function_evaluations=editor.function_evaluations)
    else:
        edit_images(0, count)
    if config.npz and editor.operator is not None:  # bicubic / the blurred measurement: genlab-eval beside the method
        baseline_images = unit_to_uint8((torch.cat(baselines).clamp(-1, 1) + 1) / 2)
        run.written["baselines_npz"] = write_samples_npz(
            run.out / "baselines.npz", lambda start, n: baseline_images[start : start + n], config.npz
        )
    shown_all, results_all, baselines_all = torch.cat(shown), torch.cat(results), torch.cat(baselines)
    measured = {
        "task": config.task, "images": len(originals), "function_evaluations": editor.function_evaluations,
        "psnr_db": float(psnr(results_all, originals).mean()), "ssim": float(ssim(results_all, originals).mean()),
        "baseline_psnr_db": float(psnr(baselines_all, originals).mean()),
        "baseline_ssim": float(ssim(baselines_all, originals).mean()),
    }  # fmt: skip
    if config.task in ("inpaint", "outpaint"):  # the known pixels are exact by construction: score the rest alone
        missing = 1 - editor.mask
        measured["missing_region_psnr_db"] = float(psnr(results_all, originals, where=missing).mean())
    run.write_json("edit.json", measured)
    rows = min(8, len(originals))
    grid = torch.stack([shown_all[:rows], results_all[:rows], originals[:rows]])  # (3, rows, C, H, W)
    run.save_grid((grid.flatten(0, 1) + 1) / 2, "edit.png", nrow=rows)
    print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in measured.items()))
    return run.finish()


main = console_script(DiffusionEditConfig, edit, "diffusion-edit")

if __name__ == "__main__":
    main()
