"""The two-stage chain on tiny data: VQ-VAE (05) -> vqvae-encode -> a GPT and a MaskGIT prior (06) -> gpt-sample
-> images decoded through the VQ-VAE; VQ-VAE-2's top and bottom priors; and the refusal of another autoencoder."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from genlab.transformer import sample as gpt_sample
from genlab.transformer import train as gpt_train
from genlab.vqvae import encode as vqvae_encode
from genlab.vqvae import train as vqvae_train

VQVAE = ["--batch-size", "32", "--hidden-channels", "16", "--residual-channels", "8", "--residual-layers", "1",
         "--num-codes", "16", "--code-dim", "4", "--log-every", "5", "--sample-every", "0", "--eval-every", "0",
         "--checkpoint-every", "10", "--eval-images", "64", "--no-progress", "--device", "cpu"]  # fmt: skip
PRIOR = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "32", "--log-every", "5",
         "--eval-every", "0", "--checkpoint-every", "10", "--warmup-steps", "2", "--no-progress",
         "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VQ-VAE on synthetic 28x28 shapes (7 x 7 codes), and its tokens."""
    run = tmp_path_factory.mktemp("chain") / "vqvae"
    vqvae_train.main(["--dataset", "synthetic", *VQVAE, "--steps", "10", "--run-dir", str(run)])
    vqvae_encode.main(["--run", str(run), "--batch-size", "512"])
    return run / "tokens"


@pytest.mark.parametrize("prior", ["gpt", "maskgit"])
def test_vqvae_tokens_gpt_and_maskgit_priors_sample_decoded_images(tokens: Path, tmp_path: Path, prior: str) -> None:
    run = tmp_path / prior
    gpt_train.main(["--tokens", str(tokens), "--prior", prior, "--class-token", *PRIOR, "--steps", "10",
                    "--run-dir", str(run)])  # fmt: skip
    info = json.loads((tokens / "tokens.json").read_text())
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["dataset"] == "synthetic" and saved["layout"]["num_classes"] == info["num_classes"] == 4
    assert saved["autoencoder"]["weights_sha256"] == info["autoencoder"]["weights_sha256"]
    results = json.loads((run / "results.json").read_text())
    if prior == "gpt":  # the exact NLL, and with the decoder's term the two-stage model's bits/dim
        assert results["bits_per_code"] == pytest.approx(results["nats_per_grid"] / (49 * math.log(2)))
        recon = info["reconstruction"]
        # the decoder's term is vqvae-train's own final measurement: the test split, sigma fitted on train
        trained = json.loads((tokens.parent / "results.json").read_text())
        assert recon["test_nll_given_codes_nats"] == pytest.approx(trained["nll_given_codes_nats"], rel=1e-6)
        expected = (results["nats_per_grid"] + recon["test_nll_given_codes_nats"]) / (784 * math.log(2))
        assert results["bits_per_dim"] == pytest.approx(expected) and recon["num_dims"] == 784
    else:  # the tiny VQ-VAE uses few of its 16 codes: ten steps already put the loss below uniform guessing
        assert 0 < results["masked_token_loss_nats"] < math.log(16)
    gpt_sample.main(["--run", str(run), "--npz", "12", "--count", "2", "--decode-steps", "4", "--device", "cpu"])
    samples = np.load(run / "samples" / "samples.npz")["samples"]
    assert samples.shape == (12, 1, 28, 28) and samples.dtype == np.uint8
    cost = json.loads((run / "samples" / "samples.json").read_text())["function_evaluations_per_sample"]
    assert cost == (49 if prior == "gpt" else 4)
    assert (run / "samples" / "samples.png").is_file()


def test_a_prior_refuses_to_decode_with_another_autoencoder(
    tokens: Path, tmp_path: Path, user_error: Callable[..., str]
) -> None:
    run = tmp_path / "gpt"
    gpt_train.main(["--tokens", str(tokens), *PRIOR, "--steps", "2", "--run-dir", str(run)])
    other = tmp_path / "other-vqvae"  # the same architecture and data, another seed: other weights
    vqvae_train.main(["--dataset", "synthetic", *VQVAE, "--steps", "2", "--seed", "1", "--run-dir", str(other)])
    err = user_error(gpt_sample.main, ["--run", str(run), "--autoencoder", str(other), "--out", str(tmp_path / "o")])
    assert "not the ones that made the tokens" in err and not (tmp_path / "o" / "samples.png").exists()


def test_vqvae2_top_and_bottom_priors_sample_through_both_levels(
    tmp_path: Path, user_error: Callable[..., str]
) -> None:
    vqvae = tmp_path / "vqvae2"
    vqvae_train.main(["--model", "vqvae2", "--dataset", "synthetic_rgb", *VQVAE, "--steps", "2", "--run-dir",
                      str(vqvae)])  # fmt: skip
    vqvae_encode.main(["--run", str(vqvae), "--batch-size", "512"])
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    gpt_train.main(["--tokens", str(vqvae / "tokens"), "--level", "0", *PRIOR, "--steps", "2", "--run-dir", str(top)])
    gpt_train.main(["--tokens", str(vqvae / "tokens"), "--level", "1", *PRIOR, "--steps", "2", "--run-dir",
                    str(bottom)])  # fmt: skip
    layout = json.loads((bottom / "config.json").read_text())["layout"]
    assert layout["grid_shape"] == [8, 8] and layout["condition_shape"] == [4, 4]  # 1/4 and 1/8 of 32
    gpt_sample.main(["--run", str(bottom), "--top-run", str(top), "--npz", "3", "--count", "2", "--device", "cpu"])
    samples = np.load(bottom / "samples" / "samples.npz")["samples"]
    assert samples.shape == (3, 3, 32, 32)
    cost = json.loads((bottom / "samples" / "samples.json").read_text())["function_evaluations_per_sample"]
    assert cost == 16 + 64  # a GPT step per top code and per bottom code
    assert "--top-run" in user_error(gpt_sample.main, ["--run", str(bottom)])
    assert "bottom prior" in user_error(gpt_sample.main, ["--run", str(top)])
    assert "--level 2" in user_error(gpt_train.main, ["--tokens", str(vqvae / "tokens"), "--level", "2", *PRIOR])


def test_token_mistakes_are_one_line(tokens: Path, tmp_path: Path, user_error: Callable[..., str]) -> None:
    assert "--tokens" in user_error(gpt_train.main, ["--prior", "maskgit", *PRIOR])
    assert "two kinds" in user_error(gpt_train.main, ["--tokens", str(tokens), "--text", "a.txt", *PRIOR])
    assert "tokens.json" in user_error(gpt_train.main, ["--tokens", str(tmp_path), *PRIOR])
