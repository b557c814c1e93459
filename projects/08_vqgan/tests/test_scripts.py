"""vqgan-train end to end on tiny synthetic data: the three rows of the loss ablation, a resume, two processes
under torchrun, and refusals; and the discriminator's fakes, which leave the quantiser's statistics alone."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from genlab.vqgan import train as vqgan_train
from genlab.vqgan.efficientnet import EfficientNetLite0
from genlab.vqgan.model import VQGAN, VQGANConfig

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


@pytest.mark.slow
def test_vqgan_trains_under_torchrun(tmp_path: Path, weights: Path) -> None:
    """Both update rules under DistributedDataParallel (2 CPU processes, gloo): the adaptive weight reads the last
    layer of the unwrapped model (the DDP wrapper has no last_layer), and the discriminator's fakes go through the
    wrapped one with the unwrapped model's quantiser in eval mode."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "genlab.vqgan.train", *TINY, "--discriminator-start", "1", "--steps", "3", "--weights-dir",
               str(weights), "--run-dir", str(run)]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["step"] == 3
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("autoencoder/adaptive_weight" in m for m in metrics)  # the adversarial term was on
    assert any("discriminator/loss" in m and m["discriminator/loss"] > 0 for m in metrics)  # > 0: fakes were judged


def test_the_discriminator_step_leaves_the_quantiser_statistics_alone() -> None:
    """Only the autoencoder's update moves the quantiser's EMA codebook, its running usage counts and its dead-code
    restarts: the discriminator's fakes (reconstruct_without_updating) leave every weight and buffer bitwise as they
    were, draw no restart, and hand the quantiser back in training mode. The control: a plain training-mode forward
    of the same model on the same images moves all of them, so the test can fail."""
    torch.manual_seed(0)
    overrides, _ = vqgan_train.SIZES["tiny"]
    model = VQGAN(VQGANConfig(image_shape=(1, 28, 28), ema=True, dead_code_threshold=1.0, **overrides)).train()
    images = torch.rand(8, 1, 28, 28) * 2 - 1
    before = {name: value.clone() for name, value in model.state_dict().items()}
    generator = torch.get_rng_state()  # a restart draws its replacements from the global generator
    fake = vqgan_train.reconstruct_without_updating(model, model.quantizer, images)
    assert fake.shape == images.shape and not fake.requires_grad
    assert model.quantizer.training and model.training
    moved = [name for name, value in model.state_dict().items() if not torch.equal(value, before[name])]
    assert not moved, moved
    assert torch.equal(torch.get_rng_state(), generator)
    with torch.no_grad():
        model(images)
    after = model.state_dict()
    statistics = ["codebook", "cluster_size", "cluster_sum", "usage_count"]
    assert all(not torch.equal(after[f"quantizer.{name}"], before[f"quantizer.{name}"]) for name in statistics)
    assert not torch.equal(torch.get_rng_state(), generator)  # ... and some code was restarted


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
