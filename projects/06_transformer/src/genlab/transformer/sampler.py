"""Sampling from a GPT: one token at a time, with a key-value cache, a temperature, top-k and top-p (nucleus).

    p(x_t | x_<t) = softmax(logits_t / temperature)

top-k (Fan et al. 2018) keeps the k most probable tokens; top-p (Holtzman et al. 2020, "The Curious Case of
Neural Text Degeneration", Sec. 3.1) keeps the smallest set of most probable tokens whose probabilities sum to at
least p. The kept probabilities are renormalised. Each token is drawn by the inverse CDF from one uniform per
position, so the cached and the uncached sampler, given the same uniforms, draw the same tokens.
"""

from __future__ import annotations

import torch

from genlab.transformer.model import GPT


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(..., V) -> the same with every logit below the k-th largest set to -inf (ties at the k-th are kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """(..., V) -> the same with -inf outside the nucleus: the most probable tokens, in order, until their
    probabilities sum to at least p (a token is kept when the probability before it is still below p)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probabilities = sorted_logits.softmax(dim=-1)
    before = probabilities.cumsum(dim=-1) - probabilities  # mass of the more probable tokens
    remove_sorted = before >= p  # the first token always stays (before = 0)
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def next_token_distribution(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Last-position logits (B, V) -> probabilities (B, V) after the temperature and both filters."""
    logits = logits / temperature
    return filter_top_p(filter_top_k(logits, top_k), top_p).softmax(dim=-1)


def draw(probabilities: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: (B, V) probabilities and (B,) uniforms in [0, 1) -> (B,) token ids."""
    cdf = probabilities.cumsum(dim=-1)
    index = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1).contiguous(), right=True).squeeze(-1)
    return index.clamp(max=probabilities.shape[-1] - 1)


@torch.no_grad()
def generate(
    model: GPT,
    prompt: torch.Tensor,
    new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    use_cache: bool = True,
    num_choices: int = 0,
    uniforms: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """prompt (B, T0) -> (B, T0 + new_tokens). ``uniforms`` (B, new_tokens) fixes the draws (else from
    ``generator``). ``num_choices`` > 0 draws only ids below it (a token prior's codes, never its
    start or class tokens). Without the cache every step runs the whole sequence again; once the sequence fills the
    context, both run the window of its last ``block_size`` tokens, so they draw the same tokens throughout."""
    B = prompt.shape[0]
    if uniforms is None:
        uniforms = torch.rand(B, new_tokens, generator=generator).to(prompt.device)
    sequence, caches = prompt, None
    context = model.config.block_size
    for step in range(new_tokens):
        if use_cache and sequence.shape[1] <= context:
            # the first step runs the prompt and fills the cache; each later one runs only the newest token
            logits, caches = model(sequence if caches is None else sequence[:, -1:], caches)
        else:  # no cache, or the context is full: the whole window of the last `context` tokens again
            logits, _ = model(sequence[:, -context:])
        last = logits[:, -1, :num_choices] if num_choices else logits[:, -1]  # (B, V)
        probabilities = next_token_distribution(last, temperature, top_k, top_p)
        token = draw(probabilities, uniforms[:, step])
        sequence = torch.cat([sequence, token[:, None]], dim=1)
    return sequence
