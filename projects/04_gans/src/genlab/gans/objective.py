"""The GAN objectives, each a pair (discriminator or critic loss, generator loss) on the discriminator's raw
outputs: logits for GAN / DCGAN / cGAN, critic values for WGAN, WGAN-GP and the hinge loss of SAGAN.

With D(x) = sigmoid(l(x)): log D = -softplus(-l) and log(1 - D) = -softplus(l), which is how every log below
is computed (stable for any logit).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def discriminator_loss_gan(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Goodfellow et al. 2014, eq. 1, as a loss: -E_x[log D(x)] - E_z[log(1 - D(G(z)))]."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    """The minimax generator loss of eq. 1: E_z[log(1 - D(G(z)))]; its gradient vanishes where D rejects G(z)."""
    return -F.softplus(fake_logits).mean()


def generator_loss_non_saturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """The paper's practical alternative (Sec. 3): maximise log D(G(z)), i.e. minimise -E_z[log D(G(z))]."""
    return F.softplus(-fake_logits).mean()


def critic_loss_wasserstein(real_values: torch.Tensor, fake_values: torch.Tensor) -> torch.Tensor:
    """WGAN (Arjovsky et al. 2017, Alg. 1): the critic maximises E_x[f(x)] - E_z[f(G(z))]."""
    return fake_values.mean() - real_values.mean()


def generator_loss_wasserstein(fake_values: torch.Tensor) -> torch.Tensor:
    """WGAN's generator minimises -E_z[f(G(z))] (also SAGAN's hinge generator loss)."""
    return -fake_values.mean()


def critic_loss_hinge(real_values: torch.Tensor, fake_values: torch.Tensor) -> torch.Tensor:
    """SAGAN (Zhang et al. 2018, eq. 5): E_x[max(0, 1 - D(x))] + E_z[max(0, 1 + D(G(z)))]."""
    return F.relu(1.0 - real_values).mean() + F.relu(1.0 + fake_values).mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    epsilon: torch.Tensor | None = None,
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017, Alg. 1): E[(||grad_x f(x_hat)||_2 - 1)^2] at x_hat = eps x + (1 - eps) x~.

    eps ~ U[0, 1] per example (or as given, shape (B,)). The weight lambda is the caller's. The graph is kept
    (create_graph) so the penalty's own gradient reaches the critic's weights.
    """
    if epsilon is None:
        epsilon = torch.rand(len(real), device=real.device, dtype=real.dtype)
    epsilon = epsilon.view(-1, *([1] * (real.dim() - 1)))  # (B,) -> (B, 1, 1, 1)
    interpolates = (epsilon * real + (1 - epsilon) * fake.detach()).requires_grad_(True)
    values = critic(interpolates)
    (gradients,) = torch.autograd.grad(values.sum(), interpolates, create_graph=True)
    norms = gradients.flatten(1).norm(dim=1)  # (B,)
    return (norms - 1.0).square().mean()
