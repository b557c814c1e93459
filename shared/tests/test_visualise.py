"""genlab.core.visualise: PNG grids pixel by pixel, interpolation paths, traversals, the manifold grid, GIFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid

from genlab.core.visualise import (
    interpolate_latents,
    latent_traversal,
    manifold_grid,
    plot_curves,
    save_gif,
    save_grid,
    slerp,
    tile,
    to_unit,
    training_progress_gif,
)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(("count", "channels", "nrow", "padding"), [(7, 1, 3, 2), (5, 3, 8, 0), (16, 3, 4, 1)])
def test_tile_lays_out_images_as_torchvision_make_grid(count: int, channels: int, nrow: int, padding: int) -> None:
    images = torch.rand(count, channels, 5, 6, generator=torch.Generator().manual_seed(count))
    expected = make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)
    torch.testing.assert_close(tile(images, nrow, padding), expected, rtol=0, atol=0)


def test_save_grid_pixels(tmp_path: Path) -> None:
    """A 2x2 grid of flat grey 3x5 images: size 2*(5+2)+2 by 2*(3+2)+2, each cell its value, white padding."""
    values = [0.0, 0.25, 0.5, 1.0]
    images = torch.stack([torch.full((1, 3, 5), v) for v in values])  # (4, 1, 3, 5)
    path = save_grid(images, tmp_path / "deep" / "grid.png", nrow=2)
    assert path.is_file()
    array = read_png(path)
    assert array.shape == (12, 16, 3)
    for index, value in enumerate(values):
        row, col = divmod(index, 2)
        top, left = 2 + row * 5, 2 + col * 7
        cell = array[top : top + 3, left : left + 5]
        assert (cell == round(value * 255)).all(), index
    border = np.ones((12, 16), dtype=bool)
    for row in range(2):
        for col in range(2):
            border[2 + row * 5 : 5 + row * 5, 2 + col * 7 : 7 + col * 7] = False
    assert (array[border] == 255).all()


def test_save_grid_colour_default_rows_and_clamping(tmp_path: Path) -> None:
    """RGB values land in the right channels, out-of-range values are clamped, the default grid is near square."""
    images = torch.zeros(5, 3, 2, 2)
    images[:, 0] = 1.5  # clamped to 1
    images[:, 2] = -0.5  # clamped to 0
    images[:, 1] = 0.2
    array = read_png(save_grid(images, tmp_path / "rgb.png"))
    assert array.shape == (2 * 4 + 2, 3 * 4 + 2, 3)  # 5 images -> 3 per row, 2 rows
    assert tuple(array[2, 2]) == (255, 51, 0)


def test_to_unit_ranges() -> None:
    """Signed [-1, 1] and uint8 0..255 map onto [0, 1] affinely."""
    torch.testing.assert_close(to_unit(torch.tensor([-1.0, 0.0, 1.0]), "signed"), torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(to_unit(torch.tensor([0, 51, 255]), "uint8"), torch.tensor([0.0, 0.2, 1.0]))


def test_slerp_endpoints_and_norm() -> None:
    """slerp hits both endpoints, keeps the norm of equal-norm inputs, and bisects the angle at w = 0.5."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(16, generator=generator, dtype=torch.float64)
    end = torch.randn(16, generator=generator, dtype=torch.float64)
    end = end * start.norm() / end.norm()
    weights = torch.linspace(0, 1, 9, dtype=torch.float64)
    path = slerp(start, end, weights)
    assert path.shape == (9, 16)
    torch.testing.assert_close(path[0], start)
    torch.testing.assert_close(path[-1], end)
    torch.testing.assert_close(path.norm(dim=1), start.norm().expand(9))
    middle = (start + end) / (start + end).norm() * start.norm()
    torch.testing.assert_close(path[4], middle)
    # The angle to start grows linearly with the weight.
    cosines = (path @ start) / (path.norm(dim=1) * start.norm())
    angles = torch.arccos(cosines.clamp(-1.0, 1.0))
    torch.testing.assert_close(angles, weights * angles[-1], atol=1e-6, rtol=0)
    # Nearly parallel inputs fall back to a straight line without dividing by ~0.
    close = slerp(start, start * 1.0000001, weights[:3])
    assert torch.isfinite(close).all()
    torch.testing.assert_close(close[0], start)


@pytest.mark.parametrize("spherical", [False, True])
def test_interpolate_latents_endpoints(spherical: bool) -> None:
    """interpolate_latents gives `steps` points from start to end inclusive; linear ones are evenly spaced."""
    start, end = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, -2.0])
    path = interpolate_latents(start, end, 5, spherical=spherical)
    assert path.shape == (5, 3)
    torch.testing.assert_close(path[0], start)
    torch.testing.assert_close(path[-1], end)
    if not spherical:
        steps = path[1:] - path[:-1]
        torch.testing.assert_close(steps, ((end - start) / 4).expand(4, 3))


def test_latent_traversal_varies_only_its_dimension() -> None:
    """Row r sweeps dimension dims[r] over the values and leaves every other coordinate at the base."""
    base = torch.arange(6, dtype=torch.float32)
    values = torch.tensor([-2.0, 0.5, 3.0])
    dims = [4, 1]
    grid = latent_traversal(base, dims, values)
    assert grid.shape == (6, 6)
    for row, dim in enumerate(dims):
        block = grid[row * 3 : (row + 1) * 3]
        torch.testing.assert_close(block[:, dim], values)
        others = [d for d in range(6) if d != dim]
        torch.testing.assert_close(block[:, others], base[others].expand(3, 5))
    torch.testing.assert_close(base, torch.arange(6, dtype=torch.float32))  # the base is not modified


@pytest.mark.parametrize("steps", [4, 5])
def test_manifold_grid_decodes_a_symmetric_grid(steps: int) -> None:
    """decode gets a (steps^2, 2) grid of N(0,1) quantiles, symmetric about 0, first latent varying down rows."""
    seen: list[torch.Tensor] = []

    def decode(latents: torch.Tensor) -> torch.Tensor:
        seen.append(latents)
        return latents.sum(1).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)

    out = manifold_grid(decode, steps, torch.device("cpu"))
    assert len(seen) == 1 and out.shape == (steps * steps, 1, 2, 2)
    latents = seen[0]
    assert latents.shape == (steps * steps, 2)
    grid = latents.view(steps, steps, 2)
    coordinates = grid[:, 0, 0]
    assert (coordinates[1:] > coordinates[:-1]).all()
    torch.testing.assert_close(coordinates, -coordinates.flip(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(grid[:, :, 0], coordinates[:, None].expand(steps, steps))  # constant along a row
    torch.testing.assert_close(grid[:, :, 1], coordinates[None, :].expand(steps, steps))
    # Quantiles of N(0, 1) at (i + 0.5) / steps.
    expected = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(steps) + 0.5) / steps)
    torch.testing.assert_close(coordinates, expected)
    torch.testing.assert_close(out[:, 0, 0, 0], latents.sum(1))


def test_save_gif_frames(tmp_path: Path) -> None:
    """save_gif writes an animated GIF with one frame per input grid, of the grid's size, looping."""
    frames = [torch.full((4, 1, 6, 6), value) for value in (0.0, 0.3, 0.6, 1.0)]
    path = save_gif(frames, tmp_path / "anim" / "sampling.gif", duration_ms=50)
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == 4
        assert gif.is_animated
        assert gif.size == (2 * 8 + 2, 2 * 8 + 2)
        assert gif.info.get("loop") == 0
        greys = []
        for index in range(4):
            gif.seek(index)
            greys.append(np.asarray(gif.convert("L"))[2, 2])
    assert greys == sorted(greys) and greys[0] < 10 and greys[-1] > 245


def test_training_progress_gif_orders_frames_by_step(tmp_path: Path) -> None:
    """The progress GIF holds every samples/step_*.png in step order (not file-system order); one grid is no GIF."""
    samples = tmp_path / "samples"
    save_grid(torch.full((1, 1, 4, 4), 0.5), samples / "step_00000010.png")
    assert training_progress_gif(tmp_path) is None
    for step, grey in ((1000, 1.0), (200, 0.0)):
        save_grid(torch.full((1, 1, 4, 4), grey), samples / f"step_{step:08d}.png")
    path = training_progress_gif(tmp_path)
    assert path == samples / "progress.gif"
    with Image.open(path) as gif:
        assert gif.n_frames == 3
        greys = []
        for index in range(3):
            gif.seek(index)
            greys.append(int(np.asarray(gif.convert("L"))[2, 2]))
    assert greys[1] < 10 and 100 < greys[0] < 150 and greys[2] > 245  # steps 10, 200, 1000: grey 0.5, 0, 1


def test_plot_curves_draws_each_curve_in_its_own_colour(tmp_path: Path) -> None:
    path = plot_curves(
        {"ddim": [(10, 50.0), (20, 30.0), (50, 20.0)], "paper ddim": [(10, 13.4), (50, 4.7)]},
        tmp_path / "plot.png",
        x_label="steps",
        y_label="FID",
        log_x=True,
    )
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    # matplotlib's first two default colours (C0 blue, C1 orange) are both present: two curves were drawn
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels.astype(int) - colour).sum(axis=1) < 30).sum() > 50
    with pytest.raises(ValueError, match="at least one"):
        plot_curves({"empty": []}, tmp_path / "none.png", x_label="x", y_label="y")
