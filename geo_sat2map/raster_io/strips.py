"""Reading full-width row strips of a scene with their validity mask (the streaming reader's unit of I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from geo_sat2map.raster_io.core import read_window


def read_rows(
    ds: rasterio.io.DatasetReader, bands: Sequence[int], row_off: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bands and validity (True = valid) of scene rows [row_off, row_off + height), full width.

    Validity is GDAL's dataset mask (nodata value, alpha band, internal or external mask); for floating-point
    data, NaN/inf pixels are invalid too, since no generator input can be made from them.
    """
    data, valid = read_window(ds, bands, Window(0, row_off, ds.width, height))
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return data, valid
