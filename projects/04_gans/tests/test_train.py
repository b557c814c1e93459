"""gan-train, gan-sample and genlab-eval end to end on synthetic data, and every user mistake in one line."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from genlab.core.evaluate import main as eval_main
from genlab.gans import sample, train

TINY = ["--dataset", "synthetic", "--batch-size", "8", "--latent-dim", "8", "--width", "4", "--device", "cpu",
        "--no-progress", "--sample-images", "4"]  # fmt: skip


def _weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / latest / name / "model.safetensors"))


@pytest.mark.parametrize("variant", ["gan", "dcgan", "wgan", "wgan_gp", "sagan", "cgan"])
def test_every_variant_trains_and_samples(tmp_path: Path, variant: str) -> None:
    run = tmp_path / variant
    train.main([*TINY, "--variant", variant, "--steps", "2", "--n-critic", "2", "--run-dir", str(run)])
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"]["n_critic"] == 2
    assert (run / "samples" / "step_00000002.png").is_file()
    if variant == "wgan":  # every critic parameter clipped to [-0.01, 0.01] (batch norm's statistics are buffers)
        weights = _weights(run, "discriminator")
        parameters = [t for name, t in weights.items() if "running" not in name and "num_batches" not in name]
        assert max(t.abs().max().item() for t in parameters) <= 0.01 + 1e-7
    sample.main(["--run", str(run), "--count", "4", "--npz", "6", "--device", "cpu"])
    pixels = np.load(run / "samples" / "samples.npz")["samples"]
    assert pixels.shape == (6, 1, 28, 28) and pixels.dtype == np.uint8


def test_toy_data_trains_through_the_core_loop_and_counts_modes(tmp_path: Path) -> None:
    """The 2-D ring: MLP nets on (2, 1, 1) float points, the mode count logged at the end, a scatter picture."""
    run = tmp_path / "ring"
    train.main(["--dataset", "ring8", "--variant", "wgan_gp", "--hidden", "16", "16", "--latent-dim", "4",
                "--batch-size", "32", "--steps", "2", "--toy-samples", "200", "--device", "cpu", "--no-progress",
                "--run-dir", str(run)])  # fmt: skip
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert 0 <= final["eval/modes_covered"] <= 8 and 0.0 <= final["eval/high_quality"] <= 1.0
    sample.main(["--run", str(run), "--count", "100", "--device", "cpu"])
    coverage = json.loads((run / "samples" / "coverage.json").read_text())
    assert coverage["num_modes"] == 8 and (run / "samples" / "scatter.png").is_file()


def _modes_after_short_training(run: Path, variant: str, *extra: str) -> dict[str, float]:
    train.main(["--dataset", "ring8", "--toy-std", "0.1", "--variant", variant, "--hidden", "128", "128",
                "--latent-dim", "8", "--batch-size", "256", "--n-critic", "5", "--lr-generator", "1e-3",
                "--lr-discriminator", "4e-3",
                "--steps", "600", "--seed", "0", "--sample-every", "0", "--checkpoint-every", "0", "--device", "cpu",
                "--no-progress", "--run-dir", str(run), *extra])  # fmt: skip
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]


def test_wgan_gp_covers_more_modes_than_the_saturating_gan(tmp_path: Path) -> None:
    """Mode collapse and its cure (Gulrajani et al. 2017, Sec. 5.1): the same MLP nets, batches, step counts and
    optimisers, a discriminator trained five times per generator step at four times the generator's rate; only
    the objective differs. The minimax GAN settles on a few of the eight modes; WGAN-GP (lambda 0.1, as in the
    authors' toy code) spreads over nearly all of them. Calibrated on seeds 0-2: GAN 4, 3, 3 modes, WGAN-GP 8, 8, 7."""
    gan = _modes_after_short_training(tmp_path / "gan", "gan", "--generator-loss", "minimax")
    wgan_gp = _modes_after_short_training(tmp_path / "wgan_gp", "wgan_gp")
    assert wgan_gp["eval/modes_covered"] >= 6
    assert wgan_gp["eval/modes_covered"] >= gan["eval/modes_covered"] + 2


def test_discriminator_and_generator_losses_are_logged_per_rule(tmp_path: Path) -> None:
    run = tmp_path / "gp"
    train.main([*TINY, "--variant", "wgan_gp", "--steps", "2", "--log-every", "1", "--sample-every", "1",
                "--run-dir", str(run)])  # fmt: skip
    assert (run / "samples" / "progress.gif").is_file()  # the two grids of steps 1 and 2 as a training GIF
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*logged)
    assert {"discriminator/loss", "discriminator/gradient_penalty", "discriminator/wasserstein_estimate",
            "generator/loss", "discriminator/lr", "generator/lr"} <= keys  # fmt: skip
    lrs = [entry["generator/lr"] for entry in logged if "generator/lr" in entry]
    assert lrs[0] == pytest.approx(1e-4)  # WGAN-GP's generator rate from the recipe


def test_genlab_eval_scores_a_gan_run(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "dcgan"
    train.main([*TINY, "--variant", "dcgan", "--steps", "2", "--run-dir", str(run)])
    sample.main(["--run", str(run), "--count", "4", "--npz", "40", "--device", "cpu"])
    torch.manual_seed(0)
    inception = tmp_path / "fake-inception.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # a stand-in for the TF-Inception TorchScript: 3x299x299 in, 2048 features out
        fake = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(3 * 8 * 8, 2048))
        torch.jit.script(fake).save(str(inception))
    capsys.readouterr()
    eval_main(["--samples", str(run), "--inception", str(inception), "--kid-subset-size", "20", "--kid-subsets",
               "5", "--device", "cpu"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "samples: 40" in printed and "synthetic train, 40 images" in printed
    report = json.loads((run / "samples" / "eval-inception-train-40.json").read_text())
    assert report["inception_score"].startswith("not available")
    assert report["scores"]["fid"] > report["floor"]["scores"]["fid"]  # two steps of training are not the data


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--variant", "nonsense"], "invalid choice"),
        (["--variant", "wgan", "--class-conditional"], "--class-conditional is for"),
        (["--variant", "wgan_gp", "--generator-loss", "minimax"], "belongs to the gan loss"),
        (["--lr", "0.01"], "no single --lr"),
        (["--n-critic", "0"], "must be positive"),
        (["--dataset", "nonsense"], "unknown dataset"),
        (["--dataset", "ring8", "--variant", "dcgan"], "toy data ring8 is for"),
        (["--dataset", "ring8", "--variant", "gan", "--toy-std", "0"], "--toy-std must be positive"),
    ],
)
def test_gan_train_mistakes_are_one_line(user_error: Callable[..., str], argv: list[str], expected: str) -> None:
    assert expected in user_error(train.main, [*TINY, *argv]).lower()


def test_gan_sample_mistakes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, user_error: Callable[..., str]
) -> None:
    assert "--run is required" in user_error(sample.main, [])
    assert "does not exist" in user_error(sample.main, ["--run", str(tmp_path / "absent")])
    run = tmp_path / "dcgan"
    train.main([*TINY, "--variant", "dcgan", "--steps", "1", "--run-dir", str(run)])
    capsys.readouterr()
    assert "--class-label" in user_error(sample.main, ["--run", str(run), "--class-label", "2"])
