"""The VQGAN chain on tiny data: vqgan-train (08) -> vqgan-encode -> a GPT and a MaskGIT prior (06) -> gpt-sample
-> images decoded through the VQGAN; vqgan-sample's reconstructions; and the refusal of another autoencoder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.core.checkpoint import load_pretrained
from genlab.transformer import sample as gpt_sample
from genlab.transformer import train as gpt_train
from genlab.vqgan import encode as vqgan_encode
from genlab.vqgan import sample as vqgan_sample
from genlab.vqgan import train as vqgan_train
from genlab.vqgan.model import VQGAN
from genlab.vqvae import train as vqvae_train
from genlab.vqvae.tokens import load_tokens

VQGAN_TINY = ["--dataset", "synthetic", "--size", "tiny", "--perceptual", "none", "--discriminator-start", "2",
              "--discriminator-channels", "8", "--batch-size", "8", "--log-every", "2", "--sample-every", "0",
              "--eval-every", "0", "--checkpoint-every", "10", "--eval-images", "16", "--no-progress",
              "--device", "cpu"]  # fmt: skip
PRIOR = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "32", "--log-every", "5",
         "--eval-every", "0", "--checkpoint-every", "10", "--warmup-steps", "2", "--no-progress",
         "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def vqgan_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VQGAN on synthetic 28x28 shapes (f = 4: 7 x 7 codes of 64), trained past its discriminator's start,
    and its tokens."""
    run = tmp_path_factory.mktemp("chain") / "vqgan"
    vqgan_train.main([*VQGAN_TINY, "--steps", "4", "--run-dir", str(run)])
    vqgan_encode.main(["--run", str(run), "--batch-size", "512", "--device", "cpu"])
    return run


def test_vqgan_encode_writes_the_grids_its_encoder_gives(vqgan_run: Path) -> None:
    test = load_tokens(vqgan_run / "tokens", "test")
    info = test.info
    assert info["autoencoder"]["project"] == "vqgan" and info["token_shapes"] == [[7, 7]] and info["num_codes"] == 64
    model = load_pretrained(vqgan_run, VQGAN, "vqgan", "vqgan").eval()
    images = vqgan_train.load_split({"dataset": "synthetic"}, "test").batch(torch.arange(16)).images
    with torch.no_grad():
        assert torch.equal(model.encode(images)[0], test.levels[0][:16])
    assert test.labels is not None and len(test) == info["splits"]["test"]


@pytest.mark.parametrize("prior", ["gpt", "maskgit"])
def test_gpt_and_maskgit_priors_on_vqgan_codes_decode_through_the_vqgan(
    vqgan_run: Path, tmp_path: Path, prior: str
) -> None:
    run = tmp_path / prior
    gpt_train.main(["--tokens", str(vqgan_run / "tokens"), "--prior", prior, "--class-token", *PRIOR, "--steps", "4",
                    "--run-dir", str(run)])  # fmt: skip
    gpt_sample.main(["--run", str(run), "--npz", "6", "--count", "2", "--decode-steps", "3", "--top-k", "0",
                     "--device", "cpu"])  # fmt: skip
    samples = np.load(run / "samples" / "samples.npz")["samples"]
    assert samples.shape == (6, 1, 28, 28) and samples.dtype == np.uint8
    cost = json.loads((run / "samples" / "samples.json").read_text())["function_evaluations_per_sample"]
    assert cost == (49 if prior == "gpt" else 3)


def test_a_vqgan_prior_refuses_a_vq_vae_and_another_vqgan(
    vqgan_run: Path, tmp_path: Path, user_error: Callable[..., str]
) -> None:
    run = tmp_path / "gpt"
    gpt_train.main(["--tokens", str(vqgan_run / "tokens"), *PRIOR, "--steps", "2", "--run-dir", str(run)])
    other = tmp_path / "other-vqgan"  # the same architecture and data, another seed: other weights
    vqgan_train.main([*VQGAN_TINY, "--steps", "2", "--no-adversarial", "--seed", "1", "--run-dir", str(other)])
    vqvae = tmp_path / "vqvae"
    vqvae_train.main(["--dataset", "synthetic", "--hidden-channels", "16", "--residual-channels", "8",
                      "--residual-layers", "1", "--num-codes", "16", "--code-dim", "4", "--steps", "2",
                      "--no-progress", "--device", "cpu", "--run-dir", str(vqvae)])  # fmt: skip
    for autoencoder in (other, vqvae):
        out = tmp_path / f"out-{autoencoder.name}"
        err = user_error(gpt_sample.main, ["--run", str(run), "--autoencoder", str(autoencoder), "--out", str(out)])
        assert "not the ones that made the tokens" in err and not (out / "samples.png").exists()
    err = user_error(gpt_sample.main, ["--run", str(run), "--autoencoder", str(run), "--out", str(tmp_path / "o")])
    assert "not an autoencoder" in err


def test_vqgan_sample_writes_test_reconstructions_for_genlab_eval(vqgan_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "samples"
    vqgan_sample.main(["--run", str(vqgan_run), "--npz", "20", "--count", "8", "--uniform-count", "8",
                       "--device", "cpu", "--out", str(out)])  # fmt: skip
    reconstructions = np.load(out / "samples.npz")["samples"]
    model = load_pretrained(vqgan_run, VQGAN, "vqgan", "vqgan").eval()
    images = vqgan_train.load_split({"dataset": "synthetic"}, "test").batch(torch.arange(20)).images
    with torch.no_grad():
        expected = ((model(images).reconstruction.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
    assert reconstructions.shape == (20, 1, 28, 28)
    assert np.abs(reconstructions.astype(int) - expected.numpy().astype(int)).max() <= 1
    assert (out / "reconstructions.png").is_file() and (out / "uniform_tokens.png").is_file()
