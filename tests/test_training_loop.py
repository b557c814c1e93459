"""The guarantees of genlab.core's one training loop (Trainer, checkpoints, BatchStream), proved on a tiny model.

Every project trains through ``genlab.core.trainer.Trainer``, so what is proved here holds for all of them:
exact resume (after a crash, SIGKILL or SIGTERM), atomic checkpoints, a clean stop on a non-finite loss, the
same result on two processes as on one, gradient accumulation, learning-rate schedules, several update rules,
and the files a run folder holds.

The model is an autoencoder on 8x8 synthetic shapes (~1.2k parameters) with Gaussian noise on its code, drawn
with ``torch.randn`` inside the loss, so the random-number handling of the loop matters; the data are
dynamically binarised, so the batch stream's noise matters too.

This file is also the script its subprocess tests run (``python tests/test_training_loop.py train RUN ...``,
``torchrun --nproc-per-node 2 tests/test_training_loop.py ddp RUN``), so the subprocesses train with exactly
the code the in-process reference runs.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import signal
import subprocess
import sys
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genlab.core import checkpoint as checkpoint_module
from genlab.core import trainer as trainer_module
from genlab.core.checkpoint import LATEST, latest_checkpoint, load_module_weights
from genlab.core.data import Batch, ImageDataset, load_dataset
from genlab.core.errors import GenlabError
from genlab.core.trainer import METRICS_FILE, NonFiniteLossError, TrainConfig, Trainer, learning_rate_lambda

IMAGE_SIZE = 8
PIXELS = IMAGE_SIZE * IMAGE_SIZE
HIDDEN = 8
STEPS = 12  # steps of the stochastic runs; they checkpoint every 4
PROJECT = "looptest"
THIS_FILE = Path(__file__).resolve()


# ---- the tiny model, its losses and configs (shared by the in-process runs and the subprocesses) ----


class TinyAutoencoder(nn.Module):
    """x (B, 64) -> tanh code (B, 8), plus Gaussian noise of std ``noise_std`` -> logits (B, 64)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(PIXELS, HIDDEN)
        self.decoder = nn.Linear(HIDDEN, PIXELS)

    def forward(self, x: torch.Tensor, noise_std: float = 0.0) -> torch.Tensor:
        code = torch.tanh(self.encoder(x))  # (B, HIDDEN)
        if noise_std:
            code = code + noise_std * torch.randn_like(code)  # the global RNG: resume must reproduce it
        return self.decoder(code)  # (B, PIXELS)


@functools.cache
def synthetic(value_range: str) -> ImageDataset:
    return load_dataset("synthetic", value_range=value_range, image_size=IMAGE_SIZE)


def stochastic_config(run_dir: Path, **overrides: Any) -> TrainConfig:
    """Every feature that state must survive a resume: EMA, warm-up + cosine, accumulation, clipping."""
    settings: dict[str, Any] = {
        "dataset": "synthetic", "steps": STEPS, "batch_size": 16, "lr": 0.02, "seed": 3, "device": "cpu",
        "run_dir": str(run_dir), "grad_accum": 2, "grad_clip": 1.0, "ema_decay": 0.8, "warmup_steps": 3,
        "lr_schedule": "cosine", "log_every": 1, "sample_every": 4, "checkpoint_every": 4, "keep_checkpoints": 2,
        "progress": False,
    }  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def build_stochastic(
    config: TrainConfig,
    after_step: Callable[[Trainer], None] | None = None,
    nan_from_step: int | None = None,
) -> Trainer:
    """The noisy autoencoder under Adam; ``nan_from_step`` makes the loss NaN from that step on."""
    trainer = Trainer(config, project=PROJECT)
    model = trainer.add_model("ae", TinyAutoencoder())

    def loss_fn(batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch.images.flatten(1)  # (B, 64) in {0, 1}
        bce = F.binary_cross_entropy_with_logits(model(x, noise_std=0.5), x)
        if nan_from_step is not None and trainer.step >= nan_from_step:
            bce = bce * float("nan")
        return bce, {"bce": bce}

    hook = None if after_step is None else (lambda: after_step(trainer))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    trainer.add_update("recon", optimizer, loss_fn, models=["ae"], after_step=hook)
    return trainer


def decode_basis(trainer: Trainer) -> torch.Tensor:
    """A deterministic sample grid: the EMA decoder's image of each code axis, (8, 1, 8, 8) in [0, 1]."""
    decoder = trainer.eval_model("ae").decoder
    return torch.sigmoid(decoder(torch.eye(HIDDEN, device=trainer.device))).view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)


def fit_stochastic(trainer: Trainer) -> None:
    trainer.fit(synthetic("binary"), sample_fn=decode_basis)


def deterministic_config(run_dir: Path, **overrides: Any) -> TrainConfig:
    """A loss with no randomness at all (MSE on [0, 1] data), so different process layouts must agree."""
    settings: dict[str, Any] = {
        "dataset": "synthetic", "steps": 20, "batch_size": 32, "lr": 0.5, "seed": 5, "device": "cpu",
        "run_dir": str(run_dir), "ema_decay": 0.9, "log_every": 5, "sample_every": 0, "checkpoint_every": 0,
        "progress": False,
    }  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def build_deterministic(config: TrainConfig) -> Trainer:
    trainer = Trainer(config, project=PROJECT)
    model = trainer.add_model("ae", TinyAutoencoder())

    def loss_fn(batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch.images.flatten(1)  # (B, 64) in [0, 1]
        mse = F.mse_loss(torch.sigmoid(model(x)), x)
        return mse, {}

    # SGD with momentum: unlike Adam's, its update scales with the gradient, so a mis-scaled gradient shows.
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    trainer.add_update("recon", optimizer, loss_fn, models=["ae"])
    return trainer


# ---- comparing training states ----


def snapshot(trainer: Trainer) -> dict[str, Any]:
    """Everything that must match between two runs that claim to be the same: weights, EMA, optimizer, data."""
    return {
        "step": trainer.step,
        "draws": trainer.stream.draws,
        "model": {k: v.detach().clone() for k, v in trainer.unwrap("ae").state_dict().items()},
        "ema": {k: v.detach().clone() for k, v in trainer.ema_models["ae"].state_dict().items()},
        "optimizers": [copy.deepcopy(rule.optimizer.state_dict()) for rule in trainer.rules],
        "schedulers": [copy.deepcopy(rule.scheduler.state_dict()) for rule in trainer.rules],
    }


def assert_identical(a: Any, b: Any, where: str = "state") -> None:
    """Bit-for-bit equality of nested dicts / lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs by up to {(a.double() - b.double()).abs().max().item():.3g}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def checkpoint_weights(checkpoint: Path, name: str) -> dict[str, torch.Tensor]:
    """Load a checkpoint's module into a fresh TinyAutoencoder (the way Trainer.load does) and return it."""
    model = TinyAutoencoder()
    load_module_weights(model, checkpoint / name)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def metric_lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]


def latest_name(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / LATEST).read_text().strip()


class CrashError(Exception):
    """Stands in for a process dying between two checkpoints."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """The stochastic run trained STEPS steps without interruption: what every resumed run must equal."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    trainer = build_stochastic(stochastic_config(run_dir))
    fit_stochastic(trainer)
    return snapshot(trainer), run_dir


# ---- 1. exact resume (and 10. the run folder's files) ----


def test_resume_after_crash_is_bit_exact(reference: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    """A run that dies mid-way and resumes from its last checkpoint ends bit-identical to one that never stopped:
    weights, EMA, Adam moments, scheduler, data position; its metrics.jsonl has each step once, with the
    uninterrupted run's values, and its sample grids are the same PNGs."""
    expected, reference_dir = reference
    run_dir = tmp_path / "run"

    def crash_in_step_6(trainer: Trainer) -> None:
        if trainer.step == 6:
            raise CrashError

    with pytest.raises(CrashError):
        fit_stochastic(build_stochastic(stochastic_config(run_dir), after_step=crash_in_step_6))
    assert latest_name(run_dir) == "step_00000004"
    assert [line["step"] for line in metric_lines(run_dir)] == [1, 2, 3, 4, 5, 6]
    at_4 = checkpoint_weights(run_dir / "checkpoints" / "step_00000004", "ae")
    assert not all(torch.equal(at_4[k], expected["model"][k]) for k in at_4), "training should move the weights"

    resumed = build_stochastic(stochastic_config(run_dir, resume=str(run_dir)))
    fit_stochastic(resumed)
    assert_identical(snapshot(resumed), expected)
    assert expected["step"] == STEPS and expected["draws"] == STEPS * 2  # grad_accum=2: two batches a step

    # The saved final checkpoint holds those same weights.
    final = run_dir / "checkpoints" / latest_name(run_dir)
    assert final.name == f"step_{STEPS:08d}"
    assert_identical(checkpoint_weights(final, "ae"), expected["model"], "checkpoint model")
    assert_identical(checkpoint_weights(final, "ae_ema"), expected["ema"], "checkpoint EMA")
    # keep_checkpoints=2: only the two newest complete checkpoints remain.
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000008", "step_00000012"]

    # 10. metrics.jsonl: every step once, in order, with the values of the uninterrupted run.
    lines, reference_lines = metric_lines(run_dir), metric_lines(reference_dir)
    assert [line["step"] for line in lines] == list(range(1, STEPS + 1))
    for line, reference_line in zip(lines, reference_lines, strict=True):
        for key in ("recon/loss", "recon/bce", "recon/grad_norm", "recon/lr", "epoch"):
            assert line[key] == reference_line[key], (line["step"], key)
    # TensorBoard event files, and sample grids at sample_every, equal to the reference's pixel for pixel.
    assert any(path.stat().st_size > 0 for path in run_dir.rglob("events.out.tfevents.*"))
    samples = sorted(p.name for p in (run_dir / "samples").glob("*.png"))
    assert samples == ["step_00000004.png", "step_00000008.png", "step_00000012.png"]
    for name in samples:
        assert (run_dir / "samples" / name).read_bytes() == (reference_dir / "samples" / name).read_bytes(), name


# ---- 2. and 3. a real process killed by SIGKILL, or stopped by SIGTERM ----


def start_training(run_dir: Path, pause_at: int) -> subprocess.Popen[str]:
    """This file as a script: the stochastic run, which waits inside step ``pause_at`` for a 'go' file."""
    command = [sys.executable, str(THIS_FILE), "train", str(run_dir), "--pause-at", str(pause_at)]
    return subprocess.Popen(command, cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_pause(process: subprocess.Popen[str], run_dir: Path, timeout: float = 180.0) -> None:
    marker = run_dir.parent / "paused"
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"training exited ({process.returncode}) before pausing:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"training did not reach its pause within {timeout} s")
        time.sleep(0.05)


def resume_in_process(run_dir: Path) -> dict[str, Any]:
    trainer = build_stochastic(stochastic_config(run_dir, resume=str(run_dir)))
    fit_stochastic(trainer)
    return snapshot(trainer)


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume(reference: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    """A training process killed with SIGKILL (no chance to clean up) between checkpoints 8 and 12 resumes from
    checkpoint 8 to the same final state as an uninterrupted run."""
    run_dir = tmp_path / "run"
    process = start_training(run_dir, pause_at=9)  # killed inside step 9, after its optimizer step
    try:
        wait_for_pause(process, run_dir)
        assert latest_name(run_dir) == "step_00000008"
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step_00000008"
    assert [line["step"] for line in metric_lines(run_dir)] == list(range(1, 10))

    assert_identical(resume_in_process(run_dir), reference[0])
    assert [line["step"] for line in metric_lines(run_dir)] == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits(reference: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    """SIGTERM during training: the process finishes its step, writes a checkpoint there (step 6, not a multiple
    of checkpoint_every), says how to continue, and exits with 128 + SIGTERM; resuming ends where an
    uninterrupted run ends."""
    run_dir = tmp_path / "run"
    process = start_training(run_dir, pause_at=5)
    try:
        wait_for_pause(process, run_dir)
        process.send_signal(signal.SIGTERM)
        (tmp_path / "go").touch()
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "stopped by signal at step 6" in output and f"--resume {run_dir}" in output, output
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint == run_dir / "checkpoints" / "step_00000006"
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 6
    weights = checkpoint_weights(checkpoint, "ae")
    assert all(torch.isfinite(v).all() for v in weights.values())

    assert_identical(resume_in_process(run_dir), reference[0])
    assert [line["step"] for line in metric_lines(run_dir)] == list(range(1, STEPS + 1))


# ---- 4. a non-finite loss ----


def test_nan_loss_stops_with_last_good_checkpoint(tmp_path: Path) -> None:
    """A loss that turns NaN in step 5 stops training with NonFiniteLossError (a GenlabError, so a one-line
    message in scripts) naming the last good checkpoint (step 4); nothing is saved or sampled from NaN weights,
    not even at a sample_every step that is not a log or checkpoint step."""
    run_dir = tmp_path / "run"
    config = stochastic_config(run_dir, log_every=100, sample_every=2, checkpoint_every=4)
    trainer = build_stochastic(config, nan_from_step=5)
    with pytest.raises(NonFiniteLossError) as caught:
        fit_stochastic(trainer)
    assert isinstance(caught.value, GenlabError)
    good = run_dir / "checkpoints" / "step_00000004"
    assert f"last good checkpoint: {good}" in str(caught.value)
    assert latest_checkpoint(run_dir) == good
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [LATEST, "step_00000004"]
    assert any(torch.isnan(p).any() for p in trainer.unwrap("ae").parameters()), "sanity: the loss reached weights"
    for name in ("ae", "ae_ema"):
        assert all(torch.isfinite(v).all() for v in checkpoint_weights(good, name).values())
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step_00000002.png", "step_00000004.png"]


def test_nan_before_any_checkpoint_says_so(tmp_path: Path) -> None:
    """NaN in the very first step: the error says that no checkpoint had been written."""
    run_dir = tmp_path / "run"
    trainer = build_stochastic(stochastic_config(run_dir, steps=3, log_every=1), nan_from_step=0)
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been written"):
        fit_stochastic(trainer)
    assert latest_checkpoint(run_dir) is None


def test_time_limit_ends_training_as_the_last_step_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--time-limit 2.5 on a clock that moves a minute per step: training stops after step 3 of 12 and does what
    the last step does (log, sample, checkpoint), so the run is complete and resumable, not interrupted."""
    run_dir = tmp_path / "run"
    config = stochastic_config(run_dir, time_limit=2.5, log_every=100, sample_every=100, checkpoint_every=100)
    trainer = build_stochastic(config)
    clock = types.SimpleNamespace(monotonic=lambda: 60.0 * trainer.step, perf_counter=time.perf_counter)
    monkeypatch.setattr(trainer_module, "time", clock)
    fit_stochastic(trainer)
    assert trainer.step == 3
    assert latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step_00000003"
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step_00000003.png"]
    assert [entry["step"] for entry in metric_lines(run_dir)][-1] == 3


# ---- 5. atomic checkpoints ----


def test_checkpoint_write_failure_keeps_previous_checkpoint(
    reference: tuple[dict[str, Any], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint write that fails midway (weights written, training state not) leaves the previous checkpoint
    whole and `latest`; the half-written folder is never taken for a checkpoint, and resuming is exact."""
    run_dir = tmp_path / "run"
    real_save = torch.save

    def save_fails_at_step_8(obj: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        if "step_00000008" in str(path):
            raise OSError("No space left on device")
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_fails_at_step_8)
    with pytest.raises(OSError, match="No space left"):
        fit_stochastic(build_stochastic(stochastic_config(run_dir)))
    monkeypatch.undo()

    folder = run_dir / "checkpoints"
    half = [p for p in folder.iterdir() if "step_00000008" in p.name]
    assert len(half) == 1 and (half[0] / "ae" / "model.safetensors").is_file(), "the write failed after the weights"
    assert not half[0].name.startswith("step_")
    assert latest_name(run_dir) == "step_00000004"
    assert latest_checkpoint(run_dir) == folder / "step_00000004"
    # A `latest` pointing at a folder without state.json (as a crash could leave) is no checkpoint.
    (folder / LATEST).write_text(half[0].name)
    assert latest_checkpoint(run_dir) is None
    (folder / LATEST).write_text("step_00000004")

    assert_identical(resume_in_process(run_dir), reference[0])
    assert not half[0].exists(), "the leftover temporary folder is cleaned when that step is saved again"


# ---- 6. and 7. two processes, and gradient accumulation, against one process ----


@pytest.fixture(scope="module")
def one_process_batch_32(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run_dir = tmp_path_factory.mktemp("one_process") / "run"
    trainer = build_deterministic(deterministic_config(run_dir))
    trainer.fit(synthetic("unit"))
    return snapshot(trainer)


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float, where: str) -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=lambda m, k=key: f"{where}.{k}: {m}")


@pytest.mark.slow
def test_two_processes_match_one(one_process_batch_32: dict[str, Any], tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo), 32 images per optimizer step (global batch 16, grad_accum 2, so DDP's
    no_sync micro-step is exercised too), ends where one process with batch 32 ends: each process takes its
    share of the same global batch and DDP averages the gradients."""
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(THIS_FILE), "ddp", str(run_dir),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.name == "step_00000020"
    assert_close(checkpoint_weights(checkpoint, "ae"), one_process_batch_32["model"], 1e-5, "model")
    assert_close(checkpoint_weights(checkpoint, "ae_ema"), one_process_batch_32["ema"], 1e-5, "ema")
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["draws"]["draws"] == 40 and state["draws"]["global_batch_size"] == 16
    moved = checkpoint_weights(checkpoint, "ae")["decoder.bias"] - TinyAutoencoder().decoder.bias
    assert moved.abs().max() > 1e-3, "sanity: 20 steps move the weights by far more than the tolerance"


def test_unwrap_returns_the_module_under_a_compile_wrapper(tmp_path: Path) -> None:
    """With --compile the trained model is torch.compile's wrapper; unwrap (what checkpoints and sampling read) is
    the module add_model was given, with unprefixed weights."""
    trainer = build_deterministic(deterministic_config(tmp_path / "run", compile=True))
    wrapped, bare = trainer.models["ae"], trainer.unwrap("ae")
    assert wrapped is not bare and isinstance(bare, TinyAutoencoder)
    assert wrapped._orig_mod is bare
    assert set(bare.state_dict()) == set(TinyAutoencoder().state_dict())


def test_gradient_accumulation_equals_larger_batch(one_process_batch_32: dict[str, Any], tmp_path: Path) -> None:
    """grad_accum=2 with batch 16 takes the same steps as batch 32: the stream's two micro-batches are the two
    halves of the batch of 32 (same epoch permutation), and the accumulated gradient is their mean."""
    trainer = build_deterministic(deterministic_config(tmp_path / "run", batch_size=16, grad_accum=2))
    trainer.fit(synthetic("unit"))
    assert trainer.stream.draws == 40
    assert_close(snapshot(trainer)["model"], one_process_batch_32["model"], 1e-6, "model")
    assert_close(snapshot(trainer)["ema"], one_process_batch_32["ema"], 1e-6, "ema")


# ---- 8. learning-rate schedules ----


def test_learning_rate_lambda_values() -> None:
    """Linear warm-up from 1/warmup to 1, then constant, linear or cosine decay that reaches 0 at the last step."""
    values = {
        shape: learning_rate_lambda(TrainConfig(steps=10, warmup_steps=2, lr_schedule=shape))
        for shape in ("constant", "linear", "cosine")
    }
    for multiplier in values.values():
        assert [multiplier(0), multiplier(1), multiplier(2)] == [0.5, 1.0, 1.0]
    assert [values["constant"](s) for s in (6, 9, 10)] == [1.0, 1.0, 1.0]
    assert values["linear"](6) == pytest.approx(0.5, abs=1e-12)
    assert values["linear"](9) == pytest.approx(0.125, abs=1e-12)
    assert values["linear"](10) == 0.0
    assert values["cosine"](6) == pytest.approx(0.5, abs=1e-12)
    assert values["cosine"](4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)), abs=1e-12)
    assert values["cosine"](10) == pytest.approx(0.0, abs=1e-12)
    assert values["cosine"](12) == pytest.approx(0.0, abs=1e-12)  # stays at 0 past the end
    no_warmup = learning_rate_lambda(TrainConfig(steps=10, warmup_steps=0, lr_schedule="cosine"))
    assert no_warmup(0) == 1.0


# ---- 9. several update rules ----


class Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.ones(()))


Records = dict[str, list[tuple[int, float, float]]]


def run_two_rules(run_dir: Path, **overrides: Any) -> tuple[Trainer, Records, dict[str, int]]:
    """Rule 'a' (loss a, repeats=2) every step and rule 'b' (loss b + 5a, a GAN-like loss that also reaches
    model a) every 2nd step, both under SGD; records (step, lr, loss) of each optimizer step."""
    settings: dict[str, Any] = {
        "dataset": "synthetic", "steps": 6, "batch_size": 8, "lr": 0.25, "seed": 0, "device": "cpu",
        "run_dir": str(run_dir), "grad_accum": 2, "log_every": 2, "sample_every": 0, "checkpoint_every": 0,
        "progress": False,
    }  # fmt: skip
    settings.update(overrides)
    config = TrainConfig(**settings)
    trainer = Trainer(config, project=PROJECT)
    a = trainer.add_model("a", Scalar(), ema=False)
    b = trainer.add_model("b", Scalar(), ema=False)
    seen: Records = {"a": [], "b": []}

    def rule(name: str, loss_of: Callable[[], torch.Tensor], optimizer: Any) -> Callable[[Batch], Any]:
        def loss_fn(batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            loss = loss_of() + 0.0 * batch.images.mean()
            seen[name].append((trainer.step, optimizer.param_groups[0]["lr"], loss.item()))
            return loss, {}

        return loss_fn

    optimizer_a = torch.optim.SGD(a.parameters(), lr=config.lr)
    optimizer_b = torch.optim.SGD(b.parameters(), lr=config.lr)
    counts = {"a": 0, "b": 0}

    def counter(name: str) -> Callable[[], None]:
        return lambda: counts.__setitem__(name, counts[name] + 1)

    trainer.add_update("a", optimizer_a, rule("a", lambda: a.value, optimizer_a), ["a"], repeats=2,
                       after_step=counter("a"))  # fmt: skip
    trainer.add_update("b", optimizer_b, rule("b", lambda: b.value + 5 * a.value, optimizer_b), ["b"], every=2,
                       after_step=counter("b"))  # fmt: skip
    trainer.fit(synthetic("unit"))
    return trainer, seen, counts


def test_several_update_rules_step_counts_and_gradients(tmp_path: Path) -> None:
    """Rule a (repeats=2) takes 12 optimizer steps in 6 steps, rule b (every=2) 3; the stream draws one batch per
    micro-step (2 each); each rule's step uses the gradient of its own loss only (b's loss reaching model a does
    not leak into a's next update), and logged losses are means over the rule's own updates."""
    run_dir = tmp_path / "run"
    trainer, seen, counts = run_two_rules(run_dir)
    assert counts == {"a": 12, "b": 3}
    assert trainer.stream.draws == (12 + 3) * 2
    assert [step for step, _, _ in seen["b"]] == [0, 0, 2, 2, 4, 4]
    # SGD with lr 1/4 and gradients of exactly 1: a = 1 - 12/4, b = 1 - 3/4, exact in binary floating point.
    assert trainer.unwrap("a").value.item() == -2.0
    assert trainer.unwrap("b").value.item() == 0.25
    lines = metric_lines(run_dir)
    assert [line["step"] for line in lines] == [2, 4, 6]
    for line, window in zip(lines, ((0, 1), (2, 3), (4, 5)), strict=True):
        for name in ("a", "b"):
            losses = [loss for step, _, loss in seen[name] if step in window]
            assert line[f"{name}/loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6), (name, window)


def test_schedule_follows_the_training_step_for_every_rule(tmp_path: Path) -> None:
    """With warm-up and cosine decay, every optimizer step of every rule (repeated, or run every 2nd step) uses
    lr * multiplier(training step), so all rules' schedules span the whole run."""
    trainer, seen, _ = run_two_rules(tmp_path / "run", warmup_steps=2, lr_schedule="cosine")
    multiplier = learning_rate_lambda(trainer.config)
    for name in ("a", "b"):
        for step, lr, _ in seen[name]:
            assert lr == pytest.approx(0.25 * multiplier(step), rel=1e-12, abs=1e-15), (name, step)
    assert {step for step, _, _ in seen["a"]} == set(range(6))
    expected_a = 1.0 - sum(lr for _, lr, _ in seen["a"][::2])  # one record per micro-step, two per update
    assert trainer.unwrap("a").value.item() == pytest.approx(expected_a, abs=1e-6)


# ---- the subprocess entry point ----


def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="the training runs of test_training_loop.py's subprocess tests")
    parser.add_argument("mode", choices=["train", "ddp"])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--pause-at", type=int, default=-1, help="wait inside this step for a 'go' file")
    args = parser.parse_args(argv)
    if args.mode == "ddp":
        # Global batch 16 in 2 micro-steps: 32 images per optimizer step, and DDP's no_sync on the first.
        build_deterministic(deterministic_config(args.run_dir, batch_size=16, grad_accum=2)).fit(synthetic("unit"))
        return

    def pause(trainer: Trainer) -> None:
        if trainer.step != args.pause_at:
            return
        (args.run_dir.parent / "paused").write_text(str(trainer.step))
        deadline = time.monotonic() + 120
        while not (args.run_dir.parent / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    fit_stochastic(build_stochastic(stochastic_config(args.run_dir), after_step=pause))


if __name__ == "__main__":
    _main(sys.argv[1:])


# ---- 11. a mistake cannot damage a run: every check before the first write ----


def run_files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder and its bytes: what a refused command must leave exactly as it was."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture
def short_run(tmp_path: Path) -> Path:
    """A finished 4-step run of the stochastic model (checkpoint at step 4)."""
    run_dir = tmp_path / "run"
    fit_stochastic(build_stochastic(stochastic_config(run_dir, steps=4)))
    return run_dir


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"batch_size": 8}, "--batch-size 8 (the run has 16)"),
        ({"seed": 4}, "--seed 4 (the run has 3)"),
        ({"lr": 0.5}, "--lr 0.5 (the run has 0.02)"),  # the optimizer state holds the saved rate: refused, not ignored
        ({"ema_decay": 0.5}, "--ema-decay 0.5 (the run has 0.8)"),
    ],
)
def test_a_refused_resume_writes_nothing_and_the_run_still_resumes(
    short_run: Path, change: dict[str, Any], expected: str
) -> None:
    """A resume with a setting the checkpoint fixes is refused in one line, before config.json (or anything else)
    is written, so plain --resume still works afterwards."""
    before = run_files(short_run)
    with pytest.raises(GenlabError, match="cannot resume") as caught:
        build_stochastic(stochastic_config(short_run, resume=str(short_run), steps=8, **change))
    assert expected in str(caught.value)
    assert run_files(short_run) == before
    trainer = build_stochastic(stochastic_config(short_run, resume=str(short_run), steps=8))
    fit_stochastic(trainer)
    assert trainer.step == 8


def test_resume_may_change_how_long_and_how_often(short_run: Path) -> None:
    """--steps, --log-every, --checkpoint-every and the like are the resumable settings: they work as written."""
    config = stochastic_config(short_run, resume=str(short_run), steps=6, log_every=2, checkpoint_every=3)
    trainer = build_stochastic(config)
    fit_stochastic(trainer)
    assert latest_name(short_run) == "step_00000006"
    saved = json.loads((short_run / "config.json").read_text())["config"]
    assert saved["steps"] == 6 and saved["log_every"] == 2


def test_resume_that_has_nothing_to_do_is_refused(short_run: Path) -> None:
    """--steps already reached: one line that says to raise --steps, not an exit 0 that did nothing."""
    before = run_files(short_run)
    with pytest.raises(GenlabError, match=r"already at step 4 of --steps 4: raise --steps"):
        build_stochastic(stochastic_config(short_run, resume=str(short_run), steps=4))
    assert run_files(short_run) == before


def test_run_dir_beside_resume_must_name_the_same_folder(short_run: Path, tmp_path: Path) -> None:
    """--run-dir elsewhere beside --resume would be silently ignored: refused; the same folder is accepted."""
    with pytest.raises(GenlabError, match="name two folders"):
        stochastic_config(tmp_path / "other", resume=str(short_run), steps=8).validate()
    stochastic_config(short_run, resume=str(short_run), steps=8).validate()


def test_paths_that_are_files_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("not a run")
    with pytest.raises(GenlabError, match="is a file, not a run folder"):
        stochastic_config(file).validate()


def test_a_batch_larger_than_the_data_leaves_no_run_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    trainer = build_stochastic(stochastic_config(run_dir, batch_size=10_000))
    with pytest.raises(GenlabError, match="exceeds the data set"):
        fit_stochastic(trainer)
    assert not run_dir.exists()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


DAMAGES: dict[str, Callable[[Path, Path], None]] = {
    "truncated weights": lambda run, ckpt: _truncate(ckpt / "ae" / "model.safetensors"),
    "garbage weights": lambda run, ckpt: (ckpt / "ae" / "model.safetensors").write_bytes(b"\x00garbage" * 50),
    "truncated config.json": lambda run, ckpt: _truncate(run / "config.json"),
    "garbage state.json": lambda run, ckpt: (ckpt / "state.json").write_text("{not json"),
    "missing training_state.pt": lambda run, ckpt: (ckpt / "training_state.pt").unlink(),
    "truncated training_state.pt": lambda run, ckpt: _truncate(ckpt / "training_state.pt"),
    "garbage metrics line": lambda run, ckpt: (run / METRICS_FILE).write_text(
        (run / METRICS_FILE).read_text() + '{"step": 3, "recon/lo\n'
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_run_file_is_one_line_on_resume_and_nothing_is_written(short_run: Path, damage: str) -> None:
    """Each damaged file a crash or a mistake can leave is a GenlabError (one line from a script) naming the file;
    the run folder is byte-identical afterwards."""
    checkpoint = latest_checkpoint(short_run)
    DAMAGES[damage](short_run, checkpoint)
    before = run_files(short_run)
    with pytest.raises(GenlabError) as caught:
        fit_stochastic(build_stochastic(stochastic_config(short_run, resume=str(short_run), steps=8)))
    message = str(caught.value)
    assert "\n" not in message and ("damaged" in message or "missing" in message), message
    assert run_files(short_run) == before


# ---- 12. signals are never lost, and a second one stops at once ----


def test_sigterm_during_evaluation_is_not_lost(tmp_path: Path) -> None:
    """A SIGTERM that arrives while the loop samples or evaluates (where it used to be read too early and lost, the
    process exiting 0) checkpoints at that step and exits 128 + SIGTERM."""
    run_dir = tmp_path / "run"
    trainer = build_stochastic(stochastic_config(run_dir, steps=12, eval_every=3, checkpoint_every=100))

    def evaluate(trainer: Trainer) -> dict[str, float]:
        if trainer.step == 6:
            signal.raise_signal(signal.SIGTERM)
        return {"zero": 0.0}

    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(synthetic("binary"), eval_fn=evaluate)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert latest_name(run_dir) == "step_00000006"
    assert signal.getsignal(signal.SIGTERM) is not trainer._handle_signal, "fit restores the previous handlers"


def test_a_second_signal_stops_at_once_without_a_checkpoint(tmp_path: Path) -> None:
    """Ctrl-C twice: the second interrupt does not wait for the step, the sampling or the checkpoint."""
    run_dir = tmp_path / "run"
    trainer = build_stochastic(stochastic_config(run_dir, steps=12, sample_every=3, checkpoint_every=100))
    reached: list[int] = []

    def sample(trainer: Trainer) -> torch.Tensor:
        if trainer.step == 3:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            reached.append(trainer.step)  # never: the second signal ends the process here
        return decode_basis(trainer)

    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(synthetic("binary"), sample_fn=sample)
    assert exit_info.value.code == 128 + signal.SIGINT
    assert reached == [] and latest_checkpoint(run_dir) is None


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_outside_the_loop_is_one_line(capsys: pytest.CaptureFixture, signum: int) -> None:
    """Ctrl-C or SIGTERM while a script loads data or runs its final evaluation: one line, exit 128 + signal."""
    from genlab.core.errors import exit_on_user_error

    @exit_on_user_error
    def script() -> None:
        signal.raise_signal(signum)
        time.sleep(5)

    # Python's own Ctrl-C handler, as a foreground process has it: a shell's background job (pytest run under nohup
    # or with &) inherits SIGINT ignored, and then no KeyboardInterrupt is ever raised.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as exit_info:
            script()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert exit_info.value.code == 128 + signum
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err and signal.Signals(signum).name in err


# ---- 13. durability, NaN on the step it happens, TensorBoard on resume, the progress bar ----


def test_weights_and_state_reach_the_disk_before_latest_moves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync of every file of a checkpoint (weights, EMA, training state) precedes the rename of `latest` to it,
    so a power cut cannot leave `latest` pointing at a file the disk never received."""
    events: list[str] = []
    real_fsync, real_write = checkpoint_module.fsync_path, checkpoint_module.write_text_atomic

    def fsync_path(path: Path) -> None:
        events.append(f"fsync {Path(path).name}")
        real_fsync(path)

    def write_text_atomic(path: Path, text: str) -> None:
        events.append(f"write {Path(path).name}")
        real_write(path, text)

    monkeypatch.setattr(checkpoint_module, "fsync_path", fsync_path)
    monkeypatch.setattr(checkpoint_module, "write_text_atomic", write_text_atomic)
    fit_stochastic(build_stochastic(stochastic_config(tmp_path / "run", steps=4)))
    latest = events.index(f"write {LATEST}")
    durable = events[:latest]
    for name in ("model.safetensors", "training_state.pt", "state.json"):
        assert durable.count(f"fsync {name}") == (2 if name == "model.safetensors" else 1), (name, durable)


def test_a_nan_stops_on_the_step_it_happens_naming_the_loss(tmp_path: Path) -> None:
    """With --log-every 100 the NaN of step 3 used to run on until a log step; now it stops at step 3 itself."""
    run_dir = tmp_path / "run"
    trainer = build_stochastic(stochastic_config(run_dir, log_every=100, sample_every=100), nan_from_step=2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss recon/loss at step 3;"):
        fit_stochastic(trainer)
    assert trainer.step == 2


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path: Path) -> None:
    """A crash after step 6 (checkpoint at 4) and a resume replays steps 5 and 6: TensorBoard must purge them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"

    def crash_at_6(trainer: Trainer) -> None:
        if trainer.step == 5:  # inside step 6 (the step counter is 0-based while a step runs)
            raise CrashError

    with pytest.raises(CrashError):
        fit_stochastic(build_stochastic(stochastic_config(run_dir), after_step=crash_at_6))
    resume_in_process(run_dir)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("recon/loss")]
    assert steps == list(range(1, STEPS + 1)), steps


class RecordingBar:
    """Stands in for tqdm: records every postfix the loop shows."""

    shown: typing.ClassVar[list[dict[str, str]]] = []

    def __init__(self, *args: Any, disable: bool = False, **kwargs: Any) -> None:
        self.disable = disable

    def update(self, n: int) -> None:
        pass

    def set_postfix(self, values: dict[str, str], refresh: bool = True) -> None:
        RecordingBar.shown.append(dict(values))

    def close(self) -> None:
        pass


def test_progress_shows_every_rule_and_counts_every_batch_drawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A critic repeated 3 times and a generator once draw 4 batches a step. On a clock that moves one second per
    loss, the bar shows both rules' losses every step, and both the bar and metrics.jsonl give batch_size images per
    second (4 batches in 4 seconds), not a quarter of it."""
    import tqdm.auto

    now = [0.0]
    monkeypatch.setattr(
        trainer_module, "time", types.SimpleNamespace(perf_counter=lambda: now[0], monotonic=time.monotonic)
    )
    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    RecordingBar.shown = []
    config = stochastic_config(tmp_path / "run", steps=4, grad_accum=1, log_every=2, progress=True)
    trainer = Trainer(config, project=PROJECT)
    critic, generator = (
        trainer.add_model("critic", nn.Linear(PIXELS, 1)),
        trainer.add_model("generator", nn.Linear(PIXELS, 1)),
    )

    def loss_of(model: nn.Module) -> Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        def loss(batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            now[0] += 1.0
            return model(batch.images.flatten(1)).pow(2).mean(), {}

        return loss

    trainer.add_update("critic", torch.optim.SGD(critic.parameters(), lr=0.01), loss_of(critic), ["critic"], repeats=3)
    trainer.add_update("generator", torch.optim.SGD(generator.parameters(), lr=0.01), loss_of(generator), ["generator"])
    trainer.fit(synthetic("binary"))
    assert len(RecordingBar.shown) == 4
    assert all(set(shown) == {"critic", "generator", "img/s"} for shown in RecordingBar.shown)
    assert all(float(shown["img/s"]) == config.batch_size for shown in RecordingBar.shown)
    rates = [line["images_per_second"] for line in metric_lines(tmp_path / "run") if "images_per_second" in line]
    assert rates == [config.batch_size, config.batch_size]


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_after_one_step_uses_the_warmed_up_decay(tmp_path: Path, warmup: bool) -> None:
    """After the first optimizer step the EMA is d * initial + (1 - d) * trained weights, with d = --ema-decay, or
    with --ema-warmup min(decay, (1 + 0) / (10 + 0)) = 0.1: the warm-up lets the average leave the initialisation."""
    config = deterministic_config(tmp_path / "run", steps=1, ema_decay=0.9, ema_warmup=warmup)
    trainer = build_deterministic(config)
    initial = {k: v.detach().clone() for k, v in trainer.unwrap("ae").state_dict().items()}
    trainer.fit(synthetic("unit"))
    decay = 0.1 if warmup else 0.9
    assert trainer.ema_decay_at(0) == decay
    trained = trainer.unwrap("ae").state_dict()
    for name, ema_value in trainer.ema_models["ae"].state_dict().items():
        torch.testing.assert_close(ema_value, decay * initial[name] + (1 - decay) * trained[name])
    assert trainer.ema_decay_at(10_000) == 0.9  # the ramp ends at --ema-decay
