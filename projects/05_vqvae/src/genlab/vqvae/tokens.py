"""Token grids on disk: what ``vqvae-encode`` writes and what a second stage (06's GPT and MaskGIT) reads.

A token folder holds, per split, ``<split>.safetensors`` (``level0`` ... one (N, h, w) int64 grid per level,
coarsest first, and ``labels`` when the data set has classes), and ``tokens.json``: the data set, the splits'
sizes, the number of classes, each level's grid shape, K, the decoder's term of the bits/dim bound on the test
split (so that a prior's NLL completes the bound), and the autoencoder that made them: its run, checkpoint, model
config and the sha256 of its weights. A second stage records that hash and refuses to decode with any other autoencoder.

Any autoencoder with 05's interface writes and decodes tokens this way (``encode(x)`` -> a list of grids,
``decode_tokens(grids)``, ``config.token_shapes()``, ``config.num_codes``): its package names its model class
under the entry-point group ``genlab.autoencoders`` with its project's name (05's ``vqvae``, 08's ``vqgan``), which
is also the name of the model in its checkpoints, so a second stage decodes through it without importing it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from genlab.core.checkpoint import (
    load_pretrained,
    read_json,
    read_run_info,
    resolve_checkpoint,
    weights_sha256,
    write_text_atomic,
)
from genlab.core.errors import GenlabError

INFO_FILE = "tokens.json"
AUTOENCODERS = "genlab.autoencoders"  # entry-point group: project name -> model class


@dataclass
class TokenSet:
    """One split's token grids (coarsest level first) and labels, with the folder's tokens.json."""

    levels: list[torch.Tensor]  # each (N, h, w) int64
    labels: torch.Tensor | None  # (N,) int64
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.levels[0])


def write_token_split(folder: Path, split: str, levels: list[torch.Tensor], labels: torch.Tensor | None) -> Path:
    tensors = {f"level{i}": grid.to(torch.int64).contiguous().cpu() for i, grid in enumerate(levels)}
    if labels is not None:
        tensors["labels"] = labels.to(torch.int64).contiguous().cpu()
    path = folder / f"{split}.safetensors"
    temporary = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(temporary))
    temporary.replace(path)
    return path


def token_info(
    model: nn.Module,
    project: str,
    run: Path,
    checkpoint: Path,
    train_config: dict[str, Any],
    sizes: dict[str, int],
    num_classes: int,
    reconstruction: dict[str, float] | None = None,
) -> dict:
    """tokens.json's content for tokens made by ``model``, of project ``project``; ``reconstruction`` holds the
    decoder's term of the bits/dim bound on the test split (sigma, the mean -log p(x | z_q) in nats, the dims per
    image)."""
    config = model.config
    return {
        "dataset": train_config["dataset"],
        "image_size": train_config.get("image_size"),
        "splits": sizes,
        "num_classes": num_classes,
        "token_shapes": [list(shape) for shape in config.token_shapes()],
        "num_codes": config.num_codes,
        "reconstruction": reconstruction,
        "autoencoder": {
            "project": project,
            "run": str(run),
            "checkpoint": str(checkpoint),
            "weights_sha256": weights_sha256(model),
            "config": {**vars(config), "image_shape": list(config.image_shape)},
        },
    }


def write_token_info(folder: Path, info: dict[str, Any]) -> Path:
    path = folder / INFO_FILE
    write_text_atomic(path, json.dumps(info, indent=1) + "\n")
    return path


def load_tokens(folder: str | Path, split: str) -> TokenSet:
    """One split of a token folder; a missing or damaged file is one line naming it."""
    folder = Path(folder)
    info = read_json(folder / INFO_FILE, "write it with vqvae-encode --run <vqvae run>")
    path = folder / f"{split}.safetensors"
    if not path.is_file():
        raise GenlabError(f"{path} is missing: vqvae-encode writes the train and test splits")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise GenlabError(f"{path} is damaged or not safetensors ({error})") from None
    levels = [tensors[f"level{i}"] for i in range(len(info["token_shapes"])) if f"level{i}" in tensors]
    shapes = [list(grid.shape[1:]) for grid in levels]
    if shapes != info["token_shapes"] or len({len(grid) for grid in levels}) != 1:
        raise GenlabError(f"{path} holds grids {shapes}, but {folder / INFO_FILE} says {info['token_shapes']}")
    return TokenSet(levels, tensors.get("labels"), info)


def check_autoencoder(model: nn.Module, expected_sha256: str, where: str) -> None:
    """Refuse, in one line, to decode tokens with an autoencoder other than the one that made them."""
    actual = weights_sha256(model)
    if actual != expected_sha256:
        raise GenlabError(
            f"{where}: this autoencoder's weights (sha256 {actual[:12]}) are not the ones that made the tokens "
            f"({expected_sha256[:12]}); decode with the autoencoder named in the tokens' {INFO_FILE}"
        )


def autoencoder_class(project: str, where: str) -> type[nn.Module]:
    """The model class that project ``project`` registered under ``genlab.autoencoders``, or a one-line error."""
    found = entry_points(group=AUTOENCODERS)
    if project not in found.names:
        raise GenlabError(f"{where}: a run of project {project!r} is not an autoencoder whose tokens a prior models "
                          f"(those are: {', '.join(sorted(found.names))})")  # fmt: skip
    return found[project].load()


def load_autoencoder(path: str | Path, expected_sha256: str, where: str) -> nn.Module:
    """The autoencoder of run (or checkpoint) ``path``, of whichever registered project wrote it, whose weights made
    the tokens: its EMA weights or its plain ones, whichever has sha256 ``expected_sha256``; any other autoencoder
    is refused in one line."""
    run_dir, _ = resolve_checkpoint(path)
    project = str(read_run_info(run_dir).get("project"))
    model_class = autoencoder_class(project, where)
    model = load_pretrained(path, model_class, project, project, ema=True)
    if weights_sha256(model) != expected_sha256:
        plain = load_pretrained(path, model_class, project, project, ema=False)
        model = plain if weights_sha256(plain) == expected_sha256 else model
    check_autoencoder(model, expected_sha256, where)
    return model.eval()
