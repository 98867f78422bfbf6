"""The pixel-perfect pass: pseudo pixel art in, true pixel art out.

Pixel-art LoRAs draw "pixels" that are blurred, of uneven size, slightly off any grid and
made of hundreds of colours. This pass finds the grid the model meant, gives each cell one
colour and reduces the colours to a small palette:

1. Grid. The colour-gradient energy of the image, summed along each axis, peaks on cell
   boundaries. Its autocorrelation (both axes together: pixel-art cells are square) gives
   the mean cell size; a dynamic programme then puts each boundary on the strongest edge
   near where a regular grid would put it, so a grid whose cells vary by a pixel or two
   (the model's never is exactly regular) is followed instead of drifting off it.
2. Cells. Each cell takes the per-channel median of samples from its central part, so the
   blurred edge it shares with its neighbours does not bleed into its colour.
3. Palette. Weighted k-means in OKLab (a perceptual space; deterministic seeding) on the
   cell colours; palette entries closer than a just-noticeable difference are merged, so
   the result has at most N colours and no near-duplicates.

Where no grid stands out (a photo, noise, a flat image) the pass uses a regular grid of
``FALLBACK_CELLS_ACROSS`` cells across the longer side, and says so.

Pure: a PIL image in, a PIL image out (palette mode), plus what was found; numpy and
Pillow, no torch, no scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fluxrun.tools.request import PixelOutput

MIN_CELL = 4  # below this, blur makes cells indistinguishable from anti-aliasing
MAX_CELL = 64
FALLBACK_CELLS_ACROSS = 64  # no grid found: cells that make a 64-pixel sprite of the longer side
_MIN_REPEATS = 4  # a period must repeat this often along an axis to be measured there
_MIN_PROMINENCE = 0.4  # autocorrelation rise over the valley before it, for a real period
_NOISE_PROMINENCE = 6.0  # ... and at least this / sqrt(profile length), above chance
_EXTRA_LINE_SHARE = 0.2  # a finer grid's extra lines must carry this share of the edge
_SLIVER = 0.4  # an edge cell narrower than this share of a cell is left out
_SAMPLES = 5  # samples per cell and axis, spread over the central 60 % of the cell
_CENTRE = (0.2, 0.8)
_DRIFT_PENALTY = 0.2  # cost of a full-tolerance spacing change, in units of a typical edge
_MERGE_DISTANCE = 0.045  # OKLab; classic 16-32 colour palettes keep their colours 0.07+ apart
_KMEANS_STARTS = 3
_KMEANS_ITERATIONS = 25


@dataclass(frozen=True)
class PixelGrid:
    """The cells the pass used: their edges along each axis, in source pixels."""

    cell: float  # mean cell size in source pixels
    xs: tuple[int, ...]  # column edges, left to right: columns = len(xs) - 1
    ys: tuple[int, ...]  # row edges, top to bottom
    detected: bool  # False: no grid stood out, a regular fallback grid was used

    @property
    def columns(self) -> int:
        return len(self.xs) - 1

    @property
    def rows(self) -> int:
        return len(self.ys) - 1

    @property
    def offset(self) -> tuple[int, int]:
        """The grid's phase: where its lines fall along x and y, modulo the cell size."""
        return (_first_line(self.xs, self.cell), _first_line(self.ys, self.cell))


@dataclass(frozen=True)
class PixelArtResult:
    image: Image.Image  # what to hand out: the sprite or its upscale, palette mode
    sprite: Image.Image  # one pixel per cell, palette mode
    grid: PixelGrid
    palette: tuple[tuple[int, int, int], ...]  # the colours used, most frequent first
    scale: int  # the integer upscale factor of ``image`` over ``sprite`` (1 for a sprite)

    def describe(self) -> str:
        """One line for the task's debugoutput."""
        colours = f"{len(self.palette)} colour{'s' if len(self.palette) != 1 else ''}"
        sizes = f"sprite {self.sprite.width}x{self.sprite.height}"
        if self.scale > 1:
            sizes += f" shown at {self.scale}x ({self.image.width}x{self.image.height})"
        cell = f"{round(self.grid.cell, 1):g} px"
        if self.grid.detected:
            ox, oy = self.grid.offset
            return f"pixel-perfect: {cell} grid at offset ({ox}, {oy}), {colours}, {sizes}"
        return (
            f"pixel-perfect: no pixel grid found in the image, so a regular {cell} grid was used; "
            f"{colours}, {sizes}"
        )


def pixelate(image: Image.Image, palette_size: int = 16, output: PixelOutput = "upscaled") -> PixelArtResult:
    """Snap ``image`` to its pixel grid and reduce it to at most ``palette_size`` colours."""
    if palette_size < 1:
        raise ValueError(f"palette_size: must be at least 1 (got {palette_size})")
    if output not in ("upscaled", "sprite"):
        raise ValueError(f"output: must be upscaled or sprite (got {output!r})")
    rgb = np.asarray(image.convert("RGB"))
    grid = detect_grid(rgb) or fallback_grid(rgb.shape[1], rgb.shape[0])
    colours = cell_colours(rgb, grid)
    indices, palette = quantize(colours, palette_size)

    sprite = Image.fromarray(indices, mode="P")
    sprite.putpalette([channel for colour in palette for channel in colour])
    scale = 1
    shown = sprite
    if output == "upscaled":
        # Each art pixel at the size the model drew it: about the size it was asked for.
        scale = max(1, round(grid.cell))
        shown = sprite.resize((sprite.width * scale, sprite.height * scale), Image.Resampling.NEAREST)
    return PixelArtResult(image=shown, sprite=sprite, grid=grid, palette=palette, scale=scale)


# -- grid ------------------------------------------------------------------------------


def detect_grid(rgb: np.ndarray) -> PixelGrid | None:
    """The pixel grid of an RGB array (H, W, 3), or None when no period stands out."""
    height, width = rgb.shape[:2]
    pixels = rgb.astype(np.int16)
    # Edge energy on each boundary between neighbouring columns (rows): length W-1 (H-1).
    across = np.abs(np.diff(pixels, axis=1)).sum(axis=(0, 2), dtype=np.int64).astype(np.float64)
    down = np.abs(np.diff(pixels, axis=0)).sum(axis=(1, 2), dtype=np.int64).astype(np.float64)
    period = _period([across, down])
    if period is None:
        return None
    lengths = (width, height)
    gains = [_edge_gain(profile, period) for profile in (across, down)]
    cuts = [_cuts(gain, length, period) for gain, length in zip(gains, lengths)]
    if any(c is None for c in cuts):
        return None
    # Art drawn in chunks of 2x2 (3x3) cells correlates best at the chunk, and the
    # autocorrelation of a jittered grid is smeared at one cell: the finer grid is the
    # real one when its extra lines sit on edges too.
    refined = True
    while refined:
        refined = False
        for times in (2, 3):
            finer = period / times
            if finer < MIN_CELL:
                continue
            fine = [_cuts(gain, length, finer) for gain, length in zip(gains, lengths)]
            if _extra_lines_on_edges(gains, cuts, fine, finer):
                period, cuts, refined = finer, fine, True
                break
    xs, ys = (_edges(c, length, period) for c, length in zip(cuts, lengths))
    return PixelGrid(cell=_mean_spacing(xs, ys, period), xs=xs, ys=ys, detected=True)


def _extra_lines_on_edges(
    gains: list[np.ndarray], coarse: list[list[int] | None], fine: list[list[int] | None], finer: float
) -> bool:
    """Whether the lines a finer grid adds sit on edges nearly as real as the coarse ones."""
    shared: list[float] = []
    extra: list[float] = []
    for gain, coarse_cuts, fine_cuts in zip(gains, coarse, fine):
        if coarse_cuts is None or fine_cuts is None:
            return False
        known = np.asarray(coarse_cuts)
        for cut in fine_cuts:
            is_new = len(known) == 0 or np.abs(known - cut).min() > finer / 4
            (extra if is_new else shared).append(gain[cut])
    if not extra or not shared:
        return False
    return float(np.mean(extra)) >= _EXTRA_LINE_SHARE * max(float(np.mean(shared)), 1e-9)


def fallback_grid(width: int, height: int) -> PixelGrid:
    """A regular grid from the top-left corner, FALLBACK_CELLS_ACROSS cells on the longer side."""
    cell = max(1, round(max(width, height) / FALLBACK_CELLS_ACROSS))
    return PixelGrid(cell=float(cell), xs=_regular(width, cell), ys=_regular(height, cell), detected=False)


def _regular(length: int, cell: int) -> tuple[int, ...]:
    edges = list(range(0, length, cell)) + [length]
    if len(edges) > 2 and edges[-1] - edges[-2] < cell / 2:
        del edges[-2]  # a sliver at the end joins the cell before it
    return tuple(edges)


def _period(profiles: list[np.ndarray]) -> float | None:
    """The cell size both edge profiles share, by their mean normalised autocorrelation.

    A real grid shows as a peak well above the valley before it; white noise makes
    peaks too, of height about 3/sqrt(n) each side, hence the size-aware bar.
    """
    usable = [p for p in profiles if len(p) // _MIN_REPEATS > MIN_CELL + 1]
    if not usable:
        return None
    max_lag = min(MAX_CELL, min(len(p) // _MIN_REPEATS for p in usable))
    curves = [c for c in (_autocorrelation(p, max_lag + 1) for p in usable) if c is not None]
    if not curves:
        return None
    acf = np.mean(curves, axis=0)
    bar = max(_MIN_PROMINENCE, _NOISE_PROMINENCE / math.sqrt(min(len(p) for p in usable)))
    peaks: list[int] = []
    for lag in range(MIN_CELL, max_lag + 1):
        if not (acf[lag] > acf[lag - 1] and acf[lag] >= acf[lag + 1]):
            continue
        valley = acf[lag // 2 : lag].min()
        if acf[lag] > 0 and acf[lag] - valley >= bar:
            peaks.append(lag)
    if not peaks:
        return None
    strongest = max(peaks, key=lambda lag: acf[lag])
    # Multiples of the cell size correlate as well on a regular grid: the cell is the
    # shortest clear peak that divides the strongest one.
    lag = next(lag for lag in peaks if _divides(lag, strongest))
    below, at, above = acf[lag - 1], acf[lag], acf[lag + 1]
    curvature = below - 2 * at + above
    shift = 0.5 * (below - above) / curvature if curvature < 0 else 0.0
    return lag + float(np.clip(shift, -0.5, 0.5))


def _divides(lag: int, longer: int) -> bool:
    times = round(longer / lag)
    return times >= 1 and abs(longer - times * lag) <= max(1.5, 0.05 * longer)


def _autocorrelation(profile: np.ndarray, max_lag: int) -> np.ndarray | None:
    centred = profile - profile.mean()
    size = len(centred)
    spectrum = np.fft.rfft(centred, 2 * size)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), 2 * size)[: max_lag + 1]
    acf /= size - np.arange(max_lag + 1)  # unbiased: long lags overlap fewer samples
    if acf[0] <= 1e-9 * max(1.0, float(np.abs(profile).max())) ** 2:
        return None  # a flat profile: nothing to correlate
    return acf / acf[0]


def _edge_gain(profile: np.ndarray, period: float) -> np.ndarray:
    """The edge profile as the gain of a cut at each position (index = cut position).

    0 at the noise floor (the median), about 1 on a typical grid line (the mean of the
    strongest one-per-cell values).
    """
    gain = np.zeros(len(profile) + 1)
    baseline = np.median(profile)
    top = np.sort(profile)[-max(1, int(len(profile) / period)) :].mean()
    gain[1:] = (profile - baseline) / max(top - baseline, 1e-9)
    return gain


def _cuts(gain: np.ndarray, length: int, period: float) -> list[int] | None:
    """Grid lines along one axis: on the strongest edges, about ``period`` apart.

    ``gain[x]`` is the worth of a cut between pixels x-1 and x. A dynamic programme picks
    the cuts that maximise the gain they sit on, minus a small cost for spacings away
    from ``period``: flat stretches (no edges to go by) keep the mean spacing, and a
    drifting grid is followed edge by edge.
    """
    tolerance = max(1.0, 0.2 * period)
    shortest = max(2, math.floor(period - tolerance))
    longest = math.ceil(period + tolerance)
    if length < 2 * shortest:
        return None
    spacings = np.arange(shortest, longest + 1)
    penalty = _DRIFT_PENALTY * ((spacings - period) / tolerance) ** 2
    score = np.full(length, -np.inf)
    back = np.zeros(length, dtype=np.int64)  # previous cut; 0 means the image's edge
    # A cut depends only on cuts at least `shortest` before it, so a block of `shortest`
    # positions is decided at once.
    for first in range(1, length, shortest):
        block = np.arange(first, min(first + shortest, length))
        sources = block[:, None] - spacings[None, :]
        options = np.where(sources >= 1, score[np.maximum(sources, 0)] - penalty[None, :], -np.inf)
        pick = np.argmax(options, axis=1)
        best = options[np.arange(len(block)), pick]
        # The first cut may come anywhere up to a cell from the image's edge, at no cost.
        opening = (block <= longest) & (best < 0.0)
        score[block] = gain[block] + np.where(opening, 0.0, best)
        back[block] = np.where(opening, 0, sources[np.arange(len(block)), pick])
    last_cuts = np.arange(max(1, length - longest), length)
    last_cuts = last_cuts[np.isfinite(score[last_cuts])]
    if len(last_cuts) == 0:
        return None
    cut = int(last_cuts[np.argmax(score[last_cuts])])
    cuts: list[int] = []
    while cut > 0:
        cuts.append(cut)
        cut = int(back[cut])
    return cuts[::-1]


def _edges(cuts: list[int], length: int, period: float) -> tuple[int, ...]:
    """Cell edges from grid lines: the image's ends added, a sliver at either end left out
    (the canvas cutting a cell, not a pixel of its own)."""
    edges = [0, *cuts, length]
    if len(edges) > 2 and edges[1] - edges[0] < _SLIVER * period:
        del edges[0]
    if len(edges) > 2 and edges[-1] - edges[-2] < _SLIVER * period:
        del edges[-1]
    return tuple(edges)


def _mean_spacing(xs: tuple[int, ...], ys: tuple[int, ...], period: float) -> float:
    inner = [b - a for edges in (xs, ys) for a, b in zip(edges[1:-2], edges[2:-1])]
    return float(np.mean(inner)) if inner else period


def _first_line(edges: tuple[int, ...], cell: float) -> int:
    """The first grid line inside the image, wrapped into one cell (the grid's phase)."""
    step = max(1, round(cell))
    line = edges[1] if edges[0] == 0 and len(edges) > 2 else edges[0]
    return line % step


# -- cells -----------------------------------------------------------------------------


def cell_colours(rgb: np.ndarray, grid: PixelGrid) -> np.ndarray:
    """One colour per cell (rows, columns, 3 uint8): the median of its central samples."""
    rows = _sample_positions(grid.ys)
    columns = _sample_positions(grid.xs)
    samples = rgb[rows[:, :, None, None], columns[None, None, :, :]]  # (rows, S, cols, S, 3)
    return np.median(samples, axis=(1, 3)).round().astype(np.uint8)


def _sample_positions(edges: tuple[int, ...]) -> np.ndarray:
    start = np.asarray(edges[:-1], dtype=np.float64)[:, None]
    end = np.asarray(edges[1:], dtype=np.float64)[:, None]
    spread = np.linspace(*_CENTRE, _SAMPLES)[None, :]
    positions = np.floor(start + (end - start) * spread).astype(np.int64)
    return np.clip(positions, start.astype(np.int64), end.astype(np.int64) - 1)


# -- palette ---------------------------------------------------------------------------


def quantize(colours: np.ndarray, palette_size: int) -> tuple[np.ndarray, tuple[tuple[int, int, int], ...]]:
    """Map (rows, cols, 3) uint8 colours to at most ``palette_size`` palette entries.

    Returns the (rows, cols) uint8 palette indices and the palette, most used first.
    """
    flat = colours.reshape(-1, 3)
    unique, inverse, counts = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    lab = srgb_to_oklab(unique)
    weights = counts.astype(np.float64)
    if len(unique) <= palette_size:
        centres = lab
    else:
        centres = _kmeans(lab, weights, palette_size)
    # Merging moves members to other entries; settle them and merge again until stable.
    while len(merged := _merge_close(lab, weights, centres)) < len(centres):
        centres = _lloyd(lab, weights, merged)
    labels = _nearest(lab, centres)
    # Each entry's colour: the weighted mean of its member colours, in sRGB (the members
    # are already clean cell colours, so no round trip through OKLab is needed).
    used = np.unique(labels)
    totals = np.bincount(labels, weights=weights, minlength=len(centres))
    order = sorted(used, key=lambda label: (-totals[label], int(label)))
    remap = np.zeros(len(centres), dtype=np.int64)
    palette: list[tuple[int, int, int]] = []
    for index, label in enumerate(order):
        members = labels == label
        mean = np.average(unique[members].astype(np.float64), axis=0, weights=weights[members])
        palette.append(tuple(int(v) for v in np.clip(np.round(mean), 0, 255)))  # type: ignore[misc]
        remap[label] = index
    indices = remap[labels][inverse].reshape(colours.shape[:2]).astype(np.uint8)
    return indices, tuple(palette)


def srgb_to_oklab(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) sRGB 0-255 -> (N, 3) OKLab (Björn Ottosson's matrices)."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    lms = linear @ np.array(
        [
            [0.4122214708, 0.2119034982, 0.0883024619],
            [0.5363325363, 0.6806995451, 0.2817188376],
            [0.0514459929, 0.1073969566, 0.6299787005],
        ]
    )
    return np.cbrt(lms) @ np.array(
        [
            [0.2104542553, 1.9779984951, 0.0259040371],
            [0.7936177850, -2.4285922050, 0.7827717662],
            [-0.0040720468, 0.4505937099, -0.8086757660],
        ]
    )


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2, and |p|^2 is the same for every centre. The dot
    # product is spelt out: a BLAS call for three columns costs more than it saves.
    distances = (centres**2).sum(axis=1)[None, :]
    for axis in range(points.shape[1]):
        distances = distances - 2.0 * points[:, axis, None] * centres[None, :, axis]
    return np.argmin(distances, axis=1)


def _kmeans(points: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Weighted k-means, k-means++ seeding from fixed seeds; the best of a few starts."""
    best_centres, best_inertia = points[:k], np.inf
    for start in range(_KMEANS_STARTS):
        centres = _lloyd(points, weights, _kmeans_plus_plus(points, weights, k, np.random.default_rng(start)))
        labels = _nearest(points, centres)
        inertia = float((weights * ((points - centres[labels]) ** 2).sum(axis=1)).sum())
        if inertia < best_inertia:
            best_centres, best_inertia = centres, inertia
    return best_centres


def _lloyd(points: np.ndarray, weights: np.ndarray, centres: np.ndarray) -> np.ndarray:
    previous: np.ndarray | None = None
    for _ in range(_KMEANS_ITERATIONS):
        labels = _nearest(points, centres)
        totals = np.bincount(labels, weights=weights, minlength=len(centres))
        sums = np.stack(
            [np.bincount(labels, weights=weights * points[:, axis], minlength=len(centres)) for axis in range(3)],
            axis=1,
        )
        centres = np.where(totals[:, None] > 0, sums / np.maximum(totals, 1e-12)[:, None], centres)
        if previous is not None and np.array_equal(labels, previous):
            break  # converged: the assignment no longer changes
        previous = labels
    return centres


def _kmeans_plus_plus(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ (as scikit-learn seeds): of a few candidates drawn by the usual
    odds, each step keeps the one that lowers the total squared distance most."""
    trials = 2 + int(math.log(k))
    chosen = [int(np.argmax(weights))]  # the commonest colour is surely in the palette
    nearest = ((points - points[chosen[0]]) ** 2).sum(axis=1)
    for _ in range(1, k):
        odds = nearest * weights
        if odds.sum() <= 0:
            break  # fewer distinct colours than entries
        candidates = rng.choice(len(points), size=trials, p=odds / odds.sum())
        distances = ((points[None, :, :] - points[candidates][:, None, :]) ** 2).sum(axis=2)
        options = np.minimum(nearest[None, :], distances)
        best = int(np.argmin((options * weights[None, :]).sum(axis=1)))
        chosen.append(int(candidates[best]))
        nearest = options[best]
    return points[chosen].copy()


def _merge_close(points: np.ndarray, weights: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Merge palette entries closer than _MERGE_DISTANCE, closest pair first."""
    labels = _nearest(points, centres)
    mass = np.bincount(labels, weights=weights, minlength=len(centres))
    keep = mass > 0
    centres, mass = centres[keep], mass[keep]
    while len(centres) > 1:
        gaps = np.sqrt(((centres[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2))
        np.fill_diagonal(gaps, np.inf)
        a, b = np.unravel_index(int(np.argmin(gaps)), gaps.shape)
        if gaps[a, b] >= _MERGE_DISTANCE:
            break
        merged = (centres[a] * mass[a] + centres[b] * mass[b]) / (mass[a] + mass[b])
        centres[a], mass[a] = merged, mass[a] + mass[b]
        centres, mass = np.delete(centres, b, axis=0), np.delete(mass, b)
    return centres
