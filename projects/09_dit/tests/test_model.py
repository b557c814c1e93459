"""The DiT (model.py): what the paper says must hold, and parity with diffusers' DiTTransformer2DModel."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.diffusion.guidance import ClassifierFreeGuidance
from genlab.dit.model import (
    CONDITIONINGS,
    Attention,
    DiT,
    DiTConfig,
    dit_config,
    forward_gflops,
    patchify,
    sincos_2d,
    unpatchify,
)


def tiny(**overrides) -> DiT:
    torch.manual_seed(0)
    config = dict(image_channels=3, image_size=16, patch_size=4, hidden_size=32, depth=2, num_heads=2,
                  num_classes=5)  # fmt: skip
    return DiT(DiTConfig(**{**config, **overrides}))


def perturb(model: DiT) -> DiT:
    """Move every weight off its initialisation (zeros included), as training would."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_adaln_zero_makes_every_block_the_identity_and_the_network_zero_at_initialisation() -> None:
    """Sec. 3.2: with alpha regressed by a zero-initialised layer, each DiT block starts as the identity; with the
    final layer zero-initialised too, a fresh DiT predicts 0."""
    model = tiny()
    x = torch.randn(4, 3, 16, 16)
    t, labels = torch.tensor([0.0, 10.0, 500.0, 999.0]), torch.tensor([0, 1, 2, 5])
    tokens = torch.randn(4, model.config.num_tokens, 32)
    c, context = torch.randn(4, 32), torch.randn(4, 2, 32)
    for block in model.blocks:
        assert torch.equal(block(tokens, c, context), tokens)
    assert torch.equal(model(x, t, labels), torch.zeros(4, 6, 16, 16))
    for design in ("adaln", "cross-attention", "in-context"):  # the other designs' blocks are not the identity
        other = tiny(conditioning=design)
        assert not torch.allclose(other.blocks[0](tokens, c, context), tokens)


def test_patchify_and_unpatchify_are_inverse_and_tokens_are_raster_ordered_patches() -> None:
    x = torch.randn(2, 3, 16, 16)
    tokens = patchify(x, 4)  # (2, 16, 48)
    assert tokens.shape == (2, 16, 48)
    assert torch.equal(unpatchify(tokens, 4, 3), x)
    # token 1 is the patch in row 0, column 1, flattened as (p, p, C)
    assert torch.equal(tokens[:, 1], x[:, :, 0:4, 4:8].permute(0, 2, 3, 1).reshape(2, -1))
    # the network's patch embedding is a linear map of exactly these vectors
    model = tiny()
    weight = model.patch_embed.weight.permute(0, 2, 3, 1).reshape(32, -1)  # (d, p * p * C) in (p, p, C) order
    embedded = model.patch_embed(x).flatten(2).transpose(1, 2)
    assert torch.allclose(embedded, tokens @ weight.T + model.patch_embed.bias, atol=1e-5)


def test_attention_equals_the_explicit_softmax() -> None:
    torch.manual_seed(0)
    attention = Attention(16, 4)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    q = attention.query(x).view(2, 5, 4, 4).transpose(1, 2)
    k, v = (t.view(2, 3, 4, 4).transpose(1, 2) for t in attention.key_value(context).chunk(2, dim=-1))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)  # (2, heads, 5, 3)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, 5, 16))
    assert torch.allclose(attention(x, context), expected, atol=1e-6)


def test_the_position_embedding_is_the_2d_sincos_of_mae_and_dit() -> None:
    """Half the channels encode the column, half the row, each [sin(pos w), cos(pos w)], w_i = 10^(-4 i / (D/4))."""
    embedding = sincos_2d(8, 3)  # (9, 8): 2 frequencies per sin/cos per axis
    row, col = 1, 2
    token = embedding[row * 3 + col]
    w = torch.tensor([1.0, 0.01])
    expected = torch.cat([torch.sin(col * w), torch.cos(col * w), torch.sin(row * w), torch.cos(row * w)])
    assert torch.allclose(token, expected)


@pytest.mark.parametrize("design", CONDITIONINGS)
def test_every_design_depends_on_the_timestep_and_the_label(design: str) -> None:
    model = perturb(tiny(conditioning=design))
    x = torch.randn(2, 3, 16, 16)
    base = model(x, torch.tensor([100.0, 100.0]), torch.tensor([1, 1]))
    assert not torch.allclose(base, model(x, torch.tensor([600.0, 600.0]), torch.tensor([1, 1])))
    assert not torch.allclose(base, model(x, torch.tensor([100.0, 100.0]), torch.tensor([3, 3])))
    assert torch.equal(
        model(x, torch.tensor([100.0, 100.0]), None), model(x, torch.tensor([100.0, 100.0]), torch.tensor([5, 5]))
    )  # None: null label


def test_a_side_the_patch_does_not_divide_is_padded_and_cropped() -> None:
    model = perturb(tiny(image_size=28, patch_size=8, image_channels=1))
    assert model.config.grid_size == 4  # 28 -> 32
    out = model(torch.randn(2, 1, 28, 28), torch.tensor([5.0, 5.0]), torch.tensor([0, 1]))
    assert out.shape == (2, 2, 28, 28)


@pytest.mark.parametrize("side", [24, 32])
def test_an_input_of_another_size_is_refused_not_cropped(side: int) -> None:
    model = tiny(image_size=28, patch_size=8, image_channels=1)
    with pytest.raises(ValueError, match=f"28x28 inputs was given {side}x{side}"):
        model(torch.randn(1, 1, side, side), torch.tensor([5.0]))


def test_guidance_is_07s_classifier_free_guidance_on_the_eps_channels() -> None:
    """CFG's eq. 6 on every one of a 4-channel latent's eps channels; the learned variance is the conditional's."""
    model = perturb(tiny(image_channels=4))
    x, t, labels = torch.randn(2, 4, 16, 16), torch.tensor([50.0, 50.0]), torch.tensor([0, 4])
    guided = ClassifierFreeGuidance(model, 3.0, 5)(x, t, labels)
    conditional, unconditional = model(x, t, labels), model(x, t, None)
    expected = unconditional[:, :4] + 3.0 * (conditional[:, :4] - unconditional[:, :4])
    assert guided.shape == (2, 8, 16, 16)
    assert torch.allclose(guided[:, :4], expected, atol=1e-5)
    assert torch.allclose(guided[:, 4:], conditional[:, 4:], atol=1e-6)


@pytest.mark.parametrize(("size", "paper_millions"), [("S/2", 33), ("B/2", 130), ("L/2", 458), ("XL/2", 675)])
def test_the_sizes_have_the_papers_parameter_counts(size: str, paper_millions: int) -> None:
    """Table 4's Params (M), for 256x256 ImageNet: 32x32x4 latents, 1000 classes, learned sigma."""
    with torch.device("meta"):
        model = DiT(dit_config(size, image_channels=4, image_size=32, num_classes=1000))
    count = sum(p.numel() for p in model.parameters())
    assert count / 1e6 == pytest.approx(paper_millions, rel=0.01)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="unknown DiT size"):
        dit_config("M/2")
    with pytest.raises(ValueError, match="unknown conditioning"):
        DiTConfig(conditioning="film")
    with pytest.raises(ValueError, match="num_heads"):
        DiTConfig(hidden_size=30, num_heads=4)


def test_equals_diffusers_dit_given_the_same_weights() -> None:
    """diffusers' DiTTransformer2DModel (adaLN-Zero, learned sigma) with our weights copied in: the same output to
    1e-5. diffusers keeps a copy of the timestep and label embedders in every block (the conversion script copies
    DiT's one embedder into each), and its sinusoid divides by half - 1 (our time_frequency_shift = 1)."""
    from diffusers import DiTTransformer2DModel

    model = perturb(tiny(time_frequency_shift=1))
    config = model.config
    theirs = DiTTransformer2DModel(
        num_attention_heads=config.num_heads, attention_head_dim=config.hidden_size // config.num_heads,
        in_channels=config.image_channels, out_channels=config.out_channels, num_layers=config.depth,
        sample_size=config.image_size, patch_size=config.patch_size, num_embeds_ada_norm=config.num_classes,
    ).eval()  # fmt: skip
    ours = model.state_dict()
    mapped = {
        "pos_embed.proj.weight": ours["patch_embed.weight"], "pos_embed.proj.bias": ours["patch_embed.bias"],
        "proj_out_1.weight": ours["final.modulation.1.weight"], "proj_out_1.bias": ours["final.modulation.1.bias"],
        "proj_out_2.weight": ours["final.linear.weight"], "proj_out_2.bias": ours["final.linear.bias"],
    }  # fmt: skip
    for i in range(config.depth):
        block, theirs_block = f"blocks.{i}.", f"transformer_blocks.{i}."
        q, (k, v) = ours[block + "attention.query.weight"], ours[block + "attention.key_value.weight"].chunk(2)
        qb, (kb, vb) = ours[block + "attention.query.bias"], ours[block + "attention.key_value.bias"].chunk(2)
        mapped.update({
            theirs_block + "norm1.emb.timestep_embedder.linear_1.weight": ours["t_embedder.mlp.0.weight"],
            theirs_block + "norm1.emb.timestep_embedder.linear_1.bias": ours["t_embedder.mlp.0.bias"],
            theirs_block + "norm1.emb.timestep_embedder.linear_2.weight": ours["t_embedder.mlp.2.weight"],
            theirs_block + "norm1.emb.timestep_embedder.linear_2.bias": ours["t_embedder.mlp.2.bias"],
            theirs_block + "norm1.emb.class_embedder.embedding_table.weight": ours["y_embedder.weight"],
            theirs_block + "norm1.linear.weight": ours[block + "modulation.1.weight"],
            theirs_block + "norm1.linear.bias": ours[block + "modulation.1.bias"],
            theirs_block + "attn1.to_q.weight": q, theirs_block + "attn1.to_q.bias": qb,
            theirs_block + "attn1.to_k.weight": k, theirs_block + "attn1.to_k.bias": kb,
            theirs_block + "attn1.to_v.weight": v, theirs_block + "attn1.to_v.bias": vb,
            theirs_block + "attn1.to_out.0.weight": ours[block + "attention.proj.weight"],
            theirs_block + "attn1.to_out.0.bias": ours[block + "attention.proj.bias"],
            theirs_block + "ff.net.0.proj.weight": ours[block + "mlp.0.weight"],
            theirs_block + "ff.net.0.proj.bias": ours[block + "mlp.0.bias"],
            theirs_block + "ff.net.2.weight": ours[block + "mlp.2.weight"],
            theirs_block + "ff.net.2.bias": ours[block + "mlp.2.bias"],
        })  # fmt: skip
    missing, unexpected = theirs.load_state_dict(mapped, strict=False)
    assert not unexpected and all("pos_embed.pos_embed" in name for name in missing)
    torch.manual_seed(2)
    x, t, labels = torch.randn(3, 3, 16, 16), torch.tensor([3, 250, 999]), torch.tensor([0, 4, 5])
    with torch.no_grad():
        expected = theirs(x, timestep=t, class_labels=labels).sample
        assert torch.allclose(model.pos_embed, theirs.pos_embed.pos_embed, atol=1e-6)
        assert torch.allclose(model(x, t.float(), labels), expected, atol=1e-5)


@pytest.mark.parametrize(("size", "paper_gflops"), [("S/2", 6.06), ("B/2", 23.01), ("L/2", 80.71), ("XL/2", 118.64),
                                                    ("XL/4", 29.05), ("XL/8", 7.39)])  # fmt: skip
def test_forward_gflops_are_the_papers(size: str, paper_gflops: float) -> None:
    """Table 4's Gflops (one forward pass, 256x256 ImageNet latents) from the closed-form count."""
    config = dit_config(size, image_channels=4, image_size=32, num_classes=1000)
    assert forward_gflops(config) == pytest.approx(paper_gflops, rel=0.01)
