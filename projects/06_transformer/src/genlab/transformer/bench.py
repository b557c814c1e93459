"""gpt-bench: our GPT against transformers' GPT2LMHeadModel at the same size, weights, batch and data; sampling
with and without the KV cache; achieved FLOP/s against this machine's large-matmul FLOP/s, all in one run.

    uv run gpt-bench                                    # nanoGPT's CPU configuration on shakespeare/input.txt
    uv run gpt-bench --n-layer 6 --n-head 6 --n-embd 192 --block-size 128 --batch-size 32 --output bench.json

Training: the same textbook loop for both networks (a random window batch, forward, cross-entropy, backward, AdamW
with decay on the matrices, zero_grad), alternating ``--repeats`` times, median reported; and our GPT once more
through genlab.core's Trainer, as gpt-train runs it. Training FLOPs per token are PaLM's count (Chowdhery et al.
2022, App. B), 6 N + 12 L C T for N matmul parameters (the tied output layer included), L layers, width C and
context T: the causal mask's skipped half is counted, as there.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab.core.bench import (
    BenchConfig,
    BenchmarkSpec,
    TimingConfig,
    matmul_flops_per_second,
    synchronize,
    time_core_loop,
)
from genlab.core.checkpoint import resolve_device
from genlab.core.config import option
from genlab.core.data import SequenceDataset, data_root, load_text
from genlab.core.errors import GenlabError
from genlab.core.harness import console_script, require_at_least
from genlab.transformer.model import GPT, GPTConfig
from genlab.transformer.peer import gpt2_with_our_weights
from genlab.transformer.sampler import generate
from genlab.transformer.train import adamw_on_matrices, next_token_loss


@dataclass
class GPTBenchConfig(TimingConfig):
    """Training tokens/s of our GPT and of GPT2LMHeadModel, sampling tokens/s with and without the cache."""

    text: str = option("", "UTF-8 text file (default: <data root>/shakespeare/input.txt)")
    n_layer: int = option(4, "transformer blocks")
    n_head: int = option(4, "attention heads")
    n_embd: int = option(128, "width")
    block_size: int = option(64, "context length")
    batch_size: int = option(12, "sequences per training step")
    steps: int = option(100, "timed training steps per measurement")
    warmup: int = option(20, "untimed steps before each measurement")
    sample_batch: int = option(1, "sequences sampled at once")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "sample_batch"))
        if self.n_embd % self.n_head:
            raise GenlabError(f"--n-embd {self.n_embd} must be a multiple of --n-head {self.n_head}")


def training_flops_per_token(config: GPTConfig) -> int:
    """6 N + 12 L C T: forward and backward of every matmul weight once per token, and attention's two
    (T x T) products per layer (PaLM, App. B)."""
    C, L = config.n_embd, config.n_layer
    per_block = 3 * C * C + C * C + 4 * C * C + 4 * C * C  # qkv, projection, MLP up and down
    matmul_parameters = L * per_block + config.vocab_size * C  # and the (tied) output layer
    return 6 * matmul_parameters + 12 * L * C * config.block_size


def time_plain_training(
    model: torch.nn.Module, logits_of, data: SequenceDataset, config: GPTBenchConfig, device: torch.device
) -> float:
    """Tokens/s of a textbook loop (the batches drawn from one seed, so both networks see the same ones)."""
    optimizer = adamw_on_matrices(model, 1e-3, 0.1, (0.9, 0.99))
    generator = torch.Generator(device=data.device).manual_seed(config.seed)
    model.train()
    for step in range(config.warmup + config.steps):
        if step == config.warmup:
            synchronize(device)
            start = time.perf_counter()
        starts = torch.randint(len(data), (config.batch_size,), generator=generator, device=data.device)
        batch = data.batch(starts).images  # (B, T + 1)
        logits = logits_of(model, batch[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return config.steps * config.batch_size * config.block_size / (time.perf_counter() - start)


def time_sampling(model: GPT, config: GPTBenchConfig, device: torch.device, use_cache: bool) -> float:
    """Tokens/s of drawing ``block_size - 1`` tokens after one, ``sample_batch`` sequences at once."""
    model.eval()
    prompt = torch.zeros(config.sample_batch, 1, dtype=torch.long, device=device)
    new = config.block_size - 1
    generate(model, prompt, 4, use_cache=use_cache)  # warm-up
    times = []
    for _ in range(config.repeats):
        synchronize(device)
        start = time.perf_counter()
        generate(model, prompt, new, use_cache=use_cache, generator=torch.Generator().manual_seed(config.seed))
        synchronize(device)
        times.append(time.perf_counter() - start)
    return config.sample_batch * new / statistics.median(times)


def benchmark(config: GPTBenchConfig) -> dict:
    device = resolve_device(config.device)
    path = Path(config.text) if config.text else data_root(config.data_dir or None) / "shakespeare" / "input.txt"
    data = load_text(path, "train", config.block_size + 1).to(device)
    architecture = GPTConfig(vocab_size=len(data.vocabulary), block_size=config.block_size, n_layer=config.n_layer,
                             n_head=config.n_head, n_embd=config.n_embd)  # fmt: skip
    torch.manual_seed(config.seed)
    initial = GPT(architecture).state_dict()

    def ours() -> GPT:
        model = GPT(architecture).to(device)
        model.load_state_dict(initial)
        return model

    ours_rates, peer_rates = [], []
    for _ in range(config.repeats):
        ours_rates.append(time_plain_training(ours(), lambda m, x: m(x)[0], data, config, device))
        peer = gpt2_with_our_weights(ours())
        peer_rates.append(time_plain_training(peer, lambda m, x: m(input_ids=x).logits, data, config, device))
    spec = BenchmarkSpec(
        project="transformer", build_model=ours, loss=lambda m, x: (next_token_loss(m, x), {}), dataset=data.name,
        value_range="tokens", batch_size=config.batch_size, lr=1e-3,
        build_optimizer=lambda m: adamw_on_matrices(m, 1e-3, 0.1, (0.9, 0.99)),
    )  # fmt: skip
    core_config = BenchConfig(steps=config.steps, warmup=config.warmup, seed=config.seed)
    core_rate = time_core_loop(spec, data, core_config, device) * config.block_size  # sequences/s -> tokens/s
    flops_per_token = training_flops_per_token(architecture)
    peak = matmul_flops_per_second(device=device)
    ours_rate, peer_rate = statistics.median(ours_rates), statistics.median(peer_rates)
    result = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "config": vars(architecture),
        "parameters": sum(p.numel() for p in ours().parameters()),
        "batch_size": config.batch_size,
        "train_tokens_per_second": {"ours": ours_rate, "GPT2LMHeadModel": peer_rate, "ours_in_core_trainer": core_rate},
        "ratio_ours_to_peer": ours_rate / peer_rate,
        "sample_tokens_per_second": {
            "kv_cache": time_sampling(ours(), config, device, True),
            "no_cache": time_sampling(ours(), config, device, False),
        },
        "sample_batch": config.sample_batch,
        "training_flops_per_token": flops_per_token,
        "matmul_flops_per_second": peak,
        "achieved_flops_per_second": ours_rate * flops_per_token,
        "fraction_of_matmul_flops": ours_rate * flops_per_token / peak,
    }
    train, sample = result["train_tokens_per_second"], result["sample_tokens_per_second"]
    print(
        f"{result['parameters']:,} parameters, batch {config.batch_size} x {config.block_size}, {result['device']} "
        f"({result['threads']} threads), median of {config.repeats}:\n"
        f"  training, ours               {train['ours']:10.0f} tokens/s\n"
        f"  training, GPT2LMHeadModel    {peer_rate:10.0f} tokens/s"
        f"   (ours / peer {result['ratio_ours_to_peer']:.3f})\n"
        f"  training, ours in Trainer    {core_rate:10.0f} tokens/s\n"
        f"  sampling, KV cache           {sample['kv_cache']:10.0f} tokens/s   (batch {config.sample_batch})\n"
        f"  sampling, no cache           {sample['no_cache']:10.0f} tokens/s\n"
        f"  achieved {result['achieved_flops_per_second'] / 1e9:.2f} GFLOP/s = "
        f"{result['fraction_of_matmul_flops']:.1%} of the large-matmul {peak / 1e9:.1f} GFLOP/s"
    )
    if config.output:
        Path(config.output).write_text(json.dumps(result, indent=1) + "\n")
    return result


main = console_script(GPTBenchConfig, benchmark, "gpt-bench")
