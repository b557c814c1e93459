"""The receptive field of every conditional, at every pixel and for every colour, against the set the papers give.

Causality (tested in test_models.py) says what a conditional must *not* see. These tests also say what it *must*
see: for each output value (c, r, j) the set of input values with a non-zero gradient is compared with the exact
set that follows from the paper's layer equations, worked out by hand below (never read off the code under test).
A missing direction of the Diagonal BiLSTM, a direction not flipped back, or mask A in the Row LSTM's
input-to-state convolution all change that set somewhere, often not at the last pixel. (Mask A in a layer that sits
behind a residual connection changes no set at all; the last test checks every layer's mask where it is called.)

Offsets: k = r - r' rows above the output pixel (r, j), c = j' - j columns to its right (negative: to the left).
PixelCNN and PixelRNN start with a 7x7 mask-A convolution, whose output at (r, j) reads the rows k = 1..3 at
|c| <= 3 and its own row at c = -3..-1.

Dependencies are found by autograd in float64, summed over several inputs and two sets of weights: the default
random initialisation with three random images, and positive parameters with an all-ones image (every ReLU
active, every gate and LSTM derivative positive, so every path contributes with the same sign and none can
cancel). A zero is then "no path".
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from genlab.autoregressive.layers import MaskedConv2d
from genlab.autoregressive.model import ARConfig, AutoregressiveModel

HEIGHT, WIDTH = 5, 9  # wide enough for the triangle's edges and for the Diagonal BiLSTM's two directions to show
TINY = {"hidden_channels": 3, "head_channels": 3}  # one channel per colour group


def build(name: str, colors: int, seed: int, positive: bool = False, **overrides: int) -> AutoregressiveModel:
    """A float64 binary model on (colors, HEIGHT, WIDTH) images; ``positive`` redraws every parameter in [0.05, 0.2]."""
    torch.manual_seed(seed)
    config = ARConfig(model=name, image_shape=(colors, HEIGHT, WIDTH), levels=2, **{**TINY, **overrides})
    model = AutoregressiveModel(config).double().eval()
    if positive:
        for p in model.parameters():
            p.data.uniform_(0.05, 0.2)
    return model


def dependencies(model: AutoregressiveModel, x: torch.Tensor) -> torch.Tensor:
    """(D, D) bool: [i, k] = some logit i moved with input value k for some image of x (flat C*H*W indices).

    One backward pass for all D outputs: the batch is repeated D times and copy i back-propagates only logit i
    (samples never mix in these models, so copy i's gradient is exactly d logit_i / d x).
    """
    count, dims = len(x), x[0].numel()
    copies = x.repeat(dims, 1, 1, 1).requires_grad_(True)  # (D * B, C, H, W), copy i = rows i*B .. i*B + B-1
    logits = model(copies).flatten(1).view(dims, count, dims)  # [copy, image, output]
    own = logits.diagonal(dim1=0, dim2=2)  # (B, D): output i of copy i
    (grad,) = torch.autograd.grad(own.sum(), copies)
    return grad.view(dims, count, dims).abs().sum(1) != 0


def measured_field(name: str, colors: int, **overrides: int) -> torch.Tensor:
    """Union of ``dependencies`` over random weights with random images and positive weights with the all-ones image."""
    generator = torch.Generator().manual_seed(7)
    images = torch.randint(2, (3, colors, HEIGHT, WIDTH), generator=generator).double()
    ones = torch.ones(1, colors, HEIGHT, WIDTH, dtype=torch.float64)
    random_weights = dependencies(build(name, colors, seed=0, **overrides), images)
    positive_weights = dependencies(build(name, colors, seed=1, positive=True, **overrides), ones)
    return random_weights | positive_weights


def offsets(r: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) maps of k = r - r' (rows above) and c = j' - j (columns to the right) from output pixel (r, j)."""
    rows = torch.arange(HEIGHT)[:, None].expand(HEIGHT, WIDTH)
    cols = torch.arange(WIDTH)[None, :].expand(HEIGHT, WIDTH)
    return r - rows, cols - j


Value = tuple[int, int, int]  # (colour, row, column)


def expected_field(
    colors: int,
    spatial: Callable[[int, int], torch.Tensor],
    out_of_reach: Callable[[int, int, int], list[Value]] | None = None,
) -> torch.Tensor:
    """(D, D) bool from a spatial rule: output (c, r, j) sees every colour of the pixels ``spatial(r, j)`` marks (an
    (H, W) bool map), plus the colours c' < c of its own pixel (PixelRNN paper eq. 2); ``out_of_reach(c, r, j)`` may
    then name input values (c', r', j') that it nonetheless does not see."""
    field = torch.zeros(colors, HEIGHT, WIDTH, colors, HEIGHT, WIDTH, dtype=torch.bool)
    for c in range(colors):
        for r in range(HEIGHT):
            for j in range(WIDTH):
                field[c, r, j] = spatial(r, j)[None].expand(colors, HEIGHT, WIDTH)
                field[c, r, j, :c, r, j] = True
                for value in out_of_reach(c, r, j) if out_of_reach else ():
                    field[(c, r, j, *value)] = False
    dims = colors * HEIGHT * WIDTH
    return field.view(dims, dims)


def assert_field(measured: torch.Tensor, expected: torch.Tensor, colors: int) -> None:
    """Equal sets, or a message naming the first (c, r, j) output <- (c', r', j') input pairs missing and extra."""

    def value(index: int) -> Value:
        return index // (HEIGHT * WIDTH), index // WIDTH % HEIGHT, index % WIDTH

    def named(pairs: torch.Tensor) -> list[str]:
        return [f"{value(i)} <- {value(k)}" for i, k in pairs.nonzero().tolist()[:6]]

    missing, extra = expected & ~measured, measured & ~expected
    assert not missing.any() and not extra.any(), (
        f"{int(missing.sum())} missing, e.g. {named(missing)}; {int(extra.sum())} extra, e.g. {named(extra)}"
    )


@pytest.mark.parametrize("colors", [1, 3])
def test_pixelcnn_sees_exactly_its_stacked_masked_squares_at_every_pixel(colors: int) -> None:
    """PixelRNN paper Sec. 3.5 and Gated PixelCNN paper Fig. 1: after the 7x7 mask-A layer each residual block's
    3x3 mask B adds the offsets (k, c) in {(0, 0), (0, -1), (1, -1), (1, 0), (1, 1)}; n blocks sum to
    {0 <= k <= n, -n <= c <= k}. With the 7x7 that gives, for n blocks:

        own row:              c = -n-3 .. -1
        row k = 1 .. n+3:     c = -n-3 .. min(k+2, n+3)        (nothing above row r - n - 3)

    so the field is a masked square that grows by one pixel per block, and the blind spot (above right) is the
    part of the causal context it leaves out."""
    n = 2

    def spatial(r: int, j: int) -> torch.Tensor:
        k, c = offsets(r, j)
        own_row = (k == 0) & (c >= -n - 3) & (c <= -1)
        above = (k >= 1) & (k <= n + 3) & (c >= -n - 3) & (c <= torch.clamp(k + 2, max=n + 3))
        return own_row | above

    measured = measured_field("pixelcnn", colors, num_layers=n, kernel_size=3)
    assert_field(measured, expected_field(colors, spatial), colors)


@pytest.mark.parametrize(("colors", "kernel_size"), [(1, 3), (3, 3), (1, 5)])
def test_gated_pixelcnn_sees_the_whole_causal_rectangle_at_every_pixel(colors: int, kernel_size: int) -> None:
    """Gated PixelCNN paper Sec. 2.2 and Fig. 2: no blind spot. With reach R = k // 2, layer l's vertical stack
    covers rows r - lR .. r and columns j - lR .. j + lR; shifted down one row it feeds the horizontal stack,
    which adds R columns to the left per layer. For n layers:

        own row:               c = -nR .. -1
        row k = 1 .. nR + 1:   c = -nR .. nR

    every pixel of that rectangle above and of that segment to the left, nothing outside it."""
    n, reach = 2, kernel_size // 2

    def spatial(r: int, j: int) -> torch.Tensor:
        k, c = offsets(r, j)
        own_row = (k == 0) & (c >= -n * reach) & (c <= -1)
        above = (k >= 1) & (k <= n * reach + 1) & (c.abs() <= n * reach)
        return own_row | above

    measured = measured_field("gated_pixelcnn", colors, num_layers=n, kernel_size=kernel_size)
    assert_field(measured, expected_field(colors, spatial), colors)


@pytest.mark.parametrize("colors", [1, 3])
def test_row_lstm_sees_exactly_its_triangle_at_every_pixel(colors: int) -> None:
    """PixelRNN paper Sec. 3.1 and Fig. 4: the Row LSTM's state at (r, j) is computed from the state of the row above
    at j-1, j, j+1 (K^ss, 1x3) and from the input-to-state gates at (r, j), whose 1x3 mask-B kernel reads the layer
    input at (r, j-1) and (r, j). Unrolled over rows, one layer reads its input at offsets {k >= 0, -k-1 <= c <= k}
    (a triangle, not every row above); with the residual connection n layers read {-k-n <= c <= k}. With the 7x7:

        own row:      c = -n-3 .. -1
        row k >= 1:   c = -k-n-3 .. k+2

    The triangle widens by one column each way per row up, so the pixels just above and far to either side of
    (r, j) are out of reach."""
    n = 2

    def spatial(r: int, j: int) -> torch.Tensor:
        k, c = offsets(r, j)
        own_row = (k == 0) & (c >= -n - 3) & (c <= -1)
        above = (k >= 1) & (c >= -k - n - 3) & (c <= k + 2)
        return own_row | above

    measured = measured_field("row_lstm", colors, num_layers=n)
    assert_field(measured, expected_field(colors, spatial), colors)


@pytest.mark.parametrize(("colors", "num_layers"), [(1, 1), (3, 1), (1, 2)])
def test_diagonal_bilstm_sees_every_earlier_pixel_but_the_documented_one_at_every_pixel(
    colors: int, num_layers: int
) -> None:
    """PixelRNN paper Sec. 3.2 and Fig. 4: the left-to-right diagonal LSTM at (r, j) reads (r, j-1) and (r-1, j), so
    its input at every (r' <= r, j' <= j); the right-to-left one, run on the mirrored map, flipped back and shifted
    down a row, its input at every (r' <= r-1, j' >= j). Together, at any depth: every input position in the rows
    above and in its own row up to j. Through the 7x7 mask-A layer that is every earlier pixel, with one exception
    (README, "One thing the tests found"): the value at (r-1, W-1) enters the first layer's output only at
    positions (r-1, W-1) itself, whose mask A hides it, and (r .. r+2, >= W-4); so for j < W-4 it is out of reach.
    With colours, the first layer's output at (r-1, W-1) carries that pixel's R and G (to the G and B groups), so
    only its last colour is hidden."""

    def spatial(r: int, j: int) -> torch.Tensor:
        k, c = offsets(r, j)
        return (k >= 1) | ((k == 0) & (c <= -1))

    def out_of_reach(c: int, r: int, j: int) -> list[Value]:
        return [(colors - 1, r - 1, WIDTH - 1)] if r >= 1 and j < WIDTH - 4 else []

    measured = measured_field("diagonal_bilstm", colors, num_layers=num_layers)
    assert_field(measured, expected_field(colors, spatial, out_of_reach), colors)


@pytest.mark.parametrize("name", ["pixelcnn", "gated_pixelcnn", "row_lstm", "diagonal_bilstm"])
def test_mask_a_only_where_the_image_is_read_and_mask_b_in_every_later_layer(name: str) -> None:
    """PixelRNN paper Sec. 3.4: "Mask A is applied only to the first convolutional layer ... mask B is applied to all
    the subsequent input-to-state convolutional transitions and relaxes the restrictions of mask A by also allowing
    the connection from a color to itself." At the centre tap (a pixel's output from the same pixel's input) output
    colour group g must see input groups < g in the layer that reads the image, groups <= g in every later one.

    A receptive field cannot show this everywhere: in PixelCNN's residual blocks the skip already carries the pixel's
    own features past a 3x3 with mask A, so that mistake leaves every field unchanged and only costs capacity. So
    every masked convolution is checked where it is called, on the input it gets (hooks), by gradients."""
    colors = 3
    model = build(name, colors, seed=2, num_layers=2)
    calls: list[tuple[MaskedConv2d, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda module, args, _: calls.append((module, args[0])))
        for m in model.modules()
        if isinstance(m, MaskedConv2d)
    ]
    x = torch.randint(2, (2, colors, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(3)).double()
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    image = model.net.scaled(x)
    reads_image = [inp.shape == image.shape and torch.equal(inp, image) for _, inp in calls]
    assert sum(reads_image) == 1 and len(calls) >= 5, (len(calls), reads_image)
    r, j = HEIGHT // 2, WIDTH // 2
    for (module, inp), first in zip(calls, reads_image, strict=True):
        probe = torch.randn(inp.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        probe.requires_grad_(True)
        out = module(probe)[:, :, r, j]  # (B, C_out)
        seen = torch.stack(
            [torch.autograd.grad(out[:, o].sum(), probe, retain_graph=True)[0][:, :, r, j].abs().sum(0) != 0
             for o in range(out.shape[1])]
        )  # fmt: skip  # (C_out, C_in): output channel o sees input channel i at its own pixel
        out_group = torch.arange(module.out_channels)[:, None] % colors
        in_group = torch.arange(module.in_channels)[None, :] % colors
        expected = in_group < out_group if first else in_group <= out_group
        assert torch.equal(seen, expected), (name, module, "mask A" if first else "mask B", seen.int())
