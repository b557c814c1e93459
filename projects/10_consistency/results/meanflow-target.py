"""How big each term of MeanFlow's regression target is for a trained run: on 256 test images with s != t drawn as
in training (logit-normal(0.4, 1.0), the README's command), the target

    v + (t - s) (v . grad_z u + d_s u)

split into its velocity, its spatial term (a JVP along (v, 0, 0)) and its time term (a JVP along (0, 1, 0)), each as
a root mean square per pixel, with the network's own u and the squared error between u and the target.

    uv run python projects/10_consistency/results/meanflow-target.py runs/flow/meanflow [DATASET]

Prints one markdown row for the online weights and one for the EMA weights. A time term much larger than u itself
means the network's output changes steeply with s at a fixed state, which the target then asks it to follow.
"""

from __future__ import annotations

import sys

import torch

from genlab.consistency.meanflow import sample_interval
from genlab.consistency.networks import IntervalUNet
from genlab.consistency.train import PROJECT
from genlab.core.checkpoint import load_pretrained, read_run_info, resolve_checkpoint
from genlab.core.data import load_dataset

COUNT = 256


def rms(tensor: torch.Tensor) -> float:
    return tensor.square().mean().sqrt().item()


def main() -> None:
    run, dataset = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "fashion_mnist"
    run_dir, checkpoint = resolve_checkpoint(run)
    trained = read_run_info(run_dir)["config"]
    data = load_dataset(dataset, "test", value_range="signed")
    generator = torch.Generator().manual_seed(0)
    x1, labels = data.convert(data.images[:COUNT]), data.labels[:COUNT]
    x0 = torch.randn(x1.shape, generator=generator)
    s, t = sample_interval(COUNT, 1.0, "logit-normal", 0.4, 1.0, generator)  # every pair with s < t
    gap = (t - s).view(-1, 1, 1, 1)
    z, v = x0 + s.view(-1, 1, 1, 1) * (x1 - x0), x1 - x0  # z_s = s x1 + (1 - s) x0
    print(f"mean t - s {gap.mean().item():.3f}, rms v {rms(v):.3f}")
    print("| weights | rms u | rms (t - s) v . grad_z u | rms (t - s) d_s u | rms target | mse(u, target) |")
    print("|---|---|---|---|---|---|")
    for ema in (False, True):
        model = load_pretrained(checkpoint, IntervalUNet, "unet", PROJECT, ema=ema).eval()
        model.time_scale = trained.get("meanflow_time_scale", model.time_scale)

        def u(z: torch.Tensor, s: torch.Tensor, t: torch.Tensor, model: IntervalUNet = model) -> torch.Tensor:
            return model(z, s, t, labels)

        still_z, still_s, still_t = torch.zeros_like(z), torch.zeros_like(s), torch.zeros_like(t)
        with torch.no_grad():
            value, spatial = torch.func.jvp(u, (z, s, t), (v, still_s, still_t))
            _, temporal = torch.func.jvp(u, (z, s, t), (still_z, torch.ones_like(s), still_t))
        target = v + gap * (spatial + temporal)
        print(
            f"| {'EMA' if ema else 'online'} | {rms(value):.3f} | {rms(gap * spatial):.3f} | "
            f"{rms(gap * temporal):.3f} | {rms(target):.3f} | {(value - target).square().mean().item():.3f} |"
        )


if __name__ == "__main__":
    main()
