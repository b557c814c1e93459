"""What gan-train wires into genlab.core's loop, variant by variant, against each paper's recipe and objective.

``Trainer.fit`` is replaced by a recorder, so ``train`` builds the networks, optimisers and update rules as it
would for a real run and returns at once. Each rule's loss is then called on a fixed batch through a discriminator
whose output is set by hand, and its value compared with the paper's formula written out here. The expected
numbers are the papers', typed in from the papers, not read from train.py's RECIPES.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from genlab.core.config import parse_config
from genlab.core.data import Batch
from genlab.core.trainer import Trainer, UpdateRule
from genlab.gans import train

BATCH, SHAPE = 8, (1, 28, 28)  # the synthetic data set's images
PIXELS = math.prod(SHAPE)


def log_sigmoid(logit: float) -> float:
    return -math.log1p(math.exp(-logit))


def gan_discriminator_loss(real: float, fake: float) -> float:
    """Goodfellow et al. 2014, eq. 1 as a loss for D: -log D(x) - log(1 - D(G(z))), D = sigmoid(logit)."""
    return -log_sigmoid(real) - log_sigmoid(-fake)  # 1 - sigmoid(l) = sigmoid(-l)


def non_saturating_generator_loss(fake: float) -> float:
    """Goodfellow et al. 2014, Sec. 3: G maximises log D(G(z)), i.e. minimises -log D(G(z))."""
    return -log_sigmoid(fake)


def minimax_generator_loss(fake: float) -> float:
    """Goodfellow et al. 2014, eq. 1 for G: minimise log(1 - D(G(z)))."""
    return log_sigmoid(-fake)


def wasserstein_critic_loss(real: float, fake: float) -> float:
    """Arjovsky et al. 2017, Alg. 1: the critic ascends f(x) - f(G(z)), so it minimises f(G(z)) - f(x)."""
    return fake - real


def wasserstein_generator_loss(fake: float) -> float:
    """Arjovsky et al. 2017, Alg. 1 (also Gulrajani et al. 2017, Alg. 1 and Zhang et al. 2018, eq. 5): -f(G(z))."""
    return -fake


def hinge_discriminator_loss(real: float, fake: float) -> float:
    """Zhang et al. 2018, eq. 5: max(0, 1 - D(x)) + max(0, 1 + D(G(z)))."""
    return max(0.0, 1.0 - real) + max(0.0, 1.0 + fake)


@dataclass(frozen=True)
class PaperRecipe:
    optimizer: type[torch.optim.Optimizer]
    lr_generator: float
    lr_discriminator: float
    betas: tuple[float, float] | None  # Adam's; None for RMSProp
    n_critic: int  # discriminator steps per generator step
    discriminator_loss: str
    generator_loss: str


ADAM = torch.optim.Adam
PAPERS = {
    # Goodfellow et al. 2014, Alg. 1 uses k = 1 discriminator step ("the least expensive option") with SGD and
    # momentum; our gan takes DCGAN's Adam instead (a departure the README states), the same for cgan.
    "gan": PaperRecipe(ADAM, 2e-4, 2e-4, (0.5, 0.999), 1, "gan", "non_saturating"),
    # Radford et al. 2015, Sec. 4: Adam, learning rate 0.0002, beta1 0.5 (beta2 left at Adam's 0.999).
    "dcgan": PaperRecipe(ADAM, 2e-4, 2e-4, (0.5, 0.999), 1, "gan", "non_saturating"),
    "cgan": PaperRecipe(ADAM, 2e-4, 2e-4, (0.5, 0.999), 1, "gan", "non_saturating"),
    # Arjovsky et al. 2017, Alg. 1: RMSProp, alpha = 0.00005, c = 0.01, n_critic = 5.
    "wgan": PaperRecipe(torch.optim.RMSprop, 5e-5, 5e-5, None, 5, "wasserstein", "wasserstein"),
    # Gulrajani et al. 2017, Alg. 1: lambda = 10, n_critic = 5, Adam(alpha = 0.0001, beta1 = 0, beta2 = 0.9).
    "wgan_gp": PaperRecipe(ADAM, 1e-4, 1e-4, (0.0, 0.9), 5, "wasserstein_gp", "wasserstein"),
    # Zhang et al. 2018, Sec. 5: Adam(beta1 = 0, beta2 = 0.9), TTUR: 0.0004 for D, 0.0001 for G, one D step per G
    # step; eq. 5: the hinge loss for D, -D(G(z)) for G.
    "sagan": PaperRecipe(ADAM, 1e-4, 4e-4, (0.0, 0.9), 1, "hinge", "wasserstein"),
}
CLIP = 0.01  # Arjovsky et al. 2017, Alg. 1: c
GP_WEIGHT = 10.0  # Gulrajani et al. 2017, Alg. 1: lambda


@dataclass
class Wired:
    trainer: Trainer
    discriminator: UpdateRule
    generator: UpdateRule


def wire(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variant: str, *extra: str) -> Wired:
    """Run gan-train's ``train`` up to ``fit``, which records the trainer and returns at once."""
    recorded: list[Trainer] = []

    def record(self: Trainer, *args, **kwargs) -> dict[str, float]:
        recorded.append(self)
        return {}

    monkeypatch.setattr(Trainer, "fit", record)
    argv = ["--variant", variant, "--dataset", "synthetic", "--batch-size", str(BATCH), "--latent-dim", "8",
            "--width", "4", "--steps", "1", "--run-dir", str(tmp_path / "r"), "--device", "cpu", "--no-progress",
            *extra]  # fmt: skip
    train.train(parse_config(train.GANTrainConfig, argv))
    (trainer,) = recorded
    by_models = {tuple(rule.models): rule for rule in trainer.rules}
    assert len(trainer.rules) == 2 and set(by_models) == {("discriminator",), ("generator",)}
    return Wired(trainer, by_models[("discriminator",)], by_models[("generator",)])


def torch_optimizer(rule: UpdateRule) -> torch.optim.Optimizer:
    return getattr(rule.optimizer, "optimizer", rule.optimizer)  # through accelerate's wrapper


def minus_ones(z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """A stand-in generator: G(z) = -1 at every pixel, the far end of the data's [-1, 1] from the batch's +1."""
    return -torch.ones(len(z), *SHAPE)


def control(monkeypatch: pytest.MonkeyPatch, wired: Wired, slope: float, offset: float) -> None:
    """G(z) = -1 everywhere; D(x) = slope * mean(x) + offset per image. The batch is +1 everywhere, so D says
    slope + offset on the data and offset - slope on the fakes."""
    generator, discriminator = wired.trainer.models["generator"], wired.trainer.models["discriminator"]

    def judge(images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return slope * images.flatten(1).mean(1) + offset

    monkeypatch.setattr(generator, "forward", minus_ones)
    monkeypatch.setattr(discriminator, "forward", judge)


def data_batch() -> Batch:
    return Batch(torch.ones(BATCH, *SHAPE), torch.arange(BATCH) % 4)


VARIANTS = ["gan", "dcgan", "cgan", "wgan", "wgan_gp", "sagan"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_gan_train_wires_each_papers_optimisers_and_critic_steps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variant: str
) -> None:
    """Each network has its own optimiser over its own weights, with the paper's class, rate and betas; the
    discriminator's rule runs first, n_critic times per generator step (Alg. 1 of GAN, WGAN and WGAN-GP)."""
    paper = PAPERS[variant]
    wired = wire(monkeypatch, tmp_path, variant)
    assert wired.trainer.rules.index(wired.discriminator) < wired.trainer.rules.index(wired.generator)
    assert (wired.discriminator.repeats, wired.generator.repeats) == (paper.n_critic, 1)
    assert wired.discriminator.every == wired.generator.every == 1
    for rule, name, lr in ((wired.discriminator, "discriminator", paper.lr_discriminator),
                           (wired.generator, "generator", paper.lr_generator)):  # fmt: skip
        optimizer = torch_optimizer(rule)
        assert type(optimizer) is paper.optimizer, (name, type(optimizer))
        weights = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert weights == {id(p) for p in wired.trainer.models[name].parameters()}, name
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(lr, rel=1e-9), name
            assert group["weight_decay"] == 0
            if paper.betas is not None:
                assert tuple(group["betas"]) == pytest.approx(paper.betas), name
            else:  # WGAN, Sec. 3: no momentum ("momentum based methods such as Adam" made training unstable)
                assert group["momentum"] == 0 and not group["centered"], name


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_wgan_clips_every_critic_weight_to_c_after_each_critic_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variant: str
) -> None:
    """Arjovsky et al. 2017, Alg. 1: after each critic update, w <- clip(w, -c, c) with c = 0.01. The loop calls a
    rule's after_step after each of its ``repeats`` optimiser steps; no other variant clips."""
    wired = wire(monkeypatch, tmp_path, variant)
    discriminator = wired.trainer.models["discriminator"]
    with torch.no_grad():
        for parameter in discriminator.parameters():
            parameter.copy_(torch.linspace(-1.0, 1.0, parameter.numel()).view_as(parameter))
    before = [p.detach().clone() for p in discriminator.parameters()]
    if variant == "wgan":
        assert wired.discriminator.after_step is not None
        wired.discriminator.after_step()
        for parameter, old in zip(discriminator.parameters(), before, strict=True):
            torch.testing.assert_close(parameter.detach(), old.clamp(-CLIP, CLIP), rtol=0, atol=0)
    for rule in (wired.generator,) if variant == "wgan" else (wired.discriminator, wired.generator):
        if rule.after_step is not None:
            rule.after_step()
            changed = [not torch.equal(p, old.clamp(-CLIP, CLIP) if variant == "wgan" else old)
                       for p, old in zip(discriminator.parameters(), before, strict=True)]  # fmt: skip
            assert not any(changed), f"{variant}'s {rule.name} after_step changed the discriminator's weights"


def expected_discriminator_loss(kind: str, real: float, fake: float, slope: float) -> float:
    if kind == "gan":
        return gan_discriminator_loss(real, fake)
    if kind == "hinge":
        return hinge_discriminator_loss(real, fake)
    loss = wasserstein_critic_loss(real, fake)
    if kind == "wasserstein_gp":
        # Gulrajani et al. 2017, Alg. 1: + lambda (||grad D(x_hat)||_2 - 1)^2; D linear, its gradient is
        # slope / PIXELS at every pixel of every x_hat, a norm of |slope| / sqrt(PIXELS).
        loss += GP_WEIGHT * (abs(slope) / math.sqrt(PIXELS) - 1.0) ** 2
    return loss


@pytest.mark.parametrize(
    ("variant", "extra", "generator_kind"),
    [*[pytest.param(v, (), PAPERS[v].generator_loss, id=v) for v in VARIANTS],
     pytest.param("gan", ("--generator-loss", "minimax"), "minimax", id="gan-minimax")],
)  # fmt: skip
def test_gan_train_losses_reward_real_over_fake_with_each_papers_objective(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variant: str, extra: tuple[str, ...], generator_kind: str
) -> None:
    """The discriminator's loss, called as the loop calls it, is the paper's: with D confident on the data (4) and
    against the fakes (-2) it is the formula's value at (4, -2), and lower than with the roles swapped (D saying
    -2 on the data, 4 on the fakes). The generator's loss at D(G(z)) = -2 is the paper's default: the
    non-saturating -log D(G(z)) for gan / dcgan / cgan (minimax log(1 - D(G(z))) on request), -D(G(z)) for the
    Wasserstein critics and SAGAN's hinge."""
    paper = PAPERS[variant]
    wired = wire(monkeypatch, tmp_path, variant, *extra)
    values = {}
    for name, slope, offset in (("right", 3.0, 1.0), ("swapped", -3.0, 1.0)):  # D(data), D(fakes): (4, -2), (-2, 4)
        control(monkeypatch, wired, slope, offset)
        torch.manual_seed(0)
        real, fake = slope + offset, offset - slope
        loss, _ = wired.discriminator.loss(data_batch())
        expected = expected_discriminator_loss(paper.discriminator_loss, real, fake, slope)
        assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5), (name, loss.item(), expected)
        values[name] = loss.item()
    assert values["right"] < values["swapped"]
    control(monkeypatch, wired, 3.0, 1.0)
    loss, _ = wired.generator.loss(data_batch())
    expected = {"non_saturating": non_saturating_generator_loss, "minimax": minimax_generator_loss,
                "wasserstein": wasserstein_generator_loss}[generator_kind](-2.0)  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5), (loss.item(), expected)


def test_wgan_gp_penalty_in_gan_train_is_taken_between_the_data_and_the_fakes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Gulrajani et al. 2017, Alg. 1: x_hat = eps x + (1 - eps) x~ with x the data batch, x~ = G(z) and
    eps ~ U[0, 1]. The critic D(x) = 28 (2 m + m^2), m the image's mean pixel, has a gradient norm 2 + 2m: 4 at
    the data (m = 1, penalty 9), 0 at the fakes (m = -1, penalty 1), and 4 eps at x_hat (m = 2 eps - 1), whose
    penalty (4 eps - 1)^2 has mean 16/3 - 4 + 1 = 7/3 over eps ~ U[0, 1]. A batch of 2048 pins the mean to +-0.2."""
    wired = wire(monkeypatch, tmp_path, "wgan_gp")
    scale = math.sqrt(PIXELS)  # 28: the norm of the gradient of m(x) is 1 / 28
    monkeypatch.setattr(wired.trainer.models["generator"], "forward", minus_ones)

    def critic(images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        mean = images.flatten(1).mean(1)
        return scale * (2 * mean + mean.square())

    monkeypatch.setattr(wired.trainer.models["discriminator"], "forward", critic)
    torch.manual_seed(0)
    loss, _ = wired.discriminator.loss(Batch(torch.ones(2048, *SHAPE), None))
    wasserstein = wasserstein_critic_loss(scale * 3.0, scale * -1.0)  # D(data) = 3 * 28, D(fakes) = -28
    penalty = (loss.item() - wasserstein) / GP_WEIGHT
    assert penalty == pytest.approx(7 / 3, abs=0.2)
