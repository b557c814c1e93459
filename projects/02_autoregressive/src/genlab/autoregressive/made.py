"""NADE (Larochelle & Murray 2011) and MADE (Germain, Gregor, Murray & Larochelle 2015) for binary vectors.

Both factorise p(x) = prod_d p(x_{o_d} | x_{o_<d}) over an ordering o of the D = C*H*W values and output one
Bernoulli logit per value: ``forward`` maps (B, D) in {0, 1} to (B, D) logits, logit d being the
conditional of value d given the values before it in the ordering.

NADE ties the weights of all D conditionals (eq. 2 and 3 of the paper):

    h_d = sigmoid(c + W_{:, <d} x_{<d}),      p(x_d = 1 | x_<d) = sigmoid(b_d + V_d · h_d)

and since a_d = c + W_{:, <d} x_{<d} grows by one column per d, all D hidden vectors cost O(DH).

MADE masks an ordinary MLP (Sec. 4). Each unit k of layer l gets a connectivity number m^l(k): the inputs get
their position in the ordering, m^0(d) = o^{-1}(d) in 1..D, and hidden units are drawn uniformly from
{min_k' m^{l-1}(k'), ..., D-1}. A weight is kept when (eqs. 12-13)

    hidden:  M^l[k, k'] = 1[m^l(k) >= m^{l-1}(k')]        output:  M^V[d, k] = 1[m^0(d) > m^L(k)]

so output d only ever depends on inputs before it. Order-agnostic and connectivity-agnostic training
(Sec. 4.2) draws one of ``num_masks`` mask sets per minibatch; at test time the mask sets form an
ensemble, p(x) = (1/M) sum_m p_m(x), which is itself a normalised distribution.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


class NADE(nn.Module):
    def __init__(self, num_inputs: int, hidden: int = 500) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(hidden, num_inputs) * num_inputs**-0.5)
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(torch.randn(num_inputs, hidden) * hidden**-0.5)
        self.b = nn.Parameter(torch.zeros(num_inputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D) in {0, 1} -> logits (B, D) in the natural order."""
        contributions = x.to(self.W.dtype)[:, :, None] * self.W.t()  # (B, D, H): W_{:, d} x_d
        a = self.c + torch.cumsum(contributions, dim=1) - contributions  # a_d = c + sum_{k<d} W_{:, k} x_k
        return (torch.sigmoid(a) * self.V).sum(-1) + self.b  # b_d + V_d · h_d

    def ordering(self, mask_index: int = 0) -> torch.Tensor:
        return torch.arange(self.W.shape[1])

    @torch.no_grad()
    def sample(
        self, uniforms: torch.Tensor, prefix: torch.Tensor | None = None, known: int = 0, temperature: float = 1.0
    ) -> torch.Tensor:
        """NADE's own O(DH) sampler: a_d is updated by one column per step instead of recomputed.

        ``uniforms`` (B, D) in [0, 1) decide each draw, x_d = 1[u_d < p_d]; values before ``known`` come from
        ``prefix``.
        """
        x = uniforms.new_zeros(uniforms.shape) if prefix is None else prefix.to(uniforms.dtype).clone()
        a = self.c.expand(x.shape[0], -1).clone()  # (B, H)
        for d in range(x.shape[1]):
            if d >= known:
                p = torch.sigmoid((self.b[d] + torch.sigmoid(a) @ self.V[d]) / temperature)
                x[:, d] = (uniforms[:, d] < p).float()
            a += x[:, d : d + 1] * self.W[:, d]
        return x


class MaskedLinear(nn.Linear):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * mask, self.bias)


class MADE(nn.Module):
    def __init__(
        self,
        num_inputs: int,
        hidden_sizes: tuple[int, ...] = (500,),
        num_masks: int = 1,
        order_agnostic: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        sizes = [num_inputs, *hidden_sizes, num_inputs]
        self.layers = nn.ModuleList(MaskedLinear(a, b) for a, b in itertools.pairwise(sizes))
        self.num_inputs, self.hidden_sizes = num_inputs, tuple(hidden_sizes)
        self.num_masks, self.order_agnostic, self.seed = num_masks, order_agnostic, seed
        self._cached: tuple[tuple[int, torch.device], list[torch.Tensor]] | None = None

    def connectivity(self, mask_index: int) -> list[torch.Tensor]:
        """[m^0, m^1, ..., m^L] for mask set ``mask_index``, drawn from a generator seeded by it.

        Mask set 0 keeps the natural (raster) order, so one-mask training is the plain MADE and completions
        of the top half of an image are possible with it.
        """
        generator = torch.Generator().manual_seed(self.seed * 100_003 + mask_index)
        d = self.num_inputs
        if self.order_agnostic and mask_index > 0:
            m = [torch.randperm(d, generator=generator) + 1]
        else:
            m = [torch.arange(1, d + 1)]
        for size in self.hidden_sizes:
            low = min(int(m[-1].min()), d - 1)
            m.append(torch.randint(low, d, (size,), generator=generator))  # uniform on {low, ..., D-1}
        return m

    def masks(self, mask_index: int) -> list[torch.Tensor]:
        device = self.layers[0].weight.device
        key = (mask_index, device)
        if self._cached is None or self._cached[0] != key:
            m = self.connectivity(mask_index)
            hidden = [(m[l + 1][:, None] >= m[l][None, :]).float() for l in range(len(m) - 1)]  # M^l (eq. 12)
            output = (m[0][:, None] > m[-1][None, :]).float()  # M^V (eq. 13)
            self._cached = (key, [mask.to(device) for mask in [*hidden, output]])
        return self._cached[1]

    def forward(self, x: torch.Tensor, mask_index: int = 0) -> torch.Tensor:
        """x: (B, D) in {0, 1} -> logits (B, D); logit d conditions on the inputs before d in the ordering."""
        masks = self.masks(mask_index)
        h = x.to(self.layers[0].weight.dtype)
        for layer, mask in zip(self.layers[:-1], masks[:-1], strict=True):
            h = F.relu(layer(h, mask))
        return self.layers[-1](h, masks[-1])

    def ordering(self, mask_index: int = 0) -> torch.Tensor:
        """The input indices in the order mask set ``mask_index`` generates them."""
        return torch.argsort(self.connectivity(mask_index)[0])
