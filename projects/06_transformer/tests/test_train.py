"""gpt-train end to end on a tiny text, the validation loss over the whole split, and AdamW's decay groups."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from genlab.core.data import SequenceDataset
from genlab.transformer import train
from genlab.transformer.model import GPT, GPTConfig

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--batch-size", "16",
        "--log-every", "10", "--eval-every", "50", "--checkpoint-every", "50", "--sample-chars", "40",
        "--warmup-steps", "10", "--lr", "3e-3", "--no-progress", "--device", "cpu"]  # fmt: skip


def test_gpt_train_learns_a_text_and_writes_its_validation_loss(tmp_path: Path) -> None:
    text = tmp_path / "input.txt"
    text.write_text("the cat sat on the mat. " * 200)  # 4,800 characters of one repeated sentence
    run = tmp_path / "run"
    train.main(["--text", str(text), *TINY, "--steps", "150", "--run-dir", str(run)])
    results = json.loads((run / "results.json").read_text())
    vocabulary = sorted(set(text.read_text()))
    # Far below the uniform model's ln V: a repeated sentence is almost deterministic given 8 characters.
    assert results["loss_nats"] < 0.3 * math.log(len(vocabulary))
    assert results["bits_per_character"] == pytest.approx(results["loss_nats"] / math.log(2))
    assert results["tokens"] == (480 - 1) // 8 * 8  # the validation split's 480 characters, each predicted once
    samples = (run / "samples.txt").read_text()
    assert len(samples) == 41 and set(samples) <= set(vocabulary)
    assert json.loads((run / "config.json").read_text())["vocabulary"] == "".join(vocabulary)


def test_the_end_of_training_evaluates_the_validation_split_once(tmp_path: Path, monkeypatch) -> None:
    text = tmp_path / "input.txt"
    text.write_text("the cat sat on the mat. " * 50)
    calls = []
    measure = train.validation_loss
    monkeypatch.setattr(train, "validation_loss", lambda *args, **kwargs: calls.append(1) or measure(*args, **kwargs))
    run = tmp_path / "run"
    flags = [*TINY, "--eval-every", "0", "--checkpoint-every", "0"]
    train.main(["--text", str(text), *flags, "--steps", "20", "--run-dir", str(run)])
    results = json.loads((run / "results.json").read_text())
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(calls) == 1  # the loop's evaluation at the last step is the final one, not repeated
    assert results["step"] == 20 and [row["eval/val_loss"] for row in logged if "eval/val_loss" in row] == [
        results["loss_nats"]
    ]


def test_the_validation_loss_covers_the_split_once_with_the_model_s_context() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=8)).eval()
    tokens = torch.randint(5, (23,))
    measured = train.validation_loss(model, SequenceDataset("t", "test", tokens, window=5), batch_size=2)
    # Windows 0-4, 4-8, ..., 16-20: the 20 tokens 1..20 predicted, each from up to 4 tokens before it.
    total = 0.0
    for start in range(0, 17, 4):
        window = tokens[start : start + 5]
        logits, _ = model(window[None, :-1])
        total += torch.nn.functional.cross_entropy(logits[0], window[1:], reduction="sum").item()
    assert measured["tokens"] == 20 and measured["loss_nats"] == pytest.approx(total / 20, rel=1e-5)


def test_the_windowed_estimate_reads_that_many_windows_of_the_split_the_same_each_time(monkeypatch) -> None:
    model = GPT(GPTConfig(vocab_size=400, block_size=4, n_layer=1, n_head=1, n_embd=8)).eval()
    split = SequenceDataset("t", "test", torch.arange(400), window=5)  # token k at position k: a window shows its start
    seen: list[torch.Tensor] = []
    measure = train.next_token_loss
    monkeypatch.setattr(train, "next_token_loss", lambda m, windows: seen.append(windows) or measure(m, windows))
    first = train.validation_loss(model, split, batch_size=7, windows=50)
    windows = torch.cat(seen)  # (50, 5)
    starts = windows[:, 0]
    assert first["tokens"] == 50 * 4 and windows.shape == (50, 5)
    assert torch.equal(windows, starts[:, None] + torch.arange(5))  # contiguous inputs and their next tokens
    assert starts.min() >= 0 and starts.max() <= 395 and starts.max() - starts.min() > 200  # across the split
    seen.clear()
    assert train.validation_loss(model, split, batch_size=7, windows=50) == first
    assert torch.equal(torch.cat(seen)[:, 0], starts)


def test_weight_decay_reaches_the_matrices_only() -> None:
    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=2, n_head=1, n_embd=8))
    optimizer = train.adamw_on_matrices(model, 1e-3, 0.1, (0.9, 0.99))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_gpt_train_mistakes_are_one_line(tmp_path: Path, user_error: Callable[..., str]) -> None:
    assert "no text file" in user_error(train.main, ["--text", str(tmp_path / "absent.txt"), *TINY])
    assert "multiple of --n-head" in user_error(train.main, [*TINY, "--n-embd", "15"])
    assert "--dropout" in user_error(train.main, [*TINY, "--dropout", "1.5"])


def test_no_bias_trains_and_samples_without_biases(tmp_path: Path) -> None:
    """--no-bias (nanoGPT's default): no bias in any linear layer or layer norm, and gpt-sample rebuilds the same."""
    from genlab.core.checkpoint import load_pretrained
    from genlab.transformer import sample

    text = tmp_path / "input.txt"
    text.write_text("abcabcabc " * 100)
    run = tmp_path / "run"
    train.main(["--text", str(text), *TINY, "--steps", "10", "--no-bias", "--run-dir", str(run)])
    model = load_pretrained(run, GPT, "gpt", "transformer")
    assert not [name for name, _ in model.named_parameters() if name.endswith("bias")]
    with_bias = GPT(GPTConfig(**{**model.config.__dict__, "bias": True}))
    assert sum(p.numel() for p in with_bias.parameters()) - sum(p.numel() for p in model.parameters()) == (
        1 * (3 * 16 + 16 + 4 * 16 + 16 + 2 * 16) + 16  # per block: qkv, proj, fc, proj, two norms; the final norm
    )
    sample.main(["--run", str(run), "--prompt", "a", "--chars", "5", "--device", "cpu"])
    assert len((run / "samples" / "samples.txt").read_text()) == 6


def test_gpt_sample_continues_a_prompt_and_refuses_what_a_text_run_cannot_do(
    tmp_path: Path, user_error: Callable[..., str]
) -> None:
    from genlab.transformer import sample

    text = tmp_path / "input.txt"
    text.write_text("abcabcabc " * 100)
    run = tmp_path / "run"
    train.main(["--text", str(text), *TINY, "--steps", "60", "--run-dir", str(run)])
    sample.main(["--run", str(run), "--prompt", "ab", "--chars", "30", "--top-k", "1", "--device", "cpu"])
    written = (run / "samples" / "samples.txt").read_text()
    assert len(written) == 32 and written.startswith("ab")
    assert set(written) <= set("abc ")
    assert "--npz" in user_error(sample.main, ["--run", str(run), "--npz", "4"])
    assert "--prompt" in user_error(sample.main, ["--run", str(run), "--prompt", "xyz"])
    assert "--top-p" in user_error(sample.main, ["--run", str(run), "--top-p", "0"])
    assert "--top-run" in user_error(sample.main, ["--run", str(run), "--top-run", str(run)])


def test_gpt_bench_times_both_networks_and_counts_palm_s_flops(tmp_path: Path) -> None:
    from torch import nn

    from genlab.transformer import bench

    config = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)
    matmul_weights = sum(m.weight.numel() for m in GPT(config).modules() if isinstance(m, nn.Linear))
    assert bench.training_flops_per_token(config) == 6 * matmul_weights + 12 * 2 * 16 * 16
    text = tmp_path / "input.txt"
    text.write_text("to be or not to be " * 100)
    out = tmp_path / "bench.json"
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--steps", "4", "--warmup", "2"]
    bench.main(["--text", str(text), *tiny, "--repeats", "1", "--device", "cpu", "--output", str(out)])
    result = json.loads(out.read_text())  # the script ran both networks, both samplers and the matmul ceiling
    assert set(result["train_tokens_per_second"]) == {"ours", "GPT2LMHeadModel", "ours_in_core_trainer"}
    assert set(result["sample_tokens_per_second"]) == {"kv_cache", "no_cache"}
    assert result["training_flops_per_token"] == bench.training_flops_per_token(
        GPTConfig(vocab_size=len(set(text.read_text())), block_size=16, n_layer=1, n_head=2, n_embd=16)
    )
