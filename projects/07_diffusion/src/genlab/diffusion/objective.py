"""Training objectives of a discrete-time diffusion, and its ELBO in bits/dim.

DDPM's simple loss (Ho et al. 2020, eq. 14): t ~ U{0 .. T-1}, eps ~ N(0, I), x_t = alpha_t x_0 + sigma_t eps,

    L_simple = E || target - network(x_t, t) ||^2          (mean over pixels; target eps, x0 or v, prediction.py)

The weighted family (Kingma & Gao 2023, eq. 8, after Kingma et al. 2021): every usual objective is, in eps-space,

    L_w(x) = 1/2 E_t [ w(lambda_t) (-d lambda / dt) || eps - eps_hat(x_t, t) ||^2 ]

a weighting w of the log-SNR lambda. In discrete time -d lambda/dt dt becomes SNR(t-1)/SNR(t) - 1 (the KL term
between the true and the model's Gaussian posteriors with variance beta_tilde, eq. 5 and Kingma et al. 2021, eq. 13),
so that with w = 1 ("elbo") the expectation over t = 1 .. T-1 is exactly the VLB's diffusion terms
sum_t L_{t-1}. "sigmoid" is Kingma & Gao's w(lambda) = sigmoid(b - lambda), weighting the noisy end. L_simple is
the member w(lambda_t) = 1 / (SNR(t-1)/SNR(t) - 1): it gives every step the same weight.

The learned-variance hybrid loss (Nichol & Dhariwal 2021, Sec. 3.1): the network also outputs v, the variance is
Sigma = exp(v log beta_t + (1 - v) log beta_tilde_t) (eq. 15), and

    L_hybrid = L_simple + lambda L_vlb,  lambda = 0.001,

where L_vlb trains only the variance (the mean is held fixed by a stop-gradient). As in their code, L_vlb at the
sampled t is one term L_t in bits per dimension times T (an unbiased estimate of the sum over t), so lambda T = 1
at T = 1000.

The ELBO (DDPM eq. 5), per image in nats: L_T + sum_{t=1}^{T-1} L_t + L_0 with
    L_T = KL(q(x_T | x_0) || N(0, I)),  L_t = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),
    L_0 = -log p(x_0 | x_1), the discretised Gaussian decoder over 256 bins of width 2/255 in [-1, 1] (eq. 13).
Divided by D log 2 it is a bound in bits/dim on 8-bit data (DDPM: <= 3.70 on CIFAR-10, Table 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch

from genlab.diffusion.prediction import Denoiser, Network, from_x0_and_eps, to_x0_and_eps
from genlab.diffusion.schedules import NoiseSchedule, expand_like

Tensor = torch.Tensor
Weighting = Literal["simple", "elbo", "sigmoid"]
WEIGHTINGS: tuple[str, ...] = ("simple", "elbo", "sigmoid")


def drop_labels(labels: Tensor, probability: float, null_label: int) -> Tensor:
    """Classifier-free guidance's training (Ho & Salimans 2022, Alg. 1): each label becomes the null label with
    probability p_uncond, so one network learns both the conditional and the unconditional model."""
    if probability <= 0:
        return labels
    drop = torch.rand(labels.shape, device=labels.device) < probability
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def snr_ratio_minus_one(schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """SNR(t-1) / SNR(t) - 1 = beta_t / (alpha_t (1 - alpha_bar_{t-1})) for t >= 1: the discrete -d lambda."""
    t = t.long().cpu()
    beta, alpha_bar_prev = schedule.betas[t], schedule.alphas_cumprod_prev[t]
    return (beta / ((1 - beta) * (1 - alpha_bar_prev))).float()


def loss_weight(schedule: NoiseSchedule, t: Tensor, weighting: str, sigmoid_bias: float = 2.0) -> Tensor:
    """Per-example weight of || eps - eps_hat ||^2 (summed over pixels) at timesteps t >= 1, for t uniform on
    1 .. T-1: (T - 1) * 1/2 w(lambda_t) (SNR(t-1)/SNR(t) - 1), so that its mean over t is the weighted sum."""
    elbo = 0.5 * (schedule.num_timesteps - 1) * snr_ratio_minus_one(schedule, t)
    if weighting == "elbo":
        return elbo
    if weighting == "sigmoid":
        return torch.sigmoid(sigmoid_bias - schedule.log_snr(t.cpu())) * elbo
    raise ValueError(f"weighting {weighting!r} has no eps-space weight; known: elbo, sigmoid")


def normal_kl(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> Tensor:
    """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)), elementwise, in nats."""
    return 0.5 * (log_var2 - log_var1 + (log_var1 - log_var2).exp() + (mean1 - mean2) ** 2 / log_var2.exp() - 1)


def _standard_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def discretised_gaussian_log_likelihood(x0: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log p(x_0 | x_1) per pixel (DDPM eq. 13): the Gaussian's mass over the bin of x_0 (8-bit values in [-1, 1],
    bins of width 2/255), the outermost bins reaching to -inf and +inf."""
    centred = x0 - mean
    inv_scale = torch.exp(-log_scale)
    cdf_plus = _standard_normal_cdf(inv_scale * (centred + 1 / 255))
    cdf_minus = _standard_normal_cdf(inv_scale * (centred - 1 / 255))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_minus = (1 - cdf_minus).clamp(min=1e-12).log()
    log_mass = (cdf_plus - cdf_minus).clamp(min=1e-12).log()
    return torch.where(x0 < -0.999, log_cdf_plus, torch.where(x0 > 0.999, log_one_minus_cdf_minus, log_mass))


def model_log_variance(schedule: NoiseSchedule, t: Tensor, variance: str, interpolation: Tensor | None,
                       like: Tensor) -> Tensor:  # fmt: skip
    """log Sigma_theta(x_t, t) of p(x_{t-1} | x_t): log beta_tilde_t, log beta_t, or eq. 15's interpolation. At
    t = 0, where beta_tilde is 0, beta_tilde_1 stands in (Improved DDPM's "clipped" log variance)."""
    index = t.long().cpu()
    beta_tilde = (1 - schedule.alphas_cumprod_prev) / (1 - schedule.alphas_cumprod) * schedule.betas
    beta_tilde = torch.cat([beta_tilde[1:2], beta_tilde[1:]])
    log_beta_tilde = expand_like(beta_tilde[index].log().float(), like).to(like.device)
    log_beta = expand_like(schedule.betas[index].log().float(), like).to(like.device)
    if variance == "beta_tilde":
        return log_beta_tilde.expand_as(like)
    if variance == "beta":
        return log_beta.expand_as(like)
    if variance == "learned":
        if interpolation is None:
            raise ValueError("variance='learned' needs a network with learned variance")
        return interpolation * log_beta + (1 - interpolation) * log_beta_tilde
    raise ValueError(f"unknown variance {variance!r}; known: beta_tilde, beta, learned")


def vlb_term(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor, x0_hat: Tensor, log_variance: Tensor
             ) -> Tensor:  # fmt: skip
    """L_t per image in nats: KL(q(x_{t-1} | x_t, x_0) || N(mu_theta, Sigma_theta)) for t >= 1, and the decoder's
    -log p(x_0 | x_1) at t = 0, where mu_theta = mu_tilde(x_t, x0_hat) (eq. 7)."""
    coef_x0, coef_xt, beta_tilde = (expand_like(v, x0).to(x0.device) for v in schedule.posterior(t))
    model_mean = coef_x0 * x0_hat + coef_xt * x_t
    true_mean = coef_x0 * x0 + coef_xt * x_t
    kl = normal_kl(true_mean, beta_tilde.clamp(min=1e-20).log().expand_as(x0), model_mean, log_variance)
    decoder_nll = -discretised_gaussian_log_likelihood(x0, model_mean, 0.5 * log_variance)
    per_pixel = torch.where(expand_like(t.to(x0.device) == 0, x0).bool(), decoder_nll, kl)
    return per_pixel.flatten(1).sum(1)


def prior_kl(schedule: NoiseSchedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per image in nats (no parameters; near 0 for a good schedule)."""
    alpha, sigma = schedule.alpha_sigma(torch.full((len(x0),), schedule.num_timesteps - 1))
    mean = expand_like(alpha, x0).to(x0.device) * x0
    log_var = expand_like((sigma**2).log(), x0).to(x0.device).expand_as(x0)
    return normal_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0)).flatten(1).sum(1)


def diffusion_loss(
    network: Network, schedule: NoiseSchedule, x0: Tensor, condition: Any = None, prediction: str = "eps",
    weighting: str = "simple", learned_variance: bool = False, vlb_weight: float = 0.001, sigmoid_bias: float = 2.0,
    t: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """One Monte Carlo estimate of the objective on a batch x0 (B, C, H, W) in [-1, 1]; returns (loss, logged).

    ``t`` fixes the timesteps (B,) instead of drawing them (tests enumerate them); the weighted losses draw t from
    1 .. T-1, L_simple and the hybrid from 0 .. T-1."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; known: {', '.join(WEIGHTINGS)}")
    T = schedule.num_timesteps
    if t is None:
        low = 0 if weighting == "simple" else 1
        t = torch.randint(low, T, (len(x0),), device=x0.device)
    eps = torch.randn_like(x0)
    x_t = schedule.q_sample(x0, t, eps)  # eq. 4
    output = network(x_t, t.float(), condition)
    raw_variance = None
    if learned_variance:
        output, raw_variance = output.chunk(2, dim=1)
    alpha, sigma = (v.to(x0.device) for v in schedule.alpha_sigma(t.cpu()))
    logged: dict[str, Tensor] = {}
    if weighting == "simple":
        target = from_x0_and_eps(x0, eps, prediction, alpha, sigma)
        loss = (output - target).pow(2).mean()  # eq. 14
        logged["mse"] = loss.detach()
    else:
        _, eps_hat = to_x0_and_eps(output, prediction, x_t, alpha, sigma)
        weight = loss_weight(schedule, t, weighting, sigmoid_bias).to(x0.device)
        per_image = (eps - eps_hat).pow(2).flatten(1).sum(1)  # || eps - eps_hat ||^2
        loss = (weight * per_image).mean() / x0[0].numel()  # nats per dimension
        logged["weighted_nats_per_dim"] = loss.detach()
    if learned_variance:
        # The VLB term trains the variance alone: the mean comes from a detached copy of the prediction.
        x0_hat, _ = to_x0_and_eps(output.detach(), prediction, x_t, alpha, sigma)
        log_variance = model_log_variance(schedule, t, "learned", (raw_variance + 1) / 2, x0)
        vlb_bits_per_dim = vlb_term(schedule, x0, x_t, t, x0_hat, log_variance) / (x0[0].numel() * math.log(2))
        vlb = vlb_weight * T * vlb_bits_per_dim.mean()
        loss = loss + vlb
        logged["vlb_bits_per_dim"] = vlb_bits_per_dim.mean().detach()
    return loss, logged


@torch.no_grad()
def elbo_bits_per_dim(
    denoiser: Denoiser, x0: Tensor, condition: Any = None, variance: str = "beta_tilde",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Tensor]:  # fmt: skip
    """The ELBO of each image of x0 (B, C, H, W), 8-bit values in [-1, 1], through all T terms (T network
    evaluations): {"bits_per_dim": (B,), "prior": (B,), "diffusion": (B,), "decoder": (B,)} (the parts in bits/dim)."""
    schedule = denoiser.schedule
    T, D = schedule.num_timesteps, x0[0].numel()
    diffusion = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
    decoder = torch.zeros_like(diffusion)
    for step in range(T):
        t = torch.full((len(x0),), step, device=x0.device)
        x_t = schedule.q_sample(x0, t, torch.randn_like(x0))
        out = denoiser(x_t, t.float(), condition)
        log_variance = model_log_variance(schedule, t, variance, out.variance_interpolation, x0)
        term = vlb_term(schedule, x0, x_t, t, out.x0, log_variance).double()
        if step == 0:
            decoder += term
        else:
            diffusion += term
        if progress is not None:
            progress(step)
    prior = prior_kl(schedule, x0).double()
    scale = 1 / (D * math.log(2))
    return {"bits_per_dim": (prior + diffusion + decoder) * scale, "prior": prior * scale,
            "diffusion": diffusion * scale, "decoder": decoder * scale}  # fmt: skip
