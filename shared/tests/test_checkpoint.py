"""genlab.core.checkpoint: resolving run/checkpoint folders, load_pretrained's refusals, atomic small writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_model

from genlab.core.checkpoint import (
    CHECKPOINTS,
    LATEST,
    WEIGHTS,
    load_pretrained,
    resolve_checkpoint,
    save_checkpoint,
    write_text_atomic,
)
from genlab.core.config import CONFIG_FILE
from genlab.core.errors import GenlabError


class TinyModel(torch.nn.Module):
    """A model with the ``from_pretrained`` classmethod load_pretrained expects (no Hub mixin needed)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    @classmethod
    def from_pretrained(cls, folder: str) -> TinyModel:
        model = cls()
        load_model(model, str(Path(folder) / WEIGHTS))
        return model


def make_run(run_dir: Path, project: str, ema: bool = False) -> tuple[TinyModel, TinyModel]:
    """A run folder of ``project`` with one checkpoint holding model "net" (and "net_ema" if asked)."""
    torch.manual_seed(0)
    model, ema_model = TinyModel(), TinyModel()
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG_FILE).write_text(json.dumps({"project": project, "config": {"steps": 1}}))
    modules = {"net": model, **({"net_ema": ema_model} if ema else {})}
    save_checkpoint(run_dir, 5, modules, {"optimizer": {}}, {"draws": 5})
    return model, ema_model


def test_load_pretrained_round_trip_prefers_ema(tmp_path: Path) -> None:
    """From a run folder or its checkpoint folder: the saved weights, the EMA copy when there is one."""
    model, ema_model = make_run(tmp_path / "run", "toy", ema=True)
    for path in (tmp_path / "run", tmp_path / "run" / CHECKPOINTS / "step_00000005"):
        loaded = load_pretrained(path, TinyModel, "net", project="toy")
        torch.testing.assert_close(loaded.linear.weight, ema_model.linear.weight)
    raw = load_pretrained(tmp_path / "run", TinyModel, "net", project="toy", ema=False)
    torch.testing.assert_close(raw.linear.weight, model.linear.weight)
    assert not torch.equal(model.linear.weight, ema_model.linear.weight)


def test_load_pretrained_refuses_another_projects_run(tmp_path: Path) -> None:
    """A checkpoint written by another project is refused in one line that names both projects."""
    make_run(tmp_path / "run", "gan")
    with pytest.raises(GenlabError) as info:
        load_pretrained(tmp_path / "run", TinyModel, "net", project="vae")
    message = str(info.value)
    assert "'gan'" in message and "'vae'" in message and "\n" not in message


def test_load_pretrained_refuses_non_runs(tmp_path: Path) -> None:
    """A missing path, a folder that is no run or checkpoint, and a missing model name are one-line errors."""
    with pytest.raises(GenlabError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere", TinyModel, "net", project="toy")
    (tmp_path / "plain").mkdir()
    with pytest.raises(GenlabError, match="neither a checkpoint nor a run folder"):
        load_pretrained(tmp_path / "plain", TinyModel, "net", project="toy")
    make_run(tmp_path / "run", "toy")
    with pytest.raises(GenlabError, match="no model 'decoder'"):
        load_pretrained(tmp_path / "run", TinyModel, "decoder", project="toy")


def test_resolve_checkpoint_follows_latest(tmp_path: Path) -> None:
    """A run folder resolves to the checkpoint ``latest`` names; a checkpoint folder resolves to itself."""
    make_run(tmp_path / "run", "toy")
    model = TinyModel()
    newest = save_checkpoint(tmp_path / "run", 9, {"net": model}, {}, {})
    assert resolve_checkpoint(tmp_path / "run") == (tmp_path / "run", newest)
    older = tmp_path / "run" / CHECKPOINTS / "step_00000005"
    assert resolve_checkpoint(older) == (tmp_path / "run", older)
    assert (tmp_path / "run" / CHECKPOINTS / LATEST).read_text() == newest.name


def test_write_text_atomic_leaves_no_temporary(tmp_path: Path) -> None:
    """write_text_atomic writes and replaces the content, and leaves nothing else in the folder."""
    path = tmp_path / "latest"
    write_text_atomic(path, "step_00000001")
    write_text_atomic(path, "step_00000002")
    assert path.read_text() == "step_00000002"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]
