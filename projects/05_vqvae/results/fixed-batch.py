"""The Twemoji divergence, traced on one fixed batch: 40 steps of the one-level VQ-VAE (size small) on the first 32
Twemoji training images, in each codebook mode, printing the total loss, the reconstruction MSE, the codebook's
perplexity and the encoder outputs' mean |z_e| against the codes' largest norm.

    GENLAB_DATA=$(realpath ../shared/data) uv run python projects/05_vqvae/results/fixed-batch.py [DATASET]
"""

from __future__ import annotations

import sys

import torch

from genlab.core.data import load_dataset
from genlab.vqvae.model import VQVAE, VQVAEConfig
from genlab.vqvae.objective import vqvae_loss

dataset = sys.argv[1] if len(sys.argv) > 1 else "twemoji"
data = load_dataset(dataset, "train", value_range="signed")
x = data.convert(data.images[:32])


def run(label: str, lr: float = 2e-4, init_from_data: bool = False, sgd: bool = False, **quantizer) -> None:
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(image_shape=tuple(x.shape[1:]), hidden_channels=128, residual_channels=32,
                              residual_layers=2, num_codes=512, code_dim=64, **quantizer))  # fmt: skip
    if init_from_data:  # the codes set to 512 of the batch's encoder outputs: no collapse at the start
        with torch.no_grad():
            z_e = model.pre_quantize(model.encoder(x)).permute(0, 2, 3, 1).reshape(-1, 64)
            model.quantizer.codebook.copy_(z_e[torch.randperm(len(z_e))[:512]])
    parameters = model.parameters()
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9) if sgd else torch.optim.Adam(parameters, lr=lr)
    shown = []
    for step in range(40):
        loss, terms = vqvae_loss(model, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in (0, 10, 20, 30, 39):
            with torch.no_grad():
                z_e = model.pre_quantize(model.encoder(x)).abs().mean().item()
                codes = model.quantizer.codebook.norm(dim=1).max().item()
            shown.append(f"{step}: {loss.item():.3f} / {terms['reconstruction_mse'].item():.3f} / "
                         f"{terms['codes/perplexity'].item():.0f} / {z_e:.2f} vs {codes:.3f}")  # fmt: skip
    print(f"{label:28s} " + " | ".join(shown), flush=True)


print(f"{dataset}: step: loss / reconstruction MSE / perplexity / mean |z_e| vs the largest code norm")
run("codebook loss, Adam 2e-4")
run("codebook loss, Adam 5e-5", lr=5e-5)
run("codes initialised from data", init_from_data=True)
run("codebook loss, SGD 0.05", lr=0.05, sgd=True)
run("dead-code restarts (1.0)", dead_code_threshold=1.0)
run("EMA codebook", ema=True)
