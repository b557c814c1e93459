"""fm-train and fm-sample end to end on tiny synthetic data: a flow, its couplings, reflow and distillation on them,
and the refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from genlab.consistency import sample as fm_sample
from genlab.consistency import train as fm_train

TINY = ["--dataset", "synthetic", "--size", "tiny", "--batch-size", "16", "--log-every", "2", "--sample-every", "0",
        "--eval-every", "0", "--checkpoint-every", "10", "--eval-images", "32", "--sample-steps", "2",
        "--no-progress", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("flow") / "rf1"
    fm_train.main([*TINY, "--steps", "4", "--time-distribution", "logit-normal", "--run-dir", str(run)])
    return run


def test_train_writes_the_test_velocity_losses(flow_run: Path) -> None:
    results = json.loads((flow_run / "results.json").read_text())
    assert results["step"] == 4 and {f"velocity_mse_t{t}" for t in fm_train.EVAL_TIMES} <= set(results)
    saved = json.loads((flow_run / "config.json").read_text())
    assert saved["project"] == "flow" and saved["model"]["num_classes"] == 4


@pytest.mark.parametrize(("method", "steps", "guidance", "evaluations"), [
    ("euler", 3, "1", 3), ("midpoint", 2, "1", 4), ("heun", 2, "3", 8),
])  # fmt: skip
def test_sample_counts_its_evaluations(flow_run: Path, tmp_path: Path, method: str, steps: int, guidance: str,
                                       evaluations: int) -> None:  # fmt: skip
    out = tmp_path / method
    fm_sample.main(["--run", str(flow_run), "--out", str(out), "--method", method, "--steps", str(steps),
                    "--guidance-scale", guidance, "--npz", "5", "--count", "4", "--device", "cpu"])  # fmt: skip
    assert np.load(out / "samples.npz")["samples"].shape == (5, 1, 28, 28)
    assert json.loads((out / "samples.json").read_text())["function_evaluations_per_sample"] == evaluations


def test_couplings_then_reflow_and_distillation(flow_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "couplings"
    fm_sample.main(["--run", str(flow_run), "--out", str(out), "--steps", "3", "--couplings", "40",
                    "--straightness", "8", "--device", "cpu"])  # fmt: skip
    couplings = load_file(out / "couplings.safetensors")
    assert couplings["x0"].shape == couplings["z1"].shape == (40, 1, 28, 28) and couplings["labels"].shape == (40,)
    assert json.loads((out / "straightness.json").read_text())["straightness"] >= 0
    for flags in ([], ["--distill"]):
        run = tmp_path / ("distilled" if flags else "rf2")
        fm_train.main([*TINY, "--steps", "2", "--couplings", str(out / "couplings.safetensors"), *flags,
                       "--run-dir", str(run)])  # fmt: skip
        assert json.loads((run / "results.json").read_text())["step"] == 2


@pytest.mark.parametrize(("flags", "message"), [
    (["--distill"], "--distill fits a flow's couplings"),
    (["--size", "huge"], "unknown --size"),
    (["--couplings", "/nonexistent.safetensors"], "not a couplings file"),
    (["--time-scale", "-1"], "--time-scale must be"),
])  # fmt: skip
def test_train_refuses_nonsense_in_one_line(tmp_path: Path, user_error: Callable, flags: list[str],
                                            message: str) -> None:  # fmt: skip
    run = tmp_path / "refused"
    err = user_error(fm_train.main, [*TINY, *flags, "--run-dir", str(run)])
    assert message in err and not run.exists()
