"""Editing with an unconditional diffusion model, no retraining: inpainting (by replacement, and RePaint's
resampling), outpainting, and SDEdit.

Inpainting by replacement (Song et al. 2021, App. I; Lugmayr et al. 2022, Sec. 4.1). A mask m is 1 on the known
pixels of an image x_0. At every step of the reverse chain, the known region is replaced by a draw of the forward
process at the same noise level, the unknown region comes from the model:

    x_{t_prev} = m * (sqrt(alpha_bar_prev) x_0 + sqrt(1 - alpha_bar_prev) eps) + (1 - m) * reverse_step(x_t)

so that at the end (alpha_bar = 1) the known pixels are x_0 exactly. Outpainting is the same with the mask inverted
(the centre known, the border generated).

RePaint (Lugmayr et al. 2022, Alg. 1). Replacement alone harmonises poorly: the model sees the known region only
through x_t, which it cannot change. RePaint goes back and forth: after stepping down it re-noises the result back up
by q(x_t | x_{t_prev}) = N(sqrt(alpha_bar_t / alpha_bar_prev) x, (1 - alpha_bar_t / alpha_bar_prev) I) and steps down
again, r times in all ("resamplings"), so the generated region is refined with the known one in view. With jump
length j it goes down j steps before jumping back up j (Sec. 4.2; the paper uses j = 10, r = 10 at T = 250).

SDEdit (Meng et al. 2022, Alg. 1). A guide x_g (a stroke painting, an edited image) is noised to t_0 = strength * T,
x_{t_0} = sqrt(alpha_bar_{t_0}) x_g + sqrt(1 - alpha_bar_{t_0}) eps, then denoised by the reverse chain from t_0.
Strength 0 returns the guide; strength 1 starts from the chain's prior N(0, I) and forgets the guide (the forward
process's own x_T keeps sqrt(alpha_bar_T), 0.006 for DDPM's schedule, of it); in between it trades faithfulness to
the guide for realism.

Every function here takes a ``DenoiseFn`` (prediction.py's Denoiser, optionally guided) and a sampler of samplers.py
whose ``update`` does the reverse step: DDPM's ancestral step, as the papers use, or DDIM's.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch

from genlab.diffusion.samplers import DDIMSampler, DDPMSampler, DenoiseFn, gaussian_like
from genlab.diffusion.schedules import NoiseSchedule

Tensor = torch.Tensor
ReverseSampler = DDPMSampler | DDIMSampler


def noise_to(schedule: NoiseSchedule, x0: Tensor, t: int, generator: torch.Generator | None) -> Tensor:
    """A draw of q(x_t | x_0) at one timestep (t = -1: x_0 itself)."""
    if t < 0:
        return x0
    return schedule.q_sample(x0, torch.full((len(x0),), t), gaussian_like(x0, generator))


def renoise(schedule: NoiseSchedule, x: Tensor, t_from: int, t_to: int, generator: torch.Generator | None) -> Tensor:
    """A draw of q(x_{t_to} | x_{t_from}) for t_to > t_from, several forward steps at once (RePaint's jump back up):
    N(sqrt(a_to / a_from) x, (1 - a_to / a_from) I), a = alpha_bar."""
    ratio = float(schedule.alpha_bar(t_to) / schedule.alpha_bar(t_from))
    return ratio**0.5 * x + (1 - ratio) ** 0.5 * gaussian_like(x, generator)


def repaint_walk(num_steps: int, jump_length: int = 1, resamplings: int = 1) -> list[int]:
    """RePaint's schedule as positions on a chain of ``num_steps`` reverse steps: position p is the state before
    step p (p = num_steps: the sample). Going down is p -> p + 1. The jump points are counted from the clean end, as
    in the paper's schedule: chain time t = num_steps - 1 - p at t = 0, j, 2j, ... below num_steps - j (the last
    reverse step, t = 0 -> -1, is resampled; the first ones near x_T are not). At each it jumps back up
    ``jump_length`` positions, ``resamplings - 1`` times. With resamplings = 1 it is the plain chain 0, 1, ...,
    num_steps."""
    if jump_length < 1 or resamplings < 1:
        raise ValueError(f"jump_length and resamplings must be >= 1, got {jump_length} and {resamplings}")
    walk, jumps = [0], dict.fromkeys(range(num_steps + 1), 0)
    position = 0
    while position < num_steps:
        position += 1
        walk.append(position)
        time = num_steps - 1 - position
        at_a_jump = 0 <= time < num_steps - jump_length and time % jump_length == 0
        if at_a_jump and jumps[position] < resamplings - 1:
            jumps[position] += 1
            walk.extend(range(position - 1, position - jump_length - 1, -1))
            position -= jump_length
    return walk


@torch.no_grad()
def inpaint(
    denoise: DenoiseFn, sampler: ReverseSampler, x0: Tensor, mask: Tensor, x_T: Tensor, condition: Any = None,
    generator: torch.Generator | None = None, jump_length: int = 1, resamplings: int = 1,
) -> Tensor:  # fmt: skip
    """Fill the region where ``mask`` (broadcastable to x0, 1 = known) is 0: by replacement (resamplings = 1) or by
    RePaint's resampling. x0, x_T (B, C, H, W) -> (B, C, H, W), equal to x0 on the known region."""
    schedule, timesteps = sampler.schedule, sampler.timesteps
    mask = mask.to(x0.dtype)
    walk = repaint_walk(len(timesteps), jump_length, resamplings)

    def timestep(position: int) -> int:
        return timesteps[position] if position < len(timesteps) else -1

    x = x_T
    for here, there in itertools.pairwise(walk):
        t, t_next = timestep(here), timestep(there)
        if there == here + 1:  # one reverse step, then the known region replaced at the new noise level
            x_unknown, _ = sampler.step(denoise, x, here, condition, generator)
            x = mask * noise_to(schedule, x0, t_next, generator) + (1 - mask) * x_unknown
        else:  # RePaint: back up one step of the chain by the forward process
            x = renoise(schedule, x, t, t_next, generator)
    return x


def function_evaluations(num_steps: int, jump_length: int = 1, resamplings: int = 1) -> int:
    """Network evaluations of ``inpaint``: one per reverse step of RePaint's walk."""
    walk = repaint_walk(num_steps, jump_length, resamplings)
    return sum(1 for here, there in itertools.pairwise(walk) if there == here + 1)


@torch.no_grad()
def sdedit(
    denoise: DenoiseFn, sampler: ReverseSampler, guide: Tensor, strength: float, condition: Any = None,
    generator: torch.Generator | None = None,
) -> Tensor:  # fmt: skip
    """SDEdit: the guide (B, C, H, W) noised to t_0 = strength * T, then the sampler's steps from t_0 down.
    strength 0 returns the guide as it is; strength 1 starts from N(0, I)."""
    timesteps = sdedit_timesteps(sampler, strength)
    if not timesteps:
        return guide
    sampler = copy.copy(sampler)  # the caller's keeps its own chain
    sampler.timesteps = timesteps
    x = (
        gaussian_like(guide, generator)
        if strength == 1.0
        else noise_to(sampler.schedule, guide, timesteps[0], generator)
    )
    return sampler.sample(denoise, x, condition, generator)


def sdedit_timesteps(sampler: ReverseSampler, strength: float) -> list[int]:
    """SDEdit's chain: t_0 = round(strength * T) - 1 (strength 1: T - 1), then the sampler's timesteps below it
    (its ``update`` steps between any two timesteps); empty for strength 0. One network evaluation each."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    start = round(strength * sampler.schedule.num_timesteps) - 1
    return [start, *(t for t in sampler.timesteps if t < start)] if start >= 0 else []


def box_mask(shape: tuple[int, int], top: int, left: int, height: int, width: int) -> Tensor:
    """1 (known) everywhere but a box of zeros: (1, 1, H, W)."""
    mask = torch.ones(1, 1, *shape)
    mask[..., top : top + height, left : left + width] = 0
    return mask


MASKS = ("centre", "left", "top", "border", "checkerboard")


def named_mask(name: str, side: int) -> Tensor:
    """The editing masks of the README, (1, 1, side, side), 1 = known: a centre square of half the side, the left
    or top half missing, the border (outpainting: only the centre half known), or a 4-pixel checkerboard."""
    half, quarter = side // 2, side // 4
    if name == "centre":
        return box_mask((side, side), quarter, quarter, half, half)
    if name == "left":
        return box_mask((side, side), 0, 0, side, half)
    if name == "top":
        return box_mask((side, side), 0, 0, half, side)
    if name == "border":
        return 1 - box_mask((side, side), quarter, quarter, half, half)
    if name == "checkerboard":
        rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        return (((rows // 4) + (cols // 4)) % 2).float()[None, None]
    raise ValueError(f"unknown mask {name!r}; known: {', '.join(MASKS)}")
