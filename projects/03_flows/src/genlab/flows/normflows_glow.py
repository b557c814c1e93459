"""normflows' Glow (Stimper et al., PyPI ``normflows``) behind genlab's flow interface, for ``flow-compare``.

It imports only torch and, when built, normflows: copy it out with ``model.py`` to compare the two elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

from genlab.flows.model import FlowConfig, clamp_finite


class NormflowsGlow(nn.Module):
    """normflows' multi-scale Glow at the size of a genlab FlowConfig, behind our interface (log p(y) from
    ``forward``, ``sample``, ``config``), following the construction of normflows' own Glow example."""

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        try:
            import normflows as nf
        except ImportError:
            raise ImportError("the normflows comparison needs normflows: pip install normflows") from None
        self.config = config
        channels, height, width = config.image_shape
        levels, steps = config.num_scales, config.steps_per_scale
        priors, merges, flows = [], [], []
        for i in range(levels):  # normflows counts levels from the coarsest, in the generative direction
            blocks = [nf.flows.GlowBlock(channels * 2 ** (levels + 1 - i), config.hidden_channels,
                                         split_mode="channel", scale=True) for _ in range(steps)]  # fmt: skip
            flows.append([*blocks, nf.flows.Squeeze()])
            if i == 0:
                shape = (channels * 2 ** (levels + 1), height // 2**levels, width // 2**levels)
            else:
                merges.append(nf.flows.Merge())
                shape = (channels * 2 ** (levels - i), height // 2 ** (levels - i), width // 2 ** (levels - i))
            priors.append(nf.distributions.GlowBase(shape, num_classes=config.num_classes or None))
        self.flow = nf.MultiscaleFlow(priors, flows, merges, class_cond=bool(config.num_classes))

    def forward(self, y: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.flow.log_prob(y, labels)

    @torch.no_grad()
    def sample(
        self,
        count: int,
        temperature: float = 1.0,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """normflows draws from the global generator; ``generator`` is accepted for the interface only. As in
        ``FlowModel.sample``, only finite values are clamped to [0, 1]: overflowed pixels stay non-finite."""
        return clamp_finite(self.flow.sample(count, labels, temperature)[0])
