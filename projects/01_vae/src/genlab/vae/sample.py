"""vae-sample: pictures from a trained VAE, and optionally its test log-likelihood.

    uv run vae-sample --run runs/vae/mnist-20261123-120000

writes into <run>/samples/ (or --out): prior samples, reconstructions (each test image above its
reconstruction), interpolations between pairs of test images, latent traversals, and for a 2-d latent the
decoded manifold (the VAE paper's Fig. 4). ``--npz N`` also saves N prior samples as uint8 for `genlab-eval`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from genlab.core.config import option
from genlab.core.errors import GenlabError
from genlab.core.harness import SampleConfig, console_script, open_run, require_at_least, unit_to_uint8
from genlab.core.visualise import interpolate_latents, latent_traversal, manifold_grid, to_unit
from genlab.vae.model import VAE
from genlab.vae.objective import likelihood_mean, sample_likelihood
from genlab.vae.train import PROJECT, estimate_test_nll, value_range_for


@dataclass
class VAESampleConfig(SampleConfig):
    """Draw pictures from a trained VAE: samples, reconstructions, interpolations, traversals, manifold."""

    count: int = option(64, "number of prior samples")
    mode: Literal["mean", "sample"] = option("mean", "show the mean of p(x|z), or a draw from it")
    interpolations: int = option(8, "pairs of test images to interpolate between")
    interpolation_steps: int = option(10, "images per interpolation, ends included")
    traversal_dims: int = option(10, "latent dimensions to traverse (those with the largest KL first)")
    traversal_range: float = option(3.0, "each traversal sweeps z_i over [-range, range]")
    manifold_steps: int = option(20, "grid side for the 2-d latent manifold")
    nll_samples: int = option(0, "if > 0, estimate the test NLL with this many importance samples")
    npz_of: Literal["prior", "reconstructions"] = option(
        "prior", "--npz: prior samples, or the reconstructions of the first N test images (an autoencoder's floor)"
    )

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("count", "interpolation_steps", "manifold_steps"), at_least=2)
        require_at_least(self, ("interpolations",))
        require_at_least(self, ("nll_samples", "traversal_dims"), at_least=0)
        require_at_least(self, ("traversal_range",), at_least=0)


@torch.no_grad()
def sample(config: VAESampleConfig) -> dict[str, Path]:
    """Write every picture; returns their paths by name."""
    run = open_run(config, VAE, "vae", PROJECT)
    model: VAE = run.model
    likelihood, device = model.config.likelihood, run.device

    def to_image(params: torch.Tensor) -> torch.Tensor:
        return likelihood_mean(likelihood, params) if config.mode == "mean" else sample_likelihood(likelihood, params)

    prior = to_image(model.decode(model.prior_sample(config.count, device)))  # (N, C, H, W)
    run.save_grid(prior, "prior_samples.png")
    test = run.test_split(value_range_for(likelihood), model.config.image_shape)
    if config.npz and config.npz_of == "reconstructions" and config.npz > len(test):
        raise GenlabError(f"--npz {config.npz} reconstructions: the test split has {len(test)} images")

    def reconstruct(start: int, n: int) -> torch.Tensor:
        """Test images start .. start + n - 1 through the encoder's mean and the decoder."""
        x = test.batch(torch.arange(start, start + n, device=device)).images
        return unit_to_uint8(to_image(model.decode(model.encode(x)[0])))

    if config.npz:
        prior_draw = lambda _, n: unit_to_uint8(to_image(model.decode(model.prior_sample(n, device))))  # noqa: E731
        draw = reconstruct if config.npz_of == "reconstructions" else prior_draw
        run.write_samples_npz(draw, config.npz, function_evaluations=1)  # one pass of the decoder
    picks = torch.randperm(len(test), generator=run.generator)[: max(8, 2 * config.interpolations)].to(device)
    noise = torch.rand((len(picks), *test.shape), device=device)
    x = test.batch(picks, noise).images
    originals = to_unit(x, test.value_range)
    mu, log_var = model.encode(x)
    reconstructions = to_image(model.decode(mu))
    rows = torch.stack([originals[:8], reconstructions[:8]])  # (2, 8, C, H, W): originals above
    run.save_grid(rows.flatten(0, 1), "reconstructions.png", nrow=8)

    strips = [
        interpolate_latents(mu[2 * i], mu[2 * i + 1], config.interpolation_steps) for i in range(config.interpolations)
    ]
    run.save_grid(to_image(model.decode(torch.cat(strips))), "interpolations.png", nrow=config.interpolation_steps)

    if config.traversal_dims:
        # Traverse the dimensions the encoder uses most (largest average KL); unused ones decode to one image.
        kl_per_dim = (-0.5 * (1 + log_var - mu.pow(2) - log_var.exp())).mean(0)
        dims = torch.argsort(kl_per_dim, descending=True)[: config.traversal_dims].tolist()
        values = torch.linspace(-config.traversal_range, config.traversal_range, 11, device=device)
        run.save_grid(to_image(model.decode(latent_traversal(mu[0], dims, values))), "traversals.png", nrow=11)

    if model.config.latent_dim == 2:
        manifold = to_image(manifold_grid(model.decode, config.manifold_steps, device))
        run.save_grid(manifold, "manifold.png", nrow=config.manifold_steps)

    if config.nll_samples:
        estimate = estimate_test_nll(model, test, config.nll_samples)
        run.write_json("test_nll.json", estimate)
        unit = f", {estimate['bits_per_dim']:.4f} bits/dim" if "bits_per_dim" in estimate else ""
        print(
            f"test NLL (K={config.nll_samples}, {estimate['num_images']} images): {estimate['nll_nats']:.2f} nats{unit}"
        )
    return run.finish()


main = console_script(VAESampleConfig, sample, "vae-sample")
