"""The first stage of a latent diffusion run, as the scripts see it: load an autoencoder run of 01 or 05, encode a
data set into latents, and the record a latent run carries in its config.json ("first_stage": the autoencoder's
run folder, kind, config, the sha256 of its weights, the latent shape and the scale factor s), so that sampling,
resuming and a later project decode with exactly that autoencoder and that s, or refuse in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genlab.core.checkpoint import load_pretrained, read_run_info, resolve_checkpoint, weights_sha256
from genlab.core.data import ImageDataset
from genlab.core.errors import GenlabError
from genlab.diffusion.latent import FirstStage, draw_latents, first_stage_of, scale_factor, scaled_moments
from genlab.vae.model import VAE
from genlab.vqvae.model import VQVAE

# The projects whose autoencoders can be a first stage: their project name, model class and model name in a run.
AUTOENCODERS = {"vae": (VAE, "vae"), "vqvae": (VQVAE, "vqvae")}


def load_first_stage(path: str | Path, device: torch.device, expected_sha256: str | None = None) -> FirstStage:
    """The first stage of an autoencoder run (or checkpoint) folder of 01 or 05, on ``device``, its EMA weights if
    it has them; with ``expected_sha256``, whichever of its EMA or plain weights has that hash, or a one-line error."""
    run_dir, _ = resolve_checkpoint(path)
    project = read_run_info(run_dir).get("project")
    if project not in AUTOENCODERS:
        raise GenlabError(f"--first-stage {path} is a {project!r} run; a first stage is a run of vae-train (01, with "
                          "--latent-channels) or vqvae-train (05)")  # fmt: skip
    model_class, name = AUTOENCODERS[project]
    candidates = [True, False] if expected_sha256 else [True]
    for ema in candidates:
        autoencoder = load_pretrained(path, model_class, name, project, ema=ema)
        if expected_sha256 is None or weights_sha256(autoencoder) == expected_sha256:
            break
    else:
        raise GenlabError(
            f"the autoencoder in {path} (sha256 {weights_sha256(autoencoder)[:12]}) is not the one this latent run was "
            f"trained on ({expected_sha256[:12]}): it was retrained or replaced; the run's latents mean nothing to it"
        )
    try:
        return first_stage_of(autoencoder).to(device)
    except ValueError as error:
        raise GenlabError(f"--first-stage {path}: {error}") from None


@torch.no_grad()
def encode_moments(first_stage: FirstStage, data: ImageDataset, batch_size: int = 500
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """The posterior moments of every image of a split in [-1, 1]: mean (N, c, h, w) and log-variance (or None)."""
    device = next(first_stage.parameters()).device
    means, log_vars = [], []
    for start in range(0, len(data), batch_size):
        x = data.convert(data.images[start : start + batch_size]).to(device)
        mean, log_var = first_stage.moments(x)
        means.append(mean.cpu())
        if log_var is not None:
            log_vars.append(log_var.cpu())
    return torch.cat(means), (torch.cat(log_vars) if log_vars else None)


def first_stage_record(first_stage: FirstStage, path: str | Path, scale: float) -> dict[str, Any]:
    """What a latent run saves of its first stage in config.json."""
    run_dir, _ = resolve_checkpoint(path)
    return {
        "run": str(Path(run_dir).resolve()),
        "kind": first_stage.kind,
        "config": read_run_info(run_dir).get("model"),
        "weights_sha256": weights_sha256(first_stage.autoencoder),
        "latent_shape": list(first_stage.latent_shape),
        "scale_factor": scale,
    }


def latent_splits(path: str | Path, train: ImageDataset, test: ImageDataset, device: torch.device,
                  saved: dict[str, Any] | None = None
                  ) -> tuple[ImageDataset, ImageDataset, dict[str, Any], FirstStage]:  # fmt: skip
    """The data a latent diffusion model trains on: the train split as the scaled posterior moments (a fresh latent
    is drawn from them at every step: ``draw_latents``), the test split as one fixed draw of scaled latents; the
    record for config.json; and the first stage itself. ``saved``: the record of the run being resumed, whose
    autoencoder and scale factor these must be."""
    first_stage = load_first_stage(path, device, saved["weights_sha256"] if saved else None)
    train_mean, train_log_var = encode_moments(first_stage, train)
    scale = saved["scale_factor"] if saved else scale_factor(train_mean, train_log_var)
    record = first_stage_record(first_stage, path, scale)
    test_mean, test_log_var = encode_moments(first_stage, test)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # the same test latents at every evaluation and in every run of this autoencoder
    test_latents = draw_latents(scaled_moments(test_mean, test_log_var, scale), first_stage.latent_shape[0])
    torch.random.set_rng_state(generator_state)

    def dataset(split: ImageDataset, images: torch.Tensor) -> ImageDataset:
        return ImageDataset(split.name, split.split, images, split.labels, split.captions, split.class_names, "float")

    train_latents = dataset(train, scaled_moments(train_mean, train_log_var, scale))
    return train_latents, dataset(test, test_latents), record, first_stage
