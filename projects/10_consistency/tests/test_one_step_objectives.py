"""Minibatch OT couplings, sCM's continuous-time objective on TrigFlow and MeanFlow's training pieces, each against
what its paper says must hold: the exact assignment, the limit of the discrete consistency loss, the consistent
function of a known flow, and the adaptive weight's closed form."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from genlab.consistency.consistency import multistep_sample
from genlab.consistency.couplings import ot_couple, ot_pairing
from genlab.consistency.flow import straightness, velocity_loss
from genlab.consistency.meanflow import meanflow_loss, meanflow_sample, sample_interval
from genlab.consistency.networks import trigflow_network_of
from genlab.consistency.samplers import FlowSampler
from genlab.consistency.trigflow import (
    SIGMA_DATA,
    AdaptiveWeight,
    as_ve_consistency,
    sample_trig_time,
    scm_loss,
    teacher_trig_velocity,
    trig_consistency,
    trig_interpolate,
    trig_velocity,
)

# ------------------------------------------------------------------------------------------- minibatch OT


def test_the_ot_pairing_is_the_least_cost_permutation() -> None:
    """Against every one of the 6! permutations, for twenty batches of six points in the plane."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        x0, x1 = torch.randn(6, 2, generator=generator), torch.randn(6, 2, generator=generator)

        def cost(permutation, x0=x0, x1=x1) -> float:
            return float((x0[list(permutation)] - x1).square().sum())

        best = min(cost(p) for p in itertools.permutations(range(6)))
        assert cost(ot_pairing(x0, x1).tolist()) == pytest.approx(best, rel=1e-9)


def test_ot_couplings_keep_both_marginals_and_shorten_the_pairs() -> None:
    """The coupled noise is the same draws reordered (the noise marginal is untouched; the data are not moved at
    all), and the mean squared pair distance falls below the independent coupling's."""
    x0, x1 = torch.randn(128, 1, 4, 4), torch.randn(128, 1, 4, 4) + 1.0
    paired = ot_couple(x0, x1)
    assert torch.equal(paired.flatten(1).sort(0).values, x0.flatten(1).sort(0).values)
    assert (paired - x1).square().sum() < 0.8 * (x0 - x1).square().sum()


def straightness_after_training(coupling: str) -> float:
    """Train a small MLP flow from N(0, I) to two well-separated 2-d clusters, return S of its trajectories."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2))

    def velocity(x: torch.Tensor, t: torch.Tensor, _c=None) -> torch.Tensor:
        return net(torch.cat([x, t[:, None]], dim=1))

    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(600):
        x1 = torch.randn(256, 2) * 0.3 + torch.tensor([4.0, 0.0]) * (torch.randint(0, 2, (256, 1)) * 2 - 1)
        x0 = torch.randn(256, 2)
        if coupling == "ot":
            x0 = ot_couple(x0, x1)
        loss, _ = velocity_loss(velocity, x0, x1, torch.rand(256))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sampler = FlowSampler(50, "euler")
    trajectory = sampler.sample(velocity, torch.randn(1000, 2, generator=torch.Generator().manual_seed(1)),
                                trajectory=True)  # fmt: skip
    return straightness(velocity, trajectory, sampler.times)


def test_ot_couplings_straighten_the_learned_flow() -> None:
    """Tong et al.'s claim: with minibatch OT the learned paths are much straighter than with independent pairs
    (independent noise for a two-cluster target must split at t = 0 and curve)."""
    independent, ot = straightness_after_training("independent"), straightness_after_training("ot")
    assert ot < 0.5 * independent, (ot, independent)


# ------------------------------------------------------------------------------------------- sCM / TrigFlow


class TinyTrigNetwork(nn.Module):
    """F(x, t) for vectors: an MLP of (x, t), float64."""

    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, 32), nn.Tanh(), nn.Linear(32, dim)).double()

    def forward(self, x: torch.Tensor, t: torch.Tensor, _c=None) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], dim=1))


def test_the_trigflow_consistency_function_is_exact_at_t_zero_and_in_the_ve_view() -> None:
    net = TinyTrigNetwork()
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(trig_consistency(net, x, torch.zeros(5, dtype=torch.float64)), x)
    # the VE view: f_ve(x + sigma n, sigma) = f(cos t (x + sigma n), t) at t = arctan(sigma / sigma_d)
    sigma = torch.full((5,), 1.7, dtype=torch.float64)
    t = torch.atan(sigma / SIGMA_DATA)
    assert torch.allclose(as_ve_consistency(net)(x, sigma), trig_consistency(net, t.cos()[:, None] * x, t))


def test_trigflow_interpolation_is_the_ve_noising_seen_on_the_circle() -> None:
    """x_t / cos t = x_0 + sigma_d tan(t) n: sigma = sigma_d tan t, and dx_t/dt is the derivative of x_t."""
    x0, z = torch.randn(4, 3, dtype=torch.float64), SIGMA_DATA * torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 1.0, 1.4], dtype=torch.float64)
    x_t = trig_interpolate(x0, z, t)
    assert torch.allclose(x_t / t.cos()[:, None], x0 + (SIGMA_DATA * t.tan())[:, None] * (z / SIGMA_DATA))
    h = 1e-6
    numeric = (trig_interpolate(x0, z, t + h) - trig_interpolate(x0, z, t - h)) / (2 * h)
    assert torch.allclose(trig_velocity(x0, z, t), numeric, atol=1e-8)


def test_trigflow_times_put_a_log_normal_on_sigma() -> None:
    """t = arctan(e^tau / sigma_d): the VE noise level sigma_d tan t is e^tau, log-normal(P_mean, P_std)."""
    t = sample_trig_time(20000, -1.0, 1.4, generator=torch.Generator().manual_seed(0)).double()
    log_sigma = (SIGMA_DATA * t.tan()).log()
    assert log_sigma.mean().item() == pytest.approx(-1.0, abs=0.03)
    assert log_sigma.std().item() == pytest.approx(1.4, abs=0.03)
    assert ((t > 0) & (t < math.pi / 2)).all()


def test_the_scm_gradient_is_the_limit_of_the_discrete_consistency_gradient() -> None:
    """sCM's eq. 8: the gradient of || F - sg(F + cos t df/dt) ||^2 equals, as dt -> 0, the gradient of the discrete
    consistency loss || f(x_t, t) - sg f(x_{t - dt}, t - dt) ||^2 times 1 / (dt sigma_d tan t), both along the pair's
    own path (sCT). Unnormalised tangent, no warm-up, no learned weight: the bare continuous-time objective."""
    torch.manual_seed(0)
    net = TinyTrigNetwork()
    x0 = torch.randn(16, 3, dtype=torch.float64)
    z = SIGMA_DATA * torch.randn(16, 3, dtype=torch.float64)
    t = torch.rand(16, dtype=torch.float64) * 1.2 + 0.2

    loss, _ = scm_loss(net, x0, z, t, normalisation=0.0)
    continuous = torch.autograd.grad(loss, list(net.parameters()))

    dt = 1e-5
    with torch.no_grad():
        earlier = trig_consistency(net, trig_interpolate(x0, z, t - dt), t - dt)
    weight = 1 / (dt * SIGMA_DATA * t.tan())
    discrete_loss = (weight[:, None] * (trig_consistency(net, trig_interpolate(x0, z, t), t) - earlier).square()).mean()
    discrete = torch.autograd.grad(discrete_loss, list(net.parameters()))
    for a, b in zip(continuous, discrete, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-7), (a - b).abs().max()


def test_the_scm_loss_vanishes_for_the_exact_consistency_function() -> None:
    """Data at one point c: every ODE path ends at c, so f(x_t, t) = c, i.e. F(x / sigma_d, t) = (cos t x - c) /
    (sin t sigma_d), is consistent and the moved target equals F (g = 0). A wrong F is moved."""
    c = torch.tensor([[0.3, -0.7, 0.1]], dtype=torch.float64)

    def exact(y: torch.Tensor, t: torch.Tensor, _c=None) -> torch.Tensor:
        return (t.cos()[:, None] * SIGMA_DATA * y - c) / (t.sin()[:, None] * SIGMA_DATA)

    x0 = c.expand(32, 3)
    z = SIGMA_DATA * torch.randn(32, 3, dtype=torch.float64)
    t = sample_trig_time(32).double().clamp(0.05, 1.5)
    loss, terms = scm_loss(exact, x0, z, t, normalisation=0.0)
    assert loss.item() < 1e-18 and terms["tangent_norm"].item() < 1e-8
    assert torch.allclose(trig_consistency(exact, trig_interpolate(x0, z, t), t), x0)
    wrong, _ = scm_loss(lambda y, t_, c_=None: 1.1 * exact(y, t_), x0, z, t, normalisation=0.0)
    assert wrong.item() > 1e-4


def test_the_teacher_velocity_is_the_flow_of_a_known_denoiser() -> None:
    """Data at one point c: E[x_0 | x_t] = c, and the ODE velocity is the pair's own, cos t z - sin t c."""
    c = torch.tensor([[0.3, -0.7]])
    z = SIGMA_DATA * torch.randn(8, 2)
    t = torch.rand(8) * 1.3 + 0.1
    x_t = trig_interpolate(c.expand(8, 2), z, t)
    assert torch.allclose(teacher_trig_velocity(c.expand(8, 2), x_t, t), trig_velocity(c.expand(8, 2), z, t), atol=1e-5)


def test_the_stabilisers_of_scm() -> None:
    """Tangent normalisation bounds the per-example target move by 1; warm-up r = 0 drops the tangent's second
    term; the learned weight's loss e^w ||.||^2 / D - w is least at e^w = D / ||.||^2."""
    torch.manual_seed(0)
    net = TinyTrigNetwork()
    x0, z = torch.randn(8, 3, dtype=torch.float64), SIGMA_DATA * torch.randn(8, 3, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64) + 0.2
    _, terms = scm_loss(net, x0, z, t, normalisation=0.1)
    assert terms["tangent_norm"].item() < 1
    loss, _ = scm_loss(net, x0, z, t, normalisation=0.0, tangent_warmup=0.0)
    with torch.no_grad():
        F = net(trig_interpolate(x0, z, t) / SIGMA_DATA, t)
        g = -(t.cos()[:, None] ** 2) * (SIGMA_DATA * F - trig_velocity(x0, z, t))
    assert loss.item() == pytest.approx(float(g.square().mean()), rel=1e-9)

    def weighted(w: float) -> float:
        log_weight = torch.tensor([w], dtype=torch.float64)
        return scm_loss(net, x0[:1], z[:1], t[:1], normalisation=0.0, tangent_warmup=0.0, log_weight=log_weight)[
            0
        ].item()

    mse = weighted(0.0)  # e^0 ||.||^2 / D - 0
    best = -math.log(mse)
    assert weighted(best) == pytest.approx(1 + math.log(mse), rel=1e-9)
    assert weighted(best) < min(weighted(best - 0.5), weighted(best + 0.5))
    assert AdaptiveWeight()(torch.rand(5)).shape == (5,)


def test_trigflow_one_step_sampling_of_the_exact_function_lands_on_the_data() -> None:
    c = torch.tensor([[0.3, -0.7, 0.1]], dtype=torch.float64)

    def exact(y: torch.Tensor, t: torch.Tensor, _c=None) -> torch.Tensor:
        return (t.cos()[:, None] * SIGMA_DATA * y - c) / (t.sin()[:, None] * SIGMA_DATA)

    noise = torch.randn(10, 3, dtype=torch.float64)
    samples = multistep_sample(as_ve_consistency(exact), noise, [80.0, 2.0, 0.5])
    assert torch.allclose(samples, c.expand(10, 3), atol=1e-9)


# ------------------------------------------------------------------------------------------- MeanFlow


def test_meanflow_multistep_sampling_is_exact_for_the_exact_average_velocity() -> None:
    """X_1 = 2 X_0 + 0.5 along straight paths: u(z, s, t) = X_1 - X_0 for the path through z at s, so any number
    of steps lands on the data."""

    def u(z: torch.Tensor, s: torch.Tensor, t: torch.Tensor, _c=None) -> torch.Tensor:
        x0 = (z - s[:, None] * 0.5) / (s[:, None] * 2.0 + 1 - s[:, None])
        return x0 + 0.5

    x0 = torch.randn(20, 2)
    for steps in (1, 3, 7):
        assert torch.allclose(meanflow_sample(u, x0, steps), 2.0 * x0 + 0.5, atol=1e-5)


def test_meanflow_intervals_follow_the_time_distribution_and_the_fraction() -> None:
    generator = torch.Generator().manual_seed(0)
    s, t = sample_interval(20000, 0.25, "logit-normal", 0.4, 1.0, generator)
    assert (s <= t).all() and 0.23 < (s < t).float().mean() < 0.27
    # with s = t throughout the time is the paper's r = t, the noisier of two draws; noise is at 0 here, so it is
    # the smaller one: E[min] = m - scale / sqrt(pi) in logit space
    s, t = sample_interval(20000, 0.0, "logit-normal", 0.4, 1.0, generator)
    assert torch.equal(s, t) and torch.logit(s).mean().item() == pytest.approx(0.4 - 1 / math.sqrt(math.pi), abs=0.03)


def test_the_adaptive_weight_turns_the_squared_error_into_its_norm() -> None:
    """With p = 1/2 the weighted loss sg(1 / sqrt(||D||^2 + c)) ||D||^2 has the gradient of 2 sqrt(||D||^2 + c)."""
    torch.manual_seed(0)
    scale = torch.tensor(1.5, requires_grad=True)

    def u(z: torch.Tensor, s: torch.Tensor, t: torch.Tensor, _c=None) -> torch.Tensor:
        return scale * z

    x0, x1 = torch.randn(8, 4), torch.randn(8, 4)
    s, t = torch.full((8,), 0.3), torch.full((8,), 0.3)
    weighted, _ = meanflow_loss(u, x0, x1, s, t, adaptive_power=0.5, adaptive_offset=1e-3)
    (gradient,) = torch.autograd.grad(weighted, scale)
    z = 0.3 * x1 + 0.7 * x0
    reference = 2 * ((scale * z - (x1 - x0)).square().sum(1) + 1e-3).sqrt().mean()
    (expected,) = torch.autograd.grad(reference, scale)
    assert gradient.item() == pytest.approx(expected.item(), rel=1e-5)


def test_trigflow_time_reaches_the_network_untransformed() -> None:
    """sCM sec. 4.1: c_noise(t) = t. The U-Net's timestep is the TrigFlow time itself, not a rescaled one."""
    seen = []

    def network(x: torch.Tensor, timestep: torch.Tensor, labels: object = None) -> torch.Tensor:
        seen.append(timestep)
        return x

    t = torch.tensor([0.05, 0.7, 1.5])
    trigflow_network_of(network)(torch.zeros(3, 1, 2, 2), t)
    assert torch.equal(seen[0], t)
