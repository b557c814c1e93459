"""The multi-scale architecture shared by RealNVP (Sec. 3.6) and Glow (Fig. 2b).

    h_0 = pre-processing(y)
    h_i' = level_i(h_{i-1}),   [h_i, z_i] = split(h_i')   for i < L,     z_L = level_L(h_{L-1})

Each non-final level factors half of its channels out as a latent z_i; only the rest goes on, so later levels
work on fewer, coarser dimensions. The density is

    log p(y) = log p(z_L | label) + Σ_{i<L} log p(z_i | h_i) + Σ log|det| of every layer,

and sampling runs the same path backwards from draws of the priors.
"""

from __future__ import annotations

import torch
from torch import nn

from genlab.flows.layers import FlowLayer, FlowSequence
from genlab.flows.priors import SplitPrior, TopPrior, gaussian_log_prob, gaussian_sample


class MultiScaleFlow(nn.Module):
    def __init__(
        self,
        preprocess: FlowLayer,
        levels: list[FlowSequence],
        split_priors: list[SplitPrior],
        top_prior: TopPrior,
        latent_shapes: list[tuple[int, int, int]],
    ) -> None:
        super().__init__()
        if len(split_priors) != len(levels) - 1 or len(latent_shapes) != len(levels):
            raise ValueError("need one split prior per non-final level and one latent shape per level")
        self.preprocess = preprocess
        self.levels = nn.ModuleList(levels)
        self.split_priors = nn.ModuleList(split_priors)
        self.top_prior = top_prior
        self.latent_shapes = [tuple(shape) for shape in latent_shapes]

    def encode(
        self, y: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """y (B, C, H, W) -> (latents [z_1, ..., z_L] with ``latent_shapes``, Σ log|det| (B,), log p(z) (B,))."""
        h, log_det = self.preprocess(y)
        log_prior = y.new_zeros(y.shape[0])
        latents = []
        for i, level in enumerate(self.levels):
            h, level_log_det = level(h)
            log_det = log_det + level_log_det
            if i < len(self.split_priors):
                h, z = h.chunk(2, dim=1)  # (B, 2c, ., .) -> the half that goes on, the half factored out
                log_prior = log_prior + gaussian_log_prob(z, *self.split_priors[i].params(h))
                latents.append(z)
        log_prior = log_prior + gaussian_log_prob(h, *self.top_prior.params(h.shape[0], labels, h))
        latents.append(h)
        return latents, log_det, log_prior

    def forward(self, y: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """log p(y) in nats per example (B,), by the change of variables."""
        _, log_det, log_prior = self.encode(y, labels)
        return log_prior + log_det

    def decode(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """[z_1, ..., z_L] -> y, the exact inverse of ``encode``."""
        h = latents[-1]
        for i in reversed(range(len(self.levels))):
            if i < len(self.split_priors):
                h = torch.cat([h, latents[i]], dim=1)
            h = self.levels[i].inverse(h)
        return self.preprocess.inverse(h)

    @torch.no_grad()
    def sample(
        self,
        count: int,
        temperature: float = 1.0,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        known: list[torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``count`` samples y and their latents [z_1, ..., z_L]; every prior is drawn at ``temperature``.

        ``known[i]``, where given, is used as z_i instead of a draw. Keeping the coarse latents of an encoded
        image and drawing the fine ones shows what each scale encodes (RealNVP Sec. 5, Fig. 4).
        """
        known = known or [None] * len(self.levels)
        reference = next(self.parameters())
        h = known[-1]
        if h is None:
            h = gaussian_sample(*self.top_prior.params(count, labels, reference), temperature, generator)
        latents = [h]
        for i in reversed(range(len(self.levels))):
            if i < len(self.split_priors):
                z = known[i]
                if z is None:
                    z = gaussian_sample(*self.split_priors[i].params(h), temperature, generator)
                latents.insert(0, z)
                h = torch.cat([h, z], dim=1)
            h = self.levels[i].inverse(h)
        return self.preprocess.inverse(h), latents
