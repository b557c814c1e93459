"""fm-sample: samples of any run of this project. A rectified flow by Euler, midpoint or Heun, with 07's
classifier-free guidance, the straightness of its trajectories and the couplings that reflow and distillation
train on; a MeanFlow run by N steps of its average velocity; a consistency model (cm-train) by N-step
consistency sampling (Alg. 1 of Song et al. 2023).

uv run fm-sample --run runs/flow/<run>                          # Euler, 20 steps: samples.png
uv run fm-sample --run R --method heun --steps 8 --npz 10000     # for genlab-eval
uv run fm-sample --run R --straightness 1000                     # S(Z) of eq. 5 over 1000 trajectories
uv run fm-sample --run R --couplings 20000                       # (X_0, Z_1) pairs: couplings.safetensors
uv run fm-sample --run runs/consistency/<run> --steps 2          # consistency sampling at Karras levels
uv run fm-sample --run runs/consistency/<run> --levels 80 0.821  # ... at the paper's two-step CIFAR-10 levels
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from genlab.consistency import consistency_train
from genlab.consistency.consistency import multistep_sample, sampling_levels
from genlab.consistency.flow import straightness
from genlab.consistency.meanflow import meanflow_sample
from genlab.consistency.networks import TIME_SCALE, IntervalUNet, consistency_function_of, velocity_of
from genlab.consistency.samplers import FlowSampler
from genlab.consistency.train import PROJECT
from genlab.core.checkpoint import read_run_info, resolve_checkpoint
from genlab.core.config import option
from genlab.core.errors import GenlabError
from genlab.core.harness import OpenedRun, SampleConfig, console_script, open_run, require_at_least, unit_to_uint8
from genlab.diffusion.guidance import ClassifierFreeGuidance
from genlab.diffusion.model import UNet

Tensor = torch.Tensor


@dataclass
class FlowSampleConfig(SampleConfig):
    """Sample a trained rectified flow."""

    method: Literal["euler", "midpoint", "heun"] = option("euler", "the ODE solver (samplers.py)")
    steps: int = option(
        20, "solver steps (network evaluations: euler N, midpoint and heun 2N; MeanFlow and consistency runs N)"
    )
    levels: tuple[float, ...] = option(
        (), "consistency runs: the noise levels, largest first (default: --steps levels of Karras et al.'s grid)"
    )
    count: int = option(64, "images in samples.png")
    guidance_scale: float = option(1.0, "classifier-free guidance scale (1: the conditional flow)")
    straightness: int = option(0, "measure S(Z) over this many trajectories (0: no)")
    couplings: int = option(0, "write this many (X_0, Z_1) pairs to couplings.safetensors for reflow (0: none)")
    batch_size: int = option(250, "images per network call")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("steps", "count", "batch_size"))
        require_at_least(self, ("straightness", "couplings", "guidance_scale"), at_least=0)
        if any(not level > 0 for level in self.levels) or list(self.levels) != sorted(self.levels, reverse=True):
            raise GenlabError(f"--levels must be positive and decreasing, got {','.join(map(str, self.levels))}")


def open_any_run(config: FlowSampleConfig) -> tuple[OpenedRun, str]:
    """The run and what it learned: "velocity" (fm-train), "meanflow" (fm-train --objective meanflow) or
    "consistency" (cm-train). Options that do not apply to it are refused before anything is written."""
    run_dir, _ = resolve_checkpoint(config.run)
    info = read_run_info(run_dir)
    if info.get("project") == consistency_train.PROJECT:
        kind, opened = "consistency", open_run(config, UNet, "unet", consistency_train.PROJECT)
    else:
        kind = "meanflow" if info["config"].get("objective") == "meanflow" else "velocity"
        opened = open_run(config, IntervalUNet if kind == "meanflow" else UNet, "unet", PROJECT)
        if kind == "meanflow":  # the time scale it trained with (runs from before the option: the old 1000)
            opened.model.time_scale = info["config"].get("meanflow_time_scale", TIME_SCALE)
    if kind != "velocity":
        flow_only = {"--method": config.method != "euler", "--guidance-scale": config.guidance_scale != 1,
                     "--straightness": config.straightness > 0, "--couplings": config.couplings > 0}  # fmt: skip
        refused = [flag for flag, given in flow_only.items() if given]
        if refused:
            raise GenlabError(f"{', '.join(refused)}: for rectified-flow runs; this is a {kind} run")
    if config.levels and kind != "consistency":
        raise GenlabError(f"--levels are a consistency model's noise levels; this is a {kind} run")
    return opened, kind


@torch.no_grad()
def sample(config: FlowSampleConfig) -> dict[str, Path]:
    """Write samples.png (and the npz, the couplings, straightness.json); returns their paths by name."""
    run, kind = open_any_run(config)
    network, device = run.model, run.device
    classes = network.config.num_classes
    guided = ClassifierFreeGuidance(network, config.guidance_scale, classes) if classes and config.guidance_scale != 1 \
        else network  # fmt: skip
    velocity = velocity_of(guided)
    sampler = FlowSampler(config.steps, config.method)
    shape = (network.config.image_channels, network.config.image_size, network.config.image_size)
    evaluations = sampler.function_evaluations * (2 if classes and config.guidance_scale not in (0, 1) else 1)
    if kind == "consistency":
        trained = read_run_info(run.run_dir)
        f = consistency_function_of(network, run.train_config["method"], trained["sigma_min"])
        levels = list(config.levels) or sampling_levels(config.steps, trained["sigma_min"],
                                                                          trained["sigma_max"])  # fmt: skip
        evaluations = len(levels)

    def solve(x0: Tensor, labels: Tensor | None, trajectories: bool) -> Tensor | list[Tensor]:
        if kind == "meanflow":
            return meanflow_sample(network, x0, config.steps, labels)
        if kind == "consistency":
            return multistep_sample(f, x0, levels, labels, run.generator, trained["sigma_min"])
        return sampler.sample(velocity, x0, labels, trajectories)

    def draw(count: int, offset: int, trajectories: bool = False) -> tuple[Tensor, Tensor | None, list]:
        """``count`` draws: noise (B, C, H, W), labels (classes in turn from ``offset``) and the ODE's states."""
        x0 = torch.randn((count, *shape), generator=run.generator).to(device)
        labels = torch.arange(offset, offset + count, device=device) % classes if classes else None
        pieces = []
        for start in range(0, count, config.batch_size):
            batch_labels = None if labels is None else labels[start : start + config.batch_size]
            pieces.append(solve(x0[start : start + config.batch_size], batch_labels, trajectories))
        return x0, labels, pieces

    def images(count: int, offset: int) -> Tensor:
        return torch.cat(draw(count, offset)[2]).clamp(-1, 1)

    run.save_grid((images(config.count, 0) + 1) / 2, "samples.png", nrow=classes or None)
    if config.npz:
        run.write_samples_npz(lambda start, n: unit_to_uint8((images(n, start) + 1) / 2), config.npz, evaluations)
    if config.straightness:
        _, labels, pieces = draw(config.straightness, 0, trajectories=True)
        measured = []
        for index, trajectory in enumerate(pieces):
            batch_labels = (
                None if labels is None else labels[index * config.batch_size : (index + 1) * config.batch_size]
            )
            measured.append(straightness(velocity, trajectory, sampler.times, batch_labels) * len(trajectory[0]))
        value = sum(measured) / config.straightness
        run.write_json("straightness.json", {"straightness": value, "trajectories": config.straightness,
                                             "method": config.method, "steps": config.steps})  # fmt: skip
        print(f"straightness S(Z) over {config.straightness} trajectories: {value:.5f}")
    if config.couplings:
        x0, labels, pieces = draw(config.couplings, 0)
        tensors = {"x0": x0.cpu().contiguous(), "z1": torch.cat(pieces).cpu().contiguous()}
        if labels is not None:
            tensors["labels"] = labels.cpu().contiguous()
        path = run.out / "couplings.safetensors"
        save_file(tensors, str(path), metadata={"method": config.method, "steps": str(config.steps),
                                                "guidance_scale": str(config.guidance_scale)})  # fmt: skip
        run.written["couplings"] = path
    return run.finish()


main = console_script(FlowSampleConfig, sample, "fm-sample")

if __name__ == "__main__":
    main()
