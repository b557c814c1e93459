"""Every console script end to end on tiny synthetic data, and every user mistake as one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

from genlab.vae import sample as vae_sample
from genlab.vae import train as vae_train

BIN = Path(sys.executable).parent
TINY = ["--dataset", "synthetic", "--batch-size", "32", "--hidden-dims", "32", "--latent-dim", "4",
        "--log-every", "5", "--sample-every", "10", "--checkpoint-every", "10", "--eval-every", "10",
        "--eval-images", "64", "--eval-samples", "4", "--test-samples", "4", "--no-progress",
        "--device", "cpu"]  # fmt: skip


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GENLAB_NO_DOWNLOAD": "1"}
    return subprocess.run([str(BIN / script), *args], capture_output=True, text=True, env=env, timeout=300)


def test_vae_train_sample_and_resume_end_to_end(tmp_path: Path, user_error: Callable[..., str]) -> None:
    """vae-train writes a complete run folder, vae-sample draws every picture from it, --resume continues it."""
    run = tmp_path / "run"
    trained = _run("vae-train", *TINY, "--steps", "20", "--run-dir", str(run), "--latent-dim", "2")
    assert trained.returncode == 0, trained.stderr
    assert "test NLL" in trained.stdout
    saved = json.loads((run / "config.json").read_text())
    assert saved["project"] == "vae" and saved["config"]["steps"] == 20 and saved["model"]["latent_dim"] == 2
    assert (run / "checkpoints" / "latest").read_text() == "step_00000020"
    assert sorted(p.name for p in (run / "samples").glob("step_*.png")) == ["step_00000010.png", "step_00000020.png"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 20 and any((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert json.loads((run / "results.json").read_text())["nll_nats"] > 0

    sampled = _run("vae-sample", "--run", str(run), "--out", str(tmp_path / "pictures"), "--npz", "16", "--count", "16")
    assert sampled.returncode == 0, sampled.stderr
    names = {p.name for p in (tmp_path / "pictures").iterdir()}
    expected = {"prior_samples.png", "reconstructions.png", "interpolations.png", "traversals.png", "manifold.png"}
    assert expected | {"samples.npz"} <= names

    refused = user_error(vae_train.main, [*TINY, "--steps", "20", "--run-dir", str(run)])
    assert "already holds a trained run" in refused  # training again into a finished run would overwrite it

    vae_train.main(["--resume", str(run), "--steps", "30"])  # in-process: the same entry point, no second start-up
    assert (run / "checkpoints" / "latest").read_text() == "step_00000030"
    steps = [
        json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if "train/loss" in line
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 30
    assert json.loads((run / "config.json").read_text())["config"]["steps"] == 30


def test_a_user_mistake_is_one_line_and_exit_2_from_the_real_script(tmp_path: Path) -> None:
    result = _run("vae-train", "--dataset", "cifar11", "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "unknown dataset 'cifar11'" in result.stderr and "mnist" in result.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--steps", "abc"], "invalid int value: 'abc'"),
        (["--steps", "-5"], "--steps must be positive"),
        (["--architecture", "rnn"], "invalid choice: 'rnn'"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--iwae-samples", "5", "--beta", "4"], "--beta applies to the ELBO"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
    ],
)
def test_nonsense_flags_are_refused(
    user_error: Callable[..., str], tmp_path: Path, argv: list[str], expected: str
) -> None:
    err = user_error(vae_train.main, [*argv, "--run-dir", str(tmp_path / "r")])
    assert expected in err


def test_missing_data_offline_names_the_folder_and_files(user_error: Callable[..., str], tmp_path: Path) -> None:
    err = user_error(vae_train.main, ["--dataset", "mnist", "--data-dir", str(tmp_path)])
    assert str(tmp_path / "MNIST" / "raw") in err and "train-images-idx3-ubyte" in err


def test_sample_refuses_a_checkpoint_of_another_model(user_error: Callable[..., str], tmp_path: Path) -> None:
    run = tmp_path / "gan-run"
    checkpoint = run / "checkpoints" / "step_00000010"
    (checkpoint / "generator").mkdir(parents=True)
    (checkpoint / "state.json").write_text(json.dumps({"step": 10, "project": "gans"}))
    (run / "checkpoints" / "latest").write_text("step_00000010")
    (run / "config.json").write_text(json.dumps({"project": "gans", "config": {}}))
    err = user_error(vae_sample.main, ["--run", str(run)])
    assert "project 'gans', not 'vae'" in err


def test_sample_and_resume_refuse_paths_that_are_not_runs(user_error: Callable[..., str], tmp_path: Path) -> None:
    assert "does not exist" in user_error(vae_sample.main, ["--run", str(tmp_path / "nowhere")])
    assert "neither a checkpoint nor a run folder" in user_error(vae_sample.main, ["--run", str(tmp_path)])
    assert "is not a run folder" in user_error(vae_train.main, ["--resume", str(tmp_path)])
    assert "--run is required" in user_error(vae_sample.main, [])


def test_help_lists_every_shared_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        vae_train.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    shared = ["--dataset", "--data-dir", "--steps", "--batch-size", "--lr", "--seed", "--device", "--run-dir",
              "--preset", "--resume"]  # fmt: skip
    assert all(flag in text for flag in shared)


def _genlab_console_scripts() -> list[metadata.EntryPoint]:
    scripts = {
        entry.name: entry
        for distribution in metadata.distributions()
        if distribution.metadata["Name"].startswith("genlab")
        for entry in distribution.entry_points
        if entry.group == "console_scripts"
    }
    return [scripts[name] for name in sorted(scripts)]


@pytest.mark.parametrize("script", _genlab_console_scripts(), ids=lambda entry: entry.name)
def test_every_console_script_prints_its_help(script: metadata.EntryPoint, capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` exits 0 with the usage line: every help string survives argparse's %-formatting."""
    with pytest.raises(SystemExit) as exited:
        script.load()(["--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
