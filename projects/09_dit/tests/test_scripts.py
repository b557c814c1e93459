"""dit-train and dit-sample end to end on tiny synthetic data (07's training and sampling with the DiT inside), and
their refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from genlab.dit import sample as dit_sample
from genlab.dit import train as dit_train

TINY = ["--dataset", "synthetic", "--size", "XXS/4", "--batch-size", "16", "--log-every", "2", "--sample-every",
        "0", "--eval-every", "0", "--checkpoint-every", "10", "--eval-images", "32", "--sample-steps", "3",
        "--no-progress", "--device", "cpu"]  # fmt: skip


@pytest.mark.parametrize("design", ["adaln-zero", "in-context"])
def test_train_then_sample_with_guidance(tmp_path: Path, design: str) -> None:
    run = tmp_path / design
    dit_train.main([*TINY, "--steps", "4", "--conditioning", design, "--run-dir", str(run)])
    saved = json.loads((run / "config.json").read_text())
    assert saved["project"] == "dit" and saved["model"]["conditioning"] == design
    assert saved["model"]["num_classes"] == 4 and saved["model"]["learned_variance"] is True
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 4 and "mse_t500" in results
    dit_sample.main(["--run", str(run), "--sampler", "ddpm", "--steps", "3", "--guidance-scale", "2", "--npz", "5",
                     "--count", "4", "--device", "cpu"])  # fmt: skip
    samples = np.load(run / "samples" / "samples.npz")["samples"]
    assert samples.shape == (5, 1, 28, 28)
    info = json.loads((run / "samples" / "samples.json").read_text())
    assert info["function_evaluations_per_sample"] == 6  # guidance: two evaluations per step


def test_hflip_trains_on_the_split_and_its_mirror_images(tmp_path: Path) -> None:
    """DiT's augmentation (in its paper preset): the same steps cover half as much of an epoch of the doubled split."""
    epochs = {}
    for flags in ([], ["--hflip"]):
        run = tmp_path / ("flipped" if flags else "plain")
        dit_train.main([*TINY, "--steps", "2", *flags, "--run-dir", str(run)])
        assert json.loads((run / "config.json").read_text())["config"]["hflip"] is bool(flags)
        logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        epochs[bool(flags)] = [entry["epoch"] for entry in logged if "epoch" in entry][-1]
    assert epochs[True] == pytest.approx(epochs[False] / 2, rel=0.05)


@pytest.mark.parametrize(("flags", "message"), [
    (["--size", "M/2"], "unknown DiT size"),
    (["--size", "S/x"], "unknown DiT size"),
    (["--conditioning", "film"], "--conditioning"),
])  # fmt: skip
def test_train_refuses_nonsense_in_one_line(tmp_path: Path, user_error: Callable, flags: list[str],
                                            message: str) -> None:  # fmt: skip
    run = tmp_path / "refused"
    err = user_error(dit_train.main, [*TINY, *flags, "--run-dir", str(run)])
    assert message in err and not run.exists()


def test_sample_refuses_a_unet_run(tmp_path: Path, user_error: Callable) -> None:
    from genlab.diffusion import train as diffusion_train

    unet = tmp_path / "unet"
    diffusion_train.main(["--dataset", "synthetic", "--size", "tiny", "--steps", "1", "--batch-size", "8",
                          "--sample-every", "0", "--eval-every", "0", "--eval-images", "16", "--no-progress",
                          "--device", "cpu", "--run-dir", str(unet)])  # fmt: skip
    err = user_error(dit_sample.main, ["--run", str(unet), "--device", "cpu", "--out", str(tmp_path / "o")])
    assert "diffusion" in err and not (tmp_path / "o").exists()


def test_bench_times_both_networks_and_reports_flops(tmp_path: Path) -> None:
    from genlab.dit import bench as dit_bench

    out = tmp_path / "bench.json"
    dit_bench.main(["--dataset", "synthetic", "--size", "XXS/4", "--batch-size", "4", "--steps", "1", "--warmup",
                    "1", "--repeats", "1", "--device", "cpu", "--output", str(out)])  # fmt: skip
    results = json.loads(out.read_text())
    assert set(results["train_images_per_second"]) == {"ours", "diffusers"}
    assert results["parameters"]["diffusers"] > results["parameters"]["ours"]  # its per-block embedder copies
    assert 0 < results["fraction_of_matmul"]["ours"] < 1 and results["forward_gflops_per_image"] > 0
