"""Ground resolution in metres, and the processing grid: the pixels the generator sees a scene on.

A generator is right only at the pixel size it was trained on, so ``translate`` may look at a scene on a grid of
another pixel size. ``processing_grid`` plans that grid (same CRS; pixel size chosen in metres; aligned to the
global lattice of that pixel size, as ``gdalwarp -tap`` does, so neighbouring scenes share it) and
``GridRows`` reads it row by row, resampled on the fly with GDAL's warper:

- rows are produced in fixed blocks of ``BLOCK_ROWS`` grid rows, each warped from the source rows it needs plus a
  halo. A block's pixels therefore never depend on which rows a caller asked for, so split runs (torchrun
  ranks) and resumed runs see bit-identical input;
- the mask is resampled with the image: a grid pixel is valid when at least half of the ground it covers is valid
  in the source (the area-weighted ``average`` of the 0/1 validity, whether shrinking or enlarging), and it has a
  value.

On the scene's own grid (``native``) nothing is resampled: rows are read exactly as before.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import rasterio
from affine import Affine
from pyproj import Geod
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from geo_sat2map.errors import UserError
from geo_sat2map.raster_io.core import DEFAULT_ALPHA_THRESHOLD, RasterInfo, open_raster
from geo_sat2map.raster_io.strips import read_rows, read_validity

RESAMPLING_METHODS = ("average", "bilinear", "cubic", "cubic_spline", "lanczos", "nearest", "mode")
# Source pixels a kernel reaches beyond the one under the sample point, at 1:1 (scaled up when shrinking).
_KERNEL_RADIUS = {"nearest": 1, "mode": 1, "average": 1, "bilinear": 1, "cubic": 2, "cubic_spline": 2, "lanczos": 3}
BLOCK_ROWS = 64  # grid rows warped together; fixed, so that a pixel never depends on how rows are requested
VALID_FRACTION = 0.5  # a resampled pixel is valid when at least this share of its ground is valid
MAX_PIXEL_GROWTH = 16  # a processing grid may hold at most this many times the scene's pixels
_WGS84 = Geod(ellps="WGS84")


def crs_kind(crs: rasterio.crs.CRS | None) -> str | None:
    """"projected", "geographic" or None (no CRS, or neither, e.g. a local engineering CRS)."""
    if crs is None:
        return None
    if crs.is_projected:
        return "projected"
    if crs.is_geographic:
        return "geographic"
    return None


def north_up(transform: Affine) -> bool:
    """Axis-aligned with rows running south (what pixel boxes and resampling assume)."""
    return transform.b == 0 and transform.d == 0 and transform.a > 0 and transform.e < 0


def pixel_metres(crs: rasterio.crs.CRS | None, transform: Affine, width: int, height: int) -> tuple[float, float] | None:
    """Ground size (x, y) of one pixel in metres: CRS units times the unit's length for a projected CRS, the
    geodesic length of one pixel at the scene centre for a geographic one; None when it cannot be known."""
    kind = crs_kind(crs)
    if kind is None or transform.b or transform.d:
        return None
    if kind == "projected":
        try:
            factor = crs.linear_units_factor[1]
        except Exception:  # noqa: BLE001 - rasterio raises CRSError for CRSs without a linear unit
            return None
        return abs(transform.a) * factor, abs(transform.e) * factor
    lon, lat = transform @ (width / 2, height / 2)
    lat = min(max(lat, -89.0), 89.0)
    dx = _WGS84.inv(lon, lat, lon + abs(transform.a), lat)[2]
    dy = _WGS84.inv(lon, lat - abs(transform.e) / 2, lon, lat + abs(transform.e) / 2)[2]
    return dx, dy


def ground_resolution(crs: rasterio.crs.CRS | None, transform: Affine, width: int, height: int) -> float | None:
    """One number for a pixel's ground size in metres (the geometric mean of its sides), or None."""
    size = pixel_metres(crs, transform, width, height)
    return math.sqrt(size[0] * size[1]) if size else None


@dataclass(frozen=True)
class ProcessingGrid:
    """The grid a scene is translated on: the scene's own (``native``) or a resampled one of the same CRS."""

    source: RasterInfo
    transform: Affine
    width: int
    height: int
    resampling: str | None  # None: the scene's own pixels, read as they are
    resolution_m: float | None  # ground size of a grid pixel (None when the scene's is unknown)

    @property
    def native(self) -> bool:
        return self.resampling is None

    @property
    def info(self) -> RasterInfo:
        """The grid as a raster layout (the output's, on the processing grid)."""
        return replace(self.source, width=self.width, height=self.height, transform=self.transform)

    @classmethod
    def of_scene(cls, info: RasterInfo) -> ProcessingGrid:
        return cls(info, info.transform, info.width, info.height, None,
                   ground_resolution(info.crs, info.transform, info.width, info.height) if info.georeferenced else None)


def nearest_index(to_transform: Affine, from_transform: Affine, width: int, height: int, size: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For each row and column of a north-up grid (``to_transform``, ``width`` x ``height``), the row and column
    of the ``from_transform`` grid (``size`` = its (height, width)) whose pixel holds its centre: nearest-neighbour
    resampling between two axis-aligned grids of one CRS is separable."""
    xs = to_transform.c + (np.arange(width) + 0.5) * to_transform.a
    ys = to_transform.f + (np.arange(height) + 0.5) * to_transform.e
    cols = np.floor((xs - from_transform.c) / from_transform.a).astype(np.int64)
    rows = np.floor((ys - from_transform.f) / from_transform.e).astype(np.int64)
    return np.clip(rows, 0, size[0] - 1), np.clip(cols, 0, size[1] - 1)


def pixel_box(bounds: tuple[float, float, float, float], transform: Affine, width: int, height: int
              ) -> tuple[int, int, int, int] | None:
    """Rows [r0, r1) and columns [c0, c1) of a north-up grid that cover ``bounds`` (xmin, ymin, xmax, ymax, in the
    grid's CRS), clipped to the grid; None when they do not overlap it."""
    xmin, ymin, xmax, ymax = bounds
    c0 = math.floor((xmin - transform.c) / transform.a + 1e-9)
    c1 = math.ceil((xmax - transform.c) / transform.a - 1e-9)
    r0 = math.floor((ymax - transform.f) / transform.e + 1e-9)
    r1 = math.ceil((ymin - transform.f) / transform.e - 1e-9)
    c0, c1, r0, r1 = max(c0, 0), min(c1, width), max(r0, 0), min(r1, height)
    return (r0, r1, c0, c1) if r1 > r0 and c1 > c0 else None


def window_info(info: RasterInfo, row_off: int, col_off: int, height: int, width: int) -> RasterInfo:
    """The layout of a window of ``info``'s grid (its transform derives from the grid's)."""
    return replace(info, width=width, height=height, transform=info.transform @ Affine.translation(col_off, row_off))


def default_resampling(scene_m: float, target_m: float) -> str:
    """``average`` when the grid is coarser than the scene (shrinking), ``bilinear`` when finer."""
    return "average" if target_m > scene_m else "bilinear"


def resampled_grid(info: RasterInfo, target_m: float, resampling: str | None = None) -> ProcessingGrid:
    """A grid of ``target_m`` metre pixels over the scene ``info`` (which must have a known pixel size).

    Pixel edges lie on multiples of the pixel size in CRS units (like ``gdalwarp -tap``), so every scene
    processed at one resolution shares one lattice, and the grid covers the scene to within one pixel per side.
    """
    if resampling is not None and resampling not in RESAMPLING_METHODS:
        raise UserError(f"--resampling {resampling!r}: expected one of {', '.join(RESAMPLING_METHODS)}")
    t = info.transform
    if info.georeferenced and not north_up(t):
        raise UserError(f"{info.path}: its geotransform is rotated, sheared or not north-up, which resampling "
                        "does not handle; warp it to a north-up grid first (gdalwarp) or use --resolution native")
    metres = pixel_metres(info.crs, t, info.width, info.height) if info.georeferenced else None
    if metres is None:
        raise UserError(f"{info.path}: its pixel size in metres is unknown (no CRS, or not one in metres or "
                        "degrees); use --resolution native")
    scene_m = math.sqrt(metres[0] * metres[1])  # what ground_resolution gives
    # CRS units per metre at the scene centre (for a geographic CRS, degrees per metre), times the target size
    size_x, size_y = target_m * (abs(t.a) / metres[0]), target_m * (abs(t.e) / metres[1])
    left, top = t.c, t.f
    right, bottom = t @ (info.width, info.height)
    x0 = math.floor(left / size_x + 1e-9) * size_x
    y1 = math.ceil(top / size_y - 1e-9) * size_y
    width = max(1, math.ceil((right - x0) / size_x - 1e-9))
    height = max(1, math.ceil((y1 - bottom) / size_y - 1e-9))
    return ProcessingGrid(info, Affine(size_x, 0.0, x0, 0.0, -size_y, y1), width, height,
                          resampling or default_resampling(scene_m, target_m), target_m)


def check_grid_size(grid: ProcessingGrid, scene_m: float | None, how: str) -> None:
    """Refuse a processing grid of more than ``MAX_PIXEL_GROWTH`` times the scene's pixels (before any work)."""
    source = grid.source
    if grid.width * grid.height <= MAX_PIXEL_GROWTH * source.width * source.height:
        return
    raise UserError(
        f"{source.path}: translating its {scene_m:.3g} m pixels at {grid.resolution_m:.3g} m ({how}) would make a "
        f"{grid.width} x {grid.height} grid, {grid.width * grid.height / (source.width * source.height):.0f} times "
        f"the scene's pixels (at most {MAX_PIXEL_GROWTH}); pass --resolution native to use the scene's own pixels, "
        "or --resolution METRES for a coarser grid"
    )


class GridRows:
    """Reads rows of a processing grid, with their validity, from any thread (each read opens its own handle).

    Native grids read the scene's rows directly. Resampled grids are warped in fixed blocks (module docstring);
    the last few blocks are kept, since consecutive reads share a block at their boundary, and a block is warped
    once however many reader threads ask for it at the same time (the others wait for it)."""

    CACHED_BLOCKS = 16  # enough for the blocks that 8 reader threads have in flight

    def __init__(
        self, path: str | os.PathLike[str], bands: Sequence[int], grid: ProcessingGrid,
        alpha_threshold: float = DEFAULT_ALPHA_THRESHOLD, region: tuple[int, int, int, int] | None = None,
    ) -> None:
        """``region``: (row, col, height, width) of the grid to read (rows are then counted from its top)."""
        self.path, self.bands, self.grid, self.alpha_threshold = path, tuple(bands), grid, alpha_threshold
        self.row_off, col_off, _, width = region or (0, 0, grid.height, grid.width)
        self.columns = (col_off, col_off + width)
        self._blocks: OrderedDict[int, Future[tuple[np.ndarray, np.ndarray]]] = OrderedDict()
        self._lock = threading.Lock()
        self.resample_seconds = 0.0  # spent warping (summed over threads; part of the readers' time)

    def read(self, row_off: int, height: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Bands (into ``out`` if given, else the source dtype) and validity of grid rows [row_off, row_off+height)
        (of the region)."""
        row_off += self.row_off
        if self.grid.native:
            with open_raster(self.path) as ds:
                return read_rows(ds, self.bands, row_off, height, out, self.alpha_threshold, self.columns)
        first, last = row_off // BLOCK_ROWS, (row_off + height - 1) // BLOCK_ROWS
        blocks = [self._block(index) for index in range(first, last + 1)]
        skip = row_off - first * BLOCK_ROWS
        columns = slice(*self.columns)
        data = np.concatenate([b[0] for b in blocks], axis=1)[:, skip:skip + height, columns]
        valid = np.concatenate([b[1] for b in blocks], axis=0)[skip:skip + height, columns]
        if out is None:
            return data, valid
        out[...] = data
        return out, valid

    def _block(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            block = self._blocks.get(index)
            warp = block is None
            if warp:
                block = self._blocks[index] = Future()
                while len(self._blocks) > self.CACHED_BLOCKS:
                    self._blocks.popitem(last=False)  # a waiter still holds an evicted block in flight
            else:
                self._blocks.move_to_end(index)
        if warp:
            try:
                block.set_result(self._warp_block(index))
            except BaseException as exc:
                block.set_exception(exc)
                with self._lock:
                    if self._blocks.get(index) is block:
                        del self._blocks[index]  # a later read tries again
        return block.result()

    def _warp_block(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Grid rows of block ``index``: warped from the source rows under them plus a halo, the source padded
        with invalid pixels beyond its edges (so edge pixels count the ground outside the scene as invalid)."""
        grid, source = self.grid, self.grid.source
        r0 = index * BLOCK_ROWS
        rows = min(BLOCK_ROWS, grid.height - r0)
        dst_transform = grid.transform @ Affine.translation(0, r0)
        src_t = source.transform
        scale = max(1.0, abs(grid.transform.a / src_t.a), abs(grid.transform.e / src_t.e))
        halo = math.ceil(_KERNEL_RADIUS[grid.resampling] * scale) + 2
        top = (dst_transform.f - src_t.f) / src_t.e
        bottom = (dst_transform.f + rows * dst_transform.e - src_t.f) / src_t.e
        s0, s1 = math.floor(top) - halo, math.ceil(bottom) + halo
        read0, read1 = max(0, s0), min(source.height, s1)
        bands = len(self.bands)
        image = np.full((bands, s1 - s0, source.width + 2 * halo), np.nan, np.float32)
        validity = np.zeros(image.shape[1:], np.float32)
        if read1 > read0:
            with open_raster(self.path) as ds:
                data, valid = read_rows(ds, self.bands, read0, read1 - read0, None, self.alpha_threshold)
            inside = (slice(read0 - s0, read1 - s0), slice(halo, halo + source.width))
            image[(slice(None), *inside)] = np.where(valid, data, np.nan)
            validity[inside] = valid
        src_transform = src_t @ Affine.translation(-halo, s0)
        common = dict(src_transform=src_transform, src_crs=source.crs, dst_transform=dst_transform,
                      dst_crs=source.crs)
        started = time.perf_counter()
        warped, fraction = _warp_rows(image, validity, grid.resampling, (rows, grid.width), common)
        valid = (fraction >= VALID_FRACTION - 1e-6) & np.isfinite(warped).all(axis=0)
        block = _to_source_dtype(warped, valid, source.dtype), valid
        with self._lock:
            self.resample_seconds += time.perf_counter() - started
        return block


# Linear methods are warped as [values x validity, validity] without a nodata value and normalised afterwards:
# the same weighted mean of the valid pixels, but GDAL's fast path (NaN nodata takes its slow per-pixel one).
_NORMALISED = ("average", "bilinear")


def _warp_rows(
    image: np.ndarray, validity: np.ndarray, method: str, shape: tuple[int, int], common: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Warped values (NaN where no valid source pixel contributes) and the valid share of each pixel's ground
    (area-weighted whatever the image's method; nearest stays nearest)."""
    bands = image.shape[0]
    fraction = np.zeros(shape, np.float32)
    mask_method = Resampling.nearest if method == "nearest" else Resampling.average
    if method in _NORMALISED:
        weighted = np.concatenate([np.nan_to_num(image, nan=0.0) * validity, validity[None]])
        out = np.zeros((bands + 1, *shape), np.float32)
        reproject(weighted, out, resampling=Resampling[method], **common)
        weight = out[bands]
        with np.errstate(invalid="ignore", divide="ignore"):
            warped = np.where(weight > 1e-6, out[:bands] / weight, np.nan).astype(np.float32)
        if method == "average":
            return warped, weight
    else:
        warped = np.full((bands, *shape), np.nan, np.float32)
        reproject(image, warped, src_nodata=np.nan, dst_nodata=np.nan, resampling=Resampling[method], **common)
    reproject(validity, fraction, resampling=mask_method, **common)
    return warped, fraction


def _to_source_dtype(warped: np.ndarray, valid: np.ndarray, dtype: str) -> np.ndarray:
    """Warped float values back in the scene's value range: integers rounded and clipped to the dtype (so the
    input scaling and every later step work as on the scene's own pixels); invalid pixels 0."""
    values = np.where(valid, warped, 0.0)
    kind = np.dtype(dtype)
    if np.issubdtype(kind, np.integer):
        limits = np.iinfo(kind)
        return np.clip(np.rint(values), limits.min, limits.max).astype(kind)
    return values.astype(np.float32)



def map_on_scene_grid(
    processing_map: str | os.PathLike[str], scene: RasterInfo, scene_window: tuple[int, int], bands: Sequence[int],
    rows: int, alpha_threshold: float = DEFAULT_ALPHA_THRESHOLD, masked: int = 0,
) -> Iterator[np.ndarray]:
    """A map on a processing grid (a file or VRT) brought onto (a window of) the scene's own grid, as (n, width,
    bands) strips of ``rows`` rows. ``scene``: the layout to produce (the whole scene, or a window of it starting
    at ``scene_window`` = (row, col) in the scene file); ``bands``: the scene's bands whose mask is read.

    Each pixel takes the processing pixel under its centre (a map's colours and classes are classes: never blend
    them). The scene's own validity (as ``read_rows`` gives it) is the mask: an RGBA map's alpha band, masked
    pixels 0 in every band; a one-band class map's ``masked`` value (its nodata index) there."""
    row_base, col_base = scene_window
    with open_raster(processing_map) as map_ds, open_raster(scene.path) as scene_ds:
        rgba = map_ds.count == 4
        row_index, col_index = nearest_index(scene.transform, map_ds.transform, scene.width, scene.height,
                                             (map_ds.height, map_ds.width))
        for row_off in range(0, scene.height, rows):
            height = min(rows, scene.height - row_off)
            need = row_index[row_off:row_off + height]
            first, last = int(need.min()), int(need.max()) + 1
            values = map_ds.read((1, 2, 3) if rgba else 1, window=Window(0, first, map_ds.width, last - first))
            valid = read_validity(scene_ds, bands, row_base + row_off, height, alpha_threshold,
                                  (col_base, col_base + scene.width))
            if not rgba:
                strip = values[need - first][:, col_index]
                strip[~valid] = masked
                yield strip[..., None]
                continue
            strip = np.zeros((height, scene.width, 4), np.uint8)
            strip[..., :3] = values[:, need - first][:, :, col_index].transpose(1, 2, 0)
            strip[~valid] = 0
            strip[..., 3] = valid * np.uint8(255)
            yield strip
