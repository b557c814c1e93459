"""What the GPT must do: causality, GPT-2's initialisation, parity with transformers' GPT-2 on the same weights,
and sampling (the KV cache, temperature, top-k, top-p)."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.transformer.model import GPT, GPTConfig
from genlab.transformer.sampler import draw, filter_top_k, filter_top_p, generate


def _tiny(**kwargs) -> GPT:
    torch.manual_seed(0)
    config = {"vocab_size": 11, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, **kwargs}
    return GPT(GPTConfig(**config)).eval()


def _perturb(model: GPT) -> GPT:
    """Weights far from their zero-mean initialisation, so that every path is exercised."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def test_position_t_depends_on_positions_up_to_t_only() -> None:
    model = _perturb(_tiny())
    x = model.token_embedding(torch.randint(11, (1, 10))).detach().requires_grad_(True)
    hidden = model.dropout(x + model.position_embedding(torch.arange(10)))
    for block in model.blocks:
        hidden, _ = block(hidden)
    for t in range(10):
        (grad,) = torch.autograd.grad(hidden[0, t].sum(), x, retain_graph=True)
        seen = grad[0].abs().sum(-1) > 0
        assert seen[: t + 1].all() and not seen[t + 1 :].any(), f"position {t} sees {seen.nonzero().flatten()}"


def test_the_bidirectional_variant_sees_every_position() -> None:
    model = _perturb(_tiny(causal=False))
    x = model.token_embedding(torch.randint(11, (1, 6))).detach().requires_grad_(True)
    hidden = x
    for block in model.blocks:
        hidden, _ = block(hidden)
    (grad,) = torch.autograd.grad(hidden[0, 0].sum(), x)
    assert (grad[0].abs().sum(-1) > 0).all()


def test_gpt2_initialisation_scales_the_residual_projections() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=500, block_size=64, n_layer=8, n_head=4, n_embd=256))
    residual = 0.02 / math.sqrt(2 * 8)
    for block in model.blocks:
        assert block.attention.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
        assert block.mlp.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
        assert block.attention.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.attention.qkv.bias.abs().max() == 0
    assert model.lm_head.weight is model.token_embedding.weight  # tied


def test_logits_equal_transformers_gpt2_with_our_weights() -> None:
    pytest.importorskip("transformers", reason="the peer is in the dev group")
    from genlab.transformer.peer import gpt2_with_our_weights

    model = _perturb(_tiny(vocab_size=50, block_size=32, n_layer=3, n_head=4, n_embd=32))
    peer = gpt2_with_our_weights(model).eval()
    idx = torch.randint(50, (3, 20))
    ours, _ = model(idx)
    theirs = peer(idx).logits
    assert (ours - theirs).abs().max().item() < 1e-5


def test_kv_cache_gives_the_uncached_logits_and_tokens() -> None:
    model = _perturb(_tiny())
    idx = torch.randint(11, (2, 12))
    full, _ = model(idx)
    prefix, caches = model(idx[:, :5])
    steps = [prefix]
    for t in range(5, 12):
        logits, caches = model(idx[:, t : t + 1], caches)
        steps.append(logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    chunk, _ = model(idx[:, 5:12], model(idx[:, :5])[1])  # several new positions after a cache
    assert torch.allclose(chunk, full[:, 5:], atol=1e-5)
    prompt, uniforms = idx[:, :3], torch.rand(2, 20)  # 23 tokens: past the context of 16
    cached = generate(model, prompt, 20, use_cache=True, uniforms=uniforms, temperature=0.8, top_k=6)
    uncached = generate(model, prompt, 20, use_cache=False, uniforms=uniforms, temperature=0.8, top_k=6)
    assert torch.equal(cached, uncached)


def test_top_k_keeps_exactly_the_k_largest() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.5, 0.7, 3.0]])
    kept = filter_top_k(logits, 3).isfinite()
    assert kept.tolist() == [[False, True, False, True, False, True]]
    assert filter_top_k(logits, 0).isfinite().all()  # 0: no filter


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probabilities = torch.tensor([[0.05, 0.40, 0.10, 0.30, 0.15]])
    logits = probabilities.log()
    # Sorted: 0.40, 0.30, 0.15, 0.10, 0.05. p = 0.7 is reached by the first two exactly; 0.71 needs the third.
    assert filter_top_p(logits, 0.7).isfinite().tolist() == [[False, True, False, True, False]]
    assert filter_top_p(logits, 0.71).isfinite().tolist() == [[False, True, False, True, True]]
    assert filter_top_p(logits, 0.01).isfinite().tolist() == [[False, True, False, False, False]]  # the top one stays
    renormalised = filter_top_p(logits, 0.7).softmax(-1)
    assert torch.allclose(renormalised, torch.tensor([[0.0, 4 / 7, 0.0, 3 / 7, 0.0]]))


def test_the_inverse_cdf_draw_follows_the_probabilities() -> None:
    probabilities = torch.tensor([[0.25, 0.0, 0.5, 0.25]])
    # CDF 0.25, 0.25, 0.75, 1 (exact in binary): below 0.25 gives 0, up to 0.75 gives 2, above 3; never 1.
    uniforms = torch.tensor([0.0, 0.24, 0.25, 0.74, 0.75, 0.999])
    tokens = draw(probabilities.expand(6, 4), uniforms)
    assert tokens.tolist() == [0, 0, 2, 2, 3, 3]
