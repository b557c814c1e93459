"""ODE samplers for a velocity field on t in [0, 1] (flow.py's convention: noise at 0, data at 1), beside 07's
samplers for discrete schedules: Euler, the explicit midpoint rule and Heun's method on a uniform grid of N steps.

    Euler     x_{i+1} = x_i + h v(x_i, t_i)                                           N evaluations
    midpoint  x_{i+1} = x_i + h v(x_i + h/2 v(x_i, t_i), t_i + h/2)                   2N
    Heun      x' = x_i + h v(x_i, t_i);  x_{i+1} = x_i + h/2 (v(x_i, t_i) + v(x', t_{i+1}))   2N

Euler is exact when every trajectory is a straight line at constant speed, which is what reflow aims for: then
one step is the whole ODE.
"""

from __future__ import annotations

from typing import Any

import torch

from genlab.consistency.flow import VelocityFn

Tensor = torch.Tensor
METHODS = ("euler", "midpoint", "heun")


class FlowSampler:
    """N steps of ``method`` from t = 0 to t = 1."""

    def __init__(self, num_steps: int, method: str = "euler") -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps, self.method = num_steps, method
        self.times = [i / num_steps for i in range(num_steps + 1)]

    @property
    def function_evaluations(self) -> int:
        return self.num_steps * (1 if self.method == "euler" else 2)

    def step(self, velocity: VelocityFn, x: Tensor, index: int, condition: Any = None) -> Tensor:
        """One step from times[index] to times[index + 1]."""
        t, t_next = self.times[index], self.times[index + 1]
        h = t_next - t

        def v(state: Tensor, time: float) -> Tensor:
            return velocity(state, torch.full((len(state),), time, device=state.device), condition)

        slope = v(x, t)
        if self.method == "euler":
            return x + h * slope
        if self.method == "midpoint":
            return x + h * v(x + 0.5 * h * slope, t + 0.5 * h)
        return x + 0.5 * h * (slope + v(x + h * slope, t_next))

    @torch.no_grad()
    def sample(self, velocity: VelocityFn, x0: Tensor, condition: Any = None, trajectory: bool = False
               ) -> Tensor | list[Tensor]:  # fmt: skip
        """Noise x0 (B, ...) -> the ODE's end at t = 1, or with ``trajectory`` the states at every grid time."""
        states = [x0]
        for index in range(self.num_steps):
            states.append(self.step(velocity, states[-1], index, condition))
        return states if trajectory else states[-1]
