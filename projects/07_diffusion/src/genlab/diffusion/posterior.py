"""Noisy inverse problems with an unconditional diffusion prior: Diffusion Posterior Sampling (Chung et al. 2023),
and the replacement baseline it is compared with.

A measurement y = A(x_0) + n, n ~ N(0, sigma_y^2 I), with a known operator A (here: x4 super-resolution by average
pooling, and a Gaussian blur). Sampling the posterior p(x_0 | y) needs the score of p(x_t | y),

    grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t),

the first term the diffusion model's (eps_to_score), the second intractable. DPS (Sec. 3.2, Thm. 1) replaces x_0 by
its posterior mean given x_t, Tweedie's x0_hat(x_t) = (x_t - sqrt(1 - alpha_bar) eps_hat) / sqrt(alpha_bar), which
the denoiser already gives: p(y | x_t) ~ p(y | x0_hat(x_t)) = N(A(x0_hat), sigma_y^2 I), and takes after every
ancestral step a gradient step on the measurement error, differentiated through the network (Alg. 1):

    x'_{t_prev} = DDPM step from x_t                                           (the prior's update)
    x_{t_prev}  = x'_{t_prev} - zeta_t grad_{x_t} ||y - A(x0_hat(x_t))||^2,   zeta_t = zeta' / ||y - A(x0_hat)||

(App. C.2: the step normalised by the current residual, zeta' a constant). Since grad ||r||^2 / ||r|| = 2 grad ||r||,
the update is x'_{t_prev} - 2 zeta' grad_{x_t} ||r||: ``step_size`` here is 2 zeta', the "scale" of the authors' code,
and the residual's norm is taken per image.

The replacement baseline (Song et al. 2021's imputation, ILVR's low-pass replacement, Choi et al. 2021) needs a
pseudo-inverse A+ with A A+ = I: after every step, the part of x in A's row space is replaced by the measurement
noised to the same level, x <- x - A+ A x + A+ y_t with y_t = A(q_sample(A+ y, t)). At the end (t = -1) A x = y
exactly. It ignores the measurement noise, and only super-resolution has such an A+ here (nearest upsampling).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from genlab.diffusion.editing import noise_to
from genlab.diffusion.prediction import DenoiserOutput
from genlab.diffusion.samplers import DDPMSampler, DenoiseFn, gaussian_like

Tensor = torch.Tensor


class SuperResolution:
    """A(x) = the mean of each factor x factor block (B, C, H, W) -> (B, C, H / f, W / f); A+ = nearest upsampling,
    so A A+ = I and A+ A replaces each block by its mean."""

    def __init__(self, factor: int = 4) -> None:
        self.factor = factor

    def __call__(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        return F.interpolate(y, scale_factor=self.factor, mode="nearest")

    def baseline(self, y: Tensor) -> Tensor:
        """Bicubic upsampling of the measurement, the classical answer to super-resolution."""
        return F.interpolate(y, scale_factor=self.factor, mode="bicubic", align_corners=False).clamp(-1, 1)


class GaussianBlur:
    """A(x) = x convolved with a normalised Gaussian kernel (std ``sigma`` pixels, ``size`` x ``size``), reflected at
    the borders; the same shape in and out. No pseudo-inverse: its baseline is the blurred image itself."""

    def __init__(self, size: int = 9, sigma: float = 1.5) -> None:
        offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        profile = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = torch.outer(profile, profile)
        self.kernel = (kernel / kernel.sum()).float()[None, None]  # (1, 1, k, k)
        self.size = size

    def __call__(self, x: Tensor) -> Tensor:
        C = x.shape[1]
        padded = F.pad(x, [self.size // 2] * 4, mode="reflect")
        return F.conv2d(padded, self.kernel.to(x).expand(C, 1, -1, -1), groups=C)  # each channel on its own

    def baseline(self, y: Tensor) -> Tensor:
        return y.clamp(-1, 1)


def measure(operator: Any, x0: Tensor, noise_std: float, generator: torch.Generator | None = None) -> Tensor:
    """y = A(x_0) + sigma_y n, n ~ N(0, I)."""
    clean = operator(x0)
    return clean + noise_std * gaussian_like(clean, generator)


def dps_sample(
    denoise: DenoiseFn, sampler: DDPMSampler, y: Tensor, operator: Any, step_size: float, x_T: Tensor,
    condition: Any = None, generator: torch.Generator | None = None,
) -> Tensor:  # fmt: skip
    """DPS (Alg. 1) on the sampler's chain: x_T (B, C, H, W) -> a draw of p(x_0 | y), approximately."""
    x = x_T
    for index, t in enumerate(sampler.timesteps):
        t_prev = sampler.previous_timestep(index)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            prediction = denoise(x, torch.full((len(x),), float(t), device=x.device), condition)
            residual_norm = (y - operator(prediction.x0)).flatten(1).norm(dim=1)  # ||y - A(x0_hat(x_t))||, (B,)
            (gradient,) = torch.autograd.grad(residual_norm.sum(), x)  # per image: the images are independent
        detached = DenoiserOutput(prediction.x0.detach(), prediction.eps.detach(),
                                  None if prediction.variance_interpolation is None
                                  else prediction.variance_interpolation.detach())  # fmt: skip
        noise = gaussian_like(x, generator) if t_prev >= 0 else None
        x = sampler.update(detached, x.detach(), t, t_prev, noise) - step_size * gradient
    return x.detach()


@torch.no_grad()
def replacement_sample(
    denoise: DenoiseFn, sampler: DDPMSampler, y: Tensor, operator: SuperResolution, x_T: Tensor,
    condition: Any = None, generator: torch.Generator | None = None,
) -> Tensor:  # fmt: skip
    """The baseline: the prior's chain with x's component in A's row space replaced by the noised measurement."""
    lifted = operator.pseudo_inverse(y)  # A+ y, (B, C, H, W)
    x = x_T
    for index in range(len(sampler.timesteps)):
        x, _ = sampler.step(denoise, x, index, condition, generator)
        y_t = operator(noise_to(sampler.schedule, lifted, sampler.previous_timestep(index), generator))
        x = x - operator.pseudo_inverse(operator(x)) + operator.pseudo_inverse(y_t)  # x <- x - A+ A x + A+ y_t
    return x
