"""flow-train and flow-sample end to end on tiny synthetic data; each objective falls; user mistakes are one line."""

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
import torch

from genlab.core.config import parse_config
from genlab.core.data import load_dataset
from genlab.flows import compare, sample, train
from genlab.flows.model import FlowModel, build_config
from genlab.flows.objective import nll_loss

BIN = Path(sys.executable).parent
TINY = ["--dataset", "synthetic", "--image-size", "8", "--batch-size", "8", "--eval-images", "16",
        "--sample-images", "6", "--init-images", "16", "--hidden-channels", "8", "--device", "cpu",
        "--no-progress"]  # fmt: skip


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENLAB_NO_DOWNLOAD", "1")


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_flow_train_script_writes_a_run_and_resume_continues_it(tmp_path: Path) -> None:
    """The installed flow-train trains a tiny Glow and reports the test bound in bits/dim (after 3 steps still
    near the 8 bits/dim of a uniform model on 256 levels); --resume continues the same run."""
    run = tmp_path / "run"
    args = [*TINY, "--model", "glow", "--steps", "3", "--num-scales", "2", "--steps-per-scale", "2",
            "--run-dir", str(run)]  # fmt: skip
    env = {**os.environ, "GENLAB_NO_DOWNLOAD": "1"}
    done = subprocess.run([str(BIN / "flow-train"), *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    results = _results(run)
    assert results["step"] == 3 and results["num_images"] == 1024
    assert math.isfinite(results["bits_per_dim"]) and 0 < results["bits_per_dim"] < 12
    assert results["bits_per_dim"] == pytest.approx(results["nll_nats"] / (64 * math.log(2)))
    saved = json.loads((run / "config.json").read_text())
    assert saved["project"] == "flows" and saved["model"]["model"] == "glow" and saved["model"]["num_scales"] == 2
    assert (run / "samples" / "step_00000003.png").is_file()

    train.main(["--resume", str(run), "--steps", "5"])
    assert (run / "checkpoints" / "latest").read_text() == "step_00000005"
    assert _results(run)["step"] == 5


def test_flow_sample_writes_every_picture_and_reproduces_the_test_bits_per_dim(tmp_path: Path) -> None:
    """RealNVP (batch norm: the running averages are saved with the weights), then flow-sample on its run: the
    temperature rows, interpolations, the multi-scale picture, and the same test bits/dim as training reported."""
    assert (BIN / "flow-sample").is_file()
    run, out = tmp_path / "realnvp", tmp_path / "pictures"
    train.main([*TINY, "--model", "realnvp", "--steps", "3", "--num-scales", "2", "--num-blocks", "1",
                "--run-dir", str(run)])  # fmt: skip
    sample.main(["--run", str(run), "--out", str(out), "--temperatures", "0", "0.7", "--per-row", "3",
                 "--interpolations", "1", "--interpolation-steps", "3", "--scale-images", "2", "--nll",
                 "--npz", "5", "--device", "cpu"])  # fmt: skip
    names = {path.name for path in out.iterdir()}
    assert names == {"temperatures.png", "interpolations.png", "scales.png", "test_bits_per_dim.json", "samples.npz",
                     "samples.json"}  # fmt: skip
    pixels = np.load(out / "samples.npz")["samples"]
    assert pixels.dtype == np.uint8 and pixels.shape[0] == 5 and pixels.shape[1] == 1
    reloaded = json.loads((out / "test_bits_per_dim.json").read_text())
    assert reloaded["bits_per_dim"] == pytest.approx(_results(run)["bits_per_dim"], rel=1e-5)


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_each_objective_falls_on_a_small_structured_batch(name: str) -> None:
    torch.manual_seed(0)
    data = load_dataset("synthetic", "train", value_range="uint8", image_size=8)
    x = data.images[:32].long()
    model = FlowModel(build_config(name, "small", data.shape, num_scales=2, steps_per_scale=2, hidden_channels=16,
                                   num_blocks=1))  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, _ = nll_loss(model, x, 256)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses[::10]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "nope"], "invalid choice: 'nope'"),
        (["--model", "realnvp", "--class-conditional"], "--class-conditional is Glow's"),
        (["--hidden-channels", "0"], "--hidden-channels must be positive"),
        (["--num-scales", "-1"], "--num-scales must be positive"),
        (["--eval-images", "0"], "must be positive"),
        (["--normalisation", "layernorm"], "invalid choice: 'layernorm'"),
        (["--precision", "bf16"], "leave --precision at no"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2_before_any_data_is_read(
    user_error: Callable[..., str], tmp_path: Path, argv: list[str], expected: str
) -> None:
    err = user_error(train.main, [*argv, "--data-dir", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "r")])
    assert expected in err
    assert not (tmp_path / "r").exists()


def test_an_image_size_the_levels_cannot_squeeze_is_one_line(user_error: Callable[..., str], tmp_path: Path) -> None:
    argv = [*TINY, "--model", "glow", "--image-size", "6", "--num-scales", "2", "--run-dir", str(tmp_path / "r")]
    assert "divisible by 4" in user_error(train.main, argv)
    assert not (tmp_path / "r").exists()


def test_missing_data_is_one_line_naming_the_folder(user_error: Callable[..., str], tmp_path: Path) -> None:
    argv = ["--dataset", "fashion_mnist", "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "r")]
    assert str(tmp_path / "FashionMNIST" / "raw") in user_error(train.main, argv)


def test_overflowed_samples_are_drawn_black_and_counted(capsys: pytest.CaptureFixture[str]) -> None:
    """An image whose inverse overflowed (any NaN or inf pixel) becomes all zeros and is counted; the finite
    images pass through unchanged, so samples.npz never casts NaN to uint8 and the scores see the failure."""
    images = torch.rand(4, 1, 3, 3)
    images[1, 0, 2, 2] = float("nan")
    images[3, 0, 0, 1] = float("-inf")
    shown = sample.blacken_overflows(images, "test")
    assert torch.isfinite(shown).all()
    assert (shown[[1, 3]] == 0).all()
    assert torch.equal(shown[[0, 2]], images[[0, 2]])
    assert "test: 2 of 4 images overflowed" in capsys.readouterr().out
    untouched = torch.rand(2, 1, 3, 3)
    assert torch.equal(sample.blacken_overflows(untouched, "clean"), untouched)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "--run is required"),
        (["--run", "x", "--temperatures", "-1"], "--temperatures must be numbers >= 0"),
        (["--run", "x", "--per-row", "0"], "--per-row must be a number >= 1"),
        (["--run", str(Path("no") / "such" / "run")], "does not exist"),
    ],
)
def test_flow_sample_mistakes_are_one_line_and_exit_2(
    user_error: Callable[..., str], argv: list[str], expected: str
) -> None:
    assert expected in user_error(sample.main, argv).lower()


def test_flow_compare_trains_both_glows_on_the_same_batches(tmp_path: Path) -> None:
    """flow-compare: our Glow and normflows' Glow at one size, each through the same loop, both to a finite
    test bound near the 8 bits/dim of the start; compare.json holds what was returned."""
    argv = [*TINY, "--steps", "2", "--num-scales", "2", "--steps-per-scale", "1", "--run-dir", str(tmp_path)]
    report = compare.compare(parse_config(compare.FlowCompareConfig, argv))
    assert json.loads((tmp_path / "compare.json").read_text()) == report
    for name in ("genlab", "normflows"):
        row = report[name]
        assert row["steps"] == 2 and row["train_images_per_second"] > 0
        assert 0 < row["test_bits_per_dim"] < 12
    assert report["setting"]["num_scales"] == 2 and report["setting"]["hidden_channels"] == 8
