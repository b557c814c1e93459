"""Priors over 05's token grids: the sequence a GPT or MaskGIT sees, its loss, its likelihood and its samples.

A prior models one level of a VQ-VAE's token grids, an (h, w) grid of codes in 0 .. K-1 read in raster order
(row by row), x_1 .. x_N with N = h w. Its vocabulary, for K codes and C classes:

    0 .. K-1                 the codes: the only ids a prior predicts or draws
    K                        [START] (GPT: the position the first code is predicted from) or [MASK] (MaskGIT)
    K+1 .. K+C               class tokens, when a class conditions the prior
    K+1+C .. K+C+K_top       the upper level's codes, when they condition the prior (VQ-VAE-2's bottom prior)

and its sequence is a prefix of conditions followed by the codes:

    GPT       [class or START] [top codes]  x_1 .. x_{N-1}         position P-1+i predicts x_{i+1}
    MaskGIT   [class]          [top codes]  x_1 .. x_N, some [MASK]

so that the GPT's likelihood is the chain rule, p(x | c) = prod_i p(x_i | x_<i, c).

VQ-VAE-2 (Razavi et al. 2019, Sec. 3.2) conditions the bottom prior on the top codes through a conditioning stack
of its PixelCNN; with a transformer the top codes are simply the first tokens of the context, which every bottom
position can attend to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from genlab.transformer.maskgit import maskgit_decode, maskgit_loss
from genlab.transformer.model import GPT
from genlab.transformer.sampler import generate


@dataclass(frozen=True)
class TokenLayout:
    """Where each kind of token sits in a prior's vocabulary and sequence."""

    num_codes: int  # K of the level being modelled
    grid_shape: tuple[int, int]  # (h, w) of that level
    num_classes: int = 0  # C > 0: a class token conditions the prior
    condition_codes: int = 0  # K_top > 0: the upper level's codes condition the prior
    condition_shape: tuple[int, int] = (0, 0)  # (h, w) of the upper level
    maskgit: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid_shape", tuple(self.grid_shape))
        object.__setattr__(self, "condition_shape", tuple(self.condition_shape))

    @property
    def special_id(self) -> int:
        """[START] for a GPT, [MASK] for MaskGIT."""
        return self.num_codes

    @property
    def vocab_size(self) -> int:
        return self.num_codes + 1 + self.num_classes + self.condition_codes

    @property
    def num_tokens(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    @property
    def num_condition_tokens(self) -> int:
        return self.condition_shape[0] * self.condition_shape[1] if self.condition_codes else 0

    @property
    def prefix_length(self) -> int:
        """P: the class (or [START]) token and the upper level's codes. An unconditional MaskGIT needs no start."""
        first = 0 if self.maskgit and not self.num_classes else 1
        return first + self.num_condition_tokens

    @property
    def block_size(self) -> int:
        """The context: a GPT never reads its last code, MaskGIT reads them all."""
        return self.prefix_length + self.num_tokens - (0 if self.maskgit else 1)

    def to_dict(self) -> dict:
        return asdict(self)

    def prefix(
        self, batch_size: int, labels: torch.Tensor | None, condition: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor | None:
        """labels (B,) and the upper level's codes (B, N_top) -> the prefix (B, P) of token ids, or None if P = 0."""
        parts = []
        if self.num_classes:
            if (
                labels is None
                or labels.shape != (batch_size,)
                or not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes
            ):
                raise ValueError(f"this prior is class-conditional: it needs {batch_size} labels < {self.num_classes}")
            parts.append(self.num_codes + 1 + labels.to(device)[:, None])
        elif not self.maskgit:
            parts.append(torch.full((batch_size, 1), self.special_id, dtype=torch.long, device=device))
        if self.condition_codes:
            shape = (batch_size, self.num_condition_tokens)
            if (
                condition is None
                or condition.shape != shape
                or not 0 <= int(condition.min()) <= int(condition.max()) < self.condition_codes
            ):
                raise ValueError(f"this prior reads the upper level's {shape} codes, each < {self.condition_codes}")
            parts.append(self.num_codes + 1 + self.num_classes + condition.to(device))
        return torch.cat(parts, dim=1) if parts else None


def gpt_prior_logits(
    model: GPT, layout: TokenLayout, codes: torch.Tensor, labels: torch.Tensor | None, condition: torch.Tensor | None
) -> torch.Tensor:
    """codes (B, N) -> logits (B, N, K): position i's logits over the codes for x_i given x_<i and the prefix."""
    prefix = layout.prefix(len(codes), labels, condition, codes.device)  # (B, P)
    inputs = torch.cat([prefix, codes[:, :-1]], dim=1)  # (B, P + N - 1)
    logits, _ = model(inputs)
    P = prefix.shape[1]
    return logits[:, P - 1 :, : layout.num_codes]  # from the prefix's last position on; never a non-code id


def gpt_prior_loss(
    model: GPT, layout: TokenLayout, codes: torch.Tensor, labels: torch.Tensor | None, condition: torch.Tensor | None
) -> torch.Tensor:
    """The mean negative log-likelihood per code, -1/N sum_i log p(x_i | x_<i, c), in nats."""
    logits = gpt_prior_logits(model, layout, codes, labels, condition)
    return F.cross_entropy(logits.flatten(0, 1), codes.flatten())


def maskgit_prior_loss(
    model: GPT,
    layout: TokenLayout,
    codes: torch.Tensor,
    labels: torch.Tensor | None,
    condition: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MaskGIT's masked-token cross-entropy (maskgit.py), with the class and upper codes as a never-masked prefix."""
    prefix = layout.prefix(len(codes), labels, condition, codes.device)
    return maskgit_loss(model, codes, layout.special_id, prefix, generator)[0]


@torch.no_grad()
def gpt_prior_nll(
    model: GPT,
    layout: TokenLayout,
    codes: torch.Tensor,
    labels: torch.Tensor | None,
    condition: torch.Tensor | None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Over every grid of a split: the exact -log p(x) under the prior, in nats per grid and bits per code."""
    model.eval()
    total = 0.0
    for start in range(0, len(codes), batch_size):
        part = slice(start, start + batch_size)
        logits = gpt_prior_logits(
            model, layout, codes[part], None if labels is None else labels[part],
            None if condition is None else condition[part],
        )  # fmt: skip
        total += float(F.cross_entropy(logits.flatten(0, 1), codes[part].flatten(), reduction="sum").double())
    nats_per_grid = total / len(codes)
    return {"nats_per_grid": nats_per_grid, "bits_per_code": nats_per_grid / (layout.num_tokens * math.log(2))}


@torch.no_grad()
def sample_prior(
    model: GPT,
    layout: TokenLayout,
    count: int,
    labels: torch.Tensor | None = None,
    condition: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    decode_steps: int = 8,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``count`` grids (count, h, w) of codes: a GPT one code at a time (top-k, top-p, the KV cache), MaskGIT in
    ``decode_steps`` parallel steps."""
    device = next(model.parameters()).device
    prefix = layout.prefix(count, labels, condition, device)
    if layout.maskgit:
        codes = maskgit_decode(
            model, count, layout.num_tokens, layout.special_id, decode_steps, temperature, prefix=prefix,
            generator=generator,
        )  # fmt: skip
    else:
        codes = generate(
            model, prefix, layout.num_tokens, temperature, top_k, top_p, use_cache,
            num_choices=layout.num_codes, generator=generator,
        )[:, prefix.shape[1] :]  # fmt: skip
    return codes.view(count, *layout.grid_shape)


@torch.no_grad()
def sample_hierarchy(
    priors: Sequence[tuple[GPT, TokenLayout]], count: int, labels: torch.Tensor | None = None, **options
) -> list[torch.Tensor]:
    """Ancestral sampling through the levels, top first (VQ-VAE-2, Sec. 3.2): each grid from its prior, given the
    grid above it where the prior is conditioned on it, and the labels where it is class-conditional. ``options``
    go to ``sample_prior``."""
    grids: list[torch.Tensor] = []
    for model, layout in priors:
        condition = grids[-1].flatten(1) if layout.condition_codes else None  # (count, N_top)
        grids.append(sample_prior(model, layout, count, labels if layout.num_classes else None, condition, **options))
    return grids
