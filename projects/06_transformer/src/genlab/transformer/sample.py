"""gpt-sample: text from a character run; images from a token prior, decoded through the autoencoder that made
its tokens (05's VQ-VAE or VQ-VAE-2, 08's VQGAN).

    uv run gpt-sample --run runs/transformer/shakespeare-...                  # samples.txt
    uv run gpt-sample --run runs/transformer/fashion-gpt --top-k 100 --npz 10000   # samples.png and samples.npz
    uv run gpt-sample --run runs/transformer/fashion-maskgit --decode-steps 8
    uv run gpt-sample --run runs/transformer/twemoji-bottom --top-run runs/transformer/twemoji-top   # VQ-VAE-2

A token prior decodes through the autoencoder recorded when it was trained (or ``--autoencoder``), of whichever
project registered it under ``genlab.autoencoders`` (05's tokens.py), and only if that autoencoder's weights have
the sha256 of the ones that made its tokens. A class-conditional prior draws a grid of
``--count`` images per class (one class per row) and, with ``--npz``, the classes in turn. samples.json records
the wall time per image, the figure the decoding-steps table reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genlab.core.checkpoint import load_pretrained, read_run_info, resolve_checkpoint
from genlab.core.config import option
from genlab.core.errors import GenlabError
from genlab.core.harness import OpenedRun, SampleConfig, console_script, open_run, require_at_least, unit_to_uint8
from genlab.core.visualise import to_unit
from genlab.transformer.model import GPT
from genlab.transformer.sampler import generate
from genlab.transformer.token_prior import TokenLayout, sample_hierarchy
from genlab.transformer.train import PROJECT
from genlab.vqvae.tokens import load_autoencoder
from genlab.vqvae.train import VALUE_RANGE


@dataclass
class GPTSampleConfig(SampleConfig):
    """Text from a character model, or images from a GPT or MaskGIT prior over VQ-VAE or VQGAN tokens."""

    temperature: float = option(1.0, "divide the logits by this before sampling")
    top_k: int = option(0, "GPT: draw from the k most probable tokens only (0: all)")
    top_p: float = option(1.0, "GPT: draw from the nucleus of probability p only (1: all)")
    cache: bool = option(True, "GPT: keep a key-value cache (--no-cache recomputes the prefix at every token)")
    chars: int = option(1_000, "text: characters to sample")
    prompt: str = option("\n", "text: the characters the sample continues")
    count: int = option(8, "tokens: images per class (class-conditional), else images in all, for samples.png")
    decode_steps: int = option(8, "MaskGIT: parallel decoding steps")
    top_run: str = option("", "VQ-VAE-2's bottom prior: the run of the top prior whose codes it is conditioned on")
    autoencoder: str = option("", "tokens: the autoencoder run to decode with (default: the prior's own)")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("chars", "count", "decode_steps", "top_k"), at_least=0)
        require_at_least(self, ("count", "decode_steps"))
        if not (self.temperature > 0 and self.temperature < float("inf")):
            raise GenlabError(f"--temperature must be a positive number, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GenlabError(f"--top-p must be in (0, 1], got {self.top_p}")


@dataclass
class Prior:
    """A trained token prior: its network and layout, and the autoencoder its tokens came from."""

    model: GPT
    layout: TokenLayout
    autoencoder: dict[str, Any]

    def function_evaluations(self, decode_steps: int) -> int:
        return decode_steps if self.layout.maskgit else self.layout.num_tokens


def sample_text(config: GPTSampleConfig, run: OpenedRun, vocabulary: str) -> None:
    if config.npz:
        raise GenlabError("--npz: a character model writes text (samples.txt), not images")
    unknown = sorted(set(config.prompt) - set(vocabulary))
    if unknown or not config.prompt:
        raise GenlabError(f"--prompt must be characters the model knows; {unknown or 'it is empty'}")
    prompt = torch.tensor([[vocabulary.index(c) for c in config.prompt]], device=run.device)
    tokens = generate(
        run.model, prompt, config.chars, config.temperature, config.top_k, config.top_p, config.cache,
        generator=run.generator,
    )  # fmt: skip
    path = run.out / "samples.txt"
    path.write_text("".join(vocabulary[i] for i in tokens[0].tolist()))
    run.written["text"] = path


def open_top_prior(config: GPTSampleConfig, bottom: Prior, device: torch.device) -> Prior:
    """The top prior a bottom prior needs: trained on the same autoencoder's top codes, of the right shape."""
    if not config.top_run:
        raise GenlabError("this is VQ-VAE-2's bottom prior: pass --top-run with the top prior's run to sample")
    run_dir, _ = resolve_checkpoint(config.top_run)
    info = read_run_info(run_dir)
    if "layout" not in info:
        raise GenlabError(f"--top-run {config.top_run} is a character model, not a token prior")
    top = Prior(load_pretrained(config.top_run, GPT, "gpt", PROJECT, config.ema).to(device).eval(),
                TokenLayout(**info["layout"]), info["autoencoder"])  # fmt: skip
    if top.autoencoder["weights_sha256"] != bottom.autoencoder["weights_sha256"]:
        raise GenlabError(f"--top-run {config.top_run} was trained on another autoencoder's tokens than --run")
    if top.layout.condition_codes or top.layout.grid_shape != bottom.layout.condition_shape:
        raise GenlabError(f"--top-run {config.top_run} does not model the top codes this bottom prior reads")
    return top


@torch.no_grad()
def sample(config: GPTSampleConfig) -> dict[str, Path]:
    run = open_run(config, GPT, "gpt", PROJECT)
    info = read_run_info(run.run_dir)
    if "layout" not in info:
        if config.top_run or config.autoencoder:
            raise GenlabError("--top-run and --autoencoder apply to token priors; this run is a character model")
        sample_text(config, run, info["vocabulary"])
        return run.finish()

    prior = Prior(run.model, TokenLayout(**info["layout"]), info["autoencoder"])
    if (config.top_k or config.top_p < 1) and prior.layout.maskgit:
        raise GenlabError("--top-k and --top-p apply to a GPT prior; MaskGIT draws from its full distribution")
    top = open_top_prior(config, prior, run.device) if prior.layout.condition_codes else None
    if config.top_run and top is None:
        raise GenlabError("--top-run applies to VQ-VAE-2's bottom prior; this prior is not conditioned on top codes")
    recorded = prior.autoencoder
    autoencoder = load_autoencoder(config.autoencoder or recorded["run"], recorded["weights_sha256"], "gpt-sample")
    autoencoder = autoencoder.to(run.device)
    if autoencoder.config.levels > 1 and top is None:
        raise GenlabError("this prior models only the top codes of a VQ-VAE-2: sample its bottom prior with --top-run")
    num_classes = max(prior.layout.num_classes, top.layout.num_classes if top else 0)

    def images(labels: torch.Tensor) -> torch.Tensor:
        """labels (n,) -> n decoded images in [0, 1] (the labels matter only to class-conditional priors)."""
        options = {
            "temperature": config.temperature, "top_k": config.top_k, "top_p": config.top_p,
            "decode_steps": config.decode_steps, "use_cache": config.cache, "generator": run.generator,
        }  # fmt: skip
        levels = [(p.model, p.layout) for p in (top, prior) if p is not None]
        grids = sample_hierarchy(levels, len(labels), labels, **options)
        return to_unit(autoencoder.decode_tokens(grids).clamp(-1, 1), VALUE_RANGE)  # (n, C, H, W)

    if num_classes:  # one row per class
        labels = torch.arange(num_classes, device=run.device).repeat_interleave(config.count)
        run.save_grid(images(labels), "samples.png", nrow=config.count)
    else:
        run.save_grid(images(torch.zeros(config.count, dtype=torch.long, device=run.device)), "samples.png")
    if config.npz:
        cost = sum(p.function_evaluations(config.decode_steps) for p in (prior, top) if p is not None)

        def draw(start: int, n: int) -> torch.Tensor:
            labels = (start + torch.arange(n, device=run.device)) % max(num_classes, 1)  # the classes in turn
            return unit_to_uint8(images(labels))

        run.write_samples_npz(draw, config.npz, function_evaluations=cost)
    return run.finish()


main = console_script(GPTSampleConfig, sample, "gpt-sample")
