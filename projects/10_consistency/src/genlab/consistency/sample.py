"""fm-sample: samples of a rectified flow by Euler, midpoint or Heun, with 07's classifier-free guidance; the
straightness of its trajectories; and the couplings that reflow and distillation train on.

uv run fm-sample --run runs/flow/<run>                          # Euler, 20 steps: samples.png
uv run fm-sample --run R --method heun --steps 8 --npz 10000     # for genlab-eval
uv run fm-sample --run R --straightness 1000                     # S(Z) of eq. 5 over 1000 trajectories
uv run fm-sample --run R --couplings 20000                       # (X_0, Z_1) pairs: couplings.safetensors
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from genlab.consistency.flow import straightness
from genlab.consistency.samplers import FlowSampler
from genlab.consistency.train import PROJECT, velocity_of
from genlab.core.config import option
from genlab.core.harness import SampleConfig, console_script, open_run, require_at_least, unit_to_uint8
from genlab.diffusion.guidance import ClassifierFreeGuidance
from genlab.diffusion.model import UNet

Tensor = torch.Tensor


@dataclass
class FlowSampleConfig(SampleConfig):
    """Sample a trained rectified flow."""

    method: Literal["euler", "midpoint", "heun"] = option("euler", "the ODE solver (samplers.py)")
    steps: int = option(20, "solver steps (network evaluations: euler N, midpoint and heun 2N)")
    count: int = option(64, "images in samples.png")
    guidance_scale: float = option(1.0, "classifier-free guidance scale (1: the conditional flow)")
    straightness: int = option(0, "measure S(Z) over this many trajectories (0: no)")
    couplings: int = option(0, "write this many (X_0, Z_1) pairs to couplings.safetensors for reflow (0: none)")
    batch_size: int = option(250, "images per network call")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("steps", "count", "batch_size"))
        require_at_least(self, ("straightness", "couplings", "guidance_scale"), at_least=0)


@torch.no_grad()
def sample(config: FlowSampleConfig) -> dict[str, Path]:
    """Write samples.png (and the npz, the couplings, straightness.json); returns their paths by name."""
    run = open_run(config, UNet, "unet", PROJECT)
    network, device = run.model, run.device
    classes = network.config.num_classes
    guided = ClassifierFreeGuidance(network, config.guidance_scale, classes) if classes and config.guidance_scale != 1 \
        else network  # fmt: skip
    velocity = velocity_of(guided)
    sampler = FlowSampler(config.steps, config.method)
    shape = (network.config.image_channels, network.config.image_size, network.config.image_size)

    def draw(count: int, offset: int, trajectories: bool = False) -> tuple[Tensor, Tensor | None, list]:
        """``count`` draws: noise (B, C, H, W), labels (classes in turn from ``offset``) and the ODE's states."""
        x0 = torch.randn((count, *shape), generator=run.generator).to(device)
        labels = torch.arange(offset, offset + count, device=device) % classes if classes else None
        pieces = []
        for start in range(0, count, config.batch_size):
            batch_labels = None if labels is None else labels[start : start + config.batch_size]
            pieces.append(sampler.sample(velocity, x0[start : start + config.batch_size], batch_labels, trajectories))
        return x0, labels, pieces

    def images(count: int, offset: int) -> Tensor:
        return torch.cat(draw(count, offset)[2]).clamp(-1, 1)

    run.save_grid((images(config.count, 0) + 1) / 2, "samples.png", nrow=classes or None)
    if config.npz:
        evaluations = sampler.function_evaluations * (2 if classes and config.guidance_scale not in (0, 1) else 1)
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
