"""Run folders and checkpoints: atomic writes, safetensors weights, one-call loading by run folder.

A run folder ``runs/<project>/<name>/`` holds::

    config.json                 {"project": ..., "config": {...}} the resolved config of the script
    metrics.jsonl               one JSON object per logged step
    samples/step_00001000.png   sample grids
    checkpoints/latest          the name of the newest complete checkpoint
    checkpoints/step_00001000/  <model>/model.safetensors (+ config.json), <model>_ema/..., training_state.pt,
                                state.json

A checkpoint is written into a hidden temporary folder and renamed into place, and ``latest`` is replaced
atomically after it, so a crash mid-write leaves the previous checkpoint whole and still ``latest``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from genlab.core.config import CONFIG_FILE
from genlab.core.errors import GenlabError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
WEIGHTS = "model.safetensors"
STATE = "state.json"
TRAINING_STATE = "training_state.pt"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file so readers see the old or the new content, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def save_module(module: torch.nn.Module, folder: Path) -> None:
    """Weights as safetensors; models with ``save_pretrained`` (the Hub mixin) also write their config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(module, "save_pretrained"):
        module.save_pretrained(folder)
    else:
        save_model(module, str(folder / WEIGHTS))


def load_module_weights(module: torch.nn.Module, folder: Path) -> None:
    """Load weights saved by ``save_module`` into an existing module of the same architecture."""
    path = folder / WEIGHTS
    if not path.is_file():
        raise GenlabError(f"{folder} has no {WEIGHTS}")
    try:
        load_model(module, str(path), strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise GenlabError(f"weights in {path} do not fit this model ({first})") from None


def save_checkpoint(
    run_dir: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    training_state: dict[str, Any],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, and keep only the newest ``keep``."""
    folder = run_dir / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    temporary = folder / f".tmp-{checkpoint_name(step)}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    for name, module in modules.items():
        save_module(module, temporary / name)
    torch.save(training_state, temporary / TRAINING_STATE)
    write_text_atomic(temporary / STATE, json.dumps({"step": step, **state}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    write_text_atomic(folder / LATEST, final.name)
    if keep > 0:
        finished = sorted(p for p in folder.glob("step_*") if p.is_dir())
        for old in finished[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None if it has none."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    return folder if (folder / STATE).is_file() else None


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """A run folder or a checkpoint folder -> (run folder, checkpoint folder), or a one-line error."""
    path = Path(path)
    if not path.exists():
        raise GenlabError(f"{path} does not exist")
    if (path / STATE).is_file():
        return path.parent.parent, path
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise GenlabError(f"{path} is neither a checkpoint nor a run folder with a checkpoint")
    return path, checkpoint


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise GenlabError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}")
    return json.loads(path.read_text())


def resolve_device(name: str) -> torch.device:
    """``auto`` -> a CUDA GPU if there is one, else the CPU; ``cuda`` / ``mps`` only where they exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GenlabError("--device cuda was asked for, but no CUDA GPU is visible")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GenlabError("--device mps was asked for, but MPS is not available")
    return torch.device(name)


def load_pretrained(path: str | Path, model_class: type, name: str, project: str, ema: bool = True) -> Any:
    """One call from a run folder (or checkpoint folder) to a trained model, EMA weights when there are some.

    Refuses, in one line, a checkpoint written by another project or without a model called ``name``.
    """
    run_dir, checkpoint = resolve_checkpoint(path)
    info = read_run_info(run_dir)
    if info.get("project") != project:
        raise GenlabError(
            f"{path} is a checkpoint of project {info.get('project')!r}, not {project!r}: "
            f"use {info.get('project')}'s sample script"
        )
    folder = checkpoint / f"{name}_ema" if ema and (checkpoint / f"{name}_ema").is_dir() else checkpoint / name
    if not (folder / WEIGHTS).is_file():
        raise GenlabError(f"{checkpoint} has no model {name!r}")
    try:
        return model_class.from_pretrained(str(folder))
    except (RuntimeError, TypeError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0]
        raise GenlabError(f"{folder} does not hold a {model_class.__name__} ({first})") from None
