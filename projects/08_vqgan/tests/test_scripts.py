"""vqgan-train end to end on tiny synthetic data: the three rows of the loss ablation, a resume, and refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from genlab.vqgan import train as vqgan_train
from genlab.vqgan.efficientnet import EfficientNetLite0

TINY = ["--dataset", "synthetic", "--size", "tiny", "--batch-size", "8", "--log-every", "2", "--sample-every", "0",
        "--eval-every", "0", "--checkpoint-every", "10", "--eval-images", "16", "--discriminator-channels", "8",
        "--no-progress", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised efficientnet-lite0.pth in the layout fetch-weights writes (CI has no real weights)."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(EfficientNetLite0().state_dict(), folder / "efficientnet-lite0.pth")
    return folder


@pytest.mark.parametrize("flags", [
    ["--perceptual", "none", "--no-adversarial"],
    ["--no-adversarial"],
    ["--discriminator-start", "2"],
])  # fmt: skip
def test_each_row_of_the_ablation_trains(tmp_path: Path, weights: Path, flags: list[str]) -> None:
    run = tmp_path / "run"
    vqgan_train.main([*TINY, *flags, "--steps", "4", "--weights-dir", str(weights), "--run-dir", str(run)])
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 4 and 0 < results["codes/usage"] <= 1 and results["psnr_db"] > 0
    assert (results["perceptual"] is None) == ("none" in flags)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    adversarial = [m for m in metrics if "autoencoder/adaptive_weight" in m]
    if "--discriminator-start" in flags:  # logged from the start step on: steps 3 and 4 are in the second log
        assert adversarial and all(m["step"] >= 4 for m in adversarial)
        assert any("discriminator/loss" in m and m["discriminator/loss"] > 0 for m in metrics)
    else:
        assert not adversarial and not any("discriminator/loss" in m for m in metrics)  # no discriminator at all


def test_a_vqgan_run_resumes(tmp_path: Path, weights: Path) -> None:
    run = tmp_path / "run"
    common = [*TINY, "--discriminator-start", "2", "--weights-dir", str(weights), "--steps", "4", "--run-dir", str(run)]
    vqgan_train.main([*common, "--time-limit", "0.000001"])
    vqgan_train.main([*TINY, "--steps", "4", "--time-limit", "0", "--resume", str(run)])
    assert json.loads((run / "results.json").read_text())["step"] == 4


@pytest.mark.parametrize(("flags", "message"), [
    (["--weights-dir", "/nonexistent"], "fetch-weights"),
    (["--discriminator-start", "50", "--steps", "10"], "--discriminator-start 50 is not before"),
    (["--size", "huge"], "--size"),
    (["--size", "twemoji-small", "--perceptual", "none"], "multiple of f = 8"),  # 28x28 images, f = 8
    (["--perceptual-weight", "-1"], "--perceptual-weight"),
])  # fmt: skip
def test_vqgan_train_refuses_nonsense_in_one_line(tmp_path: Path, user_error: Callable, flags: list[str],
                                                  message: str) -> None:  # fmt: skip
    run = tmp_path / "refused"
    base = [*TINY, "--steps", "4", "--discriminator-start", "2"]
    err = user_error(vqgan_train.main, [*base, *flags, "--run-dir", str(run)])
    assert message in err and not run.exists()
