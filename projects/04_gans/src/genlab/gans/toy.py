"""The 2-D mixtures of Gaussians on which mode collapse is seen and measured (as in Metz et al. 2017 and
Srivastava et al. 2017): 8 modes on a ring, or 25 on a 5x5 grid, and a mode-coverage metric."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

ToyKind = Literal["ring8", "grid25"]
TOY_DATASETS: tuple[str, ...] = ("ring8", "grid25")


@dataclass(frozen=True)
class GaussianMixture:
    """Equal-weight isotropic Gaussians at ``centres`` (K, 2), each with standard deviation ``std``."""

    centres: torch.Tensor
    std: float

    @classmethod
    def named(cls, kind: ToyKind, std: float | None = None) -> GaussianMixture:
        """The standard mixtures: std 0.02 on the ring of radius 2, 0.05 on the grid of spacing 2, unless given."""
        if kind == "ring8":
            angles = torch.arange(8) * (2 * math.pi / 8)
            return cls(2.0 * torch.stack([angles.cos(), angles.sin()], dim=1), std=std or 0.02)
        if kind == "grid25":
            axis = torch.arange(-2, 3, dtype=torch.float32) * 2.0
            return cls(torch.cartesian_prod(axis, axis), std=std or 0.05)
        raise ValueError(f"unknown toy mixture {kind!r}; known: ring8, grid25")

    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """count points (count, 2): a uniformly chosen mode plus N(0, std^2 I) noise."""
        modes = torch.randint(len(self.centres), (count,), generator=generator)
        return self.centres[modes] + self.std * torch.randn(count, 2, generator=generator)


@dataclass(frozen=True)
class Coverage:
    modes_covered: int  # modes that received at least min_share of their fair share of good samples
    num_modes: int
    high_quality: float  # share of samples within 3 std of some mode centre


def mode_coverage(points: torch.Tensor, mixture: GaussianMixture, min_share: float = 0.25) -> Coverage:
    """A sample is high-quality if it lies within 3 std of its nearest centre; a mode is covered if its
    high-quality samples number at least ``min_share`` times the N / K that a perfect sampler gives it."""
    distances = torch.cdist(points.float(), mixture.centres)  # (N, K)
    nearest, mode = distances.min(dim=1)
    good = nearest <= 3 * mixture.std
    counts = torch.bincount(mode[good], minlength=len(mixture.centres))  # (K,)
    fair_share = len(points) / len(mixture.centres)
    covered = int((counts >= min_share * fair_share).sum())
    return Coverage(covered, len(mixture.centres), float(good.float().mean()))


def scatter_image(points: torch.Tensor, extent: float = 5.0, size: int = 128) -> torch.Tensor:
    """A picture of 2-D points: (N, 2) -> (1, 1, size, size) in [0, 1], white background, darker where denser."""
    pixels = ((points.float().cpu() + extent) / (2 * extent) * size).long()  # x -> column, y -> row (upwards)
    inside = ((pixels >= 0) & (pixels < size)).all(dim=1)
    column, row = pixels[inside, 0], size - 1 - pixels[inside, 1]
    counts = torch.bincount(row * size + column, minlength=size * size).float().view(size, size)
    darkness = (counts / counts.max().clamp_min(1)).sqrt()  # sqrt: faint modes stay visible
    return (1 - darkness).view(1, 1, size, size)
