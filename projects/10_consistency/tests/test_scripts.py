"""fm-train and fm-sample end to end on tiny synthetic data: a flow, its couplings, reflow and distillation on them,
and the refusals."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genlab.consistency import consistency_train as cm_train
from genlab.consistency import sample as fm_sample
from genlab.consistency import train as fm_train
from genlab.core.checkpoint import load_pretrained
from genlab.diffusion import train as diffusion_train
from genlab.diffusion.model import UNet

TINY = ["--dataset", "synthetic", "--size", "tiny", "--batch-size", "16", "--log-every", "2", "--sample-every", "0",
        "--eval-every", "0", "--checkpoint-every", "10", "--eval-images", "32", "--sample-steps", "2",
        "--no-progress", "--device", "cpu"]  # fmt: skip
COMMON = [
    "--dataset",
    "synthetic",
    "--size",
    "tiny",
    "--batch-size",
    "16",
    "--log-every",
    "2",
    "--sample-every",
    "0",
    "--eval-every",
    "0",
    "--checkpoint-every",
    "10",
    "--eval-images",
    "32",
    "--no-progress",
    "--device",
    "cpu",
]
TINY_TEACHER = [*COMMON, "--sample-steps", "2"]
TINY_CM = COMMON


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


def test_init_starts_from_the_flow_s_weights(flow_run: Path, tmp_path: Path, user_error: Callable) -> None:
    """With a learning rate of 1e-20 the run's weights stay where --init put them: the flow's EMA weights."""
    run = tmp_path / "fine-tuned"
    fm_train.main([*TINY, "--steps", "1", "--lr", "1e-20", "--warmup-steps", "0", "--init", str(flow_run),
                   "--run-dir", str(run)])  # fmt: skip
    start = load_pretrained(flow_run, UNet, "unet", "flow")
    for name in ("unet", "unet_ema"):
        weights = load_file(next(run.glob("checkpoints/step_*")) / name / "model.safetensors")
        assert all(torch.allclose(weights[k], v, rtol=0, atol=1e-7) for k, v in start.state_dict().items())
    err = user_error(fm_train.main, [*TINY, "--class-conditional", "false", "--init", str(flow_run),
                                     "--run-dir", str(tmp_path / "refused")])  # fmt: skip
    assert "--init" in err and not (tmp_path / "refused").exists()


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


def test_meanflow_and_ot_runs_train_and_sample(tmp_path: Path, user_error: Callable) -> None:
    """MeanFlow trains through the JVP of 07's U-Net with its interval embedding and samples in N steps; OT couplings
    train; rectified-flow-only sampling options are refused for a MeanFlow run."""
    meanflow = tmp_path / "meanflow"
    fm_train.main([*TINY, "--steps", "3", "--objective", "meanflow", "--time-distribution", "logit-normal",
                   "--run-dir", str(meanflow)])  # fmt: skip
    results = json.loads((meanflow / "results.json").read_text())
    assert results["step"] == 3 and math.isfinite(results["velocity_mse_t0.5"])
    out = tmp_path / "meanflow-samples"
    fm_sample.main(["--run", str(meanflow), "--out", str(out), "--steps", "2", "--npz", "4", "--count", "4",
                    "--device", "cpu"])  # fmt: skip
    assert json.loads((out / "samples.json").read_text())["function_evaluations_per_sample"] == 2
    for flags in (["--method", "heun"], ["--straightness", "4"], ["--levels", "80", "1"]):
        err = user_error(fm_sample.main, ["--run", str(meanflow), "--out", str(tmp_path / "x"), *flags])
        assert "meanflow run" in err or "rectified-flow run" in err
    ot = tmp_path / "ot"
    fm_train.main([*TINY, "--steps", "2", "--coupling", "ot", "--run-dir", str(ot)])
    assert json.loads((ot / "results.json").read_text())["step"] == 2


def test_meanflow_time_scale_is_trained_with_and_sampled_with(tmp_path: Path, user_error: Callable) -> None:
    """--meanflow-time-scale k feeds k s and k (t - s) to the embeddings; fm-sample rebuilds the network with it."""
    run = tmp_path / "meanflow-k1"
    fm_train.main([*TINY, "--steps", "2", "--objective", "meanflow", "--meanflow-time-scale", "1", "--run-dir",
                   str(run)])  # fmt: skip
    opened, kind = fm_sample.open_any_run(fm_sample.FlowSampleConfig(run=str(run), device="cpu"))
    assert kind == "meanflow" and opened.model.time_scale == 1.0
    z, s, t = torch.randn(2, 1, 28, 28), torch.tensor([0.2, 0.4]), torch.tensor([0.7, 0.9])
    with torch.no_grad():
        at_one = opened.model(z, s, t)
        opened.model.time_scale = 1000.0
        assert not torch.allclose(at_one, opened.model(z, s, t))
    err = user_error(fm_train.main, [*TINY, "--objective", "meanflow", "--meanflow-time-scale", "0", "--run-dir",
                                     str(tmp_path / "refused")])  # fmt: skip
    assert "--meanflow-time-scale" in err and not (tmp_path / "refused").exists()


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "ddpm"
    diffusion_train.main([*TINY_TEACHER, "--steps", "2", "--run-dir", str(run)])
    return run


@pytest.mark.parametrize("method", ["cd", "ct", "ict", "sct", "scd"])
def test_every_consistency_method_trains_and_samples(teacher_run: Path, tmp_path: Path, method: str) -> None:
    run = tmp_path / method
    teacher = ["--teacher", str(teacher_run)] if method in ("cd", "scd") else []
    cm_train.main([*TINY_CM, "--method", method, *teacher, "--steps", "3", "--run-dir", str(run)])
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 3 and all(
        math.isfinite(results[f"one_step_mse_sigma{s:g}"]) for s in cm_train.EVAL_SIGMAS
    )
    info = json.loads((run / "config.json").read_text())
    assert info["project"] == "consistency" and info["sigma_min"] == pytest.approx(0.01 if teacher else 0.002, rel=0.01)
    out = tmp_path / f"{method}-samples"
    fm_sample.main(["--run", str(run), "--out", str(out), "--steps", "3", "--npz", "4", "--count", "4",
                    "--device", "cpu"])  # fmt: skip
    assert json.loads((out / "samples.json").read_text())["function_evaluations_per_sample"] == 3
    fm_sample.main(["--run", str(run), "--out", str(out), "--levels", "80", "0.821", "--npz", "4", "--count", "4",
                    "--device", "cpu"])  # fmt: skip
    assert json.loads((out / "samples.json").read_text())["function_evaluations_per_sample"] == 2


def test_a_consistency_run_resumes_with_its_target_network(teacher_run: Path, tmp_path: Path) -> None:
    """CD's EMA target theta- is checkpointed and restored: a run stopped at step 2 and resumed to 4 ends with the
    same weights (online and target) as one trained to 4 straight through."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    flags = [*TINY_CM, "--method", "cd", "--teacher", str(teacher_run), "--checkpoint-every", "2"]
    cm_train.main([*flags, "--steps", "4", "--run-dir", str(straight)])
    cm_train.main([*flags, "--steps", "4", "--time-limit", "0.000001", "--run-dir", str(resumed)])
    cm_train.main([*flags, "--steps", "4", "--time-limit", "0", "--resume", str(resumed)])
    for name in ("unet", "target"):
        a = load_file(straight / "checkpoints" / "step_00000004" / name / "model.safetensors")
        b = load_file(resumed / "checkpoints" / "step_00000004" / name / "model.safetensors")
        assert all(torch.allclose(a[k], b[k]) for k in a), name


@pytest.mark.parametrize(("flags", "message"), [
    (["--method", "cd"], "give it with --teacher"),
    (["--method", "ict", "--teacher", "x"], "trains without a teacher"),
    (["--method", "cd", "--teacher", "/nonexistent"], "/nonexistent"),
    (["--tangent-warmup", "2"], "--tangent-warmup"),
    (["--levels", "1"], "--levels"),
    (["--p-std", "0"], "--p-std must be positive"),
])  # fmt: skip
def test_cm_train_refuses_nonsense_in_one_line(tmp_path: Path, user_error: Callable, flags: list[str],
                                               message: str) -> None:  # fmt: skip
    run = tmp_path / "refused"
    err = user_error(cm_train.main, [*TINY_CM, *flags, "--run-dir", str(run)])
    assert message in err and not run.exists()


def test_cm_train_refuses_a_teacher_of_another_data_set_or_project(
    teacher_run: Path, flow_run: Path, tmp_path: Path, user_error: Callable
) -> None:
    run = tmp_path / "refused"
    err = user_error(cm_train.main, [*TINY_CM, "--method", "cd", "--teacher", str(flow_run), "--run-dir", str(run)])
    assert "not a diffusion-train U-Net run" in err and not run.exists()
    rgb = [*TINY_CM, "--dataset", "synthetic_rgb", "--method", "cd", "--teacher", str(teacher_run)]
    err = user_error(cm_train.main, [*rgb, "--run-dir", str(run)])
    assert "was trained on synthetic" in err and not run.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("module", "flags"), [
    ("genlab.consistency.consistency_train", ["--method", "sct"]),
    ("genlab.consistency.train", ["--objective", "meanflow", "--sample-steps", "2"]),
])  # fmt: skip
def test_the_jvp_objectives_train_under_torchrun(tmp_path: Path, module: str, flags: list[str]) -> None:
    """sCT and MeanFlow take their JVP through the unwrapped network: DistributedDataParallel cannot run under
    torch.func, and the gradient still flows through the wrapped one (2 CPU processes, gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", module,
               *COMMON, *flags, "--steps", "2", "--run-dir", str(tmp_path / "run")]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["step"] == 2
