"""Token priors: the vocabulary and prefix layout, a GPT prior's likelihood (the chain rule, normalised over every
grid), sampling that draws codes only, and conditioning on a class and on the upper level's codes."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from genlab.transformer.model import GPT, GPTConfig
from genlab.transformer.token_prior import (
    TokenLayout,
    gpt_prior_loss,
    gpt_prior_nll,
    maskgit_prior_loss,
    sample_hierarchy,
    sample_prior,
)


def tiny_gpt(layout: TokenLayout, seed: int = 0, width: int = 16) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=layout.vocab_size, block_size=layout.block_size, n_layer=1, n_head=2,
                       n_embd=width, causal=not layout.maskgit)  # fmt: skip
    return GPT(config)


def test_the_layout_puts_codes_start_classes_and_upper_codes_in_their_own_id_ranges() -> None:
    layout = TokenLayout(num_codes=5, grid_shape=(2, 3), num_classes=3, condition_codes=5, condition_shape=(1, 2))
    assert layout.vocab_size == 5 + 1 + 3 + 5 and layout.num_tokens == 6 and layout.prefix_length == 1 + 2
    assert layout.block_size == 3 + 6 - 1  # the GPT never reads its last code
    prefix = layout.prefix(2, torch.tensor([0, 2]), torch.tensor([[0, 4], [1, 3]]), torch.device("cpu"))
    assert prefix.tolist() == [[6, 9, 13], [8, 10, 12]]  # class c -> 6 + c, upper code j -> 9 + j
    plain = TokenLayout(num_codes=5, grid_shape=(2, 3))
    assert plain.prefix(2, None, None, torch.device("cpu")).tolist() == [[5], [5]]  # [START]
    masked = TokenLayout(num_codes=5, grid_shape=(2, 3), maskgit=True)
    assert masked.prefix(2, None, None, torch.device("cpu")) is None and masked.block_size == 6
    cpu, upper = torch.device("cpu"), torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="labels"):
        layout.prefix(2, None, upper, cpu)
    with pytest.raises(ValueError, match="labels"):  # class 3 of 3 would silently read as an upper code
        layout.prefix(2, torch.tensor([0, 3]), upper, cpu)
    with pytest.raises(ValueError, match="upper level"):  # one code short: every later position would shift
        layout.prefix(2, torch.tensor([0, 1]), upper[:, :1], cpu)


@pytest.mark.parametrize("num_classes", [0, 2])
def test_the_gpt_prior_s_likelihood_is_the_chain_rule_and_sums_to_one_over_every_grid(num_classes: int) -> None:
    layout = TokenLayout(num_codes=3, grid_shape=(1, 3), num_classes=num_classes)
    model = tiny_gpt(layout).eval()
    grids = torch.tensor(list(itertools.product(range(3), repeat=3)))  # all 27 grids of 3 codes
    labels = torch.ones(len(grids), dtype=torch.long) if num_classes else None
    nll = torch.tensor([
        gpt_prior_nll(model, layout, g[None], None if labels is None else labels[:1], None)["nats_per_grid"]
        for g in grids
    ])  # fmt: skip
    assert torch.exp(-nll).sum().item() == pytest.approx(1.0, abs=1e-5)  # a distribution over grids
    # The chain rule by hand for one grid: each code's probability from a fresh pass over the prefix before it.
    grid, first = grids[14], (layout.num_codes + 2 if num_classes else layout.num_codes)  # class 1 or [START]
    by_hand, context = 0.0, [first]
    for code in grid.tolist():
        logits, _ = model(torch.tensor([context]))
        by_hand -= F.log_softmax(logits[0, -1, : layout.num_codes], dim=-1)[code].item()
        context.append(code)
    assert nll[14].item() == pytest.approx(by_hand, rel=1e-5)
    loss = gpt_prior_loss(model, layout, grid[None], None if labels is None else labels[:1], None)
    assert loss.item() == pytest.approx(by_hand / 3, rel=1e-5)


def test_a_gpt_prior_draws_codes_only_even_where_the_network_prefers_other_ids() -> None:
    layout = TokenLayout(num_codes=4, grid_shape=(2, 2), num_classes=3)
    model = tiny_gpt(layout).eval()
    with torch.no_grad():  # the tied head now gives the start and class ids by far the largest logits
        model.token_embedding.weight[4:] *= 200
    grids = sample_prior(model, layout, 64, torch.arange(64) % 3, generator=torch.Generator().manual_seed(0))
    assert grids.shape == (64, 2, 2) and int(grids.max()) < 4 and int(grids.min()) >= 0


def test_a_maskgit_prior_decodes_every_code_with_the_class_token_first() -> None:
    layout = TokenLayout(num_codes=4, grid_shape=(2, 3), num_classes=3, maskgit=True)
    model = tiny_gpt(layout).eval()
    seen: list[torch.Tensor] = []
    model.register_forward_hook(lambda module, args, output: seen.append(args[0].clone()))
    grids = sample_prior(model, layout, 5, torch.tensor([0, 1, 2, 0, 1]), decode_steps=3)
    assert grids.shape == (5, 2, 3) and int(grids.max()) < 4  # no [MASK] is left, no class id is drawn
    assert len(seen) == 3 and all(inputs[:, 0].tolist() == [5, 6, 7, 5, 6] for inputs in seen)
    assert (seen[0][:, 1:] == layout.special_id).all()  # the first step sees an all-[MASK] grid


def train_briefly(model: GPT, loss_fn, steps: int = 300) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
    model.eval()


@pytest.mark.parametrize("maskgit", [False, True])
def test_the_class_token_conditions_the_prior(maskgit: bool) -> None:
    # Toy data: every code of a grid is its class; a prior that reads its class token draws that class's grid.
    layout = TokenLayout(num_codes=4, grid_shape=(2, 2), num_classes=4, maskgit=maskgit)
    model = tiny_gpt(layout, width=32)
    labels = torch.arange(256) % 4
    codes = labels[:, None].expand(-1, 4)
    objective = maskgit_prior_loss if maskgit else gpt_prior_loss
    train_briefly(model, lambda: objective(model, layout, codes, labels, None))
    wanted = torch.arange(4).repeat_interleave(8)
    grids = sample_prior(model, layout, 32, wanted, decode_steps=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(grids.flatten(1), wanted[:, None].expand(-1, 4))


def test_the_bottom_prior_is_conditioned_on_the_top_codes() -> None:
    # Toy VQ-VAE-2: the bottom grid (2 x 2) repeats the top grid (1 x 2) row by row, so only a prior that reads
    # the top codes can draw the right bottom grid for each.
    layout = TokenLayout(num_codes=3, grid_shape=(2, 2), condition_codes=3, condition_shape=(1, 2))
    model = tiny_gpt(layout, width=32)
    top = torch.tensor(list(itertools.product(range(3), repeat=2))).repeat(32, 1)  # (288, 2): all 9 pairs
    bottom = top.repeat(1, 2)  # (288, 4)
    train_briefly(model, lambda: gpt_prior_loss(model, layout, bottom, None, top))
    grids = sample_prior(model, layout, 9, condition=top[:9], generator=torch.Generator().manual_seed(2))
    assert torch.equal(grids.flatten(1), bottom[:9])
    # Ancestral sampling through both levels: whatever top grid the top prior draws, the bottom one repeats it.
    top_layout = TokenLayout(num_codes=3, grid_shape=(1, 2))
    top_grids, bottom_grids = sample_hierarchy([(tiny_gpt(top_layout, seed=3), top_layout), (model, layout)], 16)
    assert torch.equal(bottom_grids.flatten(1), top_grids.flatten(1).repeat(1, 2)) and top_grids.unique().numel() > 1
    # And its likelihood is near certain for the right bottom grid, near impossible for a wrong one.
    right = gpt_prior_nll(model, layout, bottom[:9], None, top[:9])["nats_per_grid"]
    wrong = gpt_prior_nll(model, layout, bottom[:9].roll(1, dims=0), None, top[:9])["nats_per_grid"]
    assert right < 0.1 and wrong > 3  # at least one code against the top grid, each at well under e^-3
