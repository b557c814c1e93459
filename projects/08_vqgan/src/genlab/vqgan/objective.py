"""VQGAN's training objective (Esser et al. 2021, eqs. 4-7).

The autoencoder and codebook minimise

    L_VQ = L_rec + ||sg[E(x)] - z_q||^2 + beta ||sg[z_q] - E(x)||^2                                       (eq. 4)

with L_rec the perceptual reconstruction loss, here |x - x_hat| + w_p d_perceptual(x, x_hat) (the paper replaces
the L2 term by a perceptual one; its code adds L1 and LPIPS). The commitment term carries beta, as the paper writes
it and as 05's quantiser does. The paper's reference code puts beta on the other side (its "legacy" quantiser):
the codebook term weighted by 0.25 and the commitment term by 1, the reverse of the paper's balance.

Against a patch discriminator D, with the hinge loss (the paper's code):

    L_GAN = -E[D(x_hat)]  for the generator;   E[max(0, 1 - D(x))] + E[max(0, 1 + D(x_hat))]  for D  (04's)

and the total for the autoencoder is L_VQ + lambda L_GAN (eq. 6) with the adaptive weight

    lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + delta),   delta = 1e-6                       (eq. 7)

taken on the decoder's last layer G_L, detached, clamped to at most 1e4 (the code's guard), and times a factor
that is 0 until the discriminator's start step: before it, neither network sees the adversarial loss.
"""

from __future__ import annotations

from typing import Any

import torch

from genlab.gans.objective import critic_loss_hinge, generator_loss_wasserstein
from genlab.vqgan.model import VQGAN, VQGANOutput

MAX_ADAPTIVE_WEIGHT = 1e4


def adaptive_weight(reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor,
                    delta: float = 1e-6) -> torch.Tensor:  # fmt: skip
    """lambda of eq. 7: the ratio of the two losses' gradient norms at ``last_layer``, a constant (the gradients are
    taken without create_graph, so no gradient flows through lambda)."""
    grad_rec = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    grad_gan = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    return (grad_rec.norm() / (grad_gan.norm() + delta)).clamp(max=MAX_ADAPTIVE_WEIGHT)


def autoencoder_loss(
    model: VQGAN, x: torch.Tensor, discriminator: Any, perceptual: Any, step: int, discriminator_start: int,
    perceptual_weight: float = 1.0, adversarial_weight: float = 1.0, commitment_cost: float = 0.25,
    last_layer: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], VQGANOutput]:  # fmt: skip
    """x (B, C, H, W) in [-1, 1] -> (the autoencoder's loss, logged terms, the model's output). ``discriminator``
    and ``perceptual`` may be None (reconstruction only; + perceptual; + adversarial: the ablation's rows).
    ``last_layer``: G_L of eq. 7 (default ``model.last_layer``; pass the unwrapped model's when ``model`` is a
    DistributedDataParallel wrapper, which does not forward attributes)."""
    out = model(x)
    q = out.quantizer
    l1 = (x - out.reconstruction).abs().mean()
    reconstruction = l1
    terms: dict[str, torch.Tensor] = {"l1": l1.detach()}
    if perceptual is not None and perceptual_weight > 0:
        distance = perceptual(x, out.reconstruction).mean()
        reconstruction = reconstruction + perceptual_weight * distance
        terms["perceptual"] = distance.detach()
    loss = reconstruction + commitment_cost * q.commitment_loss
    if not q.codebook_by_ema:
        loss = loss + q.codebook_loss
    if discriminator is not None and step >= discriminator_start:
        generator_loss = generator_loss_wasserstein(discriminator(out.reconstruction))
        G_L = model.last_layer if last_layer is None else last_layer
        weight = adaptive_weight(reconstruction, generator_loss, G_L) if model.training \
            else torch.tensor(0.0)  # fmt: skip
        loss = loss + adversarial_weight * weight * generator_loss
        terms.update({"generator_loss": generator_loss.detach(), "adaptive_weight": weight})
    mse = (x - out.reconstruction).square().mean().detach()
    terms.update({"codebook_loss": q.codebook_loss.detach(), "commitment_loss": q.commitment_loss.detach(),
                  "perplexity": q.perplexity, "usage": q.usage, "mse": mse})  # fmt: skip
    return loss, terms, out


def discriminator_loss(discriminator: Any, real: torch.Tensor, fake: torch.Tensor, step: int,
                       discriminator_start: int) -> torch.Tensor:  # fmt: skip
    """The hinge loss of 04 on real images and detached reconstructions. Before the start step a zero that reaches
    no parameter: the discriminator is not run, its weights get no gradient, and Adam leaves them as they are."""
    if step < discriminator_start:
        return torch.zeros((), device=real.device, requires_grad=True)
    return critic_loss_hinge(discriminator(real), discriminator(fake.detach()))
