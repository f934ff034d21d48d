"""Paired windowed reads for make-tiles: a satellite window and the map warped onto the same pixel grid.

The satellite raster defines the grid (optionally resampled to another ground resolution, keeping its origin and
orientation); the map is reprojected onto that grid through a GDAL WarpedVRT, window by window, so neither raster
is ever loaded whole. Validity always comes from GDAL dataset masks (nodata, alpha, internal/external mask
bands), carried through the warp by ``core.warped_onto``; outside the map counts as invalid.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
import rasterio.vrt
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from geo_sat2map.errors import UserError
from geo_sat2map.raster_io.core import (
    colormap_lut,
    choose_bands,
    colour_roles,
    open_raster,
    read_window,
    resolve_bands,
    scene_scaling,
    warped_onto,
)
from geo_sat2map.raster_io.grid import RESAMPLING_METHODS, crs_kind, ground_resolution
from geo_sat2map.scaling import InputScaling



@dataclass(frozen=True)
class Grid:
    """A raster pixel grid: CRS (WKT for pyproj, label for people), affine transform and size."""

    crs_wkt: str
    crs_label: str
    transform: Affine
    width: int
    height: int

    def ground_resolution(self) -> tuple[float | None, str | None]:
        """Pixel size in metres (geographic CRSs: at the grid's centre) and the CRS kind; None when unknown."""
        crs = rasterio.crs.CRS.from_wkt(self.crs_wkt) if self.crs_wkt else None
        return ground_resolution(crs, self.transform, self.width, self.height), crs_kind(crs)

    def window_transform(self, col: int, row: int) -> Affine:
        """The transform of a window whose top-left pixel is (col, row)."""
        t = self.transform
        return Affine(t.a, t.b, t.c + t.a * col + t.b * row, t.d, t.e, t.f + t.d * col + t.e * row)

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Ground size of a pixel along its columns and rows (CRS units; works for rotated grids)."""
        t = self.transform
        return math.hypot(t.a, t.d), math.hypot(t.b, t.e)

    def resampled(self, resolution: float) -> Grid:
        """The same ground area, origin and orientation with square pixels of ``resolution`` CRS units.

        The new transform is the source affine scaled, so every output pixel stays on the source's geometry.
        """
        size_x, size_y = self.pixel_size
        scale_x, scale_y = resolution / size_x, resolution / size_y
        t = self.transform
        return Grid(
            self.crs_wkt,
            self.crs_label,
            Affine(t.a * scale_x, t.b * scale_y, t.c, t.d * scale_x, t.e * scale_y, t.f),  # source affine, scaled
            max(1, math.ceil(self.width / scale_x - 1e-9)),
            max(1, math.ceil(self.height / scale_y - 1e-9)),
        )


@dataclass(frozen=True)
class PairSpec:
    """What make-tiles knows about one satellite/map pair before reading any pixel."""

    image_path: str
    map_path: str
    image_grid: Grid  # the satellite raster's own grid
    map_grid: Grid
    grid: Grid  # the tiling grid: the satellite grid, resampled when a resolution is asked for
    bands: tuple[int, ...]
    image_dtype: str
    map_bands: tuple[int, ...]  # three RGB bands, or one band (palette or grey)
    band_roles: tuple[str, ...] | None = None  # colour interpretation of ``bands``; None if not all are tagged
    bands_chosen: str = ""  # how ``bands`` were chosen, for the log


@dataclass(frozen=True)
class PairWindow:
    """One window of a pair on the tiling grid: raw satellite bands, the map as RGB uint8, and both masks."""

    image: np.ndarray  # (3, h, w) source dtype
    image_valid: np.ndarray  # (h, w) bool
    map: np.ndarray  # (3, h, w) uint8
    map_valid: np.ndarray  # (h, w) bool


def _grid_of(ds: rasterio.io.DatasetReader, role: str) -> Grid:
    if ds.crs is None:
        raise UserError(
            f"{role} {ds.name}: has no CRS, so it cannot be aligned with its pair; assign one "
            "(e.g. gdal_edit.py -a_srs EPSG:XXXX)"
        )
    if ds.transform == Affine.identity():
        raise UserError(
            f"{role} {ds.name}: has no geotransform, so it cannot be aligned with its pair; georeference it"
        )
    return Grid(ds.crs.to_wkt(), ds.crs.to_string(), ds.transform, ds.width, ds.height)


def _map_bands(ds: rasterio.io.DatasetReader) -> tuple[int, ...]:
    """RGB bands of a rendered map (tagged red/green/blue, else 1-3), or band 1 of a paletted/grey map."""
    if ds.dtypes[0] != "uint8":
        raise UserError(
            f"map {ds.name}: is {ds.dtypes[0]}; a rendered 8-bit map is expected (RGB, RGBA or paletted)"
        )
    if ds.count >= 3:
        return resolve_bands(ds, None)
    return (1,)


def inspect_pair(
    image_path: str, map_path: str, bands: Sequence[int] | None = None, resolution: float | None = None
) -> PairSpec:
    """Open both rasters for their metadata only and validate what make-tiles needs of them."""
    with open_raster(image_path) as image, open_raster(map_path) as map_ds:
        image_grid = _grid_of(image, "image")
        map_grid = _grid_of(map_ds, "map")
        chosen, how = choose_bands(image, bands)
        grid = image_grid.resampled(resolution) if resolution else image_grid
        return PairSpec(
            image_path=image_path,
            map_path=map_path,
            image_grid=image_grid,
            map_grid=map_grid,
            grid=grid,
            bands=chosen,
            image_dtype=image.dtypes[chosen[0] - 1],
            map_bands=_map_bands(map_ds),
            band_roles=colour_roles(image, chosen),
            bands_chosen=how,
        )


Source = rasterio.io.DatasetReader | rasterio.vrt.WarpedVRT


def _onto(ds: rasterio.io.DatasetReader, grid: Grid, resampling: str) -> contextlib.AbstractContextManager[Source]:
    return warped_onto(ds, grid.crs_wkt, grid.transform, grid.width, grid.height, Resampling[resampling])


class PairReader:
    """Reads aligned windows of one pair on its tiling grid (see :func:`open_pair`)."""

    def __init__(
        self, spec: PairSpec, image_source: Source, map_source: Source, palette: np.ndarray | None, scaling: InputScaling
    ):
        self.spec = spec
        self.scaling = scaling
        self._image = image_source
        self._map = map_source
        self._palette = palette

    def read(self, col: int, row: int, size: int) -> PairWindow:
        window = Window(col, row, size, size)
        image, image_valid = read_window(self._image, self.spec.bands, window)
        map_data, map_valid = read_window(self._map, self.spec.map_bands, window)
        if len(self.spec.map_bands) == 1:
            band = map_data[0]
            map_data = self._palette[band].transpose(2, 0, 1) if self._palette is not None else np.stack([band] * 3)
        return PairWindow(image, image_valid, np.ascontiguousarray(map_data), map_valid)


@contextlib.contextmanager
def open_pair(
    spec: PairSpec, image_resampling: str = "bilinear", map_resampling: str = "nearest"
) -> Iterator[PairReader]:
    """Open a pair for windowed reads; computes the satellite's scene scaling (uint8, or 2-98 % stretch) once."""
    for name in (image_resampling, map_resampling):
        if name not in RESAMPLING_METHODS:
            raise UserError(f"unknown resampling {name!r}; use one of {', '.join(RESAMPLING_METHODS)}")
    with contextlib.ExitStack() as stack:
        image = stack.enter_context(open_raster(spec.image_path))
        map_ds = stack.enter_context(open_raster(spec.map_path))
        scaling = scene_scaling(image, spec.bands)
        resampled = spec.grid != spec.image_grid
        image_source = stack.enter_context(_onto(image, spec.grid, image_resampling)) if resampled else image
        map_source = stack.enter_context(_onto(map_ds, spec.grid, map_resampling))
        palette = colormap_lut(map_ds) if len(spec.map_bands) == 1 else None
        yield PairReader(spec, image_source, map_source, palette, scaling)
