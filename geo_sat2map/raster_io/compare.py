"""Reading two rasters on one grid for comparison (evaluate): grid checks, overlap, RGB windows with masks."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from geo_sat2map.errors import UserError
from geo_sat2map.raster_io.core import colormap_lut, read_window, resolve_bands


def grids_match(a: rasterio.io.DatasetReader, b: rasterio.io.DatasetReader) -> bool:
    """Same CRS, size and (to a millionth of a pixel) the same geotransform: pixels correspond one to one."""
    if (a.width, a.height) != (b.width, b.height) or a.crs != b.crs:
        return False
    tolerance = 1e-6 * min(abs(a.transform.a), abs(a.transform.e))
    return all(math.isclose(x, y, abs_tol=tolerance) for x, y in zip(a.transform[:6], b.transform[:6]))


def footprint_text(ds: rasterio.io.DatasetReader) -> str:
    """The raster's bounds in EPSG:4326, for messages."""
    west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
    return f"lon {west:.5f}..{east:.5f}, lat {south:.5f}..{north:.5f}"


def overlap_window(target: rasterio.io.DatasetReader, other: rasterio.io.DatasetReader) -> Window | None:
    """The window of ``target`` covered by ``other``'s bounding box (reprojected, densified); None if disjoint.

    Rasters on one grid (including two ungeoreferenced ones of the same size) cover each other entirely.
    """
    if grids_match(target, other):
        return Window(0, 0, target.width, target.height)
    left, bottom, right, top = transform_bounds(other.crs, target.crs, *other.bounds, densify_pts=21)
    window = from_bounds(left, bottom, right, top, transform=target.transform)
    col0 = max(0, math.floor(min(window.col_off, window.col_off + window.width)))
    row0 = max(0, math.floor(min(window.row_off, window.row_off + window.height)))
    col1 = min(target.width, math.ceil(max(window.col_off, window.col_off + window.width)))
    row1 = min(target.height, math.ceil(max(window.row_off, window.row_off + window.height)))
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def iter_chunks(area: Window, size: int) -> Iterator[Window]:
    """Row-major windows of at most ``size`` x ``size`` covering ``area``."""
    col0, row0 = int(area.col_off), int(area.row_off)
    col1, row1 = col0 + int(area.width), row0 + int(area.height)
    for row in range(row0, row1, size):
        for col in range(col0, col1, size):
            yield Window(col, row, min(size, col1 - col), min(size, row1 - row))


def with_halo(window: Window, halo: int, width: int, height: int) -> tuple[Window, np.ndarray]:
    """``window`` grown by ``halo`` pixels (clipped to a width x height raster), and a mask of its original pixels."""
    col0, row0 = int(window.col_off), int(window.row_off)
    col1, row1 = col0 + int(window.width), row0 + int(window.height)
    hc0, hr0 = max(0, col0 - halo), max(0, row0 - halo)
    hc1, hr1 = min(width, col1 + halo), min(height, row1 + halo)
    interior = np.zeros((hr1 - hr0, hc1 - hc0), dtype=bool)
    interior[row0 - hr0 : row1 - hr0, col0 - hc0 : col1 - hc0] = True
    return Window(hc0, hr0, hc1 - hc0, hr1 - hr0), interior


class RGBWindowReader:
    """Reads uint8 RGB windows and the dataset mask from a raster, or from a warped view of one.

    A single-band map is expanded to RGB: through its colour table when it has one (a paletted map), else as
    grey. ``source`` is the original dataset when ``view`` is a warped VRT of it: bands, dtype and colour
    table are taken from it.
    """

    def __init__(self, view: rasterio.io.DatasetReader, source: rasterio.io.DatasetReader | None = None) -> None:
        source = source if source is not None else view
        self.view = view
        self.lut: np.ndarray | None = None
        if source.count == 1:
            self.bands: tuple[int, ...] = (1,)
            self.lut = colormap_lut(source)
            if self.lut is None:  # grey
                self.lut = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
        else:
            self.bands = resolve_bands(source, None)
        dtype = source.dtypes[self.bands[0] - 1]
        if dtype != "uint8":
            raise UserError(
                f"{source.name}: is {dtype}; evaluate compares 8-bit RGB maps (convert it first, e.g. "
                "gdal_translate -ot Byte -scale)"
            )

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        data, valid = read_window(self.view, self.bands, window)
        if self.lut is not None:
            data = self.lut[data[0]].transpose(2, 0, 1)
        return np.ascontiguousarray(data), valid
