"""flow-compare: our Glow beside normflows' Glow (Stimper et al., PyPI ``normflows``), same size, same data.

    uv run flow-compare --steps 1000 --run-dir runs/flows/compare

Both models are trained through the same genlab.core loop from the same batches, with the same optimizer,
schedule, actnorm initialisation batch and dequantisation, and scored on the same test images with the same
noise. What differs is only each library's Glow: L levels of K steps (actnorm, LU 1x1 convolution, affine
coupling with a sigmoid scale and a zero-initialised 3x3 / 1x1 / 3x3 network of the same width). One
difference is by design of the two libraries: normflows gives each factored-out latent its own learned
per-channel Gaussian, where ours conditions it on the half that goes on (Glow's split prior). Writes
compare.json: training images/s and test bits/dim after the same number of steps, for each.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from genlab.core.config import option, parse_config
from genlab.core.data import ImageDataset
from genlab.core.errors import GenlabError, exit_on_user_error
from genlab.flows.normflows_glow import NormflowsGlow
from genlab.flows.train import PRESETS, FlowTrainConfig, build_flow, fit_flow, load_splits, model_config


@dataclass
class FlowCompareConfig(FlowTrainConfig):
    """Train our Glow and normflows' Glow on the same data for the same steps; report speed and bits/dim."""

    steps: int | None = option(1000, "optimizer steps for each model")
    eval_every: int = option(0, "test bits/dim every N steps (0: only at the end)")
    sample_every: int = option(0, "sample grid every N steps (0: only at the end)")

    def validate(self) -> None:
        super().validate()
        if self.model != "glow":
            raise GenlabError("flow-compare compares Glow with normflows' Glow: leave --model at glow")
        if self.class_conditional:
            raise GenlabError("flow-compare is unconditional: normflows conditions every level's prior, ours the top")
        if self.resume:
            raise GenlabError("flow-compare starts both runs afresh: --resume is not supported")


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    compare(parse_config(FlowCompareConfig, argv, PRESETS, prog="flow-compare"))


def compare(config: FlowCompareConfig) -> dict[str, dict[str, float]]:
    """Both trainings, one after the other; writes <run-dir>/compare.json and returns its content."""
    train_data, test_data = load_splits(config)
    if importlib.util.find_spec("normflows") is None:
        raise GenlabError("the normflows comparison needs normflows: pip install normflows")
    root = Path(config.run_dir or "runs/flows/compare")
    report: dict[str, dict[str, float]] = {}
    networks: dict[str, torch.nn.Module] = {}

    def build(name: str):
        def build_seeded(config: FlowTrainConfig, data: ImageDataset) -> torch.nn.Module:
            """Each network is the first thing built after its Trainer seeds torch: one seed, two inits."""
            networks[name] = build_flow(config, data) if name == "genlab" else NormflowsGlow(model_config(config, data))
            return networks[name]

        return build_seeded

    for name in ("genlab", "normflows"):
        fit_flow(dataclasses.replace(config, run_dir=str(root / name)), build(name), train_data, test_data)
        network = networks[name]
        results = json.loads((root / name / "results.json").read_text())
        speeds = [json.loads(line)["images_per_second"] for line in (root / name / "metrics.jsonl").open()
                  if "images_per_second" in line]  # fmt: skip
        report[name] = {
            "parameters": sum(p.numel() for p in network.parameters()),
            "steps": results["step"],
            "train_images_per_second": statistics.median(speeds[1:] or speeds),  # the first window warms up
            "test_bits_per_dim": results["bits_per_dim"],
        }
    report["setting"] = {
        "dataset": config.dataset,
        "batch_size": config.batch_size,
        "device": str(config.device),
        **{k: getattr(networks["genlab"].config, k) for k in ("num_scales", "steps_per_scale", "hidden_channels")},
    }
    (root / "compare.json").write_text(json.dumps(report, indent=1))
    for name in ("genlab", "normflows"):
        row = report[name]
        print(f"{name:>9}: {row['parameters']:,} parameters, {row['train_images_per_second']:.1f} images/s, "
              f"{row['test_bits_per_dim']:.4f} bits/dim after {row['steps']} steps")  # fmt: skip
    return report
