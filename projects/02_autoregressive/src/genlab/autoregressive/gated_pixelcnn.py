"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

Two stacks per layer (Sec. 2.2, Fig. 2):
- the vertical stack, a (k//2 + 1) x k convolution over the current row and the k//2 rows above. Its output
  at row r has seen row r, so it reaches the horizontal stack only after a shift down by one row;
- the horizontal stack, a 1 x (k//2 + 1) convolution over the current pixel and those left of it in its row
  (mask A at the first layer, mask B after), plus a 1x1 of the shifted vertical features, and a residual.
Together they see every pixel above and to the left, so there is no blind spot.

Gated activations with class conditioning (eqs. 2 and 4):

    y = tanh(W_f * x + V_f^T h) ⊙ sigmoid(W_g * x + V_g^T h),    h = one-hot class label

V^T h is an embedding of the label, one per layer, added to both halves in both stacks.

For the fast sampler the vertical stack is computed a row at a time, once the row above is finished, and the
horizontal stack a pixel at a time from caches of its inputs in the current row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genlab.autoregressive.layers import (
    MaskedConv2d,
    OutputHead,
    StepCache,
    check_sizes,
    image_window,
    scale_input,
    shift_down,
)


def gate(pre_activation: torch.Tensor) -> torch.Tensor:
    """(B, 2p, ...) -> (B, p, ...): tanh of the first half times sigmoid of the second (eq. 2)."""
    f, g = pre_activation.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    def __init__(self, in_channels: int, channels: int, kernel_size: int, colors: int, num_classes: int, first: bool):
        super().__init__()
        reach = kernel_size // 2
        self.first = first
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (reach + 1, kernel_size))
        self.vertical_pad = (reach, reach, reach, 0)  # rows r-k//2 .. r, columns j-k//2 .. j+k//2
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal = MaskedConv2d(
            in_channels, 2 * channels, (1, reach + 1), "A" if first else "B", colors, centre=(0, reach)
        )
        self.horizontal_out = MaskedConv2d(channels, channels, 1, "B", colors)
        self.label_embedding = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    def condition(self, labels: torch.Tensor | None) -> torch.Tensor | float:
        """V^T h of eq. 4 as a (B, 2p, 1, 1) bias, or 0 for an unconditional model."""
        if self.label_embedding is None:
            return 0.0
        if labels is None:
            raise ValueError("this model is class-conditional: pass labels")
        return self.label_embedding(labels)[:, :, None, None]

    def forward(
        self, v: torch.Tensor, h: torch.Tensor, bias: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """v, h: (B, C_in, H, W) -> (B, p, H, W) each."""
        v_pre = self.vertical(F.pad(v, self.vertical_pad)) + bias  # (B, 2p, H, W), row r saw rows <= r
        h_pre = self.horizontal(h) + self.vertical_to_horizontal(shift_down(v_pre)) + bias
        h_out = self.horizontal_out(gate(h_pre))
        return gate(v_pre), h_out if self.first else h + h_out

    def vertical_row(self, window: torch.Tensor, bias: torch.Tensor | float) -> torch.Tensor:
        """Pre-activation of the vertical stack for one whole row from its padded window: (B, 2p, 1, W)."""
        return self.vertical(window) + bias

    def horizontal_step(
        self, window: torch.Tensor, h: torch.Tensor | None, from_vertical: torch.Tensor, bias: torch.Tensor | float
    ) -> torch.Tensor:
        """One pixel of the horizontal stack; ``from_vertical`` is the 1x1 of the row above's vertical features."""
        h_pre = self.horizontal.window_forward(window) + from_vertical + bias  # (B, 2p, 1, 1)
        h_out = self.horizontal_out(gate(h_pre))
        return h_out if self.first else h + h_out


class GatedPixelCNN(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        levels: int = 2,
        hidden_channels: int = 32,
        num_layers: int = 8,
        kernel_size: int = 5,
        head_channels: int = 64,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        colors = image_shape[0]
        check_sizes(colors, kernel_size, hidden_channels, head_channels)
        self.image_shape, self.levels = tuple(image_shape), levels
        self.layers = nn.ModuleList(
            GatedLayer(colors if i == 0 else hidden_channels, hidden_channels, kernel_size, colors, num_classes, i == 0)
            for i in range(num_layers)
        )
        self.head = OutputHead(hidden_channels, head_channels, colors, levels)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return scale_input(x, self.levels, self.head.out.weight.dtype)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) integer levels -> logits (B, C, H, W) if binary else (B, L, C, H, W)."""
        v = h = self.scaled(x)
        for layer in self.layers:
            v, h = layer(v, h, layer.condition(labels))
        return self.head(h)

    def start_sampling(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        _, height, width = self.image_shape
        like = self.scaled(x)
        return {
            "bias": [layer.condition(labels) for layer in self.layers],
            # inputs of each vertical convolution (the previous layer's gated vertical output), whole rows
            "vertical": [
                StepCache(layer.vertical.in_channels, height, width, layer.vertical_pad, like)
                for layer in self.layers[1:]
            ],
            # inputs of each horizontal convolution in the current row
            "horizontal": [
                StepCache(layer.horizontal.in_channels, 1, width, layer.horizontal.pad, like)
                for layer in self.layers[1:]
            ],
        }

    def _vertical_rows_above(self, state: dict, x: torch.Tensor, row: int) -> None:
        """Run the vertical stack over row - 1 (now complete) and keep its 1x1 into the horizontal stack."""
        layers, bias = self.layers, state["bias"]
        if row == 0:  # the shifted-in row of zeros
            zeros = x.new_zeros(x.shape[0], layers[0].vertical.out_channels, 1, x.shape[-1])
            state["from_vertical"] = [layer.vertical_to_horizontal(zeros) for layer in layers]
            return
        window = image_window(self.scaled(x), layers[0].vertical_pad, row - 1)
        from_vertical = []
        for i, layer in enumerate(layers):
            v_pre = layer.vertical_row(window, bias[i])  # (B, 2p, 1, W)
            from_vertical.append(layer.vertical_to_horizontal(v_pre))
            if i + 1 < len(layers):
                cache = state["vertical"][i]
                cache.write(gate(v_pre), row - 1)
                window = cache.window(row - 1)
        state["from_vertical"] = from_vertical

    def logits_at(self, state: dict, x: torch.Tensor, row: int, col: int) -> torch.Tensor:
        """Logits of pixel (row, col) given the image so far: (B, C, 1, 1) or (B, L, C, 1, 1)."""
        if state.get("row") != row:
            self._vertical_rows_above(state, x, row)
            state["row"] = row
        layers, bias = self.layers, state["bias"]
        window = image_window(self.scaled(x[:, :, row : row + 1]), layers[0].horizontal.pad, 0, col)
        h = None
        for i, layer in enumerate(layers):
            from_vertical = state["from_vertical"][i][:, :, :, col : col + 1]
            h = layer.horizontal_step(window, h, from_vertical, bias[i])  # (B, p, 1, 1)
            if i + 1 < len(layers):
                cache = state["horizontal"][i]
                cache.write(h, 0, col)
                window = cache.window(0, col)
        return self.head(h)
