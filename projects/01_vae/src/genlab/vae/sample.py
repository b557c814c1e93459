"""vae-sample: pictures from a trained VAE, and optionally its test log-likelihood.

    uv run vae-sample --run runs/vae/mnist-20261123-120000

writes into <run>/samples/ (or --out): prior samples, reconstructions (each test image above its
reconstruction), interpolations between pairs of test images, latent traversals, and for a 2-d latent the
decoded manifold (the VAE paper's Fig. 4). ``--npz`` also saves the samples as uint8 for evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from genlab.core.checkpoint import load_pretrained, read_run_info, resolve_checkpoint, resolve_device
from genlab.core.config import option, parse_config
from genlab.core.data import load_dataset
from genlab.core.errors import GenlabError, exit_on_user_error
from genlab.core.visualise import interpolate_latents, latent_traversal, manifold_grid, save_grid, to_unit
from genlab.vae.model import VAE
from genlab.vae.objective import likelihood_mean, sample_likelihood
from genlab.vae.train import PROJECT, estimate_test_nll, value_range_for


@dataclass
class VAESampleConfig:
    """Draw pictures from a trained VAE: samples, reconstructions, interpolations, traversals, manifold."""

    run: str = option("", "run folder (its latest checkpoint) or a checkpoint folder")
    out: str = option("", "output folder (default: <run>/samples)")
    count: int = option(64, "number of prior samples")
    mode: Literal["mean", "sample"] = option("mean", "show the mean of p(x|z), or a draw from it")
    interpolations: int = option(8, "pairs of test images to interpolate between")
    interpolation_steps: int = option(10, "images per interpolation, ends included")
    traversal_dims: int = option(10, "latent dimensions to traverse (those with the largest KL first)")
    traversal_range: float = option(3.0, "each traversal sweeps z_i over [-range, range]")
    manifold_steps: int = option(20, "grid side for the 2-d latent manifold")
    npz: bool = option(False, "also save the prior samples as samples.npz (uint8, N x C x H x W)")
    nll_samples: int = option(0, "if > 0, estimate the test NLL with this many importance samples")
    data_dir: str = option("", "data root for test images (default: the run's, else $GENLAB_DATA)")
    ema: bool = option(True, "use the EMA weights when the run has them")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "device")
    seed: int = option(0, "random seed")

    def validate(self) -> None:
        if not self.run:
            raise GenlabError("--run is required: a run folder or a checkpoint folder")
        if min(self.count, self.interpolation_steps, self.manifold_steps) < 2 or self.interpolations < 1:
            raise GenlabError("--count, --interpolation-steps, --manifold-steps must be >= 2, --interpolations >= 1")
        if self.nll_samples < 0 or self.traversal_dims < 0:
            raise GenlabError("--nll-samples and --traversal-dims must be >= 0")


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    sample(parse_config(VAESampleConfig, argv, prog="vae-sample"))


@torch.no_grad()
def sample(config: VAESampleConfig) -> dict[str, Path]:
    """Write every picture; returns their paths by name."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    run_dir, checkpoint = resolve_checkpoint(config.run)
    model: VAE = load_pretrained(checkpoint, VAE, "vae", PROJECT, ema=config.ema).to(device).eval()
    train_config = read_run_info(run_dir)["config"]
    likelihood = model.config.likelihood
    out = Path(config.out) if config.out else run_dir / "samples"
    out.mkdir(parents=True, exist_ok=True)

    def to_image(params: torch.Tensor) -> torch.Tensor:
        return likelihood_mean(likelihood, params) if config.mode == "mean" else sample_likelihood(likelihood, params)

    written: dict[str, Path] = {}
    prior = to_image(model.decode(model.prior_sample(config.count, device)))  # (N, C, H, W)
    written["prior"] = save_grid(prior, out / "prior_samples.png")
    if config.npz:
        pixels = (prior * 255).round().to(torch.uint8).cpu().numpy()
        np.savez_compressed(out / "samples.npz", samples=pixels)
        written["npz"] = out / "samples.npz"

    test = load_dataset(
        train_config["dataset"], "test", data_dir=config.data_dir or train_config["data_dir"] or None,
        value_range=value_range_for(likelihood), image_size=train_config.get("image_size"), device=device,
    )  # fmt: skip
    if test.shape != tuple(model.config.image_shape):
        raise GenlabError(f"test images are {test.shape}, the model expects {tuple(model.config.image_shape)}")
    generator = torch.Generator().manual_seed(config.seed)
    picks = torch.randperm(len(test), generator=generator)[: max(8, 2 * config.interpolations)].to(device)
    noise = torch.rand((len(picks), *test.shape), device=device)
    x = test.batch(picks, noise).images
    originals = to_unit(x, test.value_range)
    mu, log_var = model.encode(x)
    reconstructions = to_image(model.decode(mu))
    rows = torch.stack([originals[:8], reconstructions[:8]])  # (2, 8, C, H, W): originals above
    written["reconstructions"] = save_grid(rows.flatten(0, 1), out / "reconstructions.png", nrow=8)

    strips = [
        interpolate_latents(mu[2 * i], mu[2 * i + 1], config.interpolation_steps) for i in range(config.interpolations)
    ]
    decoded = to_image(model.decode(torch.cat(strips)))
    written["interpolations"] = save_grid(decoded, out / "interpolations.png", nrow=config.interpolation_steps)

    if config.traversal_dims:
        # Traverse the dimensions the encoder uses most (largest average KL); unused ones decode to one image.
        kl_per_dim = (-0.5 * (1 + log_var - mu.pow(2) - log_var.exp())).mean(0)
        dims = torch.argsort(kl_per_dim, descending=True)[: config.traversal_dims].tolist()
        values = torch.linspace(-config.traversal_range, config.traversal_range, 11, device=device)
        latents = latent_traversal(mu[0], dims, values)
        written["traversals"] = save_grid(to_image(model.decode(latents)), out / "traversals.png", nrow=11)

    if model.config.latent_dim == 2:
        manifold = to_image(manifold_grid(model.decode, config.manifold_steps, device))
        written["manifold"] = save_grid(manifold, out / "manifold.png", nrow=config.manifold_steps)

    if config.nll_samples:
        estimate = estimate_test_nll(model, test, config.nll_samples)
        (out / "test_nll.json").write_text(json.dumps(estimate, indent=1))
        unit = f", {estimate['bits_per_dim']:.4f} bits/dim" if "bits_per_dim" in estimate else ""
        print(
            f"test NLL (K={config.nll_samples}, {estimate['num_images']} images): {estimate['nll_nats']:.2f} nats{unit}"
        )
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


if __name__ == "__main__":
    main()
