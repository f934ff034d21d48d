"""Burning vector shapes into arrays (GDAL's rasteriser), for the synthetic world and anything else that draws."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from affine import Affine
from rasterio import features


def rasterize_shapes(
    shapes: Iterable[tuple[object, int | float]],
    out_shape: tuple[int, int],
    transform: Affine,
    *,
    fill: int | float = 0,
    dtype: str | np.dtype = "uint8",
    all_touched: bool = False,
) -> np.ndarray:
    """Burn ``(geometry, value)`` pairs onto a (H, W) grid; later shapes paint over earlier ones.

    Geometries are anything with ``__geo_interface__`` (shapely); empty ones are skipped. A pixel is burnt
    when its centre falls inside a shape (or when the shape touches it at all, with ``all_touched``).
    """
    pairs = [(geom, value) for geom, value in shapes if geom is not None and not geom.is_empty]
    if not pairs:
        return np.full(out_shape, fill, dtype=dtype)
    return features.rasterize(
        pairs, out_shape=out_shape, transform=transform, fill=fill, dtype=dtype, all_touched=all_touched
    )


def polygon_mask(geometry: object, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies inside ``geometry`` (in the grid's CRS)."""
    return rasterize_shapes([(geometry, 1)], shape, transform).astype(bool)
