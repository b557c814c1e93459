"""gpt-train: a GPT-style decoder on the characters of a text file, through genlab.core's loop.

uv run gpt-train                                    # characters of <data root>/shakespeare/input.txt
uv run gpt-train --text my.txt --n-layer 6 --n-head 6 --n-embd 192 --block-size 128

The first 90% of the file (by position) trains, the rest is the validation split. At the end: the validation loss
over the whole validation split, in nats and bits per character, into results.json, and samples.txt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from genlab.core.config import option
from genlab.core.data import SequenceDataset, data_root, load_text
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, require_at_least, write_results
from genlab.core.trainer import TrainConfig, Trainer, learning_rate_lambda
from genlab.transformer.model import GPT, GPTConfig
from genlab.transformer.sampler import generate

PROJECT = "transformer"


@dataclass
class GPTTrainConfig(TrainConfig):
    """Train a GPT-style decoder (Radford et al. 2018, 2019) on characters of text."""

    dataset: str = option("shakespeare", "the text's name in the run folder (the file is --text)")
    text: str = option("", "UTF-8 text file (default: <data root>/shakespeare/input.txt)")
    steps: int = option(2_000, "optimizer steps to train for (the total, also when resuming)")
    batch_size: int = option(12, "sequences per step, summed over processes")
    lr: float = option(1e-3, "AdamW's peak learning rate")
    warmup_steps: int = option(100, "linear learning-rate warm-up steps")
    lr_schedule: Literal["constant", "cosine", "linear"] = option("cosine", "learning-rate shape after warm-up")
    min_lr_ratio: float = option(0.1, "the schedule ends at this fraction of the peak learning rate")
    weight_decay: float = option(0.1, "AdamW's decoupled weight decay, on the weight matrices only")
    beta2: float = option(0.99, "AdamW's beta2")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: off)")
    log_every: int = option(100, "log the training loss every N steps")
    eval_every: int = option(500, "validation loss over the whole validation split every N steps")
    sample_every: int = option(0, "unused: text samples are written at the end (samples.txt)")
    checkpoint_every: int = option(1_000, "checkpoint every N steps (and always at the end and on SIGINT/SIGTERM)")
    n_layer: int = option(4, "transformer blocks")
    n_head: int = option(4, "attention heads per block")
    n_embd: int = option(128, "width of the residual stream")
    block_size: int = option(64, "context length in tokens")
    dropout: float = option(0.0, "dropout on embeddings, attention and residual branches")
    sample_chars: int = option(1_000, "characters of text to sample at the end")

    resumable = (*TrainConfig.resumable, "sample_chars", "text")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("n_layer", "n_head", "n_embd", "block_size"))
        require_at_least(self, ("sample_chars", "weight_decay"), at_least=0)
        if not 0 <= self.dropout < 1 or not 0 <= self.min_lr_ratio <= 1 or not 0 < self.beta2 < 1:
            raise GenlabError("--dropout must be in [0, 1), --min-lr-ratio in [0, 1], --beta2 in (0, 1)")
        if self.n_embd % self.n_head:
            raise GenlabError(f"--n-embd {self.n_embd} must be a multiple of --n-head {self.n_head}")


def text_path(config: GPTTrainConfig) -> Path:
    return Path(config.text) if config.text else data_root(config.data_dir or None) / "shakespeare" / "input.txt"


def adamw_on_matrices(model: GPT, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW whose decay reaches only the weight matrices (and embeddings): not biases or layer-norm gains."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def next_token_loss(model: GPT, sequences: torch.Tensor) -> torch.Tensor:
    """sequences (B, T + 1): mean cross-entropy of tokens 2 .. T+1, each given the tokens before it."""
    logits, _ = model(sequences[:, :-1])  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), sequences[:, 1:].flatten())


@torch.no_grad()
def validation_loss(model: GPT, data: SequenceDataset, batch_size: int = 64) -> dict[str, float]:
    """Mean next-token loss over the whole split, in nats and bits per token: the stream cut into consecutive
    windows of block_size + 1 tokens, each of whose last block_size tokens is predicted from those before it."""
    model.eval()
    T = model.config.block_size
    starts = torch.arange(0, len(data.tokens) - T, T, device=data.device)  # every token predicted once
    offsets = torch.arange(T + 1, device=data.device)
    total, count = 0.0, 0
    for chunk in starts.split(batch_size):
        windows = data.tokens[chunk[:, None] + offsets]  # (B, T + 1)
        total += float(next_token_loss(model, windows).double()) * windows[:, 1:].numel()
        count += windows[:, 1:].numel()
    nats = total / count
    return {"loss_nats": nats, "bits_per_token": nats / math.log(2), "tokens": count}


def train(config: GPTTrainConfig) -> dict[str, float]:
    """Train as ``config`` says; returns the last logged values and the final validation loss."""
    window = config.block_size + 1  # a window holds the inputs and, shifted by one, the targets
    train_data, val_data = (load_text(text_path(config), split, window) for split in ("train", "test"))
    architecture = GPTConfig(
        vocab_size=len(train_data.vocabulary), block_size=config.block_size, n_layer=config.n_layer,
        n_head=config.n_head, n_embd=config.n_embd, dropout=config.dropout,
    )  # fmt: skip
    trainer = Trainer(config, PROJECT, {"model": architecture, "vocabulary": "".join(train_data.vocabulary)})
    model = trainer.add_model("gpt", GPT(architecture))
    optimizer = adamw_on_matrices(trainer.unwrap("gpt"), config.lr, config.weight_decay, (0.9, config.beta2))
    base = learning_rate_lambda(config)
    trainer.add_update(
        "train", optimizer, lambda batch: (next_token_loss(model, batch.images), {}), ["gpt"],
        lr_lambda=lambda step: config.min_lr_ratio + (1 - config.min_lr_ratio) * base(step),
    )  # fmt: skip

    def eval_fn(trainer: Trainer) -> dict[str, float]:
        return {"val_loss": validation_loss(trainer.eval_model("gpt"), val_data.to(trainer.device))["loss_nats"]}

    results = trainer.fit(train_data, eval_fn=eval_fn)
    if trainer.accelerator.is_main_process:
        gpt = trainer.eval_model("gpt")
        final = {**validation_loss(gpt, val_data.to(trainer.device)), "step": trainer.step}
        final["bits_per_character"] = final.pop("bits_per_token")
        write_results(trainer.run_dir, final)
        prompt = torch.tensor([[train_data.vocabulary.index("\n") if "\n" in train_data.vocabulary else 0]])
        generator = torch.Generator().manual_seed(config.seed)
        tokens = generate(gpt.eval(), prompt.to(trainer.device), config.sample_chars, generator=generator)
        (trainer.run_dir / "samples.txt").write_text("".join(train_data.vocabulary[i] for i in tokens[0].tolist()))
        print(
            f"validation ({final['tokens']:,} characters): {final['loss_nats']:.4f} nats, "
            f"{final['bits_per_character']:.4f} bits per character; samples in {trainer.run_dir / 'samples.txt'}"
        )
        results.update({f"final/{k}": v for k, v in final.items()})
    print(f"run folder: {trainer.run_dir}")
    return results


main = console_script(GPTTrainConfig, train, "gpt-train")

if __name__ == "__main__":
    main()
