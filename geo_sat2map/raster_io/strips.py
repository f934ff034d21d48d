"""Reading full-width row strips of a scene with their validity mask (the streaming reader's unit of I/O)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from geo_sat2map.raster_io.core import DEFAULT_ALPHA_THRESHOLD, open_raster, read_window


def read_rows(
    ds: rasterio.io.DatasetReader, bands: Sequence[int], row_off: int, height: int, out: np.ndarray | None = None,
    alpha_threshold: float = DEFAULT_ALPHA_THRESHOLD, columns: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bands and validity (True = valid) of scene rows [row_off, row_off + height), full width (or ``columns``
    [start, stop)).

    Validity is GDAL's dataset mask (nodata value, alpha band at ``alpha_threshold`` opacity, internal or
    external mask); for floating-point data, NaN/inf pixels are invalid too, since no generator input can be
    made from them. ``out``: a (bands, height, width) array to read into (GDAL converts to its dtype), e.g.
    pinned memory.
    """
    start, stop = columns or (0, ds.width)
    data, valid = read_window(ds, bands, Window(start, row_off, stop - start, height), out=out,
                              alpha_threshold=alpha_threshold)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return data, valid


def read_validity(
    ds: rasterio.io.DatasetReader, bands: Sequence[int], row_off: int, height: int,
    alpha_threshold: float = DEFAULT_ALPHA_THRESHOLD, columns: tuple[int, int] | None = None,
) -> np.ndarray:
    """``read_rows``' validity alone: only the dataset mask is read, unless the bands are floating point (their
    NaN/inf pixels are invalid too, so their values are needed)."""
    if any(np.issubdtype(np.dtype(ds.dtypes[band - 1]), np.floating) for band in bands):
        return read_rows(ds, bands, row_off, height, None, alpha_threshold, columns)[1]
    start, stop = columns or (0, ds.width)
    return read_window(ds, (), Window(start, row_off, stop - start, height), alpha_threshold=alpha_threshold)[1]


def streaming_dtype(source_dtype: str) -> np.dtype:
    """The dtype raw rows travel in: uint8 stays uint8 (4x less to move than floats); other integers that fit
    become int32 (exact, and every device can index and convert it); the rest float32 (what scaling computes in)."""
    if source_dtype == "uint8":
        return np.dtype(np.uint8)
    if source_dtype in ("int8", "int16", "uint16", "int32"):
        return np.dtype(np.int32)
    return np.dtype(np.float32)


def map_strips(path: str | os.PathLike[str], rows: int) -> Iterator[np.ndarray]:
    """A uint8 map (RGBA or one band of classes, e.g. a VRT of parts) as consecutive (n, width, bands) strips of
    ``rows`` rows, pixel-interleaved like the rows a map sink takes."""
    with open_raster(path) as ds:
        for row_off in range(0, ds.height, rows):
            height = min(rows, ds.height - row_off)
            planar = ds.read(window=Window(0, row_off, ds.width, height))
            yield np.ascontiguousarray(planar.transpose(1, 2, 0))
