"""Rectified-flow paths in the plane, before and after reflow and with minibatch OT couplings (Liu et al.'s Figure 1
and Tong et al.'s point, on a toy where the paths can be seen): N(0, I) to four clusters on a circle.

    uv run python projects/10_consistency/results/paths-2d.py [OUT_DIR]     # default runs/flow/paths-2d

Trains three small MLP velocity fields with this project's objective and samplers: the 1-rectified flow on
independent pairs, the 2-rectified flow on the 1-flow's own (noise, ODE end) couplings, and a flow on exact
minibatch OT pairs. Writes paths.png (100 trajectories each, 100 Euler steps) and prints each flow's straightness
S (eq. 5) and the error of one Euler step against the 100-step end, the quantity reflow is meant to shrink.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from genlab.consistency.couplings import ot_couple
from genlab.consistency.flow import straightness, velocity_loss
from genlab.consistency.samplers import FlowSampler

STEPS, BATCH, CENTRES = 3000, 256, 4


def target(count: int, generator: torch.Generator) -> torch.Tensor:
    """Four Gaussian clusters (std 0.3) on the circle of radius 4."""
    angles = 2 * torch.pi * torch.randint(0, CENTRES, (count,), generator=generator) / CENTRES
    centres = 4 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return centres + 0.3 * torch.randn(count, 2, generator=generator)


def train_flow(pairs: str, couplings: tuple[torch.Tensor, torch.Tensor] | None = None):
    """An MLP v(x, t) trained for STEPS steps on independent, OT or given (x0, z1) pairs; returns v."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU(), nn.Linear(256, 2))

    def velocity(x: torch.Tensor, t: torch.Tensor, _c=None) -> torch.Tensor:
        return net(torch.cat([x, t[:, None]], dim=1))

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(STEPS):
        if couplings is None:
            x1 = target(BATCH, generator)
            x0 = torch.randn(BATCH, 2, generator=generator)
            if pairs == "ot":
                x0 = ot_couple(x0, x1)
        else:
            index = torch.randint(0, len(couplings[0]), (BATCH,), generator=generator)
            x0, x1 = couplings[0][index], couplings[1][index]
        loss, _ = velocity_loss(velocity, x0, x1, torch.rand(BATCH, generator=generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return velocity


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/flow/paths-2d")
    out.mkdir(parents=True, exist_ok=True)
    fine = FlowSampler(100, "euler")
    flows = {"1-rectified flow": train_flow("independent")}
    noise = torch.randn(20000, 2, generator=torch.Generator().manual_seed(2))
    flows["2-rectified flow (reflow)"] = train_flow("reflow", (noise, fine.sample(flows["1-rectified flow"], noise)))
    flows["minibatch OT pairs"] = train_flow("ot")

    shown = torch.randn(100, 2, generator=torch.Generator().manual_seed(3))
    figure = Figure(figsize=(12, 4.2), dpi=110)
    results = {}
    for axes, (name, velocity) in zip(figure.subplots(1, 3), flows.items(), strict=True):
        trajectory = fine.sample(velocity, shown, trajectory=True)
        paths = torch.stack(trajectory)  # (101, 100, 2): time, path, coordinate
        one_step = FlowSampler(1, "euler").sample(velocity, shown)
        results[name] = {"straightness": straightness(velocity, trajectory, fine.times),
                         "one_step_error": float((one_step - paths[-1]).square().sum(1).mean())}  # fmt: skip
        for k in range(paths.shape[1]):
            axes.plot(paths[:, k, 0], paths[:, k, 1], color="tab:blue", alpha=0.35, linewidth=0.8)
        axes.scatter(paths[0, :, 0], paths[0, :, 1], s=6, color="black", label="X_0 ~ N(0, I)")
        axes.scatter(paths[-1, :, 0], paths[-1, :, 1], s=6, color="tab:red", label="Z_1")
        axes.set(title=f"{name}\nS = {results[name]['straightness']:.3f}", xlim=(-6, 6), ylim=(-6, 6), aspect="equal")
    figure.axes[0].legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "paths.png")
    (out / "paths.json").write_text(json.dumps(results, indent=1))
    print("| flow | straightness S | one-step Euler error vs 100 steps |\n|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {values['straightness']:.4f} | {values['one_step_error']:.4f} |")
    print(f"picture: {out / 'paths.png'}")


if __name__ == "__main__":
    main()
