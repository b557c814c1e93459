"""genlab-bench: how much the core loop costs, against a plain PyTorch loop doing the same training.

    uv run genlab-bench vae                      # the VAE project's default model, batch and optimizer

Both loops train the same model (same initial weights), batch size and Adam on the same data. The core loop is
genlab.core.Trainer with data held on the device; the plain loop is a textbook one: a DataLoader over a
TensorDataset, the batch converted and moved each step, loss.backward(), optimizer.step(). Throughput is
measured after warm-up steps, the two loops alternate ``--repeats`` times, and the median is reported.
Projects register what to time under the entry-point group ``genlab.bench``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Literal

import torch

from genlab.core.checkpoint import resolve_device
from genlab.core.config import option, parse_config
from genlab.core.data import convert_range, load_dataset
from genlab.core.errors import GenlabError, exit_on_user_error


@dataclass
class BenchmarkSpec:
    """What a project asks to be timed: a model factory, its loss on a batch of images, data and optimizer."""

    project: str
    build_model: Callable[[], torch.nn.Module]
    loss: Callable[[torch.nn.Module, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    dataset: str
    value_range: str
    batch_size: int
    lr: float
    build_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None  # default: Adam at lr


@dataclass
class TimingConfig:
    """The flags of every benchmark here and in the projects (genlab-bench, diffusion-bench, dit-bench, gpt-bench):
    alternating timed measurements, each after untimed warm-up steps, on a device, with a JSON copy."""

    data_dir: str = option("", "data root (default: $GENLAB_DATA, else ~/.cache/genlab/data)")
    steps: int = option(300, "timed steps per measurement")
    warmup: int = option(30, "untimed steps before each measurement")
    repeats: int = option(3, "measurements per contestant, alternating; the median is reported")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "device")
    seed: int = option(0, "seed")
    output: str = option("", "also write the results as JSON to this file")

    def validate(self) -> None:
        if self.steps <= 0 or self.warmup <= 0 or self.repeats <= 0:
            raise GenlabError("--steps, --warmup and --repeats must be positive")
        resolve_device(self.device)


@dataclass
class BenchConfig(TimingConfig):
    """Time the core training loop against a plain PyTorch loop on the same model, data and optimizer."""

    project: str = option("vae", "project to benchmark (one registered under the genlab.bench entry points)")
    dataset: str = option("", "data set (default: the project's)")


def registered_specs() -> dict[str, Callable[[], BenchmarkSpec]]:
    return {ep.name: ep.load for ep in entry_points(group="genlab.bench")}


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer reads the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_plain_loop(spec: BenchmarkSpec, images: torch.Tensor, config: BenchConfig, device: torch.device) -> float:
    """Images per second of a textbook loop: DataLoader, per-step conversion and copy, backward, step."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(config.seed)
    model = spec.build_model().to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    loader = DataLoader(TensorDataset(images), batch_size=spec.batch_size, shuffle=True, drop_last=True)
    total = config.warmup + config.steps
    done, start = 0, 0.0
    while done < total:
        for (batch,) in loader:
            if done == config.warmup:
                synchronize(device)
                start = time.perf_counter()
            batch = batch.to(device)
            noise = torch.rand(batch.shape, device=device) if spec.value_range == "binary" else None
            loss, _ = spec.loss(model, convert_range(batch, spec.value_range, noise))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == total:
                break
    synchronize(device)
    return config.steps * spec.batch_size / (time.perf_counter() - start)


def time_core_loop(spec: BenchmarkSpec, dataset, config: BenchConfig, device: torch.device) -> float:
    """Images per second of genlab.core.Trainer on the same model, batch and optimizer.

    The trainer logs throughput every ``log_every`` steps; with log_every = warm-up and the timed steps a
    multiple of it, the timed throughput is total images over the summed time of the logged segments.
    """
    from genlab.core.trainer import TrainConfig, Trainer

    segments = max(1, config.steps // config.warmup)
    with tempfile.TemporaryDirectory() as run_dir:
        train_config = TrainConfig(
            dataset=dataset.name, steps=config.warmup * (segments + 1), batch_size=spec.batch_size, lr=spec.lr,
            seed=config.seed, device=device.type, run_dir=run_dir, log_every=config.warmup, sample_every=0,
            eval_every=0, checkpoint_every=0, progress=False,
        )  # fmt: skip
        trainer = Trainer(train_config, f"bench-{spec.project}")
        model = trainer.add_model("model", spec.build_model(), ema=False)
        build = spec.build_optimizer or (lambda m: torch.optim.Adam(m.parameters(), lr=spec.lr))
        optimizer = build(model)
        trainer.add_update("train", optimizer, lambda batch: spec.loss(model, batch.images), models=["model"])
        trainer.fit(dataset)
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    timed = [r["images_per_second"] for r in records if r["step"] > config.warmup]
    # Equal segments: overall throughput is the harmonic mean of the segments' throughputs.
    return len(timed) / sum(1.0 / rate for rate in timed)


def matmul_flops_per_second(size: int = 2048, repeats: int = 10, device: torch.device | str = "cpu") -> float:
    """This device's large-matmul FLOP/s in float32: the median over ``repeats`` of one (size x size) @ (size x size)
    product, 2 size^3 FLOPs each: the ceiling that achieved FLOP/s is compared with."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    device = torch.device(device)
    a @ b  # warm-up: threads and kernels
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: ``genlab-bench PROJECT [flags]``."""
    run_benchmark(list(sys.argv[1:] if argv is None else argv))


def run_benchmark(argv: list[str]) -> dict[str, float]:
    """Run the benchmark that ``argv`` describes and print the comparison."""
    raw = argv
    if raw and not raw[0].startswith("-"):
        raw = ["--project", raw[0], *raw[1:]]  # `genlab-bench vae` as shorthand for --project vae
    config = parse_config(BenchConfig, raw, prog="genlab-bench")
    specs = registered_specs()
    if config.project not in specs:
        raise GenlabError(f"no benchmark for project {config.project!r}; registered: {', '.join(sorted(specs))}")
    spec = specs[config.project]()()
    device = _pick_device(config.device)
    dataset = load_dataset(config.dataset or spec.dataset, "train", data_dir=config.data_dir or None,
                           value_range=spec.value_range)  # fmt: skip
    core, plain = [], []
    for _ in range(config.repeats):
        core.append(time_core_loop(spec, dataset, config, device))
        plain.append(time_plain_loop(spec, dataset.images.cpu(), config, device))
    result = {
        "project": config.project,
        "dataset": dataset.name,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "batch_size": spec.batch_size,
        "steps": config.steps,
        "core_images_per_second": statistics.median(core),
        "plain_images_per_second": statistics.median(plain),
    }
    result["ratio"] = result["core_images_per_second"] / result["plain_images_per_second"]
    print(
        f"{config.project} on {result['dataset']}, {result['device']} ({result['threads']} threads), "
        f"batch {spec.batch_size}, median of {config.repeats} x {config.steps} steps:\n"
        f"  genlab.core loop  {result['core_images_per_second']:10.0f} images/s\n"
        f"  plain PyTorch     {result['plain_images_per_second']:10.0f} images/s\n"
        f"  ratio core/plain  {result['ratio']:10.3f}"
    )
    if config.output:
        Path(config.output).write_text(json.dumps(result, indent=1))
    return result
