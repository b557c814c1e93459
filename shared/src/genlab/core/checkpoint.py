"""Run folders and checkpoints: atomic writes, safetensors weights, one-call loading by run folder.

A run folder ``runs/<project>/<name>/`` holds::

    config.json                 {"project": ..., "config": {...}} the resolved config of the script
    metrics.jsonl               one JSON object per logged step
    samples/step_00001000.png   sample grids
    checkpoints/latest          the name of the newest complete checkpoint
    checkpoints/step_00001000/  <model>/model.safetensors (+ config.json), <model>_ema/..., training_state.pt,
                                state.json

A checkpoint is written into a hidden temporary folder, every file in it flushed to the disk (fsync), and only
then renamed into place; ``latest`` is replaced atomically after it. So a crash or a power cut mid-write leaves
the previous checkpoint whole and still ``latest``, and ``latest`` never names a file the disk does not hold.
A damaged file (truncated weights, garbage JSON) is a one-line error naming it, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
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


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and every folder's entries (so a later rename moves durable files)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file so readers see the old or the new content, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_path(path.parent)


def read_json(path: Path, what: str) -> Any:
    """A JSON file a run folder needs, or one line saying it is missing or damaged."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GenlabError(f"{path} is missing: {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GenlabError(f"{path} is damaged ({type(error).__name__}: {error}): {what}") from None


def load_training_state(path: Path) -> dict[str, Any]:
    """The optimizer / scheduler / scaler state of a checkpoint (plain tensors and numbers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GenlabError(f"{path} is missing: the checkpoint cannot be resumed (its weights can be sampled)") from None
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise GenlabError(f"{path} is damaged ({first}): the checkpoint cannot be resumed") from None


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
    except (SafetensorError, OSError) as error:
        raise GenlabError(f"{path} is damaged or not safetensors ({error})") from None
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
    (temporary / STATE).write_text(json.dumps({"step": step, **state}, indent=1))
    fsync_tree(temporary)  # durable before it is renamed into place and before `latest` moves to it
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    fsync_path(folder)
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
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise GenlabError(f"{pointer} is damaged ({error})") from None
    folder = pointer.parent / name
    return folder if name and (folder / STATE).is_file() else None


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
    """A run folder's config.json: {"project": ..., "config": {...}, and what the script saved beside it}."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise GenlabError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}")
    info = read_json(path, "the run's resolved config")
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise GenlabError(f"{path} is damaged: it holds no config")
    return info


def resolve_device(name: str) -> torch.device:
    """``auto`` -> a CUDA GPU if there is one, else the CPU; ``cuda`` / ``mps`` only where they exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GenlabError("--device cuda was asked for, but no CUDA GPU is visible")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GenlabError("--device mps was asked for, but MPS is not available")
    return torch.device(name)


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's weights (every tensor of its state dict, by name, dtype, shape and bytes): the identity
    a second stage records of the first-stage model it was made with, independent of how the file was written."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
    except (RuntimeError, TypeError, ValueError, KeyError, OSError, SafetensorError) as error:
        first = str(error).strip().splitlines()[0]
        raise GenlabError(f"{folder} does not hold a {model_class.__name__} ({first})") from None
