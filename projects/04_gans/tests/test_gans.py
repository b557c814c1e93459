"""What the GAN papers say must hold, for the losses and layers every variant shares."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genlab.gans.layers import ConditionalBatchNorm2d, SelfAttention2d, spectral
from genlab.gans.models import DCDiscriminator, DCGenerator, ResNetDiscriminator, ResNetGenerator
from genlab.gans.objective import (
    critic_loss_hinge,
    critic_loss_wasserstein,
    discriminator_loss_gan,
    generator_loss_minimax,
    generator_loss_non_saturating,
    gradient_penalty,
)
from genlab.gans.toy import GaussianMixture, mode_coverage


def normal_density(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return torch.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


def test_trained_discriminator_approaches_the_optimum() -> None:
    """Goodfellow et al. 2014, Proposition 1: for a fixed G the best D is p_data / (p_data + p_g). Data N(0, 1),
    generator output N(1.5, 1): the optimum is sigmoid(1.5^2 / 2 - 1.5 x)."""
    torch.manual_seed(0)
    discriminator = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=3e-3)
    for _ in range(1500):
        real, fake = torch.randn(512, 1), 1.5 + torch.randn(512, 1)
        loss = discriminator_loss_gan(discriminator(real), discriminator(fake))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    grid = torch.linspace(-1.5, 3.0, 46).unsqueeze(1)
    optimum = normal_density(grid, 0.0, 1.0) / (normal_density(grid, 0.0, 1.0) + normal_density(grid, 1.5, 1.0))
    with torch.no_grad():
        learned = torch.sigmoid(discriminator(grid))
    assert (learned - optimum).abs().max() < 0.05
    # At the optimum the loss is 2 log 2 - 2 JSD(p_data || p_g) < 2 log 2 (the value when p_g = p_data).
    assert loss.item() < 2 * math.log(2)


def test_gradient_penalty_is_zero_exactly_for_a_one_lipschitz_critic() -> None:
    """f(x) = w . x with ||w|| = 1 has gradient norm 1 everywhere, so the penalty vanishes; with ||w|| = 2 it is
    (2 - 1)^2 = 1 at every interpolate."""
    torch.manual_seed(1)
    real, fake = torch.randn(16, 3, 4, 4), torch.randn(16, 3, 4, 4)
    direction = torch.randn(3 * 4 * 4)
    for norm, expected in ((1.0, 0.0), (2.0, 1.0), (0.5, 0.25)):
        weight = norm * direction / direction.norm()

        def critic(x: torch.Tensor, weight: torch.Tensor = weight) -> torch.Tensor:
            return x.flatten(1) @ weight

        assert gradient_penalty(critic, real, fake).item() == pytest.approx(expected, abs=1e-5)
    # A non-linear critic: the penalty is positive, and it has a gradient for the critic's weights.
    layer = nn.Linear(48, 1)
    penalty = gradient_penalty(lambda x: torch.tanh(layer(x.flatten(1))).squeeze(1), real, fake)
    penalty.backward()
    assert penalty.item() > 0 and layer.weight.grad.abs().sum() > 0


def test_gradient_penalty_is_taken_on_the_interpolates() -> None:
    """With eps = 1 the interpolates are the real images; with eps = 0 the fake ones."""
    real, fake = torch.ones(2, 1, 2, 2), -torch.ones(2, 1, 2, 2)

    def critic(x: torch.Tensor) -> torch.Tensor:  # gradient 2x: its norm is 2 ||x||
        return x.flatten(1).square().sum(1)

    for epsilon in (torch.ones(2), torch.zeros(2), torch.full((2,), 0.5)):
        x_hat = epsilon.view(-1, 1, 1, 1) * real + (1 - epsilon.view(-1, 1, 1, 1)) * fake
        expected = ((2 * x_hat.flatten(1).norm(dim=1)) - 1).square().mean()
        assert gradient_penalty(critic, real, fake, epsilon).item() == pytest.approx(expected.item())


def test_spectral_norm_leaves_a_largest_singular_value_of_one() -> None:
    torch.manual_seed(2)
    layer = spectral(nn.Linear(64, 32))
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(7.0)
    for _ in range(30):  # one power iteration per forward in training mode
        layer(torch.randn(4, 64))
    assert torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item() == pytest.approx(1.0, abs=1e-3)
    convolution = spectral(nn.Conv2d(8, 16, 3))
    for _ in range(30):
        convolution(torch.randn(2, 8, 5, 5))
    reshaped = convolution.weight.detach().flatten(1)  # (C_out, C_in k k): the matrix Miyato et al. normalise
    assert torch.linalg.matrix_norm(reshaped, ord=2).item() == pytest.approx(1.0, abs=1e-3)


def test_self_attention_matches_scaled_dot_product_attention() -> None:
    """SAGAN's attention is softmax attention with query g(x_j), key f(x_i), value h(x_i) and no 1/sqrt(d)."""
    torch.manual_seed(3)
    block = SelfAttention2d(16, use_spectral_norm=False)
    x = torch.randn(2, 16, 5, 6)
    output, beta = block.attention(x)
    queries = block.g(x).flatten(2).transpose(1, 2)  # (B, N, C_bar)
    keys = block.f(x).flatten(2).transpose(1, 2)
    values = block.h(x).flatten(2).transpose(1, 2)
    reference = F.scaled_dot_product_attention(queries, keys, values, scale=1.0)  # (B, N, C_bar)
    expected = block.v(reference.transpose(1, 2).reshape(2, -1, 5, 6))
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(beta.sum(-1), torch.ones(2, 30))
    # gamma starts at 0: the block is the identity at initialisation.
    torch.testing.assert_close(block(x), x)


def test_conditional_batch_norm_starts_as_batch_norm_and_separates_classes() -> None:
    torch.manual_seed(4)
    norm = ConditionalBatchNorm2d(3, num_classes=2)
    x, labels = torch.randn(8, 3, 4, 4), torch.tensor([0, 1] * 4)
    torch.testing.assert_close(norm(x, labels), F.batch_norm(x, None, None, training=True))
    with torch.no_grad():
        norm.bias.weight[1] = 5.0
    shifted = norm(x, labels) - F.batch_norm(x, None, None, training=True)
    assert torch.allclose(shifted[labels == 1], torch.full_like(shifted[labels == 1], 5.0))
    assert torch.allclose(shifted[labels == 0], torch.zeros_like(shifted[labels == 0]))


def test_minimax_generator_loss_saturates_where_the_non_saturating_one_does_not() -> None:
    """Goodfellow et al., Sec. 3: early on D rejects G(z) with confidence (logit << 0); there log(1 - D) has a
    vanishing gradient, -log D a gradient of about -1 per logit."""
    logits = torch.full((4,), -10.0, requires_grad=True)
    (minimax,) = torch.autograd.grad(generator_loss_minimax(logits), logits)
    (non_saturating,) = torch.autograd.grad(generator_loss_non_saturating(logits), logits)
    assert minimax.abs().max() < 1e-4
    assert non_saturating.abs().min() > 0.24  # each of the 4 examples: ~ -1 / 4


def test_critic_losses_on_known_values() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert critic_loss_wasserstein(real, fake).item() == pytest.approx(-1.0 - 1.25)
    # hinge: relu(1 - real) = [0, 0.5], relu(1 + fake) = [0, 1]
    assert critic_loss_hinge(real, fake).item() == pytest.approx(0.25 + 0.5)
    # GAN discriminator at logit 0 everywhere: 2 log 2.
    assert discriminator_loss_gan(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(2 * math.log(2))


@pytest.mark.parametrize(("kind", "modes"), [("ring8", 8), ("grid25", 25)])
def test_toy_metric_counts_modes(kind: str, modes: int) -> None:
    mixture = GaussianMixture.named(kind)
    generator = torch.Generator().manual_seed(5)
    full = mode_coverage(mixture.sample(5000, generator), mixture)
    assert full.modes_covered == modes and full.high_quality > 0.98
    collapsed = mixture.centres[:2].repeat(1000, 1) + mixture.std * torch.randn(2000, 2, generator=generator)
    assert mode_coverage(collapsed, mixture).modes_covered == 2
    spread = 4 * torch.randn(5000, 2, generator=generator)  # no mode at all, mostly off the modes
    assert mode_coverage(spread, mixture).high_quality < 0.1


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_dcgan_follows_the_architecture_guidelines(shape: tuple[int, int, int]) -> None:
    """Radford et al. 2015, Sec. 3: strided convolutions, no pooling or fully connected hidden layers, batch norm
    except at G's output and D's input, ReLU + tanh in G, LeakyReLU(0.2) in D; weights from N(0, 0.02)."""
    torch.manual_seed(6)
    generator, discriminator = DCGenerator(100, shape, 64), DCDiscriminator(shape, 64)
    assert not any(isinstance(m, nn.MaxPool2d | nn.AvgPool2d) for m in [*generator.modules(), *discriminator.modules()])
    convolutions = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.stride == (2, 2) for m in convolutions)
    layers = list(discriminator.features)
    assert isinstance(layers[0], nn.Conv2d) and isinstance(layers[1], nn.LeakyReLU)  # no norm on D's input
    assert all(m.negative_slope == 0.2 for m in discriminator.modules() if isinstance(m, nn.LeakyReLU))
    images = generator(torch.randn(512, 100))
    assert images.shape == (512, *shape) and images.abs().max() <= 1.0
    assert discriminator(images).shape == (512,)
    weights = torch.cat([m.weight.flatten() for m in [*generator.modules(), *discriminator.modules()]
                         if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)])  # fmt: skip
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("kind", ["dc", "resnet"])
def test_projection_discriminator_depends_on_the_label_through_the_inner_product(kind: str) -> None:
    """Miyato & Koyama 2018: D(x, y) = psi(phi(x)) + <embed(y), phi(x)>; two labels differ exactly by
    <embed(y1) - embed(y2), phi(x)>."""
    torch.manual_seed(7)
    shape = (1, 28, 28)
    discriminator = DCDiscriminator(shape, 8, "none", 10) if kind == "dc" else ResNetDiscriminator(shape, 8, 10)
    discriminator.eval()
    images = torch.randn(4, *shape)
    first, second = torch.zeros(4, dtype=torch.long), torch.full((4,), 3)
    with torch.no_grad():
        difference = discriminator(images, first) - discriminator(images, second)
        phi = discriminator.features(images) if kind == "dc" else torch.relu(discriminator.blocks(images)).sum((2, 3))
        embed = discriminator.embed
        expected = ((embed(first) - embed(second)) * phi).sum(1)
    torch.testing.assert_close(difference, expected, rtol=1e-4, atol=1e-4)
    assert difference.abs().min() > 0


def test_sagan_nets_have_spectral_norm_everywhere_and_attention() -> None:
    generator, discriminator = ResNetGenerator(16, (3, 32, 32), 8, 10), ResNetDiscriminator((3, 32, 32), 8, 10)
    for net in (generator, discriminator):
        weighted = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding)]
        weighted = [m for m in weighted if m not in {e for c in net.modules()
                    if isinstance(c, ConditionalBatchNorm2d) for e in (c.gain, c.bias)}]  # fmt: skip
        assert weighted and all(hasattr(m, "parametrizations") for m in weighted)
        assert any(isinstance(m, SelfAttention2d) for m in net.modules())
    images = generator(torch.randn(2, 16), torch.tensor([1, 2]))
    assert images.shape == (2, 3, 32, 32) and discriminator(images, torch.tensor([1, 2])).shape == (2,)
