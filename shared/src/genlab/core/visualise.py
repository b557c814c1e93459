"""Pictures: image grids, interpolation strips, latent traversals and animated GIFs of a sampling process.

Every function takes images as floats in [0, 1], shape (N, C, H, W); ``to_unit`` converts the other ranges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image


def to_unit(images: torch.Tensor, value_range: str) -> torch.Tensor:
    """Images in a data value range ("unit", "signed", "binary", "uint8") -> floats in [0, 1]."""
    if value_range == "signed":
        images = (images + 1.0) / 2.0
    elif value_range == "uint8":
        images = images.float() / 255.0
    return images.float().clamp(0.0, 1.0)


def tile(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) -> one (3, H', W') grid of min(nrow, N) columns with ``padding`` pixels of ``pad_value``
    around every image; one channel is repeated to three. The layout of torchvision's make_grid (tested), kept
    here so that drawing a picture does not import torchvision, whose import costs seconds of a short run."""
    count, channels, height, width = images.shape
    if channels == 1:
        images = images.expand(-1, 3, -1, -1)
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    cell_height, cell_width = height + padding, width + padding
    grid = torch.full((3, rows * cell_height + padding, columns * cell_width + padding), pad_value)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = padding + row * cell_height, padding + column * cell_width
        grid[:, top : top + height, left : left + width] = image
    return grid


def grid_image(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> Image.Image:
    """A PIL image of a grid, ``nrow`` images per row (default: a square)."""
    images = images.detach().float().clamp(0, 1).cpu()
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = tile(images, nrow, padding)  # (3, H', W')
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write a PNG grid of images in [0, 1]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, nrow).save(path)
    return path


def slerp(start: torch.Tensor, end: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation, the path that keeps Gaussian latents at a typical norm.

    start, end: (D,); weights: (T,) in [0, 1] -> (T, D).
    """
    cos_angle = torch.dot(start, end) / (start.norm() * end.norm()).clamp_min(1e-12)
    angle = torch.arccos(cos_angle.clamp(-1.0, 1.0))
    if angle.abs() < 1e-4:
        return torch.lerp(start[None], end[None], weights[:, None])
    w = weights[:, None]
    return (torch.sin((1 - w) * angle) * start + torch.sin(w * angle) * end) / torch.sin(angle)


def interpolate_latents(start: torch.Tensor, end: torch.Tensor, steps: int, spherical: bool = False) -> torch.Tensor:
    """``steps`` latents from ``start`` to ``end`` inclusive, linearly or on the sphere: (steps, D)."""
    weights = torch.linspace(0.0, 1.0, steps, device=start.device)
    if spherical:
        return slerp(start, end, weights)
    return torch.lerp(start[None], end[None], weights[:, None])


def latent_traversal(base: torch.Tensor, dimensions: Sequence[int], values: torch.Tensor) -> torch.Tensor:
    """One row per latent dimension: ``base`` with that coordinate swept over ``values``.

    base: (D,); values: (T,) -> (len(dimensions) * T, D), row-major, ready to decode into a grid.
    """
    rows = []
    for dim in dimensions:
        row = base[None].repeat(values.shape[0], 1)  # (T, D)
        row[:, dim] = values
        rows.append(row)
    return torch.cat(rows)


def manifold_grid(decode: Callable[[torch.Tensor], torch.Tensor], steps: int, device: torch.device) -> torch.Tensor:
    """Decode a regular grid of a 2-d latent, spaced by the inverse CDF of N(0, 1) as in the VAE paper, Fig. 4.

    Returns (steps * steps, C, H, W), row-major, the first latent varying down the rows.
    """
    quantiles = torch.linspace(0.5 / steps, 1 - 0.5 / steps, steps, device=device)
    coordinates = torch.distributions.Normal(0.0, 1.0).icdf(quantiles)  # (steps,)
    z1, z2 = torch.meshgrid(coordinates, coordinates, indexing="ij")
    latents = torch.stack([z1.flatten(), z2.flatten()], dim=1)  # (steps^2, 2)
    return decode(latents)


def save_gif(frames: Sequence[torch.Tensor], path: str | Path, duration_ms: int = 80, nrow: int | None = None) -> Path:
    """An animated GIF, one grid per frame (e.g. the states of a sampler from noise to image)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = [grid_image(frame, nrow) for frame in frames]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0)
    return path


def training_progress_gif(run_dir: str | Path, path: str | Path | None = None, duration_ms: int = 400) -> Path | None:
    """An animated GIF of the sample grids that genlab.core's loop wrote during training (samples/step_*.png),
    in step order, the last frame held three times as long. Returns None when the run wrote fewer than two."""
    run_dir = Path(run_dir)
    grids = sorted((run_dir / "samples").glob("step_*.png"))  # zero-padded step numbers sort in step order
    if len(grids) < 2:
        return None
    path = Path(path) if path is not None else run_dir / "samples" / "progress.gif"
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = [Image.open(grid).convert("RGB") for grid in grids]
    durations = [duration_ms] * (len(pictures) - 1) + [3 * duration_ms]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return path


def plot_curves(
    curves: dict[str, Sequence[tuple[float, float]]],
    path: str | Path,
    x_label: str,
    y_label: str,
    title: str = "",
    log_x: bool = False,
    log_y: bool = False,
) -> Path:
    """A PNG line plot, one labelled curve of (x, y) points per entry (e.g. FID against sampling steps per
    sampler); references such as a paper's numbers are drawn dashed when their label starts with "paper"."""
    if not curves or any(len(points) == 0 for points in curves.values()):
        raise ValueError("plot_curves needs at least one curve, each with at least one point")
    from matplotlib.figure import Figure  # here, not at the top: most runs never plot, and the import is slow

    figure = Figure(figsize=(6.4, 4.2), dpi=120)  # the object API: no pyplot state, no display needed
    axes = figure.subplots()
    for label, points in curves.items():
        xs, ys = zip(*sorted(points), strict=True)
        axes.plot(xs, ys, marker="o", linestyle="--" if label.startswith("paper") else "-", label=label)
    axes.set(xlabel=x_label, ylabel=y_label, title=title)
    if log_x:
        axes.set_xscale("log")
    if log_y:
        axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    return path
