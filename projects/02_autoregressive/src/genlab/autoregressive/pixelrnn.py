"""PixelRNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks", Sec. 3).

Both recurrent layers compute the LSTM gates from an input-to-state part K^is ⊛ x (a masked convolution of
the layer's input, computed for the whole image at once) and a state-to-state part K^ss ⊛ h (a convolution of
the previous step's hidden state, computed step by step) (eq. 3):

    [o, f, i, g] = [σ, σ, σ, tanh](K^ss ⊛ h_{t-1} + K^is ⊛ x_t)
    c_t = f ⊙ c_{t-1} + i ⊙ g,          h_t = o ⊙ tanh(c_t)

- Row LSTM (Sec. 3.1): one step per row, top to bottom. K^is is a 1 x 3 convolution along the row with mask B,
  K^ss a 1 x 3 convolution of the row above's state: a triangular receptive field.
- Diagonal BiLSTM (Sec. 3.2): the map is skewed (row r shifted right by r) so that the diagonals of the image
  become columns; one step per column, left to right. K^is is a 1x1 with mask B, K^ss a 2 x 1 convolution of
  the previous column (the pixel to the left and the pixel above, once unskewed). The second direction runs
  on the mirrored image and its output is shifted down one row, so a pixel sees the right-to-left state of
  the row above only, never its own row's future. The two are added.

Layers are joined by residual connections (Sec. 3.3): the LSTM maps 2h input features to h, a 1x1 maps them
back to 2h, and the input is added. A 7x7 mask-A convolution comes first, the ReLU/1x1 head last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genlab.autoregressive.layers import MaskedConv2d, OutputHead, check_sizes, scale_input, shift_down


def lstm_update(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gates (B, 4h, ...), c_{t-1} (B, h, ...) -> (h_t, c_t) by eq. 3."""
    o, f, i, g = gates.chunk(4, dim=1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


class RowLSTM(nn.Module):
    def __init__(self, in_channels: int, hidden: int, colors: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(in_channels, 4 * hidden, (1, 3), "B", colors)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2h, H, W) -> (B, h, H, W), one LSTM step per row."""
        input_gates = self.input_to_state(x)  # (B, 4h, H, W)
        b, _, height, width = input_gates.shape
        state = cell = x.new_zeros(b, self.hidden, width)  # (B, h, W): the row above
        rows = []
        for r in range(height):
            state, cell = lstm_update(input_gates[:, :, r] + self.state_to_state(state), cell)
            rows.append(state)
        return torch.stack(rows, dim=2)


def skew(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W + H - 1): row r moved right by r, so image diagonals become columns."""
    b, c, height, width = x.shape
    # Pad each row with H zeros and read the result with rows one shorter: row r then starts r places later.
    padded = F.pad(x, (0, height)).flatten(2)[:, :, : height * (width + height - 1)]
    return padded.view(b, c, height, width + height - 1)


def unskew(x: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of ``skew``: (B, C, H, W + H - 1) -> (B, C, H, W)."""
    b, c, height, skewed_width = x.shape
    flat = F.pad(x.flatten(2), (0, height))  # (B, C, H * (W + H - 1) + H) = (B, C, H * (W + H))
    return flat.view(b, c, height, skewed_width + 1)[:, :, :, :width]


class DiagonalLSTM(nn.Module):
    """One direction of the Diagonal BiLSTM: left to right along the skewed columns."""

    def __init__(self, in_channels: int, hidden: int, colors: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(in_channels, 4 * hidden, 1, "B", colors)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 2)  # rows r-1 and r of the previous column

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2h, H, W) -> (B, h, H, W)."""
        width = x.shape[-1]
        input_gates = skew(self.input_to_state(x))  # (B, 4h, H, W + H - 1)
        b, _, height, columns = input_gates.shape
        state = cell = x.new_zeros(b, self.hidden, height)  # (B, h, H): the previous column
        outputs = []
        for t in range(columns):
            from_state = self.state_to_state(F.pad(state, (1, 0)))  # (B, 4h, H)
            state, cell = lstm_update(input_gates[:, :, :, t] + from_state, cell)
            outputs.append(state)
        return unskew(torch.stack(outputs, dim=3), width)


class DiagonalBiLSTM(nn.Module):
    def __init__(self, in_channels: int, hidden: int, colors: int) -> None:
        super().__init__()
        self.left_to_right = DiagonalLSTM(in_channels, hidden, colors)
        self.right_to_left = DiagonalLSTM(in_channels, hidden, colors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        right_to_left = self.right_to_left(x.flip(-1)).flip(-1)
        return self.left_to_right(x) + shift_down(right_to_left)


class PixelRNN(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        levels: int = 2,
        kind: str = "row_lstm",
        hidden_channels: int = 16,
        num_layers: int = 7,
        head_channels: int = 64,
    ) -> None:
        super().__init__()
        colors = image_shape[0]
        check_sizes(colors, 7, hidden_channels, head_channels)  # 7: the mask-A input convolution
        layer_class = {"row_lstm": RowLSTM, "diagonal_bilstm": DiagonalBiLSTM}[kind]
        self.image_shape, self.levels = tuple(image_shape), levels
        self.input_conv = MaskedConv2d(colors, 2 * hidden_channels, 7, "A", colors)
        self.lstms = nn.ModuleList(layer_class(2 * hidden_channels, hidden_channels, colors) for _ in range(num_layers))
        self.residual_projections = nn.ModuleList(
            MaskedConv2d(hidden_channels, 2 * hidden_channels, 1, "B", colors) for _ in range(num_layers)
        )
        self.head = OutputHead(2 * hidden_channels, head_channels, colors, levels)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return scale_input(x, self.levels, self.head.out.weight.dtype)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) integer levels -> logits (B, C, H, W) if binary else (B, L, C, H, W)."""
        h = self.input_conv(self.scaled(x))  # (B, 2h, H, W)
        for lstm, project in zip(self.lstms, self.residual_projections, strict=True):
            h = h + project(lstm(h))  # Sec. 3.3: residual connection around each LSTM layer
        return self.head(h)
