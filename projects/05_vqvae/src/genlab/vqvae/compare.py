"""vqvae-compare: our vector quantiser beside vector-quantize-pytorch's (lucidrains, PyPI ``vector-quantize-pytorch``).

    uv run vqvae-compare                      # K = 512, D = 64, batch 128 of 7x7 grids (MNIST's latent grid)

Both quantisers get the same codebook, the same EMA state and the same inputs, in both codebook modes (EMA and
learned by gradients). Checked: the codes, the quantised vectors, the commitment loss and, with the EMA update,
the codebook after one training step; then each is timed on a training forward and backward, alternately, in
the same process. Writes the report as JSON (--out) and prints it.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from genlab.core.checkpoint import resolve_device
from genlab.core.config import option
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, require_at_least, write_results
from genlab.vqvae.quantizer import VectorQuantizer


@dataclass
class CompareConfig:
    """Parity and speed of our quantiser against vector-quantize-pytorch's, on the same codebook and inputs."""

    num_codes: int = option(512, "K")
    code_dim: int = option(64, "D")
    batch_size: int = option(128, "grids per batch")
    grid: int = option(7, "side of each latent grid")
    commitment_cost: float = option(0.25, "beta")
    decay: float = option(0.99, "EMA decay")
    repeats: int = option(30, "timed training steps of each quantiser")
    seed: int = option(0, "random seed of the codebook and the inputs")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("cpu", "device")
    out: str = option("", "write the report here as JSON")

    def validate(self) -> None:
        require_at_least(self, ("code_dim", "batch_size", "grid", "repeats"))
        require_at_least(self, ("num_codes",), at_least=2)
        if importlib.util.find_spec("vector_quantize_pytorch") is None:
            raise GenlabError("vqvae-compare needs vector-quantize-pytorch: uv sync (it is in the dev group)")


def peer_quantizer(ours: VectorQuantizer, commitment_cost: float) -> torch.nn.Module:
    """vector-quantize-pytorch's VectorQuantize set up as ours: plain straight-through (no rotation trick), no
    k-means initialisation, no restarts, our codebook and EMA state copied in."""
    from vector_quantize_pytorch import VectorQuantize

    peer = VectorQuantize(
        dim=ours.code_dim, codebook_size=ours.num_codes, decay=ours.decay, eps=ours.epsilon,
        commitment_weight=commitment_cost, accept_image_fmap=True, kmeans_init=False, threshold_ema_dead_code=0,
        rotation_trick=False, ema_update=ours.ema, learnable_codebook=not ours.ema,
    )  # fmt: skip
    codebook = peer._codebook
    with torch.no_grad():
        codebook.embed.copy_(ours.codebook[None])
        codebook.embed_avg.copy_(ours.cluster_sum[None])
        codebook.cluster_size.copy_(ours.cluster_size[None])
    return peer.to(ours.codebook.device)


def parity(ours: VectorQuantizer, z: torch.Tensor, commitment_cost: float) -> dict[str, Any]:
    """One training forward of both quantisers on ``z`` (B, D, h, w): how far apart codes, vectors, losses and the
    updated codebook are."""
    peer = peer_quantizer(ours, commitment_cost).train()
    ours.train()
    mine = ours(z)
    quantized, indices, loss = peer(z)
    report = {
        "codes_differing": int((mine.indices != indices).sum()),
        "quantized_max_abs_diff": (mine.quantized - quantized).abs().max().item(),
        # the peer's loss is beta times the mean squared distance, the same number as our commitment term
        "commitment_loss_abs_diff": (commitment_cost * mine.commitment_loss - loss).abs().item(),
    }
    if ours.ema:
        report["codebook_after_step_max_abs_diff"] = (ours.codebook - peer._codebook.embed[0]).abs().max().item()
    return report


def time_training_step(quantizer: torch.nn.Module, z: torch.Tensor, ours: bool) -> float:
    """Seconds for one training forward and backward through the quantiser."""
    z = z.detach().requires_grad_(True)
    start = time.perf_counter()
    if ours:
        out = quantizer(z)
        loss = out.quantized.pow(2).mean() + out.commitment_loss
    else:
        quantized, _, commitment = quantizer(z)
        loss = quantized.pow(2).mean() + commitment
    loss.backward()
    if z.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(config: CompareConfig) -> dict[str, Any]:
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    z = torch.randn(config.batch_size, config.code_dim, config.grid, config.grid, device=device)
    report: dict[str, Any] = {"config": vars(config).copy(), "device": str(device), "torch": torch.__version__}
    from importlib.metadata import version

    report["vector_quantize_pytorch"] = version("vector-quantize-pytorch")
    for ema in (True, False):
        torch.manual_seed(config.seed)
        ours = VectorQuantizer(config.num_codes, config.code_dim, ema=ema, decay=config.decay).to(device)
        # Codes spread like the inputs, so that many of them are used and the comparison covers the EMA update.
        with torch.no_grad():
            ours.codebook.copy_(torch.randn_like(ours.codebook))
            ours.cluster_sum.copy_(ours.codebook)
        mode = "ema" if ema else "learned"
        report[f"parity_{mode}"] = parity(ours, z, config.commitment_cost)
        peer = peer_quantizer(ours, config.commitment_cost).train()
        times: dict[str, list[float]] = {"genlab": [], "vector_quantize_pytorch": []}
        for _ in range(3):  # warm-up
            time_training_step(ours, z, True), time_training_step(peer, z, False)
        for _ in range(config.repeats):  # alternated, so that both see the same machine
            times["genlab"].append(time_training_step(ours, z, True))
            times["vector_quantize_pytorch"].append(time_training_step(peer, z, False))
        medians = {name: statistics.median(values) for name, values in times.items()}
        report[f"seconds_per_step_{mode}"] = medians
        report[f"speedup_{mode}"] = medians["vector_quantize_pytorch"] / medians["genlab"]
    return report


def run(config: CompareConfig) -> dict[str, Any]:
    report = compare(config)
    if config.out:
        write_results(Path(config.out).parent, report, Path(config.out).name)
    print(json.dumps(report, indent=1))
    return report


main = console_script(CompareConfig, run, "vqvae-compare")
