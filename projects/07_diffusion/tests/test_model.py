"""The U-Net (DDPM App. B / guided diffusion) and the noise-conditional classifier of classifier guidance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genlab.diffusion.model import (
    SIZES,
    AttentionBlock,
    ClassifierConfig,
    NoisyClassifier,
    ResidualBlock,
    UNet,
    UNetConfig,
    timestep_embedding,
    unet_config,
)


def _tiny_config(**kwargs) -> UNetConfig:
    base = dict(base_channels=16, channel_multipliers=(1, 2), residual_blocks=1, attention_resolutions=(14,),
                head_channels=8, groups=8, dropout=0.0)  # fmt: skip
    return UNetConfig(**{**base, **kwargs})


def _perturb(model: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Replace every parameter by N(0, std^2) noise: undoes the zero initialisation so every path carries signal."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            nn.init.normal_(p, std=std)
    return model


def _replace_with_identity(model: nn.Module, kind: type[nn.Module]) -> None:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, kind):
                setattr(module, name, nn.Identity())


@pytest.mark.parametrize("learned_variance", [False, True])
@pytest.mark.parametrize(
    ("channels", "size", "multipliers", "attention"), [(1, 28, (1, 2), (14,)), (3, 32, (1, 2, 2), (16, 8))]
)
@pytest.mark.parametrize("t_kind", ["int", "float", "python", "0-dim"])
def test_output_shape(learned_variance: bool, channels: int, size: int, multipliers, attention, t_kind: str) -> None:
    config = _tiny_config(image_channels=channels, image_size=size, channel_multipliers=multipliers,
                          attention_resolutions=attention, learned_variance=learned_variance)  # fmt: skip
    model = UNet(config)
    x = torch.randn(2, channels, size, size)
    t = {
        "int": torch.tensor([0, 999]),
        "float": torch.tensor([0.5, 731.25]),
        "python": 12.5,
        "0-dim": torch.tensor(7),
    }[t_kind]
    out = model(x, t)
    assert out.shape == (2, 2 * channels if learned_variance else channels, size, size)


def test_fresh_unet_predicts_exactly_zero() -> None:
    """The output conv is zero-initialised (guided diffusion), so a fresh denoiser predicts 0."""
    model = UNet(_tiny_config(num_classes=3, learned_variance=True))
    out = model(torch.randn(3, 1, 28, 28), torch.tensor([1.0, 50.0, 900.0]), torch.tensor([0, 1, 2]))
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("scale_shift", [True, False])
def test_residual_branches_start_as_the_identity(scale_shift: bool) -> None:
    """guided diffusion's zero_module: each residual block's last conv and each attention projection start at 0."""
    torch.manual_seed(6)
    block = ResidualBlock(16, 16, time_dim=64, dropout=0.0, scale_shift=scale_shift, groups=8)
    widening = ResidualBlock(16, 32, time_dim=64, dropout=0.0, scale_shift=scale_shift, groups=8)
    attention = AttentionBlock(16, head_channels=8, groups=8)
    x, emb = torch.randn(2, 16, 6, 6), torch.randn(2, 64)
    assert torch.equal(block(x, emb), x)
    assert torch.equal(widening(x, emb), widening.skip(x))
    assert torch.equal(attention(x), x)


@pytest.mark.parametrize("scale_shift", [True, False])
def test_output_depends_on_time_and_labels_and_none_is_the_null_label(scale_shift: bool) -> None:
    model = _perturb(UNet(_tiny_config(num_classes=3, scale_shift=scale_shift))).eval()
    torch.manual_seed(1)
    x = torch.randn(2, 1, 28, 28)
    labels = torch.tensor([0, 0])
    with torch.no_grad():
        out = model(x, torch.tensor([10.0, 10.0]), labels)
        later = model(x, torch.tensor([500.0, 500.0]), labels)
        fractional = model(x, torch.tensor([10.5, 10.5]), labels)
        other_label = model(x, torch.tensor([10.0, 10.0]), torch.tensor([1, 1]))
        unconditional = model(x, 10.0)
        null = model(x, 10.0, torch.tensor([3, 3]))
    assert (out - later).abs().max() > 1e-3
    assert (out - fractional).abs().max() > 1e-5
    assert (out - other_label).abs().max() > 1e-3
    assert torch.equal(unconditional, null)
    assert (unconditional - out).abs().max() > 1e-3


def test_attention_mixes_all_positions() -> None:
    """The corner output pixel's gradient reaches the opposite corner of the input only through attention.

    A one-level U-Net at 28x28 (no downsampling) has a convolutional receptive field of radius 12, so pixel (0, 0)
    cannot see pixel (27, 27) through the convolutions. GroupNorm's statistics are global over positions, so the
    norms are replaced by the identity to isolate the attention's mixing.
    """
    config = _tiny_config(channel_multipliers=(1,), attention_resolutions=(28,))
    model = _perturb(UNet(config), std=0.2).eval()
    _replace_with_identity(model, nn.GroupNorm)

    def corner_gradient(net: nn.Module) -> torch.Tensor:
        x = torch.randn(1, 1, 28, 28, requires_grad=True)
        net(x, torch.tensor([100.0]))[0, 0, 0, 0].backward()
        return x.grad[0, 0]  # (28, 28)

    torch.manual_seed(2)
    with_attention = corner_gradient(model)
    assert torch.count_nonzero(with_attention) == 28 * 28  # every input pixel reaches the corner output

    _replace_with_identity(model, AttentionBlock)  # the same network, every attention block removed
    without_attention = corner_gradient(model)
    assert without_attention[0, 0] != 0
    assert torch.count_nonzero(without_attention[14:, 14:]) == 0  # the premise: convolutions alone do not reach


def test_attention_block_matches_explicit_softmax_attention() -> None:
    """softmax(Q K^T / sqrt(d)) V per head, from the block's own weights, by explicit matmuls."""
    torch.manual_seed(3)
    C, heads, d = 16, 4, 4
    block = AttentionBlock(C, head_channels=d, groups=8)
    nn.init.normal_(block.proj.weight, std=0.3)  # the zero-initialised projection would hide the attention
    nn.init.normal_(block.proj.bias, std=0.3)
    x = torch.randn(2, C, 5, 3)  # not square: a transposed H and W would show
    B, _, H, W = x.shape
    h = block.norm(x).reshape(B, C, H * W)  # (B, C, N)
    qkv = torch.einsum("oc,bcn->bon", block.qkv.weight[:, :, 0, 0], h) + block.qkv.bias[None, :, None]  # (B, 3C, N)
    q, k, v = (part.reshape(B, heads, d, H * W) for part in qkv.split(C, dim=1))  # (B, heads, d, N) each
    weights = torch.softmax(q.transpose(-1, -2) @ k / math.sqrt(d), dim=-1)  # (B, heads, N, N), rows: queries
    attended = (weights @ v.transpose(-1, -2)).transpose(-1, -2).reshape(B, C, H * W)  # (B, C, N)
    expected = x + (
        torch.einsum("oc,bcn->bon", block.proj.weight[:, :, 0, 0], attended) + block.proj.bias[None, :, None]
    ).reshape(B, C, H, W)
    assert block.heads == heads
    assert torch.allclose(block(x), expected, atol=1e-5), (block(x) - expected).abs().max()


def test_sinusoidal_embedding() -> None:
    """DDPM's embedding: [sin(t w_i)] then [cos(t w_i)], w_i = 10000^(-i / (half - 1))."""
    dim, half = 16, 8
    emb = timestep_embedding(torch.tensor([0.0, 3.0, 3.5, 999.0]), dim)
    assert emb.shape == (4, dim)
    assert torch.equal(emb[0], torch.cat([torch.zeros(half), torch.ones(half)]))
    assert (emb[1] - emb[2]).abs().max() > 0.1  # fractional timesteps are distinct
    t = torch.tensor([3.0, 3.5, 999.0])
    assert torch.allclose(emb[1:, 0], torch.sin(t), atol=1e-6)  # w_0 = 1
    assert torch.allclose(emb[1:, half - 1], torch.sin(t / 10000), atol=1e-6)  # the slowest frequency: the max period
    assert torch.allclose(emb[1:, half], torch.cos(t), atol=1e-6)


def test_cifar_ddpm_size_has_the_papers_parameter_count() -> None:
    """DDPM (Ho et al. 2020, Table 1 / App. B): the CIFAR-10 model has 35.7M parameters."""
    with torch.device("meta"):
        model = UNet(unet_config("cifar-ddpm"))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 35.7e6) / 35.7e6 < 0.02, count


def test_every_size_builds_and_overrides_apply() -> None:
    for name in SIZES:
        with torch.device("meta"):
            model = UNet(unet_config(name))
        assert model.config.image_size == SIZES[name]["image_size"]
    config = unet_config("mnist-small", num_classes=10, learned_variance=True)
    assert config.num_classes == 10 and config.out_channels == 2


def test_save_and_load_pretrained_round_trip(tmp_path) -> None:
    config = _tiny_config(image_channels=3, image_size=16, channel_multipliers=(1, 2, 2),
                          attention_resolutions=(8, 4), num_classes=4, learned_variance=True)  # fmt: skip
    model = _perturb(UNet(config)).eval()
    model.save_pretrained(tmp_path)
    loaded = UNet.from_pretrained(str(tmp_path)).eval()
    assert loaded.config == model.config
    assert isinstance(loaded.config.channel_multipliers, tuple) and isinstance(
        loaded.config.attention_resolutions, tuple
    )
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 400.0]), torch.tensor([1, 3])
    with torch.no_grad():
        assert torch.equal(model(x, t, y), loaded(x, t, y))


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(image_size=30, channel_multipliers=(1, 2, 2))  # 30 -> 15 -> 7.5
    with pytest.raises(ValueError, match="feature-map sides"):
        UNetConfig(image_size=28, attention_resolutions=(8,))
    with pytest.raises(ValueError, match="GroupNorm"):
        UNetConfig(base_channels=48, groups=32)
    with pytest.raises(ValueError, match="head_channels"):
        UNetConfig(base_channels=16, groups=8, head_channels=24)
    with pytest.raises(ValueError, match="mnist-small"):
        unet_config("no-such-size")
    model = UNet(_tiny_config())
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 1, 28, 28), torch.tensor([1.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="timesteps"):
        model(torch.randn(2, 1, 28, 28), torch.tensor([1.0, 2.0, 3.0]))


def _tiny_classifier() -> NoisyClassifier:
    torch.manual_seed(4)
    config = ClassifierConfig(image_channels=1, image_size=8, base_channels=16, channel_multipliers=(1, 2),
                              attention_resolutions=(4,), head_channels=8, num_classes=2, groups=8)  # fmt: skip
    return NoisyClassifier(config)


def test_noisy_classifier_logits_depend_on_time() -> None:
    model = _perturb(_tiny_classifier()).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        logits = model(x, torch.tensor([5.0, 5.0, 5.0]))
        later = model(x, 800.0)
    assert logits.shape == (3, 2)
    assert (logits - later).abs().max() > 1e-3


def test_noisy_classifier_learns_a_two_class_problem() -> None:
    """Class 0: images of -1, class 1: images of +1, both plus noise; a few Adam steps lower the cross-entropy."""
    model = _tiny_classifier()
    torch.manual_seed(5)
    y = torch.arange(16) % 2
    x = (2.0 * y - 1.0)[:, None, None, None] + 0.5 * torch.randn(16, 1, 8, 8)
    t = torch.randint(0, 1000, (16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x, t), y)

    with torch.no_grad():
        before = loss().item()
    for _ in range(15):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.5 * before, (before, after)
