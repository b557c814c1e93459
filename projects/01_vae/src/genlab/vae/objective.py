"""The VAE's objectives: the ELBO (Kingma & Welling 2013), beta-VAE (Higgins et al. 2017) and the
importance-weighted bound (IWAE, Burda et al. 2016), with the likelihoods p(x | z) they need.

    ELBO   L(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z))                       (paper, eq. 3 / 10)
    beta   L_beta(x) = E_q[log p(x|z)] - beta KL(q(z|x) || p(z))
    IWAE   L_K(x) = E_{z_1..K ~ q}[log (1/K) sum_k p(x, z_k) / q(z_k|x)]   (L_1 = ELBO, L_K rises to log p(x))

Every function returns per-example values in nats, shape (B,); losses are batch means of their negatives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genlab.vae.model import VAE, Likelihood

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) = -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)  (paper, App. B).

    (B, D) -> (B,)
    """
    return -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=-1)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(log_var)), summed over the last dimension: (..., D) -> (...)."""
    return -0.5 * torch.sum(LOG_2PI + log_var + (z - mu).pow(2) / log_var.exp(), dim=-1)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z) = sum_i x_i log y_i + (1 - x_i) log(1 - y_i), y = sigmoid(logits)  (paper, App. C.1).

    logits and x broadcast together, (..., C, H, W) -> (...)
    """
    logits, x = torch.broadcast_tensors(logits, x)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(-3).sum(-1)


def discretized_logistic_log_prob(mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log P(x) for 8-bit x under a logistic discretised into 256 bins on [-1, 1] (Salimans et al. 2017).

    P(x) = sigmoid((c + 1/255 - mean) / s) - sigmoid((c - 1/255 - mean) / s), c = x / 127.5 - 1, with the
    first and last bins open to -inf and +inf, so the 256 probabilities sum to exactly 1.
    mean, log_scale (..., C, H, W); x int (B, C, H, W) in 0..255 -> (...)
    """
    mean, log_scale, x = torch.broadcast_tensors(mean, log_scale, x)
    log_scale = log_scale.clamp(min=-7.0)
    centred = x.float() / 127.5 - 1.0 - mean
    inv_scale = torch.exp(-log_scale)
    upper = inv_scale * (centred + 1.0 / 255.0)
    lower = inv_scale * (centred - 1.0 / 255.0)
    log_cdf_upper = upper - F.softplus(upper)  # log sigmoid(upper): the whole bin for x = 0
    log_survival_lower = -F.softplus(lower)  # log (1 - sigmoid(lower)): the whole bin for x = 255
    bin_mass = torch.sigmoid(upper) - torch.sigmoid(lower)
    # Where the bin's mass underflows, use density x width at the centre: log pdf + log(2 / 255).
    middle = inv_scale * centred
    log_density_middle = middle - log_scale - 2.0 * F.softplus(middle)
    log_bin = torch.where(
        bin_mass > 1e-5, torch.log(bin_mass.clamp(min=1e-12)), log_density_middle + math.log(2.0 / 255.0)
    )
    log_prob = torch.where(x == 0, log_cdf_upper, torch.where(x == 255, log_survival_lower, log_bin))
    return log_prob.flatten(-3).sum(-1)


def dequantized_gaussian_log_density(
    mean: torch.Tensor, log_std: torch.Tensor, x: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """log p(y | z) of a Gaussian with a learned std per pixel at the dequantised y = (x + u) / 256 in [0, 1).

    A density, not a probability: the discrete bound is log P(x) >= log p(y) - D log 256 (genlab.core.metrics).
    mean, log_std (..., C, H, W); x int (B, C, H, W); noise u ~ U[0, 1) like x -> (...)
    """
    mean, log_std, y = torch.broadcast_tensors(mean, log_std, (x.float() + noise) / 256.0)
    log_std = log_std.clamp(min=-7.0)
    return (-0.5 * LOG_2PI - log_std - 0.5 * ((y - mean) * torch.exp(-log_std)).pow(2)).flatten(-3).sum(-1)


def log_likelihood(
    likelihood: Likelihood, params: torch.Tensor, x: torch.Tensor, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(x | z) for decoder parameters (..., P, C, H, W) -> (...)."""
    if likelihood == "bernoulli":
        return bernoulli_log_prob(params[..., 0, :, :, :], x)
    if likelihood == "logistic":
        return discretized_logistic_log_prob(params[..., 0, :, :, :], params[..., 1, :, :, :], x)
    if noise is None:
        raise ValueError("the Gaussian likelihood on 8-bit data needs dequantisation noise")
    return dequantized_gaussian_log_density(params[..., 0, :, :, :], params[..., 1, :, :, :], x, noise)


def likelihood_mean(likelihood: Likelihood, params: torch.Tensor) -> torch.Tensor:
    """The mean of p(x | z) as an image in [0, 1], for pictures: (..., P, C, H, W) -> (..., C, H, W)."""
    if likelihood == "bernoulli":
        return torch.sigmoid(params[..., 0, :, :, :])
    if likelihood == "logistic":
        return ((params[..., 0, :, :, :] + 1.0) / 2.0).clamp(0, 1)
    return params[..., 0, :, :, :].clamp(0, 1)


def _dequantization_noise(likelihood: Likelihood, x: torch.Tensor) -> torch.Tensor | None:
    return torch.rand(x.shape, device=x.device) if likelihood == "gaussian" else None


# The functions below call the model (its forward), never its methods, so a DDP-wrapped VAE works as it is.


def elbo(model: VAE, x: torch.Tensor, likelihood: Likelihood, beta: float = 1.0) -> dict[str, torch.Tensor]:
    """One-sample ELBO estimate with the KL in closed form (the paper's estimator B, eq. 10), per example.

    Returns {"elbo", "reconstruction" = log p(x|z), "kl"}, each (B,); "elbo" uses the given beta.
    """
    params, _, mu, log_var = model(x)  # z = mu + sigma * eps inside: the reparameterisation trick
    reconstruction = log_likelihood(likelihood, params, x, _dequantization_noise(likelihood, x))
    kl = gaussian_kl(mu, log_var)
    return {"elbo": reconstruction - beta * kl, "reconstruction": reconstruction, "kl": kl}


def log_importance_weights(model: VAE, x: torch.Tensor, likelihood: Likelihood, num_samples: int) -> torch.Tensor:
    """log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x), z_k ~ q(z | x): (K, B)."""
    params, z, mu, log_var = model(x, num_samples)  # params (K, B, P, C, H, W), z (K, B, D)
    log_px_given_z = log_likelihood(likelihood, params, x, _dequantization_noise(likelihood, x))  # (K, B)
    log_pz = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
    log_qz = gaussian_log_density(z, mu, log_var)
    return log_px_given_z + log_pz - log_qz


def iwae_bound(model: VAE, x: torch.Tensor, likelihood: Likelihood, num_samples: int) -> torch.Tensor:
    """L_K = log (1/K) sum_k w_k for one draw of K samples (Burda et al. 2016, eq. 8): (B,)."""
    log_w = log_importance_weights(model, x, likelihood, num_samples)
    return torch.logsumexp(log_w, dim=0) - math.log(num_samples)


def vae_loss(
    model: VAE, x: torch.Tensor, likelihood: Likelihood, beta: float = 1.0, iwae_samples: int = 1
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss, minus the batch mean of the ELBO (beta-weighted) or of the IWAE bound.

    Returns (loss, logged terms), the terms being batch means in nats.
    """
    if iwae_samples > 1:
        bound = iwae_bound(model, x, likelihood, iwae_samples)
        return -bound.mean(), {"iwae_bound": bound.mean()}
    terms = elbo(model, x, likelihood, beta)
    logged = {name: value.mean() for name, value in terms.items()}
    return -terms["elbo"].mean(), logged


def sample_likelihood(likelihood: Likelihood, params: torch.Tensor) -> torch.Tensor:
    """One draw x ~ p(x | z) as an image in [0, 1]: (..., P, C, H, W) -> (..., C, H, W)."""
    if likelihood == "bernoulli":
        return torch.bernoulli(torch.sigmoid(params[..., 0, :, :, :]))
    mean, log_scale = params[..., 0, :, :, :], params[..., 1, :, :, :].clamp(min=-7.0)
    if likelihood == "logistic":
        u = torch.rand_like(mean).clamp(1e-5, 1 - 1e-5)
        x = mean + log_scale.exp() * (torch.log(u) - torch.log1p(-u))  # inverse CDF of the logistic
        return (torch.round((x.clamp(-1, 1) + 1) * 127.5) / 255.0).clamp(0, 1)  # into the 256 bins
    y = mean + log_scale.exp() * torch.randn_like(mean)
    return (torch.floor(y.clamp(0, 1 - 1e-6) * 256) / 255.0).clamp(0, 1)  # undo the dequantisation
