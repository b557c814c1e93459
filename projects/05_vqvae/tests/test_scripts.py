"""vqvae-train, vqvae-sample and vqvae-encode end to end on tiny synthetic data, and their refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.core.checkpoint import load_pretrained, weights_sha256
from genlab.core.errors import GenlabError
from genlab.vqvae import encode as vqvae_encode
from genlab.vqvae import sample as vqvae_sample
from genlab.vqvae import train as vqvae_train
from genlab.vqvae.model import VQVAE
from genlab.vqvae.tokens import check_autoencoder, load_tokens

TINY = ["--batch-size", "32", "--hidden-channels", "16", "--residual-channels", "8", "--residual-layers", "1",
        "--num-codes", "16", "--code-dim", "4", "--log-every", "5", "--sample-every", "10", "--eval-every", "10",
        "--checkpoint-every", "10", "--eval-images", "64", "--no-progress", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("vqvae") / "run"
    vqvae_train.main(["--dataset", "synthetic", *TINY, "--steps", "20", "--run-dir", str(run)])
    return run


def test_train_writes_reconstruction_measurements_and_codebook_statistics(trained_run: Path) -> None:
    results = json.loads((trained_run / "results.json").read_text())
    assert results["step"] == 20 and results["num_images"] > 0
    assert results["psnr_db"] == pytest.approx(10 * np.log10(4 / results["mse"]))
    assert 0 < results["codes/usage"] <= 1 and 1 <= results["codes/perplexity"] <= 16
    # The bound: the decoder's nats plus log K per latent (7 x 7 latents of K = 16), in bits per dimension.
    expected = (results["nll_given_codes_nats"] + 49 * np.log(16)) / (784 * np.log(2))
    assert results["bits_per_dim_bound"] == pytest.approx(expected) and results["num_latents"] == 49
    logged = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in logged if "train/codes/perplexity" in r and "train/codes/usage" in r]
    assert train_steps == [5, 10, 15, 20]  # codebook usage and perplexity on every log step
    assert sorted(p.name for p in (trained_run / "samples").glob("step_*.png")) == [
        "step_00000010.png", "step_00000020.png",
    ]  # fmt: skip


def test_sample_writes_pictures_and_test_reconstructions_for_genlab_eval(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pictures"
    vqvae_sample.main(["--run", str(trained_run), "--out", str(out), "--npz", "24", "--count", "16"])
    assert {"reconstructions.png", "uniform_tokens.png", "samples.npz", "samples.json"} <= {
        p.name for p in out.iterdir()
    }
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (24, 1, 28, 28) and samples.dtype == np.uint8
    assert json.loads((out / "samples.json").read_text())["count"] == 24


def test_encode_writes_tokens_that_name_their_autoencoder_and_decode_in_one_call(trained_run: Path) -> None:
    vqvae_encode.main(["--run", str(trained_run), "--batch-size", "100"])
    train, test = load_tokens(trained_run / "tokens", "train"), load_tokens(trained_run / "tokens", "test")
    model = load_pretrained(trained_run, VQVAE, "vqvae", "vqvae")
    assert train.info["autoencoder"]["weights_sha256"] == weights_sha256(model)
    assert train.levels[0].shape[1:] == (7, 7) and train.levels[0].dtype == torch.int64
    assert len(train) == train.info["splits"]["train"] and len(test) == test.info["splits"]["test"]
    assert int(train.levels[0].max()) < 16
    # The tokens are the model's encoding of the data, and decode back through one call.
    test_images = vqvae_train.load_split({"dataset": "synthetic"}, "test")
    first = test_images.convert(test_images.images[:4])
    assert torch.equal(model.encode(first)[0], test.levels[0][:4])
    assert model.decode_tokens([test.levels[0][:4]]).shape == (4, 1, 28, 28)
    check_autoencoder(model, train.info["autoencoder"]["weights_sha256"], "tokens")
    other = VQVAE(model.config)  # same architecture, other weights: must be refused
    with pytest.raises(GenlabError, match="not the ones that made the tokens"):
        check_autoencoder(other, train.info["autoencoder"]["weights_sha256"], "tokens")


def test_vqvae2_trains_on_32x32_and_shows_its_levels(tmp_path: Path) -> None:
    run = tmp_path / "run2"
    vqvae_train.main(["--model", "vqvae2", "--dataset", "synthetic_rgb", *TINY, "--steps", "4", "--run-dir", str(run)])
    results = json.loads((run / "results.json").read_text())
    assert results["num_latents"] == 4 * 4 + 8 * 8 and "top/usage" in results and "bottom/usage" in results
    vqvae_sample.main(["--run", str(run), "--count", "8", "--uniform-count", "8"])
    assert (run / "samples" / "levels.png").is_file()


def test_user_mistakes_are_one_line(user_error: Callable[..., str], trained_run: Path, tmp_path: Path) -> None:
    err = user_error(vqvae_train.main, ["--model", "vqvae2", "--dataset", "synthetic", *TINY,
                                                 "--run-dir", str(tmp_path / "r")])  # fmt: skip
    assert "--image-size 32" in err and not (tmp_path / "r").exists()
    assert "--decay" in user_error(vqvae_train.main, ["--decay", "1.5", "--run-dir", str(tmp_path / "d")])
    assert "--npz" in user_error(vqvae_encode.main, ["--run", str(trained_run), "--npz", "5"])
    assert "multiple of 8" in user_error(vqvae_sample.main, ["--run", str(trained_run), "--count", "12"])
    assert "only" in user_error(vqvae_sample.main, ["--run", str(trained_run), "--npz", "100000"])
