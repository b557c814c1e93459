"""The one metrics module of genlab.

Likelihood bookkeeping shared by every likelihood model: nats, bits/dim, dequantisation, and an
importance-weighted estimate of log p(x) for latent-variable models. Conventions: a negative log-likelihood
(NLL) is in nats per example unless the name says otherwise; bits/dim = NLL / (D ln 2) with D = C * H * W.

Sample quality on features from a feature network (genlab.core.features): FID, KID, precision/recall and
the Inception Score. The arithmetic is torch-fidelity's, imported where used so that likelihood code stays
light; these functions fix the conventions (float64, every sample, generated first and reference second).

Fidelity to a reference image, for reconstructions and inverse problems: PSNR and SSIM, per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

LN2 = math.log(2.0)


def bits_per_dim(nll_nats: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """NLL in nats per example -> bits per dimension: nll / (D ln 2)."""
    return nll_nats / (num_dims * LN2)


def discrete_nll_bound(
    continuous_nll: torch.Tensor | float, num_dims: int, levels: int = 256, interval_width: float = 1.0
) -> torch.Tensor | float:
    """Upper bound on -log P(x) of discrete data from a continuous density on uniformly dequantised data.

    Data x in {0, ..., L-1}^D is dequantised as y = a (x + u) / L + b with u ~ U[0, 1)^D, so the cube of
    x has volume (a / L)^D in y-space and, by Jensen's inequality,

        -log P(x) <= E_u[-log p(y)] - D log(a / L) = E_u[-log p(y)] + D log(L / a).

    ``continuous_nll`` is E_u[-log p(y)] in nats; ``interval_width`` is a (1 for [0, 1], 2 for [-1, 1]).
    """
    return continuous_nll + num_dims * math.log(levels / interval_width)


def importance_weighted_log_likelihood(
    log_weights: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    num_samples: int,
    chunk_size: int = 100,
) -> torch.Tensor:
    """log p(x) ~= log (1/K) sum_k w_k, with w_k = p(x, z_k) / q(z_k | x) and z_k ~ q(z | x).

    ``log_weights(x, k)`` returns log w for k fresh samples per example, shape (k, B). Its expectation is a
    lower bound on log p(x) that rises with K and tends to log p(x) (Burda et al. 2016, the IWAE bound).
    Samples are taken in chunks and combined with a running log-sum-exp, so K = 5000 fits in memory.
    Returns (B,) in nats.
    """
    total = None
    remaining = num_samples
    while remaining > 0:
        k = min(chunk_size, remaining)
        chunk = torch.logsumexp(log_weights(x, k), dim=0)  # (k, B) -> (B,)
        total = chunk if total is None else torch.logaddexp(total, chunk)
        remaining -= k
    return total - math.log(num_samples)


def mean_over_batches(values: Iterable[torch.Tensor]) -> float:
    """Mean of per-example values (each batch a (B,) tensor) over a whole data set, every example counted once."""
    total, count = 0.0, 0
    for batch_values in values:
        total += float(batch_values.double().sum())
        count += batch_values.numel()
    if count == 0:
        raise ValueError("no examples to average")
    return total / count


def psnr(
    x: torch.Tensor, reference: torch.Tensor, data_range: float = 2.0, where: torch.Tensor | None = None
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, 10 log10(R^2 / MSE), R the data's peak-to-peak range (2 for
    images in [-1, 1], 1 in [0, 1]): (B, C, H, W) twice -> (B,). ``where`` (broadcastable to x, 1 on the pixels to
    compare, 0 elsewhere) takes the MSE over those pixels only: an inpainting's missing region."""
    error = (x.double() - reference.double()).square()
    if where is None:
        mse = error.flatten(1).mean(1)
    else:
        weight = torch.broadcast_to(where.to(error), error.shape)
        mse = (error * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-20))


def ssim(x: torch.Tensor, reference: torch.Tensor, data_range: float = 2.0, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image, the mean over channels and positions of

        SSIM = (2 mu_x mu_y + c1)(2 cov_xy + c2) / ((mu_x^2 + mu_y^2 + c1)(var_x + var_y + c2)),
        c1 = (0.01 R)^2, c2 = (0.03 R)^2,

    the local statistics weighted by a normalised Gaussian window of std ``sigma`` (the paper's 1.5) reaching 3.5
    sigmas either side (11 x 11 at 1.5), with the population (1/N) normalisation, only where the window fits: the
    convention of scikit-image's structural_similarity(gaussian_weights=True, use_sample_covariance=False).
    (B, C, H, W) twice -> (B,)."""
    x, reference = x.double(), reference.double()
    C = x.shape[1]
    radius = int(3.5 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    profile = torch.exp(-0.5 * (offsets / sigma) ** 2)
    window = torch.outer(profile, profile)
    window = (window / window.sum())[None, None].expand(C, 1, -1, -1)

    def local_mean(image: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(image, window, groups=C)  # no padding: where the whole window fits

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = local_mean(x), local_mean(reference)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(reference * reference) - mu_y**2
    covariance = local_mean(x * reference) - mu_x * mu_y
    index = (2 * mu_x * mu_y + c1) * (2 * covariance + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(1)


@dataclass
class FeatureStatistics:
    """Mean and covariance of a feature set: the Gaussian that FID fits to it (Heusel et al. 2017)."""

    mean: np.ndarray  # (F,) float64
    covariance: np.ndarray  # (F, F) float64
    count: int


def feature_statistics(features: torch.Tensor) -> FeatureStatistics:
    """features (N, F) -> mean and unbiased covariance over all N samples, in float64."""
    if features.dim() != 2 or len(features) < 2:
        raise ValueError(f"need (N, F) features with N >= 2, got shape {tuple(features.shape)}")
    values = features.double().cpu().numpy()
    return FeatureStatistics(values.mean(axis=0), np.cov(values, rowvar=False), len(values))


def frechet_distance(first: FeatureStatistics, second: FeatureStatistics) -> float:
    """FID = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    stats = [{"mu": s.mean, "sigma": s.covariance} for s in (first, second)]
    return float(fid_statistics_to_metric(stats[0], stats[1], verbose=False)[KEY_METRIC_FID])


def kernel_distance(
    generated: torch.Tensor, reference: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): the unbiased MMD^2 with the kernel k(x, y) = (x.y / F + 1)^3.

    Averaged over ``subsets`` random subsets of ``subset_size`` from each set (capped at the smaller set);
    returns (mean, standard deviation over subsets).
    """
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(subset_size, len(generated), len(reference))
    result = kid_features_to_metric(
        generated.double(), reference.double(), kid_subsets=subsets, kid_subset_size=size, rng_seed=seed,
        verbose=False,
    )  # fmt: skip
    return float(result[KEY_METRIC_KID_MEAN]), float(result[KEY_METRIC_KID_STD])


def precision_recall(generated: torch.Tensor, reference: torch.Tensor, neighbourhood: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-nearest-neighbour balls, k = 3.

    Precision: the share of generated samples inside the reference manifold (the union of balls reaching
    each reference feature's k-th neighbour). Recall: the share of reference samples inside the generated one.
    """
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    result = prc_features_to_metric(
        generated.float(), reference.float(), prc_neighborhood=neighbourhood, save_cpu_ram=True, verbose=False
    )
    return float(result[KEY_METRIC_PRECISION]), float(result[KEY_METRIC_RECALL])


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS = exp E_x KL(p(y|x) || p(y)) (Salimans et al. 2016), over ``splits`` parts; (mean, std)."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    result = isc_features_to_metric(logits.double(), splits=min(splits, len(logits)), rng_seed=seed)
    return float(result[KEY_METRIC_ISC_MEAN]), float(result[KEY_METRIC_ISC_STD])
