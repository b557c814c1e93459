"""Does a VQGAN run's discriminator tell images apart? Its mean patch logit on test images, on their reconstructions,
on uniform noise and on blank images, in training mode (batch statistics, as it is trained) and in eval mode
(running statistics); a discriminator at chance gives the same number for all four.

    GENLAB_DATA=$(realpath ../shared/data) uv run python projects/08_vqgan/results/discriminator-probe.py RUN [N]
"""

import json
import sys
from pathlib import Path

import torch

from genlab.vqgan.discriminator import PatchGAN
from genlab.vqgan.model import VQGAN
from genlab.vqvae.train import load_split

run = Path(sys.argv[1])
count = int(sys.argv[2]) if len(sys.argv) > 2 else 256
checkpoint = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
autoencoder = VQGAN.from_pretrained(checkpoint / "vqgan").eval()
discriminator = PatchGAN.from_pretrained(checkpoint / "discriminator")
test = load_split(json.loads((run / "config.json").read_text())["config"], "test")
torch.manual_seed(0)
with torch.no_grad():
    images = test.convert(test.images[:count])  # (N, C, H, W) in [-1, 1]
    inputs = {
        "test images": images,
        "their reconstructions": autoencoder(images).reconstruction,
        "uniform noise": torch.rand_like(images) * 2 - 1,
        "blank (all -1)": torch.full_like(images, -1.0),
    }
    print(f"{checkpoint.name}: mean patch logit over {count} images")
    print("| input | training mode | eval mode |")
    print("|---|---|---|")
    for name, x in inputs.items():
        means = [float(discriminator.train(mode)(x).mean()) for mode in (True, False)]
        print(f"| {name} | {means[0]:.4f} | {means[1]:.4f} |")
