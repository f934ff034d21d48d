"""Opening and validating rasters, band selection, dataset masks, scene-wide statistics, simple writes."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from geo_sat2map.errors import UserError, first_line
from geo_sat2map.scaling import InputScaling, percentile_scaling

# Decimated read used for scene statistics: longest side at most this many pixels.
STATS_MAX_SIDE = 1024
# An alpha band marks a pixel valid from this opacity on: JPEG-compressed alpha leaves faint fringes (values 1-33
# of 255) that must not count as footprint.
DEFAULT_ALPHA_THRESHOLD = 0.5

# Colour interpretations that say nothing about which colour a band holds.
_NO_COLOUR_ROLE = frozenset({ColorInterp.undefined, ColorInterp.gray, ColorInterp.alpha, ColorInterp.palette})
RGB_ROLES = ("red", "green", "blue")

log = logging.getLogger("geo_sat2map")


@dataclass(frozen=True)
class RasterInfo:
    """What the pipelines need to know about a source raster, without keeping it open."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: rasterio.crs.CRS | None
    transform: Affine
    georeferenced: bool


class _GdalWarnings(logging.Handler):
    """GDAL's warnings (rasterio logs them) in this thread: a damaged file often opens with only a warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage().split(": ", 1)[-1])  # drop "CPLE_AppDefined in NAME: "


@contextlib.contextmanager
def open_raster(path: str | os.PathLike[str]) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster for reading; a missing or unreadable file is a UserError naming it.

    A UserError about this file raised while it is open gets GDAL's first warning from opening it appended: a
    truncated GeoTIFF may open with "IO error during reading of GeoASCIIParams; tag ignored" and then simply
    have no CRS, which the error alone would not explain.
    """
    path = str(path)
    if not Path(path).exists() and "://" not in path and not path.startswith("/vsi"):
        raise UserError(f"{path}: file not found")
    gdal = _GdalWarnings()
    rasterio_log = logging.getLogger("rasterio")
    rasterio_log.addHandler(gdal)
    try:
        ds = rasterio.open(path)
    except RasterioIOError as exc:
        raise UserError(f"{path}: not a raster GDAL can read ({first_line(exc)})") from exc
    finally:
        rasterio_log.removeHandler(gdal)
    with ds:
        try:
            yield ds
        except UserError as exc:
            if gdal.messages and path in str(exc):
                raise UserError(f"{exc} (GDAL warned on opening it: {gdal.messages[0]})") from exc
            raise


def raster_info(ds: rasterio.io.DatasetReader) -> RasterInfo:
    return RasterInfo(
        path=ds.name,
        width=ds.width,
        height=ds.height,
        count=ds.count,
        dtype=ds.dtypes[0],
        crs=ds.crs,
        transform=ds.transform,
        georeferenced=ds.crs is not None and ds.transform != Affine.identity(),
    )


def require_georeferenced(ds: rasterio.io.DatasetReader, allow_ungeoreferenced: bool = False) -> None:
    if allow_ungeoreferenced:
        return
    if ds.crs is None:
        raise UserError(f"{ds.name}: has no CRS; assign one (e.g. gdal_edit.py -a_srs) or pass --allow-ungeoreferenced")
    if ds.transform == Affine.identity():
        raise UserError(f"{ds.name}: has no geotransform; georeference it or pass --allow-ungeoreferenced")


def default_rgb_bands(ds: rasterio.io.DatasetReader) -> tuple[int, int, int]:
    """The bands tagged red, green, blue (in that order), else 1, 2, 3."""
    return _tagged(ds, RGB_ROLES) or (1, 2, 3)  # type: ignore[return-value]


def resolve_bands(ds: rasterio.io.DatasetReader, bands: Sequence[int] | None) -> tuple[int, ...]:
    """Validate requested 1-based bands against the raster (default: its RGB bands)."""
    chosen = tuple(bands) if bands is not None else default_rgb_bands(ds)
    if ds.count < 3 and bands is None:
        raise UserError(f"{ds.name}: has {ds.count} band(s); an RGB image with at least 3 bands is needed")
    missing = [b for b in chosen if b < 1 or b > ds.count]
    if missing:
        raise UserError(
            f"{ds.name}: has {ds.count} band(s), cannot use band(s) {', '.join(map(str, missing))}; check --bands"
        )
    return chosen


def mask_is_alpha(ds: rasterio.io.DatasetReader) -> bool:
    """Whether the dataset mask is an alpha band (graded opacity) rather than a binary nodata/mask band."""
    return MaskFlags.alpha in ds.mask_flag_enums[0]


def dataset_validity(
    ds: rasterio.io.DatasetReader, alpha_threshold: float = DEFAULT_ALPHA_THRESHOLD, **read: object
) -> np.ndarray:
    """GDAL's dataset mask as booleans (True = valid); ``read``: ``window``/``out_shape``/``resampling``.

    Binary masks (nodata, mask bands) are valid where non-zero; an alpha band (GDAL scales 16-bit alpha to
    0-255 here) where its opacity is at least ``alpha_threshold``."""
    mask = ds.dataset_mask(**read)
    if mask_is_alpha(ds):
        return mask >= max(1, math.ceil(alpha_threshold * 255 - 1e-9))
    return mask > 0

def colour_roles(ds: rasterio.io.DatasetReader, bands: Sequence[int]) -> tuple[str, ...] | None:
    """The colour interpretation of ``bands`` by name (e.g. ("red", "green", "blue")) when each is a distinct
    colour; None when any is untagged, grey, alpha or repeated (such bands can only be matched by index)."""
    interp = [ds.colorinterp[b - 1] for b in bands]
    if any(c in _NO_COLOUR_ROLE for c in interp) or len(set(interp)) != len(interp):
        return None
    return tuple(c.name for c in interp)


def _tagged(ds: rasterio.io.DatasetReader, roles: Sequence[str]) -> tuple[int, ...] | None:
    """The (first) bands tagged with ``roles``, in that order; None if the scene tags no band with one of them."""
    names = [c.name for c in ds.colorinterp]
    if not all(role in names for role in roles):
        return None
    return tuple(names.index(role) + 1 for role in roles)


def _listed(bands: Sequence[int]) -> str:
    return ",".join(map(str, bands))


def match_bands(
    ds: rasterio.io.DatasetReader,
    requested: Sequence[int] | None,
    trained: Sequence[int] | None = None,
    roles: Sequence[str] | None = None,
) -> tuple[int, ...]:
    """``choose_bands``, with a log line saying how the bands were chosen."""
    chosen, how = choose_bands(ds, requested, trained, roles)
    log.info("%s: %s", Path(ds.name).name, how)
    return chosen


def choose_bands(
    ds: rasterio.io.DatasetReader,
    requested: Sequence[int] | None,
    trained: Sequence[int] | None = None,
    roles: Sequence[str] | None = None,
) -> tuple[tuple[int, ...], str]:
    """The input bands of a scene, validated, and how they were chosen (for the log).

    ``requested`` (--bands) wins. Else a model's bands are found by their colour ``roles`` in the scene's colour
    interpretation when the scene tags them all (a BGR-tagged scene feeds its red band as red), and by index
    (``trained``, else 1, 2, 3) otherwise; a model without roles keeps its ``trained`` bands by index. Without a
    model: the bands tagged red, green, blue, else 1, 2, 3.
    """
    if requested is not None:
        chosen = resolve_bands(ds, requested)
        return chosen, f"bands {_listed(chosen)} from --bands"
    wanted = tuple(roles) if roles else None
    if wanted is None and trained is not None:
        chosen = resolve_bands(ds, trained)
        return chosen, f"bands {_listed(chosen)} by index (the checkpoint records no colour roles)"
    colours = ", ".join(wanted or RGB_ROLES)
    tagged = _tagged(ds, wanted or RGB_ROLES)
    if tagged is not None:
        chosen = resolve_bands(ds, tagged)
        return chosen, f"bands {_listed(chosen)} by the scene's colour interpretation ({colours})"
    chosen = resolve_bands(ds, trained if trained is not None else (1, 2, 3) if ds.count >= 3 else None)
    found = ", ".join(c.name for c in ds.colorinterp)
    return chosen, f"bands {_listed(chosen)} by index: the scene does not tag bands {colours} (it has {found})"


def read_window(
    ds: rasterio.io.DatasetReader, bands: Sequence[int], window: Window, out: np.ndarray | None = None,
    alpha_threshold: float = DEFAULT_ALPHA_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``bands`` (into ``out`` if given; none: only the mask) and the dataset mask (True = valid, see
    ``dataset_validity``) in ``window``; corrupt blocks name the window."""
    try:
        data = (ds.read(list(bands), window=window, out=out) if bands
                else np.empty((0, int(window.height), int(window.width)), ds.dtypes[0]))
        valid = dataset_validity(ds, alpha_threshold, window=window)
    except RasterioIOError as exc:
        raise UserError(
            f"{ds.name}: could not read window col={int(window.col_off)} row={int(window.row_off)} "
            f"{int(window.width)}x{int(window.height)} (corrupt or unreadable block: {first_line(exc)})"
        ) from exc
    return data, valid


def scene_scaling(ds: rasterio.io.DatasetReader, bands: Sequence[int]) -> InputScaling:
    """uint8 scaling for 8-bit data; otherwise a 2-98 % stretch from one decimated read of the whole scene."""
    if ds.dtypes[bands[0] - 1] == "uint8":
        return InputScaling.uint8(len(bands))
    factor = max(1, int(np.ceil(max(ds.width, ds.height) / STATS_MAX_SIDE)))
    shape = (max(1, ds.height // factor), max(1, ds.width // factor))
    try:
        sample = ds.read(list(bands), out_shape=(len(bands), *shape), resampling=rasterio.enums.Resampling.nearest)
        valid = dataset_validity(ds, out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
    except RasterioIOError as exc:
        raise UserError(f"{ds.name}: could not read an overview for scene statistics ({first_line(exc)})") from exc
    return percentile_scaling(sample.astype(np.float64), valid)


def write_geotiff(
    path: str | os.PathLike[str],
    data: np.ndarray,
    crs: rasterio.crs.CRS | str | None,
    transform: Affine,
    *,
    nodata: float | None = None,
    mask: np.ndarray | None = None,
    colorinterp: Sequence[ColorInterp] | None = None,
    **creation: object,
) -> None:
    """Write a small (bands, H, W) array as a tiled GeoTIFF, optionally with an internal mask (True = valid)."""
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        **creation,
    }
    if data.shape[1] < 256 or data.shape[2] < 256:
        profile.pop("tiled")
        profile.pop("blockxsize")
        profile.pop("blockysize")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            if colorinterp is not None:
                dst.colorinterp = list(colorinterp)
            if mask is not None:
                dst.write_mask(np.where(mask, 255, 0).astype(np.uint8))


def colormap_lut(ds: rasterio.io.DatasetReader) -> np.ndarray | None:
    """(256, 3) uint8 RGB lookup table from band 1's colour table; None if it has none."""
    try:
        colormap = ds.colormap(1)
    except ValueError:  # no colour table
        return None
    lut = np.zeros((256, 3), dtype=np.uint8)
    for index, rgba in colormap.items():
        if 0 <= index < 256:
            lut[index] = rgba[:3]
    return lut


@contextlib.contextmanager
def warped_onto(
    ds: rasterio.io.DatasetReader,
    crs: rasterio.crs.CRS,
    transform: Affine,
    width: int,
    height: int,
    resampling: rasterio.enums.Resampling = rasterio.enums.Resampling.nearest,
) -> Iterator[rasterio.vrt.WarpedVRT]:
    """A lazy view of ``ds`` reprojected onto a target grid; read windows from it, never the whole thing.

    Its ``dataset_mask()`` is the source's dataset mask carried through the warp (False outside the source).
    Sources with neither a nodata value nor an alpha band (e.g. an internal mask, or no mask at all) get a
    warped alpha band for that: without it GDAL reports every target pixel valid, even outside the source.
    """
    from rasterio.vrt import WarpedVRT

    add_alpha = ds.nodata is None and ColorInterp.alpha not in ds.colorinterp
    with WarpedVRT(
        ds, crs=crs, transform=transform, width=width, height=height, resampling=resampling, add_alpha=add_alpha
    ) as vrt:
        yield vrt
