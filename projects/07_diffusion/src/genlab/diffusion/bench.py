"""diffusion-bench: our U-Net and DDPM loss against diffusers' UNet2DModel and DDPMScheduler, in one run.

    uv run diffusion-bench                                  # mnist-small on MNIST, batch 64
    uv run diffusion-bench --size mnist-ddpm --output bench.json

Training images/s, three ways on the same data and batch: diffusers' UNet2DModel (the same layout mapped onto
its blocks, parameter counts printed side by side) with DDPMScheduler.add_noise in a plain accelerate loop (their
training example's loop: prepare, forward, MSE to the noise, accelerator.backward, step); our U-Net with our
diffusion_loss in the same plain loop; and our U-Net as diffusion-train runs it, through genlab.core's Trainer.
Sampling images/s: 50 DDIM steps, our sampler with our U-Net against DDIMScheduler's loop with UNet2DModel. The
measurements alternate ``--repeats`` times and the median is reported. Both networks are unconditional here.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab.core.bench import BenchConfig, BenchmarkSpec, TimingConfig, synchronize, time_core_loop
from genlab.core.checkpoint import resolve_device
from genlab.core.config import option
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, require_at_least
from genlab.diffusion.model import SIZES, UNet, UNetConfig, unet_config
from genlab.diffusion.objective import diffusion_loss
from genlab.diffusion.prediction import Denoiser
from genlab.diffusion.samplers import DDIMSampler
from genlab.diffusion.schedules import linear_schedule
from genlab.diffusion.train import load_split


@dataclass
class DiffusionBenchConfig(TimingConfig):
    """Training and sampling images/s of our U-Net and of diffusers' UNet2DModel at the same layout."""

    size: str = option("mnist-small", f"named U-Net size ({', '.join(SIZES)})")
    dataset: str = option("mnist", "data set")
    batch_size: int = option(64, "images per training step")
    steps: int = option(20, "timed training steps per measurement")
    warmup: int = option(5, "untimed steps before each measurement")
    sample_steps: int = option(50, "DDIM steps of the sampling measurement")
    sample_batch: int = option(64, "images per sampling measurement")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("batch_size", "sample_steps", "sample_batch"))
        if self.size not in SIZES:
            raise GenlabError(f"unknown --size {self.size!r}; known: {', '.join(SIZES)}")


def peer_unet(config: UNetConfig):
    """diffusers' UNet2DModel with our layout: the same widths per resolution, residual blocks per level (ours and
    theirs both give the up path one more), attention at the same sides, the same head width, GroupNorm groups and
    time embedding (4 x base, sinusoidal with DDPM's frequency shift), scale-shift norm when ours has it."""
    from diffusers import UNet2DModel

    widths = [config.base_channels * m for m in config.channel_multipliers]
    sides = [config.image_size // 2**i for i in range(len(widths))]
    down = ["AttnDownBlock2D" if side in config.attention_resolutions else "DownBlock2D" for side in sides]
    up = ["AttnUpBlock2D" if side in config.attention_resolutions else "UpBlock2D" for side in reversed(sides)]
    return UNet2DModel(
        sample_size=config.image_size, in_channels=config.image_channels, out_channels=config.out_channels,
        block_out_channels=tuple(widths), layers_per_block=config.residual_blocks, down_block_types=tuple(down),
        up_block_types=tuple(up), attention_head_dim=config.head_channels, norm_num_groups=config.groups,
        dropout=config.dropout, resnet_time_scale_shift="scale_shift" if config.scale_shift else "default",
        freq_shift=1, flip_sin_to_cos=False,
    )  # fmt: skip


def time_plain_training(step: Callable[[torch.Tensor], None], images: torch.Tensor, config: DiffusionBenchConfig,
                        device: torch.device) -> float:  # fmt: skip
    """Images/s of ``step(batch)`` on random batches of the in-memory training images (already on the device)."""
    generator = torch.Generator().manual_seed(config.seed)
    start = 0.0
    for done in range(config.warmup + config.steps):
        if done == config.warmup:
            synchronize(device)
            start = time.perf_counter()
        index = torch.randint(len(images), (config.batch_size,), generator=generator).to(device)
        step(images[index].float() / 127.5 - 1)
    synchronize(device)
    return config.steps * config.batch_size / (time.perf_counter() - start)


def benchmark(config: DiffusionBenchConfig) -> dict:
    from accelerate import Accelerator
    from diffusers import DDIMScheduler, DDPMScheduler

    device = resolve_device(config.device)
    data = load_split({"dataset": config.dataset, "data_dir": config.data_dir, "image_size": None}, "train")
    C, H, _ = data.shape
    architecture = unet_config(config.size, image_channels=C, image_size=H)
    torch.manual_seed(config.seed)
    ours, theirs = UNet(architecture).to(device), peer_unet(architecture).to(device)
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in (("ours", ours), ("diffusers", theirs))}
    images = data.images.to(device)
    schedule, scheduler = linear_schedule(), DDPMScheduler(num_train_timesteps=1000)
    accelerator = Accelerator(cpu=device.type == "cpu")
    theirs_optimizer = torch.optim.Adam(theirs.parameters(), lr=1e-4)
    theirs, theirs_optimizer = accelerator.prepare(theirs, theirs_optimizer)
    ours_optimizer = torch.optim.Adam(ours.parameters(), lr=1e-4)

    def diffusers_step(x0: torch.Tensor) -> None:
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (len(x0),), device=x0.device)
        prediction = theirs(scheduler.add_noise(x0, noise, t), t).sample
        accelerator.backward(F.mse_loss(prediction, noise))
        theirs_optimizer.step()
        theirs_optimizer.zero_grad(set_to_none=True)

    def our_step(x0: torch.Tensor) -> None:
        loss, _ = diffusion_loss(ours, schedule, x0)
        loss.backward()
        ours_optimizer.step()
        ours_optimizer.zero_grad(set_to_none=True)

    spec = BenchmarkSpec(
        project="diffusion", build_model=lambda: UNet(architecture), dataset=config.dataset, value_range="signed",
        loss=lambda model, x0: diffusion_loss(model, schedule, x0), batch_size=config.batch_size, lr=1e-4,
    )  # fmt: skip
    core_config = BenchConfig(steps=config.steps, warmup=config.warmup, seed=config.seed, device=device.type)
    rates: dict[str, list[float]] = {"diffusers": [], "ours_plain": [], "ours_trainer": []}
    for _ in range(config.repeats):
        rates["diffusers"].append(time_plain_training(diffusers_step, images, config, device))
        rates["ours_plain"].append(time_plain_training(our_step, images, config, device))
        rates["ours_trainer"].append(time_core_loop(spec, data.to(device), core_config, device))

    ddim = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True)
    ddim.set_timesteps(config.sample_steps)
    ours.eval()
    theirs.eval()

    @torch.no_grad()
    def sample_diffusers() -> float:
        x = torch.randn(config.sample_batch, C, H, H, device=device)
        synchronize(device)
        start = time.perf_counter()
        for t in ddim.timesteps:
            x = ddim.step(theirs(x, t.to(device)).sample, t, x).prev_sample
        synchronize(device)
        return config.sample_batch / (time.perf_counter() - start)

    def sample_ours() -> float:
        x = torch.randn(config.sample_batch, C, H, H, device=device)
        synchronize(device)
        start = time.perf_counter()
        DDIMSampler(schedule, config.sample_steps).sample(Denoiser(ours, schedule), x)
        synchronize(device)
        return config.sample_batch / (time.perf_counter() - start)

    sampling: dict[str, list[float]] = {"diffusers": [], "ours": []}
    for _ in range(config.repeats):
        sampling["diffusers"].append(sample_diffusers())
        sampling["ours"].append(sample_ours())
    train = {k: statistics.median(v) for k, v in rates.items()}
    sample = {k: statistics.median(v) for k, v in sampling.items()}
    results = {
        "device": str(device), "size": config.size, "batch_size": config.batch_size, "parameters": counts,
        "train_images_per_second": train, "sample_images_per_second": sample,
        "train_speedup_ours_plain": train["ours_plain"] / train["diffusers"],
        "train_speedup_ours_trainer": train["ours_trainer"] / train["diffusers"],
        "sample_speedup": sample["ours"] / sample["diffusers"], "sample_steps": config.sample_steps,
        "all_measurements": {"train": rates, "sample": sampling},
    }  # fmt: skip
    print(f"parameters: ours {counts['ours']:,}, diffusers {counts['diffusers']:,}")
    print(f"training images/s (batch {config.batch_size}): diffusers {train['diffusers']:.1f}, ours in the same loop "
          f"{train['ours_plain']:.1f} ({results['train_speedup_ours_plain']:.2f}x), ours through the Trainer "
          f"{train['ours_trainer']:.1f} ({results['train_speedup_ours_trainer']:.2f}x)")  # fmt: skip
    print(f"sampling images/s ({config.sample_steps} DDIM steps, batch {config.sample_batch}): diffusers "
          f"{sample['diffusers']:.2f}, ours {sample['ours']:.2f} ({results['sample_speedup']:.2f}x)")  # fmt: skip
    if config.output:
        Path(config.output).write_text(json.dumps(results, indent=1) + "\n")
    return results


main = console_script(DiffusionBenchConfig, benchmark, "diffusion-bench")

if __name__ == "__main__":
    main()
