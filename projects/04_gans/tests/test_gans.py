"""What the GAN papers say must hold, for the losses and layers every variant shares."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

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


def _asymmetric_critic(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(x) = w . x + sum_k exp(x_k): its gradient w + exp(x) is large where x > 0 and near w where x < 0, so its
    norm differs at the real and the fake points and along the way between them (a critic even in x, such as
    ||x||^2 at x = 1 and x~ = -1, cannot tell the two ends apart)."""

    def critic(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return flat @ weight + flat.exp().sum(1)

    return critic


def _penalty_at(points: torch.Tensor, weight: torch.Tensor) -> float:
    """(||grad f(x)||_2 - 1)^2 averaged over ``points``, from the critic's gradient w + exp(x) written out."""
    return ((weight + points.flatten(1).exp()).norm(dim=1) - 1).square().mean().item()


def test_gradient_penalty_is_taken_at_eps_x_plus_one_minus_eps_x_tilde() -> None:
    """Gulrajani et al. 2017, Alg. 1: x_hat = eps x + (1 - eps) x~ for each pair (x real, x~ generated), penalty
    (||grad_x_hat D(x_hat)||_2 - 1)^2, averaged over the batch. With a given eps per example and an asymmetric
    critic the value is the one at those interpolates, and not the one at the real points, the fake points, the
    points with eps and 1 - eps exchanged, or with one mean eps for the whole batch."""
    torch.manual_seed(1)
    real, fake = 1.0 + torch.rand(4, 1, 2, 3), -1.0 - torch.rand(4, 1, 2, 3)
    weight = torch.randn(6)
    critic = _asymmetric_critic(weight)
    epsilon = torch.tensor([0.0, 0.1, 0.25, 0.9])
    eps = epsilon.view(-1, 1, 1, 1)
    expected = _penalty_at(eps * real + (1 - eps) * fake, weight)
    penalty = gradient_penalty(critic, real, fake, epsilon).item()
    assert penalty == pytest.approx(expected, rel=1e-5)
    wrong = {
        "real only": real,
        "fake only": fake,
        "eps and 1 - eps exchanged": (1 - eps) * real + eps * fake,
        "one eps for the batch": epsilon.mean() * real + (1 - epsilon.mean()) * fake,
    }
    for name, points in wrong.items():  # each a distinct value, so the check above tells them apart
        assert abs(_penalty_at(points, weight) - expected) > 0.1 * expected, name


def test_gradient_penalty_draws_eps_uniform_on_0_1_once_per_example() -> None:
    """Gulrajani et al. 2017, Alg. 1: eps ~ U[0, 1], one draw per example, the same for all its pixels. The critic
    records where it is evaluated; each point lies on the segment from its own fake to its own real example
    (x_hat - x~ = eps (x - x~) with one eps for every pixel), and the eps read back from 4,000 examples follow
    U[0, 1] (Kolmogorov-Smirnov distance < 0.03; one eps for the whole batch gives about 0.5). The penalty is the
    mean of (||grad f(x_hat)||_2 - 1)^2 at the recorded points."""
    torch.manual_seed(2)
    count = 4000
    real, fake = torch.randn(count, 2, 2, 2), torch.randn(count, 2, 2, 2)
    weight = torch.randn(8)
    critic, seen = _asymmetric_critic(weight), []

    def recording_critic(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return critic(x)

    penalty = gradient_penalty(recording_critic, real, fake).item()
    (points,) = seen
    direction = (real - fake).flatten(1)
    offset = (points - fake).flatten(1)
    eps = (offset * direction).sum(1) / direction.square().sum(1)  # least squares along each example's segment
    torch.testing.assert_close(offset, eps[:, None] * direction, rtol=0, atol=1e-5)
    assert eps.min() >= -1e-6 and eps.max() <= 1 + 1e-6
    uniform = (torch.arange(count) + 0.5) / count
    assert (eps.sort().values - uniform).abs().max() < 0.03
    assert penalty == pytest.approx(_penalty_at(points, weight), rel=1e-5)


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


def test_self_attention_map_is_the_papers_softmax_over_attended_positions() -> None:
    """Zhang et al. 2018, Sec. 3: s_ij = f(x_i)^T g(x_j), beta_{j,i} = exp(s_ij) / sum_i exp(s_ij) (no 1/sqrt(d)),
    o_j = v(sum_i beta_{j,i} h(x_i)). The explicit ``attention`` returns that o and the map beta[b, j, i]."""
    torch.manual_seed(3)
    block = SelfAttention2d(16, use_spectral_norm=False)
    x = torch.randn(2, 16, 5, 6)
    output, beta = block.attention(x)
    f, g, h = (projection(x).flatten(2) for projection in (block.f, block.g, block.h))  # (B, C_bar, N)
    scores = torch.einsum("bci,bcj->bij", f, g)  # s[b, i, j] = f(x_i) . g(x_j)
    expected_beta = scores.softmax(dim=1).transpose(1, 2)  # normalised over i, stored as [b, j, i]
    torch.testing.assert_close(beta, expected_beta, rtol=1e-5, atol=1e-6)
    attended = torch.einsum("bji,bci->bcj", expected_beta, h)  # sum_i beta_{j,i} h(x_i)
    torch.testing.assert_close(output, block.v(attended.reshape(2, -1, 5, 6)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(beta.sum(-1), torch.ones(2, 30))
    # gamma starts at 0: the block is the identity at initialisation.
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("use_spectral_norm", [False, True])
def test_self_attention_forward_equals_the_explicit_map_in_value_and_gradient(use_spectral_norm: bool) -> None:
    """SAGAN's y = gamma o + x: ``forward`` (fused attention, no (N, N) map) equals gamma * attention(x)[0] + x to
    1e-5 in float32, and so do its gradients for x and for every weight."""
    torch.manual_seed(8)
    block = SelfAttention2d(32, use_spectral_norm=use_spectral_norm).eval()  # eval: no power iteration per call
    with torch.no_grad():
        block.gamma.fill_(0.7)
    x = torch.randn(2, 32, 16, 16, requires_grad=True)  # N = 256 positions
    cotangent = torch.randn(2, 32, 16, 16)
    inputs = [x, *block.parameters()]
    fused = block(x)
    explicit = block.gamma * block.attention(x)[0] + x
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    fused_grads = torch.autograd.grad(fused, inputs, cotangent)
    explicit_grads = torch.autograd.grad(explicit, inputs, cotangent)
    for fused_grad, explicit_grad in zip(fused_grads, explicit_grads, strict=True):
        torch.testing.assert_close(fused_grad, explicit_grad, rtol=1e-5, atol=1e-5)


def test_self_attention_forward_runs_on_the_fused_kernel_alone() -> None:
    """The point of ``forward``: torch's flash kernel, which never stores the (N, N) map, accepts its inputs (a
    strided last dimension would send torch back to the explicit matrix, and this raises)."""
    block = SelfAttention2d(16)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        block(x).sum().backward()
    assert x.grad is not None


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
