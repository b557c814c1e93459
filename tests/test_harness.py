"""The script harness shared by every project (genlab.core.harness), and what it promises each of them:
--seed fixes the initial weights the same way in every train script, samples.npz is whole whatever the chunking,
and a sample script's refusals are one line that leaves nothing behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from genlab.autoregressive import train as ar_train
from genlab.core import classifier
from genlab.core.config import parse_config
from genlab.core.errors import GenlabError
from genlab.core.harness import SampleConfig, write_samples_npz
from genlab.core.trainer import Trainer
from genlab.flows import train as flow_train
from genlab.gans import train as gan_train
from genlab.vae import sample as vae_sample
from genlab.vae import train as vae_train

# Each train script with a tiny network on synthetic data: (module with train(), config class, flags).
TRAIN_SCRIPTS: dict[str, tuple[Any, type, list[str]]] = {
    "vae": (vae_train, vae_train.VAETrainConfig, ["--hidden-dims", "8", "--latent-dim", "2"]),
    "pixelcnn": (ar_train, ar_train.ARTrainConfig, ["--model", "pixelcnn", "--hidden-channels", "4",
                                                    "--num-layers", "1", "--head-channels", "4"]),
    "glow": (flow_train, flow_train.FlowTrainConfig, ["--model", "glow", "--image-size", "8", "--num-scales", "2",
                                                      "--steps-per-scale", "1", "--hidden-channels", "4"]),
    "dcgan": (gan_train, gan_train.GANTrainConfig, ["--variant", "dcgan", "--latent-dim", "4", "--width", "4"]),
}  # fmt: skip


def initial_weights(monkeypatch: pytest.MonkeyPatch, name: str, seed: int, run: Path) -> dict[str, torch.Tensor]:
    """Every model's weights as the train script hands them to fit (fit itself is stopped before any step)."""
    module, config_class, flags = TRAIN_SCRIPTS[name]
    captured: list[Trainer] = []

    def record(self: Trainer, *args: Any, **kwargs: Any) -> dict[str, float]:
        captured.append(self)
        raise StopIteration  # no step, no files

    monkeypatch.setattr(Trainer, "fit", record)
    argv = ["--dataset", "synthetic", "--batch-size", "8", "--steps", "1", "--device", "cpu", "--no-progress",
            *flags, "--seed", str(seed), "--run-dir", str(run)]  # fmt: skip
    with pytest.raises(StopIteration):
        module.train(parse_config(config_class, argv))
    trainer = captured[0]
    return {
        f"{model}.{k}": v.clone() for model in trainer.models for k, v in trainer.unwrap(model).state_dict().items()
    }


@pytest.mark.parametrize("name", sorted(TRAIN_SCRIPTS))
def test_the_seed_fixes_every_projects_initial_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    """One mechanism for all: the Trainer seeds torch and the networks are built after it, so --seed 0 twice gives
    the same initial weights to the last bit, and --seed 1 others (02 once drew them before the seed was set)."""
    first = initial_weights(monkeypatch, name, 0, tmp_path / "a")
    again = initial_weights(monkeypatch, name, 0, tmp_path / "b")
    other = initial_weights(monkeypatch, name, 1, tmp_path / "c")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())
    assert not (tmp_path / "a").exists(), "nothing is written before fit"


def test_samples_npz_is_whole_and_in_order_whatever_the_chunk(tmp_path: Path) -> None:
    """write_samples_npz asks draw(start, n) for consecutive chunks and stores exactly count samples in order."""
    calls: list[tuple[int, int]] = []

    def draw(start: int, count: int) -> torch.Tensor:
        calls.append((start, count))
        return (torch.arange(start, start + count) % 256).to(torch.uint8).view(count, 1, 1, 1).expand(count, 1, 2, 2)

    path = write_samples_npz(tmp_path / "samples.npz", draw, 1234, chunk=500)
    assert calls == [(0, 500), (500, 500), (1000, 234)]
    with np.load(path) as archive:
        samples = archive["samples"]
    assert samples.shape == (1234, 1, 2, 2) and samples.dtype == np.uint8
    assert (samples[:, 0, 0, 0] == np.arange(1234) % 256).all()
    assert not list(tmp_path.glob(".*.tmp")), "written through a temporary file, then renamed"


def test_samples_npz_refuses_floats(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="uint8"):
        write_samples_npz(tmp_path / "samples.npz", lambda start, n: torch.zeros(n, 1, 2, 2), 3)
    assert not (tmp_path / "samples.npz").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--run", "somewhere", "--npz", "-1"], "--npz must be >= 0"),
        ([], "--run is required"),
    ],
)
def test_sample_config_refusals(flags: list[str], expected: str) -> None:
    with pytest.raises(GenlabError, match=expected):
        parse_config(SampleConfig, flags)


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "picture.png"
    file.write_bytes(b"png")
    with pytest.raises(GenlabError, match="is a file, not a folder"):
        parse_config(SampleConfig, ["--run", str(tmp_path), "--out", str(file)])


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("vae") / "run"
    vae_train.main(["--dataset", "synthetic", "--batch-size", "16", "--steps", "2", "--hidden-dims", "8",
                    "--latent-dim", "2", "--test-samples", "2", "--eval-images", "8", "--eval-samples", "2",
                    "--device", "cpu", "--no-progress", "--run-dir", str(run)])  # fmt: skip
    return run


@pytest.mark.parametrize(
    ("flag", "value"), [("--traversal-range", "nan"), ("--traversal-range", "inf"), ("--traversal-range", "-1")]
)
def test_a_nonsense_number_is_refused_by_the_sample_script(vae_run: Path, flag: str, value: str) -> None:
    """vae-sample --traversal-range nan used to be accepted (and drew NaN images)."""
    with pytest.raises(GenlabError, match="--traversal-range must be a number"):
        parse_config(vae_sample.VAESampleConfig, ["--run", str(vae_run), flag, value])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


SAMPLE_DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated weights": lambda ckpt: _truncate(ckpt / "vae" / "model.safetensors"),
    "garbage model config": lambda ckpt: (ckpt / "vae" / "config.json").write_text("{garbage"),
    "garbage run config": lambda ckpt: (ckpt.parent.parent / "config.json").write_text("[1, 2"),
    "garbage latest": lambda ckpt: (ckpt.parent / "latest").write_bytes(b"\xff\xfe\x00"),
}


@pytest.mark.parametrize("damage", sorted(SAMPLE_DAMAGES))
def test_a_damaged_run_is_one_line_for_the_sample_script(
    tmp_path: Path, vae_run: Path, capsys: pytest.CaptureFixture, damage: str
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    checkpoint = run / "checkpoints" / "step_00000002"
    SAMPLE_DAMAGES[damage](checkpoint)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        vae_sample.main(["--run", str(run), "--out", str(out), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists(), "refused before the output folder is made"


def test_classifier_resume_of_a_finished_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """genlab-classifier --resume of a finished run used to end in a KeyError."""
    run = tmp_path / "run"
    flags = ["--dataset", "synthetic", "--steps", "2", "--batch-size", "8", "--device", "cpu", "--no-progress"]
    classifier.main([*flags, "--run-dir", str(run), "--out", str(tmp_path / "weights")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        classifier.main(["--resume", str(run)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "already at step 2 of --steps 2" in err and err.count("\n") == 1


def test_samples_json_says_what_the_samples_cost(vae_run: Path, tmp_path: Path) -> None:
    """Beside samples.npz: the count, the network evaluations per sample (one decoder pass for a VAE), the wall
    time, and the parameters of the network that drew them, for the cross-paper table."""
    import json

    from genlab.vae.model import VAE

    out = tmp_path / "out"
    vae_sample.main(["--run", str(vae_run), "--out", str(out), "--npz", "7", "--device", "cpu", "--count", "4"])
    made = json.loads((out / "samples.json").read_text())
    parameters = sum(
        p.numel() for p in VAE.from_pretrained(str(vae_run / "checkpoints" / "step_00000002" / "vae")).parameters()
    )
    assert made["count"] == 7 and made["function_evaluations_per_sample"] == 1 and made["parameters"] == parameters
    assert made["seconds"] > 0 and made["seconds_per_sample"] == pytest.approx(made["seconds"] / 7)
    with np.load(out / "samples.npz") as archive:
        assert archive["samples"].shape == (7, 1, 28, 28)
