"""MaskGIT (Chang et al. 2022): the cosine schedule, the masked-token loss, and the unmasking order."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genlab.transformer.maskgit import (
    cosine_schedule,
    mask_tokens,
    maskgit_decode,
    maskgit_loss,
    remask_lowest,
    steps_schedule,
)


class FixedLogits(nn.Module):
    """A stand-in network: the same logits (B, N, V) whatever the input; it records what it was given."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.inputs: list[torch.Tensor] = []

    def forward(self, idx: torch.Tensor, caches=None):
        self.inputs.append(idx.clone())
        return self.logits, None


def test_the_cosine_schedule_masks_everything_at_zero_and_nothing_at_one() -> None:
    assert cosine_schedule(0.0) == 1.0 and cosine_schedule(1.0) == pytest.approx(0.0, abs=1e-12)
    r = torch.linspace(0, 1, 11)
    assert torch.all(cosine_schedule(r)[1:] < cosine_schedule(r)[:-1])  # decreasing


def test_training_masks_ceil_gamma_r_n_tokens_with_r_uniform() -> None:
    N, B = 256, 4000
    tokens = torch.randint(10, (B, N))
    inputs, mask = mask_tokens(tokens, mask_id=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(inputs == 10, mask) and torch.equal(inputs[~mask], tokens[~mask])
    # E[gamma(r)] for r ~ U(0, 1) is 2 / pi; the ceiling adds about half a token per sequence.
    assert mask.float().mean().item() == pytest.approx(2 / math.pi + 0.5 / N, abs=0.01)
    # And row by row: ceil(cos(pi r / 2) N) positions for the ratio r the seeded generator draws first.
    ratios = torch.rand(B, generator=torch.Generator().manual_seed(0)).double()
    expected = torch.ceil(torch.cos(math.pi / 2 * ratios) * N).clamp(1, N).long()
    assert torch.equal(mask.sum(dim=1), expected)


def test_the_loss_is_the_cross_entropy_on_the_masked_positions_only() -> None:
    K, N, B = 5, 12, 3
    stub = FixedLogits(torch.randn(B, N + 1, K + 1))  # one class token in front
    tokens = torch.randint(K, (B, N))
    loss, _ = maskgit_loss(stub, tokens, mask_id=K, prefix=torch.zeros(B, 1, dtype=torch.long))
    loss.backward()
    masked = stub.inputs[0][:, 1:] == K  # what the network was shown
    grad_at = stub.logits.grad.abs().sum(-1)  # (B, N + 1)
    assert (grad_at[:, 1:][masked] > 0).all() and (grad_at[:, 1:][~masked] == 0).all() and (grad_at[:, 0] == 0).all()
    assert stub.inputs[0][:, 0].eq(0).all()  # the class token is never masked
    expected = nn.functional.cross_entropy(stub.logits[:, 1:, :K][masked], tokens[masked])
    assert loss.item() == pytest.approx(expected.item())


def test_the_decoding_schedule_on_a_hand_worked_case() -> None:
    # N = 16, T = 4: floor(16 cos(pi/8)) = 14, floor(16 cos(pi/4)) = 11, floor(16 cos(3 pi/8)) = 6, then 0.
    assert steps_schedule(16, 4) == [14, 11, 6, 0]
    assert steps_schedule(16, 1) == [0]
    assert steps_schedule(3, 8) == [2, 1, 1, 1, 1, 1, 1, 0]  # at least one decided per step while it can


def test_the_least_confident_positions_are_masked_again() -> None:
    confidence = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, float("inf"), 0.4]])
    assert remask_lowest(confidence, 2).tolist() == [[False, True, False, True], [True, False, False, True]]
    assert not remask_lowest(confidence, 0).any()


def test_decoding_keeps_the_most_confident_tokens_first() -> None:
    K, N = 4, 6
    # Position i predicts token i % K with probability 1 / (1 + e^-(6 + i)), above 0.997 and growing with i (one
    # other token takes the rest): the last positions are the surest.
    logits = torch.full((1, N, K + 1), float("-inf"))
    for i in range(N):
        logits[0, i, i % K], logits[0, i, (i + 1) % K] = 6.0 + i, 0.0
    stub = FixedLogits(logits)
    generator = torch.Generator().manual_seed(0)
    tokens = maskgit_decode(stub, 1, N, mask_id=K, steps=3, choice_temperature=0.0, generator=generator)
    assert tokens.tolist() == [[i % K for i in range(N)]]
    # Steps keep N - floor(gamma(t/T) N) positions: 6 - 5 = 1, then 6 - 3 = 3, then all; most confident first.
    shown = [(x[0] == K).tolist() for x in stub.inputs]
    assert shown[0] == [True] * 6
    assert shown[1] == [True] * 5 + [False]
    assert shown[2] == [True] * 3 + [False] * 3
