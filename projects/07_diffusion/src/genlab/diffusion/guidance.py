"""Guidance: steering a diffusion model's samples toward a class.

Classifier-free guidance (Ho & Salimans 2022, eq. 6): one network trained with its labels dropped 10% of the
time (objective.drop_labels) predicts eps_hat(x_t, y) and eps_hat(x_t, null); sampling uses

    eps_guided = eps_hat(x_t, null) + s (eps_hat(x_t, y) - eps_hat(x_t, null))

with guidance scale s (diffusers' guidance_scale; the paper's w is s - 1): s = 0 is the unconditional model, s = 1
the conditional one, s > 1 trades diversity for fidelity. eps, x0 and v are affine in one another at fixed (x_t,
t), so the same combination of raw outputs of any prediction type gives the same guided sampler.

Classifier guidance (Dhariwal & Nichol 2021, Alg. 2): a classifier p_phi(y | x_t, t) trained on noisy images adds
its gradient to the score, s_guided = s + scale grad log p_phi(y | x_t), i.e. in eps-space

    eps_guided = eps_hat(x_t) - sqrt(1 - alpha_bar_t) scale grad_{x_t} log p_phi(y | x_t, t)

used here for every sampler (for ancestral DDPM, Alg. 1's shift of the mean by scale Sigma grad equals this to
first order in beta_t).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from genlab.diffusion.prediction import DenoiserOutput, Network
from genlab.diffusion.schedules import NoiseSchedule, expand_like

Tensor = torch.Tensor


class ClassifierFreeGuidance:
    """A class-conditional network seen as a guided one, with the signature of the network itself: call it with
    labels (B,); conditional and unconditional passes run as one batch of 2B. With 2C output channels (learned
    variance) only the first C are guided; the variance is the conditional pass's."""

    def __init__(self, network: Network, scale: float, null_label: int) -> None:
        self.network, self.scale, self.null_label = network, scale, null_label

    def __call__(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        if labels is None:
            raise ValueError("classifier-free guidance needs labels")
        if self.scale == 1.0:
            return self.network(x_t, t, labels)
        null = torch.full_like(labels, self.null_label)
        if self.scale == 0.0:
            return self.network(x_t, t, null)
        output = self.network(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
        conditional, unconditional = output.chunk(2)
        C = x_t.shape[1]
        guided = unconditional[:, :C] + self.scale * (conditional[:, :C] - unconditional[:, :C])  # eq. 6
        return torch.cat([guided, conditional[:, C:]], dim=1)


def classifier_log_prob_gradient(classifier: Callable[[Tensor, Tensor], Tensor], x_t: Tensor, t: Tensor,
                                 labels: Tensor) -> Tensor:  # fmt: skip
    """grad_{x_t} log p_phi(y | x_t, t) for each example's label y."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        log_probs = F.log_softmax(classifier(x, t), dim=-1)
        selected = log_probs[torch.arange(len(x)), labels].sum()  # examples are independent: sum, then grad
        (gradient,) = torch.autograd.grad(selected, x)
    return gradient


class ClassifierGuidance:
    """A denoiser (prediction.Denoiser or any (x_t, t, condition) -> DenoiserOutput) guided by a noisy classifier.

    ``condition`` at call time is the labels y to steer toward; ``network_condition`` says what the wrapped
    denoiser gets: "none" (an unconditional model, the paper's main setting) or "labels" (a conditional model, as
    in the paper's Table 4 where both are combined)."""

    def __init__(self, denoise: Callable[[Tensor, Tensor, Any], DenoiserOutput], classifier: Callable,
                 schedule: NoiseSchedule, scale: float, network_condition: str = "none") -> None:  # fmt: skip
        if network_condition not in ("none", "labels"):
            raise ValueError(f"network_condition must be 'none' or 'labels', got {network_condition!r}")
        self.denoise, self.classifier, self.schedule = denoise, classifier, schedule
        self.scale, self.network_condition = scale, network_condition

    def __call__(self, x_t: Tensor, t: Tensor, labels: Tensor) -> DenoiserOutput:
        if labels is None:
            raise ValueError("classifier guidance needs labels")
        out = self.denoise(x_t, t, labels if self.network_condition == "labels" else None)
        if self.scale == 0:
            return out
        alpha, sigma = (v.to(x_t.device) for v in self.schedule.alpha_sigma(t.cpu()))
        gradient = classifier_log_prob_gradient(self.classifier, x_t, t, labels)
        eps = out.eps - expand_like(sigma, x_t) * self.scale * gradient  # Alg. 2, line 3
        x0 = (x_t - expand_like(sigma, x_t) * eps) / expand_like(alpha, x_t)
        return DenoiserOutput(x0, eps, out.variance_interpolation)
