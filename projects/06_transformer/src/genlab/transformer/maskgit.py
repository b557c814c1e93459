"""MaskGIT (Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer"): objective and sampler.

The network is the GPT of model.py with ``causal=False`` (a bidirectional transformer) over the N tokens of a
token grid in raster order, with one more token id, [MASK] = K. Optional condition tokens (a class) come first
and are never masked.

Training (Sec. 3.1): draw a ratio r ~ U(0, 1), mask ceil(gamma(r) N) of the N tokens at random, and minimise the
cross-entropy of the true tokens at the masked positions only (eq. 1). gamma is the mask scheduling function;
the cosine one, gamma(r) = cos(pi r / 2), is the paper's choice (Sec. 3.3, Table 3).

Decoding (Sec. 3.2), T steps from an all-[MASK] grid; at step t = 0 .. T-1:
    1. predict: probabilities of every token at every masked position;
    2. sample one token per masked position; its confidence is the probability of the sampled token (already
       known positions have confidence +inf);
    3. mask schedule: n = floor(gamma((t + 1) / T) N) positions stay masked (0 after the last step);
    4. re-mask: the n lowest-confidence positions become [MASK] again; the others are kept for good.
As in the authors' implementation, the confidences are compared after adding Gumbel noise scaled by a
temperature that falls linearly to zero over the steps, which makes the early choices less greedy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genlab.transformer.model import GPT
from genlab.transformer.sampler import draw


def cosine_schedule(ratio: torch.Tensor | float) -> torch.Tensor | float:
    """gamma(r) = cos(pi r / 2): the fraction of tokens masked at ratio r in [0, 1] (1 at r = 0, 0 at r = 1)."""
    if isinstance(ratio, torch.Tensor):
        return torch.cos(math.pi / 2 * ratio)
    return math.cos(math.pi / 2 * ratio)


def mask_tokens(
    tokens: torch.Tensor, mask_id: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, N) -> (input with [MASK] at the masked positions, mask (B, N) bool): per sequence,
    ceil(gamma(r) N) positions chosen uniformly, r ~ U(0, 1)."""
    B, N = tokens.shape
    ratios = torch.rand(B, generator=generator).to(tokens.device)
    counts = torch.ceil(cosine_schedule(ratios) * N).clamp(min=1, max=N)  # at least one position to learn from
    scores = torch.rand(B, N, generator=generator).to(tokens.device)
    ranks = scores.argsort(dim=1).argsort(dim=1)  # a random rank 0 .. N-1 per position
    mask = ranks < counts[:, None]
    return tokens.masked_fill(mask, mask_id), mask


def maskgit_loss(
    model: GPT,
    tokens: torch.Tensor,
    mask_id: int,
    prefix: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """tokens (B, N), an optional never-masked prefix (B, P) (a class token) -> (cross-entropy on the masked
    positions, logged terms) (eq. 1)."""
    inputs, mask = mask_tokens(tokens, mask_id, generator)
    P = 0 if prefix is None else prefix.shape[1]
    if prefix is not None:
        inputs = torch.cat([prefix, inputs], dim=1)
    logits, _ = model(inputs)
    logits = logits[:, P:, :mask_id]  # (B, N, K): [MASK] is never a target
    loss = F.cross_entropy(logits[mask], tokens[mask])
    return loss, {"masked_fraction": mask.float().mean()}


def steps_schedule(num_tokens: int, steps: int) -> list[int]:
    """How many positions stay masked after each of the T steps: floor(gamma((t + 1) / T) N), ending at 0; as in
    the authors' code, every step but the last decides at least one position and leaves at least one masked."""
    masked, schedule = num_tokens, []
    for t in range(steps):
        n = math.floor(cosine_schedule((t + 1) / steps) * num_tokens)
        masked = 0 if t == steps - 1 else max(1, min(masked - 1, n))
        schedule.append(masked)
    return schedule


def remask_lowest(confidence: torch.Tensor, num_masked: int) -> torch.Tensor:
    """confidence (B, N) -> mask (B, N) bool of the ``num_masked`` least confident positions of each row."""
    if num_masked == 0:
        return torch.zeros_like(confidence, dtype=torch.bool)
    ranks = confidence.argsort(dim=1).argsort(dim=1)  # 0 for the least confident position of each row
    return ranks < num_masked


@torch.no_grad()
def maskgit_decode(
    model: GPT,
    batch_size: int,
    num_tokens: int,
    mask_id: int,
    steps: int = 8,
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
    prefix: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Iterative parallel decoding from all [MASK] in ``steps`` steps -> tokens (B, N). ``choice_temperature``
    scales the Gumbel noise on the confidences at the first step (4.5 in the authors' code), falling to 0."""
    device = next(model.parameters()).device
    tokens = torch.full((batch_size, num_tokens), mask_id, dtype=torch.long, device=device)
    P = 0 if prefix is None else prefix.shape[1]
    for t, still_masked in enumerate(steps_schedule(num_tokens, steps)):
        unknown = tokens == mask_id  # (B, N)
        inputs = tokens if prefix is None else torch.cat([prefix, tokens], dim=1)
        logits = model(inputs)[0][:, P:, :mask_id] / temperature  # (B, N, K)
        probabilities = logits.softmax(dim=-1)
        uniforms = torch.rand(probabilities.shape[:2], generator=generator).to(device)
        sampled = draw(probabilities.flatten(0, 1), uniforms.flatten()).view(uniforms.shape)  # (B, N)
        sampled = torch.where(unknown, sampled, tokens)
        confidence = torch.gather(probabilities, -1, sampled.unsqueeze(-1)).squeeze(-1).log()
        noise_scale = choice_temperature * (1 - (t + 1) / steps)
        gumbel = -torch.log(-torch.log(torch.rand(confidence.shape, generator=generator).clamp(1e-20, 1)))
        confidence = confidence + noise_scale * gumbel.to(device)
        confidence = confidence.masked_fill(~unknown, float("inf"))  # decided positions are never re-masked
        tokens = sampled.masked_fill(remask_lowest(confidence, still_masked), mask_id)
    return tokens
