"""Latent diffusion's chain on tiny data: a first stage (01's conv VAE with a spatial latent, or 05's VQ-VAE) ->
its latents, scaled -> a tiny LDM (07) -> diffusion-sample decodes its samples through the recorded autoencoder;
and the refusal of an autoencoder whose weights changed since."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from genlab.core.checkpoint import load_pretrained, weights_sha256
from genlab.diffusion import sample as diffusion_sample
from genlab.diffusion import train as diffusion_train
from genlab.vae import train as vae_train
from genlab.vae.model import VAE
from genlab.vqvae import train as vqvae_train
from genlab.vqvae.model import VQVAE

COMMON = ["--dataset", "synthetic", "--batch-size", "32", "--log-every", "5", "--sample-every", "0", "--eval-every",
          "0", "--checkpoint-every", "10", "--no-progress", "--device", "cpu"]  # fmt: skip
FIRST_STAGES = {
    "kl": (vae_train, ["--architecture", "conv", "--hidden-dims", "8", "8", "--latent-channels", "2", "--beta",
                       "0.01", "--likelihood", "logistic", "--test-samples", "0", "--eval-images", "32",
                       "--eval-samples", "2"]),
    "vq": (vqvae_train, ["--hidden-channels", "16", "--residual-channels", "8", "--residual-layers", "1",
                         "--num-codes", "16", "--code-dim", "4", "--eval-images", "64"]),
}  # fmt: skip
LDM = ["--size", "tiny", "--steps", "4", "--warmup-steps", "1", "--sample-steps", "2", "--eval-images", "16",
       *COMMON]  # fmt: skip


def train_first_stage(kind: str, run: Path, steps: int = 6, resume: bool = False) -> None:
    module, flags = FIRST_STAGES[kind]
    if resume:
        module.main(["--resume", str(run), "--steps", str(steps), "--no-progress", "--device", "cpu"])
    else:
        module.main([*flags, *COMMON, "--steps", str(steps), "--run-dir", str(run)])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_first_stage_latents_ldm_and_decoded_samples(kind: str, tmp_path: Path, user_error: Callable) -> None:
    first_stage, ldm = tmp_path / kind, tmp_path / f"ldm-{kind}"
    train_first_stage(kind, first_stage)
    diffusion_train.main(["--first-stage", str(first_stage), *LDM, "--run-dir", str(ldm)])
    record = json.loads((ldm / "config.json").read_text())["first_stage"]
    model_class, name, project = (VAE, "vae", "vae") if kind == "kl" else (VQVAE, "vqvae", "vqvae")
    autoencoder = load_pretrained(first_stage, model_class, name, project)
    assert record["kind"] == kind and record["weights_sha256"] == weights_sha256(autoencoder)
    assert record["latent_shape"] == ([2, 7, 7] if kind == "kl" else [4, 7, 7]) and record["scale_factor"] > 0
    unet = json.loads((ldm / "config.json").read_text())["model"]
    assert (unet["image_channels"], unet["image_size"]) == tuple(record["latent_shape"][:2])
    assert list(unet["channel_multipliers"]) == [1]  # a 7x7 grid cannot be halved: the tiny size's one level

    diffusion_sample.main(["--run", str(ldm), "--npz", "6", "--count", "4", "--steps", "2", "--device", "cpu"])
    samples = np.load(ldm / "samples" / "samples.npz")["samples"]
    assert samples.shape == (6, 1, 28, 28) and samples.dtype == np.uint8  # decoded: images, not latents

    train_first_stage(kind, first_stage, steps=8, resume=True)  # the same folder, new weights
    out = tmp_path / "refused"
    err = user_error(diffusion_sample.main, ["--run", str(ldm), "--out", str(out), "--device", "cpu"])
    assert "is not the one this latent run was trained on" in err and not out.exists()


def test_a_first_stage_must_be_an_autoencoder_with_a_spatial_latent(tmp_path: Path, user_error: Callable) -> None:
    vector = tmp_path / "vector-vae"  # 01's conv VAE with a vector latent: nothing spatial to diffuse in
    vae_train.main(["--architecture", "conv", "--hidden-dims", "8", "8", "--likelihood", "logistic", "--test-samples",
                    "0", "--eval-images", "32", "--eval-samples", "2", *COMMON, "--steps", "1", "--run-dir",
                    str(vector)])  # fmt: skip
    err = user_error(diffusion_train.main, ["--first-stage", str(vector), *LDM, "--run-dir", str(tmp_path / "l")])
    assert "spatial latent" in err and not (tmp_path / "l").exists()
    pixels = tmp_path / "pixels"  # a diffusion run is not an autoencoder
    diffusion_train.main([*LDM, "--steps", "1", "--run-dir", str(pixels)])
    err = user_error(diffusion_train.main, ["--first-stage", str(pixels), *LDM, "--run-dir", str(tmp_path / "m")])
    assert "a first stage is a run of vae-train" in err and not (tmp_path / "m").exists()


def test_vae_sample_writes_the_first_stage_s_reconstructions_the_ldm_floor(
    tmp_path: Path, user_error: Callable
) -> None:
    """vae-sample --npz-of reconstructions: the first N test images through the encoder's mean and the decoder,
    the same images 07's KL first stage makes of them (its own path: diffusion's loader, moments, decode)."""
    import torch

    from genlab.diffusion.latent import KLFirstStage
    from genlab.vae import sample as vae_sample

    run, out = tmp_path / "kl", tmp_path / "recon"
    train_first_stage("kl", run)
    vae_sample.main(["--run", str(run), "--out", str(out), "--npz", "8", "--npz-of", "reconstructions",
                     "--count", "4", "--interpolations", "1", "--traversal-dims", "0", "--device", "cpu"])  # fmt: skip
    written = np.load(out / "samples.npz")["samples"].astype(int)
    stage = KLFirstStage(load_pretrained(run, VAE, "vae", "vae"))
    images = diffusion_train.load_split({"dataset": "synthetic"}, "test").batch(torch.arange(8)).images
    with torch.no_grad():
        expected = ((stage.decode(stage.moments(images)[0]) + 1) / 2 * 255).round().to(torch.uint8)
    assert written.shape == (8, 1, 28, 28) and np.abs(written - expected.numpy().astype(int)).max() <= 1
    err = user_error(vae_sample.main, ["--run", str(run), "--out", str(tmp_path / "o"), "--npz", "100000",
                                       "--npz-of", "reconstructions", "--device", "cpu"])  # fmt: skip
    assert "the test split has" in err and not (tmp_path / "o" / "samples.npz").exists()
