"""The pixel-perfect pass on images drawn here: known sprites made to look like a model's.

Each case draws a random sprite (32x24 cells, 8 well-separated colours), gives every cell
its own small colour error, scales it up with cells of uneven size (each column and row
its own width, the cell size +/- 1 px, so the grid drifts), crops it so the grid does not
start at 0, blurs it (Gaussian) and adds pixel noise. The pass must find the sprite again.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fluxrun.imaging.pixelart import PixelArtResult, pixelate, srgb_to_oklab

COLUMNS, ROWS, COLOURS = 32, 24, 8


def _palette(rng: np.random.Generator, count: int) -> np.ndarray:
    """Random colours at least 0.12 apart in OKLab: distinct to the eye, as a sprite's are."""
    chosen: list[np.ndarray] = []
    while len(chosen) < count:
        colour = rng.integers(0, 256, 3)
        lab = srgb_to_oklab(colour[None])[0]
        if all(np.linalg.norm(lab - srgb_to_oklab(other[None])[0]) >= 0.12 for other in chosen):
            chosen.append(colour)
    return np.array(chosen, dtype=np.uint8)


def _sprite(rng: np.random.Generator, chunky: bool) -> np.ndarray:
    """Palette indices (ROWS, COLUMNS): independent cells, or mostly 2x2 chunks (as art
    drawn with big shapes is), whose grid correlates best at two cells."""
    if not chunky:
        return rng.integers(0, COLOURS, (ROWS, COLUMNS))
    chunks = rng.integers(0, COLOURS, (ROWS // 2, COLUMNS // 2))
    sprite = np.repeat(np.repeat(chunks, 2, axis=0), 2, axis=1)
    return np.where(rng.random(sprite.shape) < 0.25, rng.integers(0, COLOURS, sprite.shape), sprite)


def _model_like(rng: np.random.Generator, sprite: np.ndarray, palette: np.ndarray, cell: int) -> Image.Image:
    colours = palette[sprite].astype(np.float64) + rng.normal(0, 4, (*sprite.shape, 3))
    widths = cell + rng.integers(-1, 2, COLUMNS)
    heights = cell + rng.integers(-1, 2, ROWS)
    image = np.repeat(np.repeat(colours, heights, axis=0), widths, axis=1)
    # Crop up to 40 % off the first and last cells: the grid's phase is not 0.
    most = max(2, int(0.4 * (cell - 1)) + 1)
    left, top, right, bottom = (int(rng.integers(low, most)) for low in (1, 1, 0, 0))
    image = image[top : image.shape[0] - bottom, left : image.shape[1] - right]
    blurred = Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.0))
    noisy = np.asarray(blurred).astype(np.float64) + rng.normal(0, 3, (blurred.height, blurred.width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))


def _case(seed: int, cell: int, chunky: bool) -> tuple[np.ndarray, np.ndarray, Image.Image]:
    rng = np.random.default_rng([seed, cell, chunky])
    palette = _palette(rng, COLOURS)
    sprite = _sprite(rng, chunky)
    return sprite, palette, _model_like(rng, sprite, palette, cell)


def _as_true_indices(result: PixelArtResult, palette: np.ndarray) -> np.ndarray:
    """The recovered sprite, each pixel named by the true palette colour nearest to it."""
    pixels = np.asarray(result.sprite.convert("RGB")).reshape(-1, 3)
    gaps = ((srgb_to_oklab(pixels)[:, None, :] - srgb_to_oklab(palette)[None, :, :]) ** 2).sum(axis=2)
    return gaps.argmin(axis=1).reshape(result.sprite.height, result.sprite.width)


CASES = [(seed, cell, chunky) for seed in range(2) for cell in (8, 11, 16, 23, 32) for chunky in (False, True)]


@pytest.mark.parametrize(("seed", "cell", "chunky"), CASES)
def test_the_sprite_and_its_palette_are_recovered(seed: int, cell: int, chunky: bool) -> None:
    sprite, palette, image = _case(seed, cell, chunky)
    result = pixelate(image, palette_size=COLOURS, output="sprite")

    assert result.grid.detected and abs(result.grid.cell - cell) < 0.5, result.describe()
    assert result.sprite.size == (COLUMNS, ROWS) and result.image is result.sprite
    recovered = _as_true_indices(result, palette)
    assert (recovered == sprite).mean() >= 0.99, result.describe()
    # Every true colour comes back, once, within a few levels.
    found = np.array(result.palette, dtype=np.int64)
    assert len(found) == COLOURS
    nearest = np.abs(found[:, None, :] - palette[None, :, :].astype(np.int64)).max(axis=2).argmin(axis=1)
    assert sorted(nearest) == list(range(COLOURS))
    assert np.abs(found - palette[nearest].astype(np.int64)).max() <= 6


def test_a_larger_palette_than_the_art_has_does_not_split_colours() -> None:
    sprite, palette, image = _case(seed=5, cell=11, chunky=False)
    result = pixelate(image, palette_size=32, output="sprite")
    assert len(result.palette) == COLOURS
    assert (_as_true_indices(result, palette) == sprite).all()


def test_a_smaller_palette_caps_the_colours() -> None:
    _, _, image = _case(seed=3, cell=16, chunky=False)
    result = pixelate(image, palette_size=3, output="upscaled")
    assert len(result.palette) == 3 and len(result.image.getcolors()) == 3
    assert result.sprite.size == (COLUMNS, ROWS)  # the grid does not depend on the palette


@pytest.mark.parametrize("cell", [11, 16])
def test_the_upscale_is_crisp_blocks_of_palette_colours_about_the_input_size(cell: int) -> None:
    _, _, image = _case(seed=7, cell=cell, chunky=True)
    result = pixelate(image, palette_size=COLOURS)
    upscaled = np.asarray(result.image.convert("RGB"))
    sprite = np.asarray(result.sprite.convert("RGB"))

    assert result.scale == cell and result.image.size == (COLUMNS * cell, ROWS * cell)
    assert abs(result.image.width - image.width) <= cell and abs(result.image.height - image.height) <= cell
    # Each block is its sprite pixel, repeated: uniform, and nothing but palette colours.
    assert np.array_equal(upscaled, np.repeat(np.repeat(sprite, cell, axis=0), cell, axis=1))
    assert {colour for _, colour in result.image.convert("RGB").getcolors()} == set(result.palette)
    assert result.image.mode == "P"


def test_the_note_names_the_grid_the_colours_and_the_sizes() -> None:
    _, _, image = _case(seed=1, cell=16, chunky=False)
    text = pixelate(image, palette_size=COLOURS, output="sprite").describe()
    assert re.fullmatch(r"pixel-perfect: 1[56](\.\d)? px grid at offset \(\d+, \d+\), 8 colours, sprite 32x24", text)
    upscaled = pixelate(image, palette_size=COLOURS, output="upscaled").describe()
    assert upscaled.endswith("8 colours, sprite 32x24 shown at 16x (512x384)")


def test_the_pass_is_deterministic() -> None:
    _, _, image = _case(seed=2, cell=11, chunky=True)
    first, second = pixelate(image, 16), pixelate(image, 16)
    assert first.palette == second.palette and first.image.tobytes() == second.image.tobytes()


def test_a_flat_image_is_one_colour_on_the_fallback_grid() -> None:
    result = pixelate(Image.new("RGB", (256, 192), (40, 90, 200)), palette_size=16, output="sprite")
    assert not result.grid.detected
    assert result.sprite.size == (64, 48) and result.palette == ((40, 90, 200),)
    assert result.describe().startswith("pixel-perfect: no pixel grid found in the image, so a regular 4 px grid")


def _photo_like(seed: int, size: int) -> Image.Image:
    """Shapes at several scales and fine texture, nothing periodic: a stand-in for a photo."""
    rng = np.random.default_rng(seed)
    total = np.zeros((size, size, 3))
    for radius, weight in ((1, 20), (3, 30), (10, 60), (30, 90)):
        noise = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        layer = np.asarray(noise.filter(ImageFilter.GaussianBlur(radius))).astype(np.float64)
        total += weight * (layer - layer.mean()) / (layer.std() + 1e-9)
    return Image.fromarray(np.clip(total + 128, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "image",
    [
        _photo_like(0, 512),
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 320, 3), dtype=np.uint8)),
    ],
    ids=["photo-like", "white-noise"],
)
def test_an_image_without_a_grid_still_gets_a_sensible_result(image: Image.Image) -> None:
    result = pixelate(image, palette_size=12)
    assert not result.grid.detected, result.describe()
    assert max(result.sprite.size) == 64 and len(result.palette) <= 12
    assert len(result.image.getcolors()) == len(result.palette)
    assert "no pixel grid found" in result.describe()


@pytest.mark.parametrize(
    "image",
    [Image.new("RGB", (1, 1)), Image.new("RGBA", (64, 64), (1, 2, 3, 0)), Image.new("L", (5, 3), 200),
     Image.new("RGB", (1024, 8), (9, 9, 9))],
    ids=["1x1", "rgba", "grey", "strip"],
)
def test_odd_images_do_not_break_it(image: Image.Image) -> None:
    for output in ("upscaled", "sprite"):
        result = pixelate(image, palette_size=4, output=output)
        assert result.image.width >= 1 and result.image.height >= 1 and len(result.palette) == 1


def test_bad_arguments_name_the_argument() -> None:
    image = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="palette_size"):
        pixelate(image, palette_size=0)
    with pytest.raises(ValueError, match="output"):
        pixelate(image, output="gif")  # type: ignore[arg-type]
