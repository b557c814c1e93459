"""Rectified flow and consistency models on data whose flows are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.consistency.consistency import (
    SIGMA_MIN,
    ConsistencyFunction,
    consistency_loss,
    ct_levels,
    heun_solver,
    ict_levels,
    lognormal_level_weights,
    multistep_sample,
    noise_levels,
    pseudo_huber,
)
from genlab.consistency.flow import (
    gaussian_velocity,
    interpolate,
    sample_time,
    straightness,
    velocity_loss,
)
from genlab.consistency.meanflow import meanflow_loss, meanflow_sample, meanflow_target, sample_interval
from genlab.consistency.samplers import FlowSampler

MEAN, STD = torch.tensor([2.0, -1.0]), 0.5


def affine_coupling_velocity(a: float, b: float):
    """X_1 = a X_0 + b: every path is a straight line, X_t = (t a + 1 - t) X_0 + t b, and v* = (a - 1) X_0 + b."""

    def velocity(x: torch.Tensor, t: torch.Tensor, _condition=None) -> torch.Tensor:
        t = t.reshape(-1, *([1] * (x.dim() - 1)))
        x0 = (x - t * b) / (t * a + 1 - t)
        return (a - 1) * x0 + b

    return velocity


def test_the_interpolation_runs_from_noise_to_data() -> None:
    x0, x1 = torch.randn(3, 2), torch.randn(3, 2)
    assert torch.equal(interpolate(x0, x1, torch.zeros(3)), x0) and torch.equal(interpolate(x0, x1, torch.ones(3)), x1)


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun"])
def test_every_sampler_is_exact_on_straight_paths(method: str) -> None:
    """The point of straight paths: one Euler step is the whole ODE (and so are more steps, and every method)."""
    x0 = torch.randn(100, 2)
    velocity = affine_coupling_velocity(2.0, 0.5)
    for steps in (1, 3):
        assert torch.allclose(FlowSampler(steps, method).sample(velocity, x0), 2.0 * x0 + 0.5, atol=1e-5)
    assert straightness(velocity, FlowSampler(10, method).sample(velocity, x0, trajectory=True),
                        FlowSampler(10).times) < 1e-10  # fmt: skip


def test_the_exact_gaussian_flow_carries_noise_to_the_data_and_is_curved() -> None:
    """With the independent coupling the rectified flow's paths bend: Heun with many steps lands on N(mean, s^2)
    (the marginals are preserved, Liu et al. Thm. 3.3, so reflow's couplings keep pi_1), one Euler step does not,
    and the straightness S is far from 0."""
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(20_000, 2, generator=generator)
    velocity = gaussian_velocity(MEAN, STD)
    z1 = FlowSampler(100, "heun").sample(velocity, x0)
    assert torch.allclose(z1.mean(0), MEAN, atol=0.02) and z1.std(0).tolist() == pytest.approx([STD, STD], abs=0.01)
    one_step = FlowSampler(1, "euler").sample(velocity, x0)
    assert abs(one_step.std(0).mean().item() - STD) > 0.3  # 1 - the full distance: far too wide
    trajectory = FlowSampler(50, "heun").sample(velocity, x0[:2000], trajectory=True)
    assert straightness(velocity, trajectory, FlowSampler(50).times) > 0.05


def test_training_reaches_the_closed_form_velocity() -> None:
    """From N(0, I) to N(mean, s^2 I), an MLP fitted by the rectified-flow loss approaches v*(x, t) in closed form."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(),
                              torch.nn.Linear(64, 2))  # fmt: skip

    def velocity(x: torch.Tensor, t: torch.Tensor, _condition=None) -> torch.Tensor:
        return net(torch.cat([x, t[:, None]], dim=1))

    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(1500):
        x0 = torch.randn(512, 2)
        x1 = MEAN + STD * torch.randn(512, 2)
        loss, _ = velocity_loss(velocity, x0, x1, sample_time(512))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    exact = gaussian_velocity(MEAN, STD)
    t = torch.rand(4000) * 0.8 + 0.1
    x_t = interpolate(torch.randn(4000, 2), MEAN + STD * torch.randn(4000, 2), t)
    with torch.no_grad():
        error = (velocity(x_t, t) - exact(x_t, t)).square().mean()
        scale = exact(x_t, t).square().mean()
    assert error / scale < 0.01


def test_logit_normal_times_have_the_asked_location_and_scale() -> None:
    t = sample_time(50_000, "logit-normal", location=0.5, scale=0.8, generator=torch.Generator().manual_seed(0))
    logits = torch.log(t / (1 - t))
    assert logits.mean().item() == pytest.approx(0.5, abs=0.02) and logits.std().item() == pytest.approx(0.8, abs=0.02)
    with pytest.raises(ValueError, match="unknown time distribution"):
        sample_time(3, "beta")


def test_the_boundary_condition_holds_exactly_for_any_network() -> None:
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 1, 3, padding=1)
    f = ConsistencyFunction(lambda x, sigma, _c: network(x) * 1e3 + sigma.reshape(-1, 1, 1, 1))
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(f(x, torch.full((4,), SIGMA_MIN)), x)
    assert not torch.allclose(f(x, torch.full((4,), 1.0)), x)


def gaussian_consistency(s: float):
    """Data N(0, s^2) per coordinate: x_sigma ~ N(0, s^2 + sigma^2) and the ODE maps x_sigma to x_sigma'
    = x_sigma sqrt((s^2 + sigma'^2) / (s^2 + sigma^2)); the consistency function is that map to eps."""

    def exact_map(x: torch.Tensor, sigma: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
        ratio = ((s**2 + sigma_to**2) / (s**2 + sigma**2)).sqrt()
        return ratio.reshape(-1, *([1] * (x.dim() - 1))) * x

    def f(x: torch.Tensor, sigma: torch.Tensor, _condition=None) -> torch.Tensor:
        return exact_map(x, sigma, torch.full_like(sigma, SIGMA_MIN))

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # E[x_0 | x_sigma]
        return (s**2 / (s**2 + sigma**2)).reshape(-1, *([1] * (x.dim() - 1))) * x

    return f, exact_map, denoiser


def test_the_consistency_loss_is_zero_for_a_consistent_function() -> None:
    """f consistent by construction (the exact ODE map to eps of Gaussian data): the CD loss with the exact solver is
    zero, with a Heun step of the exact denoiser nearly so; an inconsistent f (the identity) is not."""
    f, exact_map, denoiser = gaussian_consistency(0.5)
    sigmas = noise_levels(18)
    generator = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(256, 1, 4, 4, generator=generator)
    z = torch.randn(x.shape, generator=generator)
    n = torch.randint(0, 17, (256,), generator=generator)
    assert consistency_loss(f, f, x, sigmas, n, z, solver=exact_map).item() < 1e-10
    heun = consistency_loss(f, f, x, sigmas, n, z, solver=heun_solver(denoiser)).item()
    identity = consistency_loss(lambda v, s, c: v, lambda v, s, c: v, x, sigmas, n, z, solver=exact_map).item()
    assert heun < 1e-3 * identity and identity > 1.0


def test_multistep_sampling_with_the_exact_consistency_function_draws_the_data() -> None:
    s = 0.5
    f, _, _ = gaussian_consistency(s)
    z = torch.randn(20_000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    for levels in ([80.0], [80.0, 1.0, 0.2]):
        x = multistep_sample(f, z, levels, generator=torch.Generator().manual_seed(1))
        assert x.std().item() == pytest.approx(math.sqrt(s**2 + SIGMA_MIN**2), rel=0.02)


def test_the_discretisation_schedules() -> None:
    sigmas = noise_levels(18)
    assert sigmas[0].item() == pytest.approx(SIGMA_MIN) and sigmas[-1].item() == pytest.approx(80.0)
    assert (sigmas[1:] > sigmas[:-1]).all()
    assert ct_levels(0, 1000) == 2 and ct_levels(1000, 1000) == 151  # s0 = 2 at the start, s1 + 1 at the end
    assert [ict_levels(k, 800_000) for k in (0, 100_000, 200_000, 799_999)] == [11, 21, 41, 1281]
    levels = noise_levels(41)
    weights = lognormal_level_weights(levels)
    assert weights.sum().item() == pytest.approx(1.0) and (weights > 0).all()
    # half the mass lies below the log-normal's median exp(P_mean): the cumulative weight crosses 1/2 in the
    # interval that holds it (the grid's ends cut off under 1% of the mass, nearly evenly)
    crossing = int((weights.cumsum(0) < 0.5).sum())
    assert levels[crossing] <= math.exp(-1.1) <= levels[crossing + 1]


def test_pseudo_huber_is_l2_far_away_and_quadratic_near_zero() -> None:
    x = torch.zeros(2, 1, 10, 10)
    far, near = x.clone(), x.clone()
    far[0] += 1.0
    near[1] += 1e-5
    distance = pseudo_huber(torch.cat([far[:1], near[1:]]), x)
    c = 0.00054 * 10
    assert distance[0].item() == pytest.approx(10 - c, rel=1e-3)  # ||x - y|| = 10
    assert distance[1].item() == pytest.approx((100 * 1e-10) / (2 * c), rel=1e-3)  # ||x - y||^2 / (2c)


def test_consistency_training_compares_adjacent_levels_with_the_same_noise() -> None:
    """CT (Alg. 3) has no teacher: x_hat_n = x + sigma_n z with the z of x_{n+1} = x + sigma_{n+1} z. Through the
    identity function the loss is then exactly mean((sigma_{n+1} - sigma_n)^2 z^2)."""
    sigmas = noise_levels(10)
    generator = torch.Generator().manual_seed(0)
    x, z = torch.randn(64, 1, 3, 3, generator=generator), torch.randn(64, 1, 3, 3, generator=generator)
    n = torch.randint(0, 9, (64,), generator=generator)
    identity = lambda v, s, c: v  # noqa: E731
    gaps = (sigmas[n + 1] - sigmas[n]).float().reshape(-1, 1, 1, 1)
    expected = (gaps**2 * z**2).flatten(1).mean(1).mean()
    assert consistency_loss(identity, identity, x, sigmas, n, z).item() == pytest.approx(expected.item(), rel=1e-5)


def test_heun_is_second_order_where_euler_is_first() -> None:
    """Halving the step divides Heun's error by about 4 and Euler's by about 2: on the curved Gaussian flow (against
    a 2000-step solution) and on one step of CD's teacher ODE (against the exact map)."""
    x0 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    velocity = gaussian_velocity(MEAN, STD)
    reference = FlowSampler(2000, "heun").sample(velocity, x0)

    def error(method: str, steps: int) -> float:
        return (FlowSampler(steps, method).sample(velocity, x0) - reference).abs().max().item()

    assert error("heun", 10) / error("heun", 20) > 3  # measured: 3.4 (and 3.7 from 20 to 40)
    assert error("euler", 10) / error("euler", 20) < 2.5  # measured: 1.9
    _, exact_map, denoiser = gaussian_consistency(0.5)
    x = torch.randn(100, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    sigma, heun = torch.full((100,), 2.0), heun_solver(denoiser)
    euler_errors, heun_errors = [], []
    for h in (0.4, 0.2):
        target = exact_map(x, sigma, sigma - h)
        slope = (x - denoiser(x, sigma)) / sigma.reshape(-1, 1, 1, 1)
        euler_errors.append((x - h * slope - target).abs().max().item())
        heun_errors.append((heun(x, sigma, sigma - h) - target).abs().max().item())
    # local errors go as h^3 and h^2 (measured: ratios 9.9 and 4.5)
    assert heun_errors[0] / heun_errors[1] > 7 and euler_errors[0] / euler_errors[1] < 5.5


def test_the_meanflow_target_is_the_instantaneous_velocity_when_the_interval_is_empty() -> None:
    """s = t: the (t - s) d/dt u term vanishes, whatever the network: the target is v, flow matching's."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)

    def u(z: torch.Tensor, s: torch.Tensor, t: torch.Tensor, _c=None) -> torch.Tensor:
        return torch.tanh(net(torch.cat([z, s[:, None], t[:, None]], dim=1)))

    z, v, t = torch.randn(8, 2), torch.randn(8, 2), torch.rand(8)
    _, target = meanflow_target(u, z, v, t, t)
    assert torch.equal(target, v)
    _, target = meanflow_target(u, z, v, t * 0.5, t)
    assert not torch.allclose(target, v)


def test_the_meanflow_loss_is_zero_for_the_exact_average_velocity_of_straight_paths() -> None:
    """X_1 = 2 X_0 + 0.5: along each straight path at constant speed the average velocity over any interval is the
    velocity itself, u(z, s, t) = v*(z, s) at the state z at time s; its total derivative along the path is 0, and
    the target is X_1 - X_0. One step of it is the data."""
    exact = affine_coupling_velocity(2.0, 0.5)

    def u(z: torch.Tensor, s: torch.Tensor, t: torch.Tensor, _c=None) -> torch.Tensor:
        return exact(z, s)

    x0 = torch.randn(64, 2)
    s, t = sample_interval(64, different_fraction=1.0, generator=torch.Generator().manual_seed(0))
    assert (s < t).all()
    loss, _ = meanflow_loss(u, x0, 2.0 * x0 + 0.5, s, t)
    assert loss.item() < 1e-10
    assert torch.allclose(meanflow_sample(u, x0), 2.0 * x0 + 0.5, atol=1e-5)
    curved = gaussian_velocity(MEAN, STD)  # the instantaneous velocity is not the average on curved paths
    loss, _ = meanflow_loss(lambda z, s_, t_, c=None: curved(z, s_), x0, MEAN + STD * torch.randn(64, 2), s, t)
    assert loss.item() > 0.01


def test_the_exact_average_velocity_of_a_curved_flow_satisfies_the_meanflow_identity() -> None:
    """On the Gaussian flow, u*(z_s, s, t) = (z_t - z_s) / (t - s) by integrating v* from s to t. With the marginal
    velocity v*(z_s, s) in place of the conditional one (its expectation given z_s), the MeanFlow target of u* is
    u* itself: u = v + (t - s) d/ds u."""
    velocity = gaussian_velocity(MEAN, STD)

    def exact_average(z: torch.Tensor, s: torch.Tensor, t: torch.Tensor, _c=None) -> torch.Tensor:
        state, steps = z, 200
        for i in range(steps):  # Heun from s to t, per example
            a = s + (t - s) * i / steps
            b = s + (t - s) * (i + 1) / steps
            h = (b - a)[:, None]
            slope = velocity(state, a)
            state = state + 0.5 * h * (slope + velocity(state + h * slope, b))
        return (state - z) / (t - s)[:, None]

    generator = torch.Generator().manual_seed(0)
    s, t = torch.full((32,), 0.2), torch.full((32,), 0.7)
    z_s = interpolate(torch.randn(32, 2, generator=generator), MEAN + STD * torch.randn(32, 2, generator=generator), s)
    value, target = meanflow_target(exact_average, z_s, velocity(z_s, s), s, t)
    assert torch.allclose(target, value, atol=1e-3)
    assert not torch.allclose(value, velocity(z_s, s), atol=1e-2)  # curved: the average is not the velocity at s
