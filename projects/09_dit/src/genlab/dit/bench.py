"""dit-bench: training images/s of our DiT against diffusers' DiTTransformer2DModel at the same configuration, in
one run, with the model FLOPs per image and the achieved FLOP/s as a fraction of this device's large-matmul FLOP/s.

    uv run dit-bench                                  # DiT-XS/4 on MNIST, batch 64
    uv run dit-bench --size S/2 --output bench.json

Both networks: adaLN-Zero, learned sigma (2C outputs), class-conditional, the same width, depth, heads and patch
size (diffusers' has the same parameters plus one copy of the timestep and label embedders per block). Each step:
x_t by q(x_t | x_0) on a random batch of the training images, MSE of the eps channels to the noise, backward, Adam,
in the same plain loop; the measurements alternate ``--repeats`` times and the median is reported. Training FLOPs
are taken as 3x the forward multiply-adds x 2 (a backward pass costs about two forwards; a multiply-add is two
FLOPs), the convention of MFU. diffusers' network needs a side that the patch size divides: pad the data or pick p.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab.core.bench import TimingConfig, matmul_flops_per_second
from genlab.core.checkpoint import resolve_device
from genlab.core.config import option
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, require_at_least
from genlab.diffusion.bench import time_plain_training
from genlab.diffusion.schedules import linear_schedule
from genlab.diffusion.train import load_split
from genlab.dit.model import DiT, DiTConfig, dit_config, forward_gflops


@dataclass
class DiTBenchConfig(TimingConfig):
    """Training images/s of our DiT and of diffusers' DiTTransformer2DModel; FLOPs and MFU."""

    size: str = option("XS/4", "a DiT size and patch size, e.g. XS/4 or S/2")
    dataset: str = option("mnist", "data set")
    batch_size: int = option(64, "images per training step")
    steps: int = option(20, "timed training steps per measurement")
    warmup: int = option(5, "untimed steps before each measurement")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("batch_size",))
        try:
            dit_config(self.size)
        except ValueError as error:
            raise GenlabError(f"--size: {error}") from None


def peer_dit(config: DiTConfig):
    """diffusers' DiTTransformer2DModel at our configuration (adaLN-Zero, learned sigma)."""
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=config.num_heads, attention_head_dim=config.hidden_size // config.num_heads,
        in_channels=config.image_channels, out_channels=config.out_channels, num_layers=config.depth,
        sample_size=config.image_size, patch_size=config.patch_size, num_embeds_ada_norm=config.num_classes,
        norm_eps=1e-6,
    )  # fmt: skip


def benchmark(config: DiTBenchConfig) -> dict:
    device = resolve_device(config.device)
    data = load_split({"dataset": config.dataset, "data_dir": config.data_dir, "image_size": None}, "train")
    C, H, _ = data.shape
    architecture = dit_config(config.size, image_channels=C, image_size=H, num_classes=max(data.num_classes, 1))
    if H % architecture.patch_size:
        raise GenlabError(f"diffusers' DiT needs the patch size to divide the side: {H} by {architecture.patch_size}")
    torch.manual_seed(config.seed)
    ours, theirs = DiT(architecture).to(device), peer_dit(architecture).to(device)
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in (("ours", ours), ("diffusers", theirs))}
    images = data.images.to(device)
    labels = (data.labels if data.labels is not None else torch.zeros(len(data), dtype=torch.long)).to(device)
    schedule = linear_schedule()
    optimizers = {"ours": torch.optim.Adam(ours.parameters(), lr=1e-4),
                  "diffusers": torch.optim.Adam(theirs.parameters(), lr=1e-4)}  # fmt: skip
    generator = torch.Generator().manual_seed(config.seed)

    def step_of(name: str):
        network, optimizer = (ours if name == "ours" else theirs), optimizers[name]

        def step(x0: torch.Tensor) -> None:
            y = labels[torch.randint(len(labels), (len(x0),), generator=generator).to(device)]
            t = torch.randint(0, schedule.num_timesteps, (len(x0),), device=device)
            noise = torch.randn_like(x0)
            x_t = schedule.q_sample(x0, t, noise)
            ours_call = name == "ours"
            output = network(x_t, t.float(), y) if ours_call else network(x_t, timestep=t, class_labels=y).sample
            F.mse_loss(output[:, :C], noise).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    rates: dict[str, list[float]] = {"diffusers": [], "ours": []}
    for _ in range(config.repeats):
        for name in rates:
            rates[name].append(time_plain_training(step_of(name), images, config, device))
    peak = matmul_flops_per_second(device=device)
    train = {k: statistics.median(v) for k, v in rates.items()}
    flops_per_image = 3 * 2 * forward_gflops(architecture) * 1e9  # forward + backward, two FLOPs per multiply-add
    achieved = {k: rate * flops_per_image for k, rate in train.items()}
    results = {
        "device": str(device), "size": config.size, "batch_size": config.batch_size, "parameters": counts,
        "forward_gflops_per_image": forward_gflops(architecture), "train_images_per_second": train,
        "train_speedup": train["ours"] / train["diffusers"], "matmul_flops_per_second": peak,
        "achieved_flops_per_second": achieved, "fraction_of_matmul": {k: v / peak for k, v in achieved.items()},
        "all_measurements": rates,
    }  # fmt: skip
    print(f"parameters: ours {counts['ours']:,}, diffusers {counts['diffusers']:,}; "
          f"{results['forward_gflops_per_image']:.4f} forward Gflops per image")  # fmt: skip
    print(f"training images/s (batch {config.batch_size}): diffusers {train['diffusers']:.1f}, ours {train['ours']:.1f}"
          f" ({results['train_speedup']:.2f}x)")  # fmt: skip
    print(
        f"achieved training FLOP/s: ours {achieved['ours'] / 1e9:.1f} G ({results['fraction_of_matmul']['ours']:.1%}"
        f" of this device's {peak / 1e9:.1f} GFLOP/s large-matmul rate), diffusers {achieved['diffusers'] / 1e9:.1f} G"
    )
    if config.output:
        Path(config.output).write_text(json.dumps(results, indent=1) + "\n")
    return results


main = console_script(DiTBenchConfig, benchmark, "dit-bench")

if __name__ == "__main__":
    main()
