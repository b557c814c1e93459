"""What the NADE, MADE, PixelRNN, PixelCNN and Gated PixelCNN papers say must hold, checked on tiny float64 models.

- Causality (PixelRNN paper eqs. 1-2, MADE Sec. 4): the logit of value i never depends on x_i or on any value
  after it in the generation order, colours R -> G -> B inside a pixel. Checked exhaustively with gradients.
- The blind spot (Gated PixelCNN paper, Sec. 2.2 and Fig. 1): stacked masked 3x3 convolutions never see some
  pixels above and to the right; the vertical + horizontal stacks see every earlier pixel. (The exact receptive
  field of every model at every pixel is in test_receptive_fields.py.)
- Exact likelihood: p(x) sums to 1 over every possible image, for every model, MADE's ensemble and each class.
- The objective: a few Adam steps of the exact NLL lower it.
- The mask mechanics themselves: mask A / B at the centre tap, MADE's connectivity rule, the Diagonal
  BiLSTM's skew.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genlab.autoregressive import pixelrnn
from genlab.autoregressive.layers import MaskedConv2d
from genlab.autoregressive.made import MADE
from genlab.autoregressive.model import ARConfig, AutoregressiveModel
from genlab.autoregressive.objective import ensemble_log_likelihood, log_likelihood, nll_loss
from genlab.core.data import synthetic_shapes

PIXEL_MODELS = ("pixelcnn", "gated_pixelcnn", "row_lstm", "diagonal_bilstm")
ALL_MODELS = ("nade", "made", *PIXEL_MODELS)
# The smallest sizes that still have every part of each network (hidden widths a multiple of 3 colours).
TINY = {
    "nade": {"hidden_sizes": (8,)},
    "made": {"hidden_sizes": (12, 12), "num_masks": 4, "order_agnostic": True},
    "pixelcnn": {"hidden_channels": 6, "num_layers": 2, "head_channels": 6},
    "gated_pixelcnn": {"hidden_channels": 6, "num_layers": 2, "head_channels": 6},
    "row_lstm": {"hidden_channels": 6, "num_layers": 2, "head_channels": 6},
    "diagonal_bilstm": {"hidden_channels": 6, "num_layers": 1, "head_channels": 6},
}


def build(
    name: str, image_shape: tuple[int, int, int], levels: int = 2, seed: int = 0, **overrides
) -> AutoregressiveModel:
    """A float64 model with the TINY size of ``name``, initialised from ``seed``."""
    torch.manual_seed(seed)
    config = ARConfig(model=name, image_shape=image_shape, levels=levels, **{**TINY[name], **overrides})
    return AutoregressiveModel(config).double().eval()


def ranks(order: torch.Tensor) -> torch.Tensor:
    """rank[i] = position of flat index i in the generation order ``order``."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return rank


def dependency_matrix(
    model: AutoregressiveModel, x: torch.Tensor, labels: torch.Tensor | None = None, mask_index: int = 0
) -> torch.Tensor:
    """J[i, k] = sum over the batch and over output levels of |d logit_i / d x_k|, flat indices of x.flatten(1).

    Every (level, value) output gets its own backward pass for L <= 4, so an exact zero means that no logit of
    value i moves with x_k. For larger L the levels are combined with random positive weights first (one pass
    per value; a cancellation to exactly zero then has probability zero).
    """
    x = x.clone().requires_grad_(True)
    logits = model(x, labels, mask_index=mask_index).flatten(-3)  # (B, D) or (B, L, D)
    if logits.dim() == 2:
        logits = logits[:, None]
    elif logits.shape[1] > 4:
        weights = torch.rand(logits.shape[1], generator=torch.Generator().manual_seed(0), dtype=logits.dtype) + 0.5
        logits = (logits * weights[:, None]).sum(1, keepdim=True)
    rows = []
    for i in range(logits.shape[-1]):
        row = torch.zeros(x[0].numel(), dtype=x.dtype)
        for level in range(logits.shape[1]):
            (grad,) = torch.autograd.grad(logits[:, level, i].sum(), x, retain_graph=True)
            row += grad.abs().sum(0).flatten()  # samples do not mix, so this is sum_b |d logit_bi / d x_bk|
        rows.append(row)
    return torch.stack(rows)


def assert_causal(jacobian: torch.Tensor, order: torch.Tensor) -> None:
    """Exact zeros wherever input k is not strictly before output i; and enough non-zeros to mean something."""
    rank = ranks(order)
    not_before = rank[None, :] >= rank[:, None]  # [i, k]: x_k is x_i itself or comes after it
    leaks = (jacobian != 0) & not_before
    assert not leaks.any(), f"outputs depend on later inputs at (output, input) = {leaks.nonzero().tolist()[:10]}"
    assert (jacobian[~not_before] != 0).float().mean() > 0.3  # the check is not passed by a dead network


@pytest.mark.parametrize("levels", [2, 4, 256])
@pytest.mark.parametrize("name", [*PIXEL_MODELS, "gated_pixelcnn_conditional"])
def test_pixel_models_are_causal_in_raster_and_rgb_order(name: str, levels: int) -> None:
    """PixelRNN paper eq. 2 and Fig. 2: logit (c, r, j) sees only earlier pixels and the colours c' < c of its own
    pixel; never (c' >= c, r, j) nor any later pixel. Every model, binary, 4-way and 256-way, 3 colours."""
    conditional = name.endswith("_conditional")
    model = build(name.removesuffix("_conditional"), (3, 4, 4), levels, num_classes=3 if conditional else 0)
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(levels, (6, 3, 4, 4), generator=generator).double()
    labels = torch.arange(6) % 3 if conditional else None
    jacobian = dependency_matrix(model, x, labels)
    order = model.generation_order()
    assert order[:6].tolist() == [0, 16, 32, 1, 17, 33]  # (R, G, B) of pixel (0, 0), then of pixel (0, 1)
    assert_causal(jacobian, order)
    # ... and the colour order is really used: G and B of each pixel do depend on that pixel's R.
    J = jacobian.view(3, 16, 3, 16)  # [c_out, pixel_out, c_in, pixel_in]
    own_red = torch.stack([J[c, p, 0, p] for c in (1, 2) for p in range(16)])
    assert (own_red != 0).float().mean() > 0.8


def test_nade_is_causal() -> None:
    """NADE eq. 2: h_d = sigmoid(c + W_{:,<d} x_{<d}); logit d is independent of x_d, ..., x_D (exact zeros,
    even though a_d is computed as a cumulative sum minus the value's own term)."""
    model = build("nade", (1, 4, 4))
    x = torch.randint(2, (6, 1, 4, 4), generator=torch.Generator().manual_seed(2)).double()
    jacobian = dependency_matrix(model, x)
    assert_causal(jacobian, model.generation_order())
    rank = ranks(model.generation_order())
    assert (jacobian[rank[None, :] < rank[:, None]] != 0).all()  # NADE's tied weights reach every earlier value


@pytest.mark.parametrize("hidden_sizes", [(12,), (12, 12), (20, 9, 15)])
def test_made_is_causal_in_each_mask_sets_own_order(hidden_sizes: tuple[int, ...]) -> None:
    """MADE Sec. 4 and 4.2: with order-agnostic training each mask set draws its own ordering, and output d of
    mask set m depends only on the inputs before d in ``generation_order(m)``."""
    model = build("made", (1, 4, 4), hidden_sizes=hidden_sizes, num_masks=4, order_agnostic=True, mask_seed=3)
    x = torch.randint(2, (6, 1, 4, 4), generator=torch.Generator().manual_seed(3)).double()
    orders = [model.generation_order(m) for m in range(4)]
    assert orders[0].tolist() == list(range(16))  # mask set 0 keeps the raster order
    assert len({tuple(o.tolist()) for o in orders}) == 4  # the others are orderings of their own
    for m, order in enumerate(orders):
        assert sorted(order.tolist()) == list(range(16))
        jacobian = dependency_matrix(model, x, mask_index=m)
        rank = ranks(order)
        assert not ((jacobian != 0) & (rank[None, :] >= rank[:, None])).any(), f"mask set {m} leaks"
        assert (jacobian != 0).any()
        # the first value in the order is an unconditional Bernoulli: its logit depends on nothing
        assert (jacobian[order[0]] == 0).all()


def test_made_connectivity_numbers_and_mask_products() -> None:
    """MADE eqs. 12-13: hidden m^l(k) in [min m^{l-1}, D-1]; M^l = 1[m^l >= m^{l-1}], M^V = 1[m^0(d) > m^L];
    so the product M^V M^L ... M^1 is zero wherever m^0(input) >= m^0(output)."""
    D = 10
    made = MADE(D, hidden_sizes=(7, 5, 9), num_masks=5, order_agnostic=True, seed=4)
    for mask_index in range(5):
        m = made.connectivity(mask_index)
        assert sorted(m[0].tolist()) == list(range(1, D + 1))  # m^0 is the position of each input in the order
        for previous, layer in itertools.pairwise(m):
            assert layer.min() >= min(int(previous.min()), D - 1) and layer.max() <= D - 1
        masks = made.masks(mask_index)
        for l, mask in enumerate(masks[:-1]):
            assert torch.equal(mask, (m[l + 1][:, None] >= m[l][None, :]).float())
        assert torch.equal(masks[-1], (m[0][:, None] > m[-1][None, :]).float())
        paths = masks[0]
        for mask in masks[1:]:
            paths = mask @ paths  # (D_out, D_in): number of paths from input to output
        forbidden = m[0][None, :] >= m[0][:, None]  # [output d, input k]: k is not before d
        assert (paths[forbidden] == 0).all()
        assert (paths[~forbidden] > 0).any()
        assert torch.equal(made.ordering(mask_index), torch.argsort(m[0]))


def reach(model: AutoregressiveModel, row: int, col: int) -> torch.Tensor:
    """Sum over 16 inputs (all-ones first, so every ReLU is active) of |d logit(row, col) / d x|, as (H, W)."""
    height, width = model.config.image_shape[1:]
    x = torch.cat([torch.ones(1, 1, height, width), torch.randint(2, (15, 1, height, width))]).double()
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, 0, row, col].sum(), x)
    return grad.abs().sum((0, 1))


def test_pixelcnn_has_a_blind_spot_and_gated_pixelcnn_does_not() -> None:
    """Gated PixelCNN paper Sec. 2.2 / Fig. 1: stacked masked convolutions leave a blind spot above and to the
    right of a pixel; the vertical and horizontal stacks together reach every pixel before it.

    Positive parameters make every ReLU and gate active, so a zero gradient means "no path", not a dead unit.
    With a 7x7 mask-A layer and n 3x3 mask-B blocks, PixelCNN sees (r - a, j + b) only for b <= min(a - 1, n) + 3.
    """
    size, row, col, blocks = 7, 6, 1, 3
    fields = {}
    for name, overrides in [
        ("pixelcnn", {"hidden_channels": 2, "num_layers": blocks, "kernel_size": 3, "head_channels": 2}),
        ("gated_pixelcnn", {"hidden_channels": 2, "num_layers": 6, "kernel_size": 3, "head_channels": 2}),
    ]:
        model = build(name, (1, size, size), **overrides)
        for p in model.parameters():
            p.data.uniform_(0.05, 0.2)
        fields[name] = reach(model, row, col) != 0
    earlier = torch.zeros(size, size, dtype=torch.bool)
    earlier[:row] = True
    earlier[row, :col] = True
    assert not (fields["pixelcnn"] & ~earlier).any() and not (fields["gated_pixelcnn"] & ~earlier).any()
    assert fields["gated_pixelcnn"][earlier].all()  # no blind spot
    blind = earlier & ~fields["pixelcnn"]
    expected_blind = torch.zeros_like(blind)
    for r, j in itertools.product(range(row), range(size)):
        a, b = row - r, j - col
        expected_blind[r, j] = b > min(a - 1, blocks) + 3
    assert blind.any() and torch.equal(blind, expected_blind), blind.int()
    assert blind[row - 1, size - 1] and blind[row - 1, col + 4]  # the pixels just above and to the right


def all_images(shape: tuple[int, int, int], levels: int) -> torch.Tensor:
    """Every image of this shape, as float64 levels (levels^D, C, H, W)."""
    values = list(itertools.product(range(levels), repeat=math.prod(shape)))
    return torch.tensor(values, dtype=torch.float64).view(-1, *shape)


def total_probability(log_p: torch.Tensor) -> float:
    return torch.logsumexp(log_p, 0).exp().item()


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_is_normalised_over_all_binary_images(name: str, size: int) -> None:
    """PixelRNN paper eq. 1: a product of normalised conditionals in a fixed order is a normalised p(x), so
    exp(log_likelihood) summed over all 2^D images is 1 (16 and 512 images). A conditional that peeked at its
    own or a later value would break this."""
    model = build(name, (1, size, size))
    x = all_images((1, size, size), 2)
    with torch.no_grad():
        log_p = log_likelihood(model(x), x, 2)
    assert total_probability(log_p) == pytest.approx(1.0, abs=1e-6)
    assert log_p.std() > 1e-3  # not trivially the uniform distribution


@pytest.mark.parametrize("name", PIXEL_MODELS)
def test_colour_models_are_normalised_over_all_images(name: str) -> None:
    """Eq. 2's colour factorisation p(R) p(G | R) p(B | R, G) is normalised too: 3 x 1 x 2 binary images (64)."""
    model = build(name, (3, 1, 2))
    x = all_images((3, 1, 2), 2)
    with torch.no_grad():
        log_p = log_likelihood(model(x), x, 2)
    assert total_probability(log_p) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["pixelcnn", "gated_pixelcnn"])
def test_softmax_models_are_normalised_over_all_images(name: str) -> None:
    """The L-way softmax output (PixelRNN paper Sec. 5.2, here L = 3 instead of 256): 3^4 = 81 images sum to 1."""
    model = build(name, (1, 2, 2), levels=3)
    x = all_images((1, 2, 2), 3)
    with torch.no_grad():
        logits = model(x)
        log_p = log_likelihood(logits, x, 3)
    assert logits.shape == (81, 3, 1, 2, 2)
    assert total_probability(log_p) == pytest.approx(1.0, abs=1e-6)


def test_made_mask_sets_and_their_ensemble_are_normalised() -> None:
    """MADE Sec. 4.2: every mask set is a normalised model in its own order, and the test-time ensemble
    (1/M) sum_m p_m(x) is a mixture of them, normalised too (and different from any one of them)."""
    model = build("made", (1, 3, 3), hidden_sizes=(16, 16), num_masks=4, order_agnostic=True)
    x = all_images((1, 3, 3), 2)
    with torch.no_grad():
        per_mask = [log_likelihood(model(x, mask_index=m), x, 2) for m in range(4)]
    for log_p in per_mask:
        assert total_probability(log_p) == pytest.approx(1.0, abs=1e-6)
    ensemble = ensemble_log_likelihood(model, x, num_masks=4)
    assert total_probability(ensemble) == pytest.approx(1.0, abs=1e-6)
    mixture = torch.logsumexp(torch.stack(per_mask), 0) - math.log(4)
    torch.testing.assert_close(ensemble, mixture)
    assert not torch.allclose(per_mask[0], per_mask[1])  # different orderings give different models


def test_class_conditional_gated_pixelcnn_is_normalised_for_each_label() -> None:
    """Gated PixelCNN eq. 4: p(x | h) is a distribution over images for every class h, and h changes it."""
    model = build("gated_pixelcnn", (1, 3, 3), num_classes=3)
    x = all_images((1, 3, 3), 2)
    log_ps = []
    with torch.no_grad():
        for label in range(3):
            labels = torch.full((len(x),), label)
            log_ps.append(log_likelihood(model(x, labels), x, 2))
            assert total_probability(log_ps[-1]) == pytest.approx(1.0, abs=1e-6)
    assert (log_ps[0] - log_ps[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="pass labels"):
        model(x)


def structured_batch(levels: int, channels: int = 1, size: int = 8) -> torch.Tensor:
    """16 fixed synthetic shapes: thresholded to {0, 1} for binary models, 8-bit levels otherwise."""
    images, _, _ = synthetic_shapes(16, size, channels, seed=5)
    return (images > 127).double() if levels == 2 else images.double()


@pytest.mark.parametrize(
    ("name", "levels", "channels", "overrides"),
    [
        ("nade", 2, 1, {"hidden_sizes": (32,)}),
        ("made", 2, 1, {"hidden_sizes": (64,), "num_masks": 1, "order_agnostic": False}),
        ("made", 2, 1, {"hidden_sizes": (64,), "num_masks": 3, "order_agnostic": True}),
        ("pixelcnn", 2, 1, {}),
        ("pixelcnn", 256, 3, {}),
        ("gated_pixelcnn", 2, 1, {}),
        ("gated_pixelcnn", 2, 1, {"num_classes": 4}),
        ("gated_pixelcnn", 256, 3, {}),
        ("row_lstm", 2, 1, {}),
        ("diagonal_bilstm", 2, 1, {}),
    ],
)
def test_nll_decreases_under_adam(name: str, levels: int, channels: int, overrides: dict) -> None:
    """Exact maximum likelihood (PixelRNN paper Sec. 5): 30 Adam steps on one fixed batch of shapes lower the
    NLL by well over 10%; order-agnostic MADE cycles through its mask sets, one per step (Sec. 4.2)."""
    model = build(name, (channels, 8, 8), levels, seed=6, **overrides).train()
    x = structured_batch(levels, channels)
    labels = torch.arange(16) % 4 if overrides.get("num_classes") else None
    masks = model.num_mask_sets
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def mean_nll() -> float:
        with torch.no_grad():
            return sum(nll_loss(model, x, levels, labels, m)[0].item() for m in range(masks)) / masks

    before = mean_nll()
    for step in range(30):
        loss, logged = nll_loss(model, x, levels, labels, mask_index=step % masks)
        assert logged["bits_per_dim"] == pytest.approx(loss.item() / (x[0].numel() * math.log(2)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = mean_nll()
    assert math.isfinite(after) and after < 0.9 * before, (before, after)


def test_masked_conv_centre_tap_follows_the_colour_groups() -> None:
    """PixelRNN paper Sec. 3.4 and Fig. 4: taps above and left of the centre are kept, those right and below
    removed; at the centre, mask A connects output colour g to input colours < g and mask B to colours <= g
    (channel i belongs to colour i % 3)."""
    for mask_type in ("A", "B"):
        conv = MaskedConv2d(6, 9, 5, mask_type, colors=3)
        mask = conv.mask
        assert mask.shape == (9, 6, 5, 5)
        assert (mask[:, :, :2] == 1).all() and (mask[:, :, 2, :2] == 1).all()  # rows above, left in the row
        assert (mask[:, :, 3:] == 0).all() and (mask[:, :, 2, 3:] == 0).all()  # rows below, right in the row
        for out, inp in itertools.product(range(9), range(6)):
            allowed = inp % 3 < out % 3 if mask_type == "A" else inp % 3 <= out % 3
            assert mask[out, inp, 2, 2] == float(allowed), (mask_type, out, inp)
    a, b = MaskedConv2d(3, 3, 1, "A", 3).mask[:, :, 0, 0], MaskedConv2d(3, 3, 1, "B", 3).mask[:, :, 0, 0]
    assert torch.equal(a, torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0]]))  # G <- R, B <- R, G
    assert torch.equal(b, torch.tensor([[1.0, 0, 0], [1, 1, 0], [1, 1, 1]]))
    # one colour: mask A hides the pixel itself, mask B shows its features
    assert MaskedConv2d(1, 1, 3, "A").mask[0, 0, 1, 1] == 0 and MaskedConv2d(1, 1, 3, "B").mask[0, 0, 1, 1] == 1
    with pytest.raises(ValueError, match="mask_type"):
        MaskedConv2d(1, 1, 3, "C")


def test_masked_conv_output_ignores_masked_inputs_and_keeps_its_size() -> None:
    """The padding keeps H x W, and a horizontal-stack kernel 1 x (k//2 + 1) with its centre on the last tap
    (Gated PixelCNN Fig. 2) sees the pixel and those to its left only."""
    conv = MaskedConv2d(1, 1, (1, 3), "B", centre=(0, 2)).double()
    assert conv.mask.flatten().tolist() == [1.0, 1.0, 1.0]
    x = torch.randn(1, 1, 4, 6, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    assert out.shape == x.shape
    (grad,) = torch.autograd.grad(out[0, 0, 2, 3], x)
    assert torch.equal(grad[0, 0] != 0, torch.tensor([[c in (1, 2, 3) and r == 2 for c in range(6)] for r in range(4)]))


def test_skew_and_unskew_match_a_loop() -> None:
    """Diagonal BiLSTM (PixelRNN paper Sec. 3.2, Fig. 3): row r of the map is shifted right by r positions, so
    each diagonal of the image becomes a column; unskew undoes it."""
    for height, width in [(4, 5), (6, 3), (1, 4)]:
        x = torch.randn(2, 3, height, width)
        expected = torch.zeros(2, 3, height, width + height - 1)
        for r in range(height):
            expected[:, :, r, r : r + width] = x[:, :, r]
        assert torch.equal(pixelrnn.skew(x), expected)
        y = torch.randn(2, 3, height, width + height - 1)  # any skewed map: unskew reads its diagonals back
        unskewed = torch.stack([y[:, :, r, r : r + width] for r in range(height)], dim=2)
        assert torch.equal(pixelrnn.unskew(y, width), unskewed)
        assert torch.equal(pixelrnn.unskew(pixelrnn.skew(x), width), x)
