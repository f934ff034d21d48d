"""A world whose map is a function of map coordinates and whose look depends on the pixel size.

Grey squares on green ground. A square's map class depends on its size on the ground: 9-13 m squares are
buildings, 30-40 m squares are water, the ground is land. A 3 m pixel shows a 30-40 m square as 10-13 pixels:
what a building looks like at 1 m. So a generator trained at 1 m maps a 3 m scene right only when it sees the
scene at 1 m.

Where the squares are is decided per 48 m cell of the map CRS by a generator seeded with the cell's index, so
every scene (any origin, any pixel size) shows the same world. Images are rendered with each pixel's exact area
coverage (an ideal, anti-aliased sensor); the truth is the class under each pixel's centre. Square edges lie on
whole metres, so the truth is exact on any grid aligned to whole metres.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from affine import Affine

from geo_sat2map.raster_io import open_raster
from geo_sat2map.synthetic import PALETTE, Rendered, write_rendered

CRS = "EPSG:32632"
CELL_M = 48  # side of a world cell, metres
BUILDING_M = (9, 12)  # building side range, metres (inclusive)
SLOT_M = 16  # buildings stand in 3 x 3 slots of a cell
WATER_M = (30, 40)  # water side range, metres (inclusive)
GROUND = np.array([72, 118, 58], np.float32)
SQUARE = np.array([150, 150, 146], np.float32)
NOISE = 4.0  # sensor noise, 8-bit levels
LAND, BUILDING, WATER = range(3)
CLASS_COLOURS = np.array([PALETTE["land"], PALETTE["building"], PALETTE["water"]], np.uint8)


def _cell_squares(i: int, j: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, side, class) of the squares in cell (i, j) (x0, y0: lower-left corner, metres)."""
    rng = np.random.default_rng([7, i, j])
    x, y = i * CELL_M, j * CELL_M
    kind = rng.random()
    if kind < 0.6:  # one big square: water
        side = int(rng.integers(WATER_M[0], WATER_M[1] + 1))
        dx, dy = rng.integers(4, CELL_M - side - 4 + 1, 2)
        return [(x + int(dx), y + int(dy), side, WATER)]
    if kind < 0.9:  # a block of buildings: 3 x 3 slots, as dense as a water cell (density is no clue to the class)
        squares = []
        for qx in range(0, CELL_M, SLOT_M):
            for qy in range(0, CELL_M, SLOT_M):
                side = int(rng.integers(BUILDING_M[0], BUILDING_M[1] + 1))
                dx, dy = rng.integers(2, SLOT_M - side - 2 + 1, 2)
                if rng.random() < 0.85:
                    squares.append((x + qx + int(dx), y + qy + int(dy), side, BUILDING))
        return squares
    return []


def squares_over(bounds: tuple[float, float, float, float]) -> list[tuple[int, int, int, int]]:
    """Every square of the world in cells touching ``bounds`` (left, bottom, right, top)."""
    left, bottom, right, top = bounds
    return [
        square
        for i in range(math.floor(left / CELL_M), math.floor(right / CELL_M) + 1)
        for j in range(math.floor(bottom / CELL_M), math.floor(top / CELL_M) + 1)
        for square in _cell_squares(i, j)
    ]


def _bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    return transform.c, transform.f + height * transform.e, transform.c + width * transform.a, transform.f


def _overlap(edges: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Length of [lo, hi] inside each interval [edges[k], edges[k+1]] (edges ascending)."""
    return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)


def render_image(transform: Affine, width: int, height: int) -> np.ndarray:
    """uint8 RGB (3, height, width) of the world on a north-up grid: exact area coverage, plus sensor noise."""
    xs = transform.c + np.arange(width + 1) * transform.a
    ys = transform.f + np.arange(height + 1) * transform.e  # descending
    coverage = np.zeros((height, width), np.float64)
    for x0, y0, side, _ in squares_over(_bounds(transform, width, height)):
        cx = _overlap(xs, x0, x0 + side) / transform.a
        cy = _overlap(ys[::-1], y0, y0 + side)[::-1] / -transform.e
        rows, cols = np.flatnonzero(cy), np.flatnonzero(cx)
        if len(rows) and len(cols):
            coverage[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] += np.outer(cy[rows[0]:rows[-1] + 1],
                                                                             cx[cols[0]:cols[-1] + 1])
    rng = np.random.default_rng([width, height, round(transform.c), round(transform.f)])
    image = GROUND[:, None, None] + (SQUARE - GROUND)[:, None, None] * coverage[None].astype(np.float32)
    image += rng.normal(0.0, NOISE, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_truth(transform: Affine, width: int, height: int) -> np.ndarray:
    """uint8 RGB (3, height, width) map: the palette colour of the class under each pixel's centre."""
    xs = transform.c + (np.arange(width) + 0.5) * transform.a
    ys = transform.f + (np.arange(height) + 0.5) * transform.e
    classes = np.full((height, width), LAND, np.uint8)
    for x0, y0, side, kind in squares_over(_bounds(transform, width, height)):
        cols = np.flatnonzero((xs >= x0) & (xs < x0 + side))
        rows = np.flatnonzero((ys >= y0) & (ys < y0 + side))
        if len(rows) and len(cols):
            classes[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = kind
    return np.ascontiguousarray(CLASS_COLOURS[classes].transpose(2, 0, 1))


def grid(origin: tuple[float, float], resolution: float) -> Affine:
    return Affine(resolution, 0.0, origin[0], 0.0, -resolution, origin[1])


def write_scene(folder: Path, origin: tuple[float, float], resolution: float, size: int) -> tuple[Path, Path]:
    """``satellite.tif`` and its truth ``map.tif`` (same grid): ``size`` x ``size`` pixels from ``origin``
    (upper-left corner, metres)."""
    folder.mkdir(parents=True, exist_ok=True)
    transform = grid(origin, resolution)
    satellite = write_rendered(folder / "satellite.tif", Rendered(render_image(transform, size, size), CRS, transform))
    truth = write_rendered(folder / "map.tif", Rendered(render_truth(transform, size, size), CRS, transform))
    return satellite, truth


def write_truth_on_grid_of(raster: Path, out: Path) -> Path:
    """The truth on the grid of ``raster`` (e.g. a translated map), for scoring it pixel for pixel."""
    with open_raster(raster) as ds:
        assert ds.crs == CRS and ds.transform.b == ds.transform.d == 0
        transform, width, height = ds.transform, ds.width, ds.height
    return write_rendered(out, Rendered(render_truth(transform, width, height), CRS, transform))
