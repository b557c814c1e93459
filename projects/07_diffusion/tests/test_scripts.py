"""diffusion-train and diffusion-sample end to end on tiny synthetic data, and their refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genlab.diffusion import edit as diffusion_edit
from genlab.diffusion import sample as diffusion_sample
from genlab.diffusion import train as diffusion_train

TINY = ["--dataset", "synthetic", "--size", "tiny", "--batch-size", "16", "--log-every", "5", "--sample-every", "10",
        "--eval-every", "10", "--checkpoint-every", "10", "--eval-images", "32", "--sample-steps", "4",
        "--no-progress", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("diffusion") / "conditional"
    diffusion_train.main([*TINY, "--steps", "10", "--run-dir", str(run)])
    return run


@pytest.fixture(scope="module")
def unconditional_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("diffusion") / "unconditional"
    diffusion_train.main([*TINY, "--steps", "6", "--class-conditional", "false", "--run-dir", str(run)])
    return run


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("diffusion") / "classifier"
    diffusion_train.main([*TINY, "--model", "classifier", "--steps", "6", "--run-dir", str(run)])
    return run


def test_train_writes_test_losses_and_sample_grids(conditional_run: Path) -> None:
    results = json.loads((conditional_run / "results.json").read_text())
    assert results["step"] == 10 and results["parameters"] > 0
    assert set(results) >= {f"mse_t{t}" for t in diffusion_train.EVAL_TIMESTEPS}
    saved = json.loads((conditional_run / "config.json").read_text())
    assert saved["model"]["num_classes"] == 4  # synthetic: four shapes, plus the null label inside the network
    assert sorted(p.name for p in (conditional_run / "samples").glob("step_*.png")) == ["step_00000010.png"]
    logged = [json.loads(line) for line in (conditional_run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/test_mse_t500" in r for r in logged) and any("train/mse" in r for r in logged)


@pytest.mark.parametrize(("sampler", "steps", "evaluations"), [
    ("ddim", 4, 4), ("ddpm", 5, 5), ("euler", 3, 3), ("heun", 3, 5), ("pc", 3, 6), ("ode", 3, 6),
])  # fmt: skip
def test_every_sampler_writes_samples_and_counts_its_evaluations(
    unconditional_run: Path, tmp_path: Path, sampler: str, steps: int, evaluations: int
) -> None:
    out = tmp_path / sampler
    diffusion_sample.main(["--run", str(unconditional_run), "--out", str(out), "--sampler", sampler,
                           "--steps", str(steps), "--count", "8", "--npz", "6"])  # fmt: skip
    assert Image.open(out / "samples.png").size[0] > 28
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (6, 1, 28, 28) and samples.dtype == np.uint8
    info = json.loads((out / "samples.json").read_text())
    assert info["function_evaluations_per_sample"] == evaluations and info["count"] == 6


def test_guidance_grids_gif_and_classifier_guidance(
    conditional_run: Path, classifier_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "guided"
    diffusion_sample.main(["--run", str(conditional_run), "--out", str(out), "--steps", "3", "--count", "8",
                           "--guidance-scales", "0,1,3", "--guidance-scale", "2", "--gif", "--npz", "4"])  # fmt: skip
    grid = Image.open(out / "guidance.png")
    assert grid.size[1] > 3 * 2 * 28  # three scales of two rows of four classes
    assert Image.open(out / "reverse.gif").n_frames >= 3
    info = json.loads((out / "samples.json").read_text())
    assert info["function_evaluations_per_sample"] == 6  # guidance runs the network twice per step
    classified = tmp_path / "classified"
    diffusion_sample.main(["--run", str(conditional_run), "--out", str(classified), "--steps", "3", "--count", "8",
                           "--classifier", str(classifier_run), "--classifier-scale", "2"])  # fmt: skip
    assert (classified / "samples.png").is_file()
    results = json.loads((classifier_run / "results.json").read_text())
    assert set(results) >= {f"accuracy_t{t}" for t in diffusion_train.EVAL_TIMESTEPS}


def test_learned_variance_cosine_run_samples_with_its_variance(tmp_path: Path) -> None:
    run = tmp_path / "improved"
    diffusion_train.main([*TINY, "--steps", "4", "--schedule", "cosine", "--learned-variance", "--prediction", "v",
                          "--class-conditional", "false", "--run-dir", str(run)])  # fmt: skip
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["learned_variance"] and saved["config"]["schedule"] == "cosine"
    diffusion_sample.main(["--run", str(run), "--sampler", "ddpm", "--steps", "4", "--count", "8"])
    assert (run / "samples" / "samples.png").is_file()


def test_likelihood_reports_elbo_and_ode_bits_per_dim(unconditional_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "likelihood"
    diffusion_sample.main(["--run", str(unconditional_run), "--out", str(out), "--steps", "2", "--count", "8",
                           "--likelihood", "--likelihood-images", "3", "--ode-steps", "2"])  # fmt: skip
    measured = json.loads((out / "likelihood.json").read_text())
    assert measured["images"] == 3 and measured["elbo_bits_per_dim"] > 0 and np.isfinite(measured["ode_bits_per_dim"])


def test_user_mistakes_are_one_line(
    user_error: Callable[..., str], conditional_run: Path, unconditional_run: Path, tmp_path: Path
) -> None:
    fresh = str(tmp_path / "fresh")
    assert "--size" in user_error(diffusion_train.main, [*TINY, "--size", "huge", "--run-dir", fresh])
    assert "--sample-steps" in user_error(diffusion_train.main, [*TINY, "--timesteps", "3", "--run-dir", fresh])
    assert "--label-dropout" in user_error(diffusion_train.main, [*TINY, "--label-dropout", "1", "--run-dir", fresh])
    assert not Path(fresh).exists()
    run, uncond = str(conditional_run), str(unconditional_run)
    assert "--class-conditional" in user_error(diffusion_sample.main, ["--run", uncond, "--guidance-scale", "3"])
    assert "not a classifier run" in user_error(diffusion_sample.main, ["--run", run, "--classifier", uncond])
    assert "--class-label" in user_error(diffusion_sample.main, ["--run", run, "--class-label", "9"])
    assert "karras" in user_error(diffusion_sample.main, ["--run", run, "--spacing", "karras"])
    assert "--guidance-scales" in user_error(diffusion_sample.main, ["--run", run, "--guidance-scales", "1,x"])
    assert "--eta" in user_error(diffusion_sample.main, ["--run", run, "--eta", "nan"])
    assert "steps" in user_error(diffusion_sample.main, ["--run", run, "--steps", "5000"])


@pytest.mark.parametrize(("task", "flags", "evaluations"), [
    ("inpaint", ["--mask", "left", "--resamplings", "2"], 5 + 4),  # RePaint, j = 1: N + (N - 1)(r - 1)
    ("outpaint", [], 5),
    ("sdedit", ["--strength", "0.5"], 4),  # t0 = 499, then the leading timesteps below it: 400, 200, 0
    ("superres", ["--method", "dps", "--step-size", "0.5"], 10),  # a backward pass per step
    ("superres", ["--method", "replacement"], 5),
    ("deblur", ["--method", "dps"], 10),
])  # fmt: skip
def test_edit_writes_results_beside_their_inputs_and_scores_them(
    conditional_run: Path, tmp_path: Path, task: str, flags: list[str], evaluations: int
) -> None:
    out = tmp_path / task
    diffusion_edit.main(["--run", str(conditional_run), "--out", str(out), "--task", task, *flags, "--steps", "5",
                         "--npz", "6", "--batch-size", "4", "--device", "cpu"])  # fmt: skip
    measured = json.loads((out / "edit.json").read_text())
    assert measured["images"] == 6 and measured["function_evaluations"] == evaluations
    assert measured["psnr_db"] > 0 and -1 <= measured["ssim"] <= 1
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (6, 1, 28, 28)
    info = json.loads((out / "samples.json").read_text())
    assert info["function_evaluations_per_sample"] == evaluations and info["seconds_per_sample"] > 0
    if task in ("superres", "deblur"):  # the simple baseline as images too, for its FID
        baselines = np.load(out / "baselines.npz")["samples"]
        assert baselines.shape == (6, 1, 28, 28) and not np.array_equal(baselines, samples)
    else:
        assert not (out / "baselines.npz").exists()
    grid = Image.open(out / "edit.png")  # three rows of 6: input, result, original
    assert grid.size == (6 * 30 + 2, 3 * 30 + 2)
    if task in ("inpaint", "outpaint"):  # the known pixels come through exactly (up to 8-bit rounding)
        test = diffusion_train.load_split(json.loads((conditional_run / "config.json").read_text())["config"],
                                          "test")  # fmt: skip
        mask = diffusion_edit.named_mask("left" if task == "inpaint" else "border", 28).bool()[0]
        assert np.array_equal(samples[:, mask.numpy()], test.images[:6][:, mask].numpy())
        # the missing region's PSNR, by hand from the 8-bit files, in [-1, 1] (range 2)
        error = (samples.astype(float) - test.images[:6].numpy().astype(float)) / 255 * 2
        mse = np.square(error[:, ~mask.numpy()]).reshape(6, -1).mean(1)
        assert measured["missing_region_psnr_db"] == pytest.approx(np.mean(10 * np.log10(4 / mse)), abs=0.1)
        assert measured["missing_region_psnr_db"] < measured["psnr_db"]  # the known pixels are exact


@pytest.mark.parametrize(("flags", "message"), [
    (["--strength", "1.5"], "--strength must be in [0, 1]"),
    (["--mask", "moon"], "unknown --mask"),
    (["--task", "deblur", "--method", "replacement"], "pseudo-inverse"),
    (["--resamplings", "0"], "--resamplings must be"),
    (["--guidance-scale", "3"], "takes no --guidance-scale"),
    (["--steps", "2000"], "exceeds the run's 1000 training timesteps"),
    (["--images", "100000"], "the test split has"),
])  # fmt: skip
def test_edit_refuses_nonsense_in_one_line(
    conditional_run: Path, tmp_path: Path, user_error: Callable, flags: list[str], message: str
) -> None:
    out = tmp_path / "refused"
    err = user_error(diffusion_edit.main, ["--run", str(conditional_run), "--out", str(out), *flags,
                                           "--device", "cpu"])  # fmt: skip
    assert message in err and not out.exists()
