"""ar-train and ar-sample end to end on tiny synthetic data, and user mistakes as one line and exit 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from genlab.autoregressive import sample, train

BIN = Path(sys.executable).parent
TINY = ["--dataset", "synthetic", "--batch-size", "8", "--eval-images", "16", "--sample-images", "4", "--device", "cpu",
        "--no-progress"]  # fmt: skip


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENLAB_NO_DOWNLOAD", "1")


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_ar_train_script_writes_a_run_and_resume_continues_it(tmp_path: Path) -> None:
    """The installed ar-train script trains a tiny PixelCNN and reports the exact test NLL (finite, and after 4
    steps still near the 784 ln 2 nats of a fair coin per pixel); --resume continues the same run to step 6."""
    run = tmp_path / "run"
    args = [*TINY, "--model", "pixelcnn", "--steps", "4", "--hidden-channels", "4", "--num-layers", "1",
            "--head-channels", "4", "--run-dir", str(run)]  # fmt: skip
    env = {**os.environ, "GENLAB_NO_DOWNLOAD": "1"}
    done = subprocess.run([str(BIN / "ar-train"), *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "test NLL (1024 images)" in done.stdout
    results = _results(run)
    assert results["step"] == 4 and results["num_images"] == 1024
    assert math.isfinite(results["nll_nats"]) and 0 < results["nll_nats"] < 1.2 * 784 * math.log(2)
    assert results["bits_per_dim"] == pytest.approx(results["nll_nats"] / (784 * math.log(2)))
    saved = json.loads((run / "config.json").read_text())
    assert saved["project"] == "autoregressive" and saved["model"]["model"] == "pixelcnn"
    assert saved["model"]["hidden_channels"] == 4 and saved["model"]["levels"] == 2
    assert (run / "checkpoints" / "latest").read_text() == "step_00000004"
    assert (run / "samples" / "step_00000004.png").is_file()

    train.main(["--resume", str(run), "--steps", "6"])  # in-process: the same entry point, no second start-up
    assert (run / "checkpoints" / "latest").read_text() == "step_00000006"
    assert _results(run)["step"] == 6 and math.isfinite(_results(run)["nll_nats"])
    assert json.loads((run / "config.json").read_text())["config"]["steps"] == 6


def test_the_seed_fixes_the_initial_weights_and_so_the_whole_run(tmp_path: Path) -> None:
    """--seed must fix the network's initial weights as well as the batches: two runs with one seed report the same
    test NLL to the last bit, and another seed reports another."""
    nll = {}
    for name, seed in [("first", 0), ("again", 0), ("other", 1)]:
        train.main([*TINY, "--model", "pixelcnn", "--steps", "1", "--hidden-channels", "4", "--num-layers", "1",
                    "--head-channels", "4", "--seed", str(seed), "--run-dir", str(tmp_path / name)])  # fmt: skip
        nll[name] = _results(tmp_path / name)["nll_nats"]
    assert nll["first"] == nll["again"]
    assert nll["first"] != nll["other"]


def test_order_agnostic_made_reports_its_ensemble_and_samples_naively(
    tmp_path: Path, capsys: pytest.CaptureFixture, user_error: Callable[..., str]
) -> None:
    """MADE Sec. 4.2: with several mask sets the final results also hold the test NLL of their ensemble (a mixture,
    log-mean-exp of the per-mask likelihoods); ar-sample reloads the checkpoint and gets the same numbers, samples
    MADE with the naive sampler and refuses --sampler cached."""
    run, out = tmp_path / "made", tmp_path / "pictures"
    train.main([*TINY, "--model", "made", "--steps", "3", "--image-size", "8", "--hidden-sizes", "16",
                "--num-masks", "3", "--order-agnostic", "true", "--run-dir", str(run)])  # fmt: skip
    results = _results(run)
    assert math.isfinite(results["ensemble_nll_nats"]) and results["ensemble_nll_nats"] > 0
    assert results["ensemble_bits_per_dim"] == pytest.approx(results["ensemble_nll_nats"] / (64 * math.log(2)))
    assert json.loads((run / "config.json").read_text())["model"]["num_masks"] == 3

    sample.main(["--run", str(run), "--out", str(out), "--count", "3", "--completions", "2", "--completions-per-image",
                 "2", "--nll", "--npz", "3", "--device", "cpu"])  # fmt: skip
    reloaded = json.loads((out / "test_nll.json").read_text())
    assert reloaded["nll_nats"] == pytest.approx(results["nll_nats"], rel=1e-5)
    assert reloaded["ensemble_nll_nats"] == pytest.approx(results["ensemble_nll_nats"], rel=1e-5)
    assert np.load(out / "samples.npz")["samples"].shape == (3, 1, 8, 8)
    assert (out / "completions.png").is_file()
    capsys.readouterr()
    err = user_error(sample.main, ["--run", str(run), "--sampler", "cached"])
    assert "made has no cached sampler" in err


def test_ar_sample_writes_samples_completions_and_a_sampler_comparison(tmp_path: Path) -> None:
    """A class-conditional Gated PixelCNN (eq. 4; --class-conditional sizes the label embedding from the data's 4
    shape classes), then ar-sample on its run: the sample grid, half-image completions, the npz of pixels, the
    naive-vs-cached comparison (identical images, Ramachandran et al. 2017) and the exact test NLL, which must
    equal the one training reported (the checkpoint round trip loses nothing)."""
    assert (BIN / "ar-sample").is_file()  # the console script is installed
    run, out = tmp_path / "gated", tmp_path / "pictures"
    train.main([*TINY, "--model", "gated_pixelcnn", "--class-conditional", "--steps", "2", "--image-size", "8",
                "--hidden-channels", "4", "--num-layers", "2", "--head-channels", "4",
                "--run-dir", str(run)])  # fmt: skip
    assert json.loads((run / "config.json").read_text())["model"]["num_classes"] == 4
    sample.main(["--run", str(run), "--out", str(out), "--count", "4", "--completions", "2", "--completions-per-image",
                 "2", "--compare-samplers", "--compare-count", "3", "--npz", "4", "--nll",
                 "--device", "cpu"])  # fmt: skip
    names = {path.name for path in out.iterdir()}
    assert names == {"samples.png", "samples.npz", "samples.json", "completions.png", "sampler_speed.json",
                     "test_nll.json"}  # fmt: skip
    images = np.load(out / "samples.npz")["samples"]
    assert images.shape == (4, 1, 8, 8) and set(np.unique(images)) <= {0, 255}
    speed = json.loads((out / "sampler_speed.json").read_text())
    assert speed["identical"] and speed["differing_values"] == 0 and speed["images"] == 3
    reloaded = json.loads((out / "test_nll.json").read_text())
    assert reloaded["nll_nats"] == pytest.approx(_results(run)["nll_nats"], rel=1e-5)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "nope"], "invalid choice: 'nope'"),
        (["--model", "made", "--dataset", "fashion_mnist"], "made models binary data"),
        (["--model", "nade", "--levels", "256"], "nade models binary data"),
        (["--class-conditional"], "--class-conditional is part of Gated PixelCNN"),
        (["--model", "row_lstm", "--class-conditional"], "--class-conditional is part of Gated PixelCNN"),
        (["--hidden-channels", "0"], "--hidden-channels must be positive"),
        (["--hidden-sizes", "8", "0"], "--hidden-sizes must be positive"),
        (["--eval-images", "0"], "--eval-images and --sample-images must be positive"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2_before_any_data_is_read(
    user_error: Callable[..., str], tmp_path: Path, argv: list[str], expected: str
) -> None:
    """The data folder is empty and downloads are off, so reaching the data loader would give a different error:
    each mistake is caught while the flags are validated."""
    err = user_error(train.main, [*argv, "--data-dir", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "r")])
    assert expected in err
    assert not (tmp_path / "r").exists()  # nothing was started


def test_missing_data_is_one_line_naming_the_folder(user_error: Callable[..., str], tmp_path: Path) -> None:
    argv = ["--model", "pixelcnn", "--dataset", "mnist", "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "r")]
    err = user_error(train.main, argv)
    assert str(tmp_path / "MNIST" / "raw") in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "--run is required"),
        (["--run", "x", "--temperature", "0"], "--temperature must be a positive number"),
        (["--run", "x", "--count", "0"], "--count must be a number >= 1"),
        (["--run", "x", "--sampler", "fast"], "invalid choice: 'fast'"),
    ],
)
def test_ar_sample_mistakes_are_one_line_and_exit_2(
    user_error: Callable[..., str], argv: list[str], expected: str
) -> None:
    assert expected in user_error(sample.main, argv)
