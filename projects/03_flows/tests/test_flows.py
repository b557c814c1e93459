"""What the papers say must hold for every invertible layer and both flows.

- Invertibility: inverse(forward(x)) == x and forward(inverse(z)) == z, in float64, for each layer and model.
- Log-determinants against brute force: the full Jacobian by torch.autograd.functional.jacobian on a tiny input.
- The LU 1x1 convolution's log-det is slogdet of its weight; actnorm's data-dependent init standardises.
- Bits/dim accounting with a known answer, and densities that integrate to 1 numerically.
- The factored-out priors p(z_i | h_i): inside log p, conditioned on the half that goes on, normalised.
- The training loss sees freshly dequantised data; batch norm's log-det uses the statistics of its mode.
- Samples that overflow the inverse reach flow-sample's overflow check as non-finite.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from genlab.flows.glow import build_glow
from genlab.flows.layers import (
    ActNorm,
    AffineCoupling,
    BatchNormFlow,
    FlowSequence,
    GlowCouplingNet,
    InvertibleConv1x1,
    LogitTransform,
    ResNetCouplingNet,
    Shift,
    Squeeze,
    checkerboard,
)
from genlab.flows.model import FlowConfig, FlowModel, build_config, fitting_scales
from genlab.flows.multiscale import MultiScaleFlow
from genlab.flows.objective import discrete_nll, nll_loss
from genlab.flows.priors import SplitPrior, TopPrior
from genlab.flows.realnvp import build_realnvp
from genlab.flows.sample import blacken_overflows


def randomise(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its initial value: zero-initialised layers would make couplings the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return module


def settled(layer: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Run one training-mode pass (actnorm's init, batch-norm statistics), randomise, then freeze in eval mode."""
    layer.train()
    with torch.no_grad():
        layer(x)
    randomise(layer)
    return layer.eval()


def coupling(mask: str, scale: str, channels: int = 4, size: int = 4, parity: int = 0) -> AffineCoupling:
    conditioner = channels if mask == "checkerboard" else channels // 2
    transformed = channels if mask == "checkerboard" else channels - channels // 2
    net = (
        ResNetCouplingNet(conditioner, 2 * transformed, 8, 1)
        if scale == "tanh"
        else GlowCouplingNet(conditioner, 2 * transformed, 8)
    )
    return AffineCoupling(channels, size, size, mask, parity, scale, net)


LAYERS = {
    "squeeze": lambda: Squeeze(),
    "shift": lambda: Shift(-0.5),
    "logit": lambda: LogitTransform(0.05),
    "actnorm": lambda: ActNorm(4),
    "batchnorm": lambda: BatchNormFlow(4),
    "conv1x1_plain": lambda: InvertibleConv1x1(4, lu_decomposed=False),
    "conv1x1_lu": lambda: InvertibleConv1x1(4, lu_decomposed=True),
    "coupling_checkerboard_tanh": lambda: coupling("checkerboard", "tanh"),
    "coupling_checkerboard_tanh_odd": lambda: coupling("checkerboard", "tanh", parity=1),
    "coupling_channel_tanh": lambda: coupling("channel", "tanh", parity=1),
    "coupling_channel_sigmoid": lambda: coupling("channel", "sigmoid"),
}


def layer_input(name: str, batch: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 4, 4, 4, generator=generator, dtype=torch.float64)
    return x if name == "logit" else 2 * x - 1  # the logit transform takes values in [0, 1]


@pytest.mark.parametrize("name", LAYERS)
def test_every_layer_inverts_both_ways(name: str) -> None:
    torch.manual_seed(0)
    x = layer_input(name)
    layer = settled(LAYERS[name]().double(), x)
    z, _ = layer(x)
    assert torch.allclose(layer.inverse(z), x, atol=1e-10)
    z_other = torch.randn_like(z) if name != "squeeze" else z.flip(0)
    if name == "logit":
        z_other = torch.randn_like(z)  # any real z is in the logit transform's range
    forward_of_inverse, _ = layer(layer.inverse(z_other))
    assert torch.allclose(forward_of_inverse, z_other, atol=1e-9)


def brute_force_log_det(function, x: torch.Tensor, vectorize: bool = False) -> torch.Tensor:
    """log|det ∂f(x)/∂x| per example from the full (D, D) Jacobian of one example at a time."""
    values = []
    for example in x:
        full = jacobian(lambda v: function(v[None]).flatten(), example, vectorize=vectorize)  # (D_out, C, H, W)
        values.append(torch.linalg.slogdet(full.reshape(full.shape[0], -1))[1])
    return torch.stack(values)


@pytest.mark.parametrize("name", LAYERS)
def test_every_layer_log_det_matches_the_full_jacobian(name: str) -> None:
    torch.manual_seed(0)
    x = layer_input(name, batch=2)
    layer = settled(LAYERS[name]().double(), x)
    _, log_det = layer(x)
    expected = brute_force_log_det(lambda v: layer(v)[0], x)
    assert torch.allclose(log_det, expected, atol=1e-8), (log_det, expected)
    if name not in ("squeeze", "shift"):
        assert expected.abs().max() > 1e-3  # a layer that is not volume-preserving: the test can fail


def tiny_model(model: str, **extra) -> FlowModel:
    shape = extra.pop("image_shape", (1, 4, 4))
    config = FlowConfig(model=model, image_shape=shape, num_scales=2, steps_per_scale=2, hidden_channels=8,
                        num_blocks=1, **extra)  # fmt: skip
    return FlowModel(config).double()


MODELS = {
    "realnvp": lambda: tiny_model("realnvp"),
    "realnvp_actnorm": lambda: tiny_model("realnvp", normalisation="actnorm"),
    "glow": lambda: tiny_model("glow"),
    "glow_plain_conv": lambda: tiny_model("glow", lu_decomposed=False),
    "glow_colour_conditional": lambda: tiny_model("glow", image_shape=(3, 4, 4), num_classes=3),
}


def model_input(model: FlowModel, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(2)
    y = torch.rand(batch, *model.config.image_shape, generator=generator, dtype=torch.float64)
    labels = torch.arange(batch) % model.config.num_classes if model.config.num_classes else None
    return y, labels


def settled_model(name: str) -> tuple[FlowModel, torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(0)
    model = MODELS[name]()
    y, labels = model_input(model)
    model.train()
    with torch.no_grad():
        model(y, labels)
    return randomise(model, scale=0.1).eval(), y, labels


@pytest.mark.parametrize("name", MODELS)
def test_every_model_inverts_both_ways(name: str) -> None:
    model, y, labels = settled_model(name)
    latents = model.encode(y, labels)
    assert [tuple(z.shape[1:]) for z in latents] == model.flow.latent_shapes
    assert torch.allclose(model.decode(latents), y, atol=1e-9)
    other = [torch.randn_like(z) for z in latents]
    again = model.encode(model.decode(other), labels)
    assert all(torch.allclose(a, b, atol=1e-8) for a, b in zip(again, other, strict=True))


@pytest.mark.parametrize("name", MODELS)
def test_every_model_log_det_matches_the_full_jacobian(name: str) -> None:
    """The whole map y -> (z_1, ..., z_L), flattened, against autograd's Jacobian."""
    model, y, labels = settled_model(name)
    y = y[:2]

    def flat_latents(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([z.flatten(1) for z in model.encode(v, None if labels is None else labels[:1])], dim=1)

    _, log_det, _ = model.flow.encode(y, None if labels is None else labels[:2])
    assert torch.allclose(log_det, brute_force_log_det(flat_latents, y), atol=1e-7)


def test_lu_conv_log_det_is_slogdet_of_its_weight() -> None:
    torch.manual_seed(0)
    layer = randomise(InvertibleConv1x1(6, lu_decomposed=True).double())
    weight = layer.weight_matrix()
    assert torch.allclose(layer.log_abs_det(), torch.linalg.slogdet(weight)[1], atol=1e-10)
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    _, log_det = layer(x)
    assert torch.allclose(log_det, 15 * torch.linalg.slogdet(weight)[1].expand(2))
    assert layer.log_abs_det().abs() > 1e-3  # randomised away from the initial rotation (|det| = 1)


def test_conv1x1_starts_as_a_rotation() -> None:
    """Glow Sec. 3.2: W is initialised as a random rotation matrix, so log|det W| = 0 at the start."""
    for lu in (True, False):
        layer = InvertibleConv1x1(8, lu_decomposed=lu)
        weight = layer.weight_matrix().detach()
        assert torch.allclose(weight @ weight.t(), torch.eye(8), atol=1e-5)
        assert abs(float(layer.log_abs_det().detach())) < 1e-5


def test_actnorm_data_dependent_init_standardises_the_first_batch() -> None:
    x = 3.0 + 2.5 * torch.randn(16, 5, 6, 6, dtype=torch.float64)
    x[:, 2] *= 10
    layer = ActNorm(5).double().train()
    z, _ = layer(x)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(5, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(5, dtype=torch.float64), atol=1e-5)
    second, _ = layer(x + 1)  # initialised once: a later batch does not re-standardise
    assert torch.allclose(second, z + torch.exp(layer.log_scale), atol=1e-8)


def test_squeeze_moves_each_2x2_block_into_channels() -> None:
    x = torch.arange(2 * 2 * 4 * 6, dtype=torch.float64).view(2, 2, 4, 6)
    z, _ = Squeeze()(x)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(z[:, (2 * i + j) * 2 + c], x[:, c, i::2, j::2])


def test_checkerboard_coupling_leaves_the_kept_pixels_unchanged() -> None:
    torch.manual_seed(0)
    layer = randomise(coupling("checkerboard", "tanh").double())
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    z, _ = layer(x)
    keep = checkerboard(4, 4, 0).bool().expand_as(x)
    assert torch.equal(z[keep], x[keep])
    assert not torch.allclose(z[~keep], x[~keep])


def test_tanh_scale_is_bounded() -> None:
    """RealNVP's log s = λ tanh(·): |log s| <= |λ| however large the network's output."""
    layer = coupling("channel", "tanh")
    with torch.no_grad():
        layer.net[-1].bias.fill_(1e4)
    log_s, _ = layer.scale_and_shift(torch.randn(2, 2, 4, 4))
    assert log_s.abs().max() <= layer.tanh_scale.abs().max() + 1e-6


def identity_flow(shape: tuple[int, int, int]) -> MultiScaleFlow:
    return MultiScaleFlow(Shift(0.0), [FlowSequence([])], [], TopPrior(shape, learned=False), [shape])


class Wrapped(torch.nn.Module):
    def __init__(self, flow: MultiScaleFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, y: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.flow(y, labels)


def test_bits_per_dim_of_an_identity_flow_is_known_in_closed_form() -> None:
    """Identity flow, N(0, I) prior, x = 0 with u = 1/2: y = 1/512 everywhere, so
    -log P(x) <= D [½ log 2π + ½ y²] + D log 256, and bits/dim is that over D ln 2."""
    shape = (1, 2, 3)
    model = identity_flow(shape).double()
    x = torch.zeros(1, *shape, dtype=torch.long)
    noise = torch.full((1, *shape), 0.5, dtype=torch.float64)
    nll = discrete_nll(model, x, 256, noise=noise)
    y = 0.5 / 256
    per_dim = 0.5 * math.log(2 * math.pi) + 0.5 * y**2 + math.log(256)
    assert float(nll) == pytest.approx(6 * per_dim, rel=1e-12)
    loss, logs = nll_loss(model, torch.zeros(5, *shape, dtype=torch.long), 256)
    assert float(loss) == pytest.approx(per_dim / math.log(2), abs=1e-4)  # y <= 1/256: y² is negligible
    assert float(logs["nll_nats"]) == pytest.approx(6 * per_dim, abs=1e-3)


def test_logit_preprocessing_jacobian_enters_the_bits_per_dim() -> None:
    """A flow that is only the logit transform, with a standard logistic prior on its output, is the uniform
    density on the logit's domain, [−α/(1−2α), 1 + α/(1−2α)]: log p(y) = −D log(1/(1 − 2α)) exactly."""
    alpha = 0.05
    logit = LogitTransform(alpha).double()
    y = torch.rand(3, 1, 2, 2, dtype=torch.float64)
    z, log_det = logit(y)
    log_logistic = (-z - 2 * torch.nn.functional.softplus(-z)).flatten(1).sum(1)  # log σ(z)(1 − σ(z))
    assert torch.allclose(log_logistic + log_det, torch.full((3,), 4 * math.log(1 - 2 * alpha), dtype=torch.float64))


def integrate_2d(log_density, low: float, high: float, points: int = 600) -> float:
    """Midpoint rule over [low, high]^2."""
    step = (high - low) / points
    grid = low + step * (torch.arange(points, dtype=torch.float64) + 0.5)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    with torch.no_grad():
        return float(torch.exp(log_density(torch.stack([a.flatten(), b.flatten()], dim=1))).sum() * step**2)


def test_realnvp_pieces_give_a_2d_density_that_integrates_to_one() -> None:
    """A 1x1x2 image: the logit transform, two checkerboard couplings and batch norm (eval), N(0, I) prior. Its
    support is the logit transform's domain, a little wider than [0, 1]^2."""
    torch.manual_seed(0)
    shape = (1, 1, 2)
    layers = [LogitTransform(0.05)]
    for parity in (0, 1):
        net = ResNetCouplingNet(1, 2, 8, 1)
        layers += [AffineCoupling(1, 1, 2, "checkerboard", parity, "tanh", net), BatchNormFlow(1)]
    flow = MultiScaleFlow(FlowSequence(layers), [FlowSequence([])], [], TopPrior(shape, learned=False), [shape])
    settled(flow.double(), torch.rand(64, *shape, dtype=torch.float64))
    edge = 0.05 / 0.9
    total = integrate_2d(lambda v: flow(v.view(-1, *shape)), -edge, 1 + edge)
    assert total == pytest.approx(1.0, abs=2e-3)


def test_glow_pieces_give_a_2d_density_that_integrates_to_one() -> None:
    """A 2x1x1 image: actnorm, LU 1x1 convolution, affine coupling, twice, and a learned class-conditional top."""
    torch.manual_seed(0)
    shape = (2, 1, 1)
    layers = []
    for _ in range(2):
        layers += [ActNorm(2), InvertibleConv1x1(2), AffineCoupling(2, 1, 1, "channel", 0, "sigmoid",
                                                                      GlowCouplingNet(1, 2, 8))]  # fmt: skip
    flow = MultiScaleFlow(Shift(0.0), [FlowSequence(layers)], [], TopPrior(shape, learned=True, num_classes=2),
                          [shape])  # fmt: skip
    flow.double().train()
    with torch.no_grad():
        flow(torch.randn(64, *shape, dtype=torch.float64), torch.zeros(64, dtype=torch.long))
    randomise(flow).eval()
    for label in (0, 1):
        total = integrate_2d(lambda v, label=label: flow(v.view(-1, *shape), torch.full((len(v),), label)), -12.0, 12.0)
        assert total == pytest.approx(1.0, abs=2e-3)


def test_split_prior_is_learned_for_glow_and_standard_for_realnvp() -> None:
    context = torch.randn(2, 3, 4, 4)
    mean, log_std = SplitPrior(3, 3, learned=False).params(context)
    assert not mean.any() and not log_std.any()
    learned = randomise(SplitPrior(3, 3, learned=True))
    mean, _ = learned.params(context)
    assert mean.shape == (2, 3, 4, 4) and mean.abs().max() > 0


def test_temperature_scales_the_latents_and_zero_gives_the_mode_path() -> None:
    model, _, _ = settled_model("glow")
    generator = torch.Generator().manual_seed(0)
    cold = model.flow.sample(2, temperature=0.0, generator=generator)[1]
    mean, _ = model.flow.top_prior.params(2, None, cold[-1])
    assert torch.allclose(cold[-1], mean)
    warm = model.flow.sample(4000, temperature=0.5, generator=generator)[1]
    hot = model.flow.sample(4000, temperature=1.0, generator=generator)[1]
    ratio = (warm[-1] - warm[-1].mean(0)).std() / (hot[-1] - hot[-1].mean(0)).std()
    assert float(ratio) == pytest.approx(0.5, abs=0.03)


def test_sizes_fit_the_image() -> None:
    assert fitting_scales("glow", 3, (1, 28, 28)) == 2  # 28 -> 14 -> 7: a third squeeze does not divide
    assert fitting_scales("realnvp", 3, (1, 28, 28)) == 3  # RealNVP's last scale does not squeeze
    assert fitting_scales("glow", 3, (3, 32, 32)) == 3
    assert build_config("glow", "paper", (1, 28, 28)).num_scales == 2
    with pytest.raises(ValueError, match="divisible"):
        build_glow((1, 28, 28), num_levels=3, steps_per_level=1, hidden_channels=4)
    with pytest.raises(ValueError, match="divisible"):
        build_realnvp((1, 6, 6), num_scales=3)


# The factored-out priors p(z_i | h_i) of the multi-scale architecture (RealNVP Sec. 3.6, Glow Fig. 2b).


def independent_log_density(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Σ log N(z; μ, σ²) per example, by torch.distributions rather than the model's own formula."""
    return torch.distributions.Normal(mean, torch.exp(log_std)).log_prob(z).flatten(1).sum(1)


def contexts_along_the_sampling_path(flow: MultiScaleFlow, latents: list[torch.Tensor]) -> list[torch.Tensor]:
    """h_i, the half that goes on at level i < L, rebuilt from the latents backwards: h_{L-1} = level_L⁻¹(z_L),
    h_{i-1} = level_i⁻¹([h_i, z_i]). Nothing of ``encode`` is used, so a prior fed the wrong tensor there shows."""
    contexts = [None] * len(flow.split_priors)
    h = latents[-1]
    for i in reversed(range(len(flow.levels))):
        if i < len(flow.split_priors):
            contexts[i] = h
            h = torch.cat([h, latents[i]], dim=1)
        h = flow.levels[i].inverse(h)
    return contexts


def independent_priors(flow: MultiScaleFlow, latents: list[torch.Tensor], labels: torch.Tensor | None):
    """[log p(z_1 | h_1), ..., log p(z_{L-1} | h_{L-1})] and log p(z_L | label), each (B,), evaluated here."""
    contexts = contexts_along_the_sampling_path(flow, latents)
    split_terms = [independent_log_density(z, *prior.params(h))
                   for z, h, prior in zip(latents, contexts, flow.split_priors, strict=False)]  # fmt: skip
    top_term = independent_log_density(latents[-1], *flow.top_prior.params(len(latents[-1]), labels, latents[-1]))
    return split_terms, top_term


@pytest.mark.parametrize("name", ["realnvp", "glow", "glow_colour_conditional"])
def test_log_p_minus_the_log_det_is_the_sum_of_every_factored_out_prior(name: str) -> None:
    """The multi-scale density (RealNVP Sec. 3.6, Glow Fig. 2b):

        log p(y) - Σ log|det| = Σ_{i<L} log N(z_i; μ(h_i), σ(h_i)²) + log N(z_L; μ_top, σ_top²),

    each prior evaluated here on the h_i rebuilt from the latents (the log-det is checked against autograd's
    Jacobian by test_every_model_log_det_matches_the_full_jacobian). A prior dropped from log p, or conditioned on
    anything but h_i, breaks the equality."""
    model, y, labels = settled_model(name)
    flow = model.flow
    latents, log_det, log_prior = flow.encode(y, labels)
    split_terms, top_term = independent_priors(flow, latents, labels)
    assert torch.allclose(log_prior, sum(split_terms) + top_term, atol=1e-9)
    assert torch.allclose(model(y, labels) - log_det, sum(split_terms) + top_term, atol=1e-9)
    assert all(term.abs().min() > 1e-2 for term in split_terms)  # dropping a prior term would show
    if name.startswith("glow"):  # the learned prior is not flat: conditioning it on z_i itself would show too
        on_z = independent_log_density(latents[0], *flow.split_priors[0].params(latents[0]))
        assert (on_z - split_terms[0]).abs().min() > 1e-3


def test_glow_log_p_is_the_change_of_variables_with_the_full_jacobian() -> None:
    """RealNVP eq. 3 end to end on a 1x4x4 Glow with a learned split prior: log p(y) = log|det ∂(z_1, z_2)/∂y|,
    from autograd's full 16x16 Jacobian, + log N(z_1; μ(h_1), σ(h_1)²) + log N(z_2; μ_top, σ_top²)."""
    model, y, _ = settled_model("glow")
    y = y[:1]
    latents = model.encode(y)
    split_terms, top_term = independent_priors(model.flow, latents, None)

    def flat_latents(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([z.flatten(1) for z in model.encode(v)], dim=1)

    log_det = brute_force_log_det(flat_latents, y, vectorize=True)
    assert torch.allclose(model(y), log_det + sum(split_terms) + top_term, atol=1e-8)


def test_glow_split_prior_is_conditioned_on_the_half_that_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Glow's split prior, [μ_i, log σ_i] = ZeroConv(h_i) for the factored-out z_i (Fig. 2b, openai/glow's
    split2d): ∂(μ_i, log σ_i)/∂z_i = 0 and ∂(μ_i, log σ_i)/∂h_i ≠ 0, h_i being exactly what the next level takes."""
    model, y, _ = settled_model("glow")
    flow = model.flow
    prior, original = flow.split_priors[0], flow.split_priors[0].params
    seen: dict[str, object] = {}

    def recording_params(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen["params"] = original(context)
        return seen["params"]

    monkeypatch.setattr(prior, "params", recording_params)
    hook = flow.levels[1].register_forward_pre_hook(lambda module, args: seen.update(h=args[0]))
    try:
        latents, _, _ = flow.encode(y.clone().requires_grad_())
    finally:
        hook.remove()
    assert "params" in seen, "encode never evaluated the split prior"
    weights = torch.randn(latents[0].shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
    for output in seen["params"]:
        d_z, d_h = torch.autograd.grad((weights * output).sum(), [latents[0], seen["h"]], retain_graph=True,
                                       allow_unused=True)  # fmt: skip
        assert d_z is None or not d_z.any(), "the prior of z_1 depends on z_1"
        assert d_h is not None and d_h.abs().max() > 1e-3, "the prior of z_1 does not depend on h_1"


def test_a_multiscale_flow_with_a_learned_split_prior_integrates_to_one() -> None:
    """A 2x1x1 image, one factor-out: p(y) = p(z_2) · p(z_1 | h_1) · |det ∂(z_1, z_2)/∂y| (Glow Fig. 2b). It
    integrates to 1 only if p(z_1 | h_1) is a density in z_1 given the half that goes on; a prior left out or
    conditioned on z_1 itself is not."""
    torch.manual_seed(0)
    net = GlowCouplingNet(1, 2, 8)
    first = FlowSequence([ActNorm(2), InvertibleConv1x1(2), AffineCoupling(2, 1, 1, "channel", 0, "sigmoid", net)])
    second = FlowSequence([ActNorm(1)])
    flow = MultiScaleFlow(Shift(0.0), [first, second], [SplitPrior(1, 1, learned=True)],
                          TopPrior((1, 1, 1), learned=True), [(1, 1, 1), (1, 1, 1)])  # fmt: skip
    settled(flow.double(), torch.randn(64, 2, 1, 1, dtype=torch.float64))
    conv = flow.split_priors[0].conv  # on a 1x1 image only the centre tap acts: make it move with h_1
    with torch.no_grad():
        conv.log_scale.zero_()
        conv.weight[:, 0, 1, 1] = torch.tensor([0.8, 0.3], dtype=torch.float64)  # μ = 0.8 h + b, log σ = 0.3 h + b'
    mean, log_std = flow.split_priors[0].params(torch.linspace(-2, 2, 5, dtype=torch.float64).view(5, 1, 1, 1))
    assert mean.std() > 0.5 and log_std.std() > 0.2  # the learned prior really moves with h_1
    total = integrate_2d(lambda v: flow(v.view(-1, 2, 1, 1)), -12.0, 12.0)
    assert total == pytest.approx(1.0, abs=2e-3)


# The training objective's dequantisation (RealNVP Sec. 4.1, Glow Sec. 5).


def test_training_loss_is_taken_on_freshly_dequantised_data() -> None:
    """The loss that training minimises (``nll_loss``) is -log p(y) at y = (x + u)/256, u ~ U[0, 1)^D drawn anew
    for every batch: y lies in [x/256, (x + 1)/256), the offsets u = 256 y - x have mean 1/2 and variance 1/12,
    and another draw gives another y and another loss. Without noise the density can collapse onto the grid."""
    shape = (1, 8, 8)
    model = identity_flow(shape)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    x = torch.randint(0, 256, (16, *shape), generator=torch.Generator().manual_seed(0))
    losses = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        losses.append(float(nll_loss(model, x, 256)[0]))
    assert len(seen) == 2
    for y in seen:
        assert (y >= x / 256).all() and (y <= (x + 1) / 256).all()
        offsets = (256 * y - x).double()
        assert float(offsets.mean()) == pytest.approx(0.5, abs=0.03)
        assert float(offsets.var()) == pytest.approx(1 / 12, abs=0.01)
        assert offsets[0].std() > 0.2  # per value, not one draw per image
    assert not torch.equal(seen[0], seen[1])
    assert losses[0] != losses[1]


# Batch normalisation as a flow layer (RealNVP Sec. 3.7).


def batch_norm_input(batch: int = 6, seed: int = 4) -> torch.Tensor:
    """Per-channel variances far from the running averages' initial 1."""
    x = torch.randn(batch, 3, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return 2.0 + x * torch.tensor([3.0, 0.2, 1.5], dtype=torch.float64).view(1, 3, 1, 1)


def per_channel_slopes(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The slope a_c of a per-channel affine map z = a_c x + b_c, read off the batch: std(z_c) / std(x_c)."""
    return z.std(dim=(0, 2, 3)) / x.std(dim=(0, 2, 3))


def test_batch_norm_log_det_in_training_uses_the_batch_statistics() -> None:
    """RealNVP Sec. 3.7: in training, z = (x - μ_B) / sqrt(σ²_B + ε) · γ + β with the batch's own μ_B and σ²_B,
    so for each example, the batch statistics held fixed, log|det| = H·W·Σ_c [log γ_c - ½ log(σ²_B,c + ε)], the
    log of the slopes of the map actually applied; the running averages play no part."""
    torch.manual_seed(0)
    layer = randomise(BatchNormFlow(3).double()).train()
    x = batch_norm_input()
    z, log_det = layer(x)
    batch_var = x.var(dim=(0, 2, 3), unbiased=False)
    expected = 4 * (layer.log_gamma.flatten() - 0.5 * torch.log(batch_var + layer.eps)).sum()
    assert torch.allclose(log_det, expected.expand(len(x)), atol=1e-10)
    assert torch.allclose(log_det, 4 * torch.log(per_channel_slopes(x, z)).sum().expand(len(x)), atol=1e-10)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), layer.beta.flatten(), atol=1e-10)  # centred on the batch mean
    running = 4 * (layer.log_gamma.flatten() - 0.5 * torch.log(layer.running_var.flatten() + layer.eps)).sum()
    assert (log_det - running).abs().min() > 1.0  # the running averages would give another value


def test_batch_norm_log_det_in_evaluation_uses_the_running_averages() -> None:
    """RealNVP Sec. 3.7: at test time batch norm is the fixed affine map with the running averages μ̄, σ̄²:
    log|det| = H·W·Σ_c [log γ_c - ½ log(σ̄²_c + ε)], the log|det| of autograd's Jacobian of one example's map,
    whatever else is in the batch."""
    torch.manual_seed(0)
    layer = BatchNormFlow(3).double().train()
    with torch.no_grad():
        for seed in range(3):
            layer(batch_norm_input(seed=seed))
    layer = randomise(layer).eval()
    x = 0.5 * batch_norm_input(seed=9) - 1.0  # statistics unlike the running ones
    z, log_det = layer(x)
    expected = 4 * (layer.log_gamma.flatten() - 0.5 * torch.log(layer.running_var.flatten() + layer.eps)).sum()
    assert torch.allclose(log_det, expected.expand(len(x)), atol=1e-10)
    assert torch.allclose(log_det[:2], brute_force_log_det(lambda v: layer(v)[0], x[:2]), atol=1e-10)
    assert torch.allclose(log_det, 4 * torch.log(per_channel_slopes(x, z)).sum().expand(len(x)), atol=1e-10)
    batch_var = x.var(dim=(0, 2, 3), unbiased=False)
    assert (log_det - 4 * (layer.log_gamma.flatten() - 0.5 * torch.log(batch_var + layer.eps)).sum()).abs().min() > 1


# Samples whose inverse overflowed must stay visible to flow-sample's overflow check.


def overflowing(images: torch.Tensor) -> torch.Tensor:
    """Image 0 finite but out of range, images 1-3 each with one +inf, -inf or NaN pixel, the rest as drawn."""
    images = images.clone()
    images[0, 0, 0, 0], images[0, 0, 0, 1] = 3.0, -2.0
    images[1, 0, 0, 0], images[2, 0, 1, 1], images[3, 0, 2, 2] = math.inf, -math.inf, math.nan
    return images


def check_overflows_reach_the_check(images: torch.Tensor, capsys: pytest.CaptureFixture[str]) -> None:
    finite = torch.isfinite(images).flatten(1).all(dim=1)
    assert finite.tolist() == [True, False, False, False, True]
    assert images[finite].min() >= 0 and images[finite].max() <= 1  # finite values are still clamped to [0, 1]
    assert images[0, 0, 0, 0] == 1 and images[0, 0, 0, 1] == 0
    shown = blacken_overflows(images, "test")
    assert "3 of 5 images overflowed" in capsys.readouterr().out
    assert not shown[1:4].any()  # drawn black, not white
    assert torch.equal(shown[[0, 4]], images[[0, 4]])


def test_overflowed_samples_reach_the_overflow_check_as_non_finite(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An inverse that overflows float32 (each Glow coupling divides by s < 1) yields ±inf or NaN pixels.
    ``FlowModel.sample`` clamps only finite values to [0, 1], so flow-sample's ``blacken_overflows`` counts every
    such image and draws it black; clamping first would turn ±inf into a plain white or black pixel."""
    model, _, _ = settled_model("glow")
    inner = model.flow.sample

    def sample_that_overflows(*args, **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
        images, latents = inner(*args, **kwargs)
        return overflowing(images), latents

    monkeypatch.setattr(model.flow, "sample", sample_that_overflows)
    check_overflows_reach_the_check(model.sample(5, 0.7, generator=torch.Generator().manual_seed(0)), capsys)


def test_normflows_glow_samples_that_overflow_stay_non_finite(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same for normflows' Glow behind our interface (``flow-compare``)."""
    pytest.importorskip("normflows")
    from genlab.flows.normflows_glow import NormflowsGlow

    model = NormflowsGlow(FlowConfig(image_shape=(1, 4, 4), num_scales=1, steps_per_scale=1, hidden_channels=4))
    drawn = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(model.flow, "sample", lambda count, labels, temperature: (overflowing(drawn), None))
    check_overflows_reach_the_check(model.sample(5), capsys)
