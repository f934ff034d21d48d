"""Maps made of several files: parts of one scene, mosaics of scenes (GDAL VRTs), and checks of finished files.

- ``part_info``: the raster layout of rows [start, stop) of a scene (its transform derives from the scene's);
- ``read_finished``: tags and layout of a finished map, or ``None`` when it is missing or unreadable;
- ``write_vrt``: a VRT over north-up rasters of one CRS, placed by their geotransforms (scenes composited
  through their alpha bands so transparent edges do not hide a neighbour); ``write_parts_vrt``: the parts of
  one scene stacked at their rows, on the scene's own grid. Both with overview
  levels made of the sources' own overviews (GDAL gives a VRT of several sources none by itself, so a large
  mosaic would otherwise be read at full resolution to display it zoomed out). One-band class maps keep their
  nodata index (also what uncovered areas of a mosaic read as), colour table and category names in the VRT;
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pyproj
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError

from geo_sat2map.atomic import atomic_output
from geo_sat2map.errors import UserError
from geo_sat2map.raster_io.core import RasterInfo, open_raster, raster_info
from geo_sat2map.raster_io.grid import north_up, window_info
from geo_sat2map.raster_io.output import read_category_names

# Offsets closer than this to a whole pixel are whole pixels (float noise of transforms derived by products).
SNAP_PIXELS = 1e-6


def part_info(info: RasterInfo, start: int, stop: int) -> RasterInfo:
    """The layout of scene rows [start, stop): the scene's transform moved down ``start`` rows."""
    return window_info(info, start, 0, stop - start, info.width)


@dataclass(frozen=True)
class FinishedRaster:
    """What is needed to verify a finished map and to place it in a VRT."""

    path: Path
    tags: dict[str, str]
    info: RasterInfo
    block: tuple[int, int]  # (x, y) block size of band 1
    colorinterp: tuple[str, ...]
    overview_sizes: tuple[tuple[int, int], ...]  # (width, height) of each internal overview level
    nodata: float | None = None
    colormap: tuple[tuple[int, int, int, int], ...] = ()  # band 1's colour table (a paletted map), else empty
    categories: tuple[str, ...] = ()  # band 1's category names (a class map's ``.aux.xml``)

    @property
    def overview_count(self) -> int:
        return len(self.overview_sizes)


def read_finished(path: str | os.PathLike[str]) -> FinishedRaster | None:
    """Open ``path`` and read its tags and layout; ``None`` if it is missing or not a readable raster."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with rasterio.open(path) as ds:
            colormap = ds.colormap(1) if ds.colorinterp[0] == ColorInterp.palette else {}
            finished = FinishedRaster(path, dict(ds.tags()), raster_info(ds), tuple(ds.block_shapes[0][::-1]),
                                      tuple(c.name.capitalize() for c in ds.colorinterp), (), ds.nodata,
                                      tuple(colormap[i] for i in sorted(colormap)), read_category_names(path))
            levels = len(ds.overviews(1))
        sizes = []
        for level in range(levels):
            with rasterio.open(path, overview_level=level) as ds:
                sizes.append((ds.width, ds.height))
        return replace(finished, overview_sizes=tuple(sizes))
    except RasterioError:
        return None


def raster_header(path: str | os.PathLike[str]) -> RasterInfo:
    """The layout of a raster (a UserError naming it when it cannot be read)."""
    with open_raster(path) as ds:
        return raster_info(ds)


def check_mosaic(rasters: Sequence[tuple[str | os.PathLike[str], RasterInfo]]) -> None:
    """A VRT can place these rasters: all georeferenced, north-up, in one CRS (else a UserError naming two)."""
    first_path, first = rasters[0]
    for path, info in rasters:
        if not info.georeferenced:
            raise UserError(f"{path}: has no CRS or geotransform; it cannot be placed in a mosaic")
        t = info.transform
        if not north_up(t):
            raise UserError(f"{path}: is not north-up (geotransform {tuple(t)[:6]}); warp it first (gdalwarp)")
        if info.crs != first.crs:
            raise UserError(
                f"the maps are in different CRS ({first_path}: {_crs_name(first.crs)}; {path}: "
                f"{_crs_name(info.crs)}); one VRT needs one CRS: warp the scenes to one CRS or leave out --vrt"
            )


def _crs_name(crs: rasterio.crs.CRS | None) -> str:
    """A short name for an error line: ``EPSG:32618``, else the CRS's own name (``UTM Zone 18, Northern
    Hemisphere``), else its PROJ string; never a whole WKT."""
    if crs is None:
        return "none"
    epsg = crs.to_epsg()
    if epsg:
        return f"EPSG:{epsg}"
    try:
        name = pyproj.CRS.from_wkt(crs.to_wkt()).name
    except pyproj.exceptions.CRSError:
        name = ""
    return name if name and name.lower() != "unknown" else crs.to_proj4()


@dataclass(frozen=True)
class _Layout:
    """Where sources go in a VRT: its full-resolution size (pixels, not yet rounded), georeferencing and each
    source's (x offset, y offset, width, height) in its pixels."""

    size: tuple[float, float]
    crs: rasterio.crs.CRS | None
    transform: Affine
    places: list[tuple[float, float, float, float]]


def write_vrt(
    dest: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str]], *, composite: bool,
    tags: Mapping[str, str] | None = None, overwrite: bool = False, overview_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Write a VRT at ``dest`` (atomically, last) over ``sources`` placed by their geotransforms (north-up, one
    CRS: ``check_mosaic``) on the finest source resolution, referring to them relative to ``dest``.

    ``composite``: sources may overlap, so each band uses the source's mask (its alpha band) and a transparent
    pixel never covers an earlier source's pixel; otherwise plain copies.
    ``overview_dir``: where to write one VRT per overview level (``<dest stem>.x<factor>.vrt``), each over the
    sources' overviews of that level, listed as the VRT's overviews; default no overviews.
    """
    rasters = _read_sources(Path(dest), sources)
    check_mosaic([(r.path, r.info) for r in rasters])
    res_x = min(r.info.transform.a for r in rasters)
    res_y = min(-r.info.transform.e for r in rasters)
    left = min(r.info.transform.c for r in rasters)
    top = max(r.info.transform.f for r in rasters)
    right = max(r.info.transform.c + r.info.transform.a * r.info.width for r in rasters)
    bottom = min(r.info.transform.f + r.info.transform.e * r.info.height for r in rasters)
    places = [((r.info.transform.c - left) / res_x, (top - r.info.transform.f) / res_y,
               r.info.width * r.info.transform.a / res_x, r.info.height * -r.info.transform.e / res_y) for r in rasters]
    layout = _Layout(((right - left) / res_x, (top - bottom) / res_y), rasters[0].info.crs,
                     Affine(res_x, 0, left, 0, -res_y, top), places)
    _write_vrt(Path(dest), rasters, layout, composite, tags, overwrite, overview_dir)


def write_parts_vrt(
    dest: str | os.PathLike[str], parts: Sequence[tuple[str | os.PathLike[str], int]], scene: RasterInfo, *,
    tags: Mapping[str, str] | None = None, overwrite: bool = False, overview_dir: str | os.PathLike[str] | None = None,
) -> None:
    """A VRT of ``scene`` made of row parts ``(path, first scene row)``: the scene's own size and transform (any
    geotransform, or none), each part at its rows. Other arguments as ``write_vrt``."""
    rasters = _read_sources(Path(dest), [path for path, _ in parts])
    places = [(0.0, float(start), float(scene.width), float(r.info.height)) for r, (_, start) in zip(rasters, parts)]
    layout = _Layout((scene.width, scene.height), scene.crs, scene.transform, places)
    _write_vrt(Path(dest), rasters, layout, False, tags, overwrite, overview_dir)


def _read_sources(dest: Path, sources: Sequence[str | os.PathLike[str]]) -> list[FinishedRaster]:
    rasters = []
    for path in sources:
        raster = read_finished(path)
        if raster is None:
            raise UserError(f"{path}: missing or not a readable raster; cannot add it to {dest.name}")
        rasters.append(raster)
    return rasters


def _write_vrt(
    dest: Path, rasters: list[FinishedRaster], layout: _Layout, composite: bool, tags: Mapping[str, str] | None,
    overwrite: bool, overview_dir: str | os.PathLike[str] | None,
) -> None:
    overviews = []
    if overview_dir is not None:
        for level in range(1, max(r.overview_count for r in rasters) + 1):
            path = Path(overview_dir) / f"{dest.stem}.x{2 ** level}.vrt"
            _write_document(_vrt_document(rasters, path.parent, layout, level, composite), path, overwrite=True)
            overviews.append(os.path.relpath(path, dest.parent))
    _write_document(_vrt_document(rasters, dest.parent, layout, 0, composite, tags, overviews), dest, overwrite)


def _vrt_document(
    rasters: list[FinishedRaster], folder: Path, layout: _Layout, level: int, composite: bool,
    tags: Mapping[str, str] | None = None, overviews: Sequence[str] = (),
) -> ET.Element:
    """The VRT of ``rasters`` at overview ``level`` (0: full resolution; level l halves the size l times and
    reads each source's l-th overview, or its last one). Sources are named relative to ``folder``."""
    factor = 2**level
    root = ET.Element("VRTDataset", rasterXSize=str(_pixels(layout.size[0] / factor)),
                      rasterYSize=str(_pixels(layout.size[1] / factor)))
    if layout.crs is not None:
        ET.SubElement(root, "SRS").text = layout.crs.to_wkt()
    if layout.transform != Affine.identity():
        ET.SubElement(root, "GeoTransform").text = ", ".join(
            repr(float(v)) for v in (layout.transform @ Affine.scale(factor)).to_gdal())
    if tags:
        metadata = ET.SubElement(root, "Metadata")
        for key, value in tags.items():
            ET.SubElement(metadata, "MDI", key=key).text = value
    first = rasters[0]
    for band in range(1, first.info.count + 1):
        element = ET.SubElement(root, "VRTRasterBand", dataType=_gdal_type(first.info.dtype), band=str(band))
        if first.nodata is not None:
            ET.SubElement(element, "NoDataValue").text = _number(first.nodata)
        ET.SubElement(element, "ColorInterp").text = first.colorinterp[band - 1]
        if band == 1 and first.colormap:
            table = ET.SubElement(element, "ColorTable")
            for entry in first.colormap:
                ET.SubElement(table, "Entry", **{f"c{i + 1}": str(value) for i, value in enumerate(entry)})
        if band == 1 and first.categories:
            names = ET.SubElement(element, "CategoryNames")
            for name in first.categories:
                ET.SubElement(names, "Category").text = name
        for overview in overviews:
            listed = ET.SubElement(element, "Overview")
            ET.SubElement(listed, "SourceFilename", relativeToVRT="1").text = overview
            ET.SubElement(listed, "SourceBand").text = str(band)
        for raster, place in zip(rasters, layout.places):
            name = os.path.relpath(os.path.abspath(raster.path), os.path.abspath(folder))
            _add_source(element, raster, name, band, composite, min(level, raster.overview_count),
                        tuple(value / factor for value in place))
    return root


def _write_document(root: ET.Element, dest: Path, overwrite: bool) -> None:
    ET.indent(root)
    with atomic_output(dest, overwrite=overwrite, what="VRT") as tmp:
        ET.ElementTree(root).write(tmp, encoding="unicode")


def _add_source(
    band_element: ET.Element, raster: FinishedRaster, name: str, band: int, composite: bool, level: int,
    dst: tuple[float, ...],
) -> None:
    info = raster.info
    source = ET.SubElement(band_element, "ComplexSource" if composite else "SimpleSource")
    ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = name
    if level:
        options = ET.SubElement(source, "OpenOptions")
        ET.SubElement(options, "OOI", key="OVERVIEW_LEVEL").text = str(level - 1)
    ET.SubElement(source, "SourceBand").text = str(band)
    width, height = raster.overview_sizes[level - 1] if level else (info.width, info.height)
    if not level:  # declared so that opening the VRT does not open every source
        ET.SubElement(source, "SourceProperties", RasterXSize=str(width), RasterYSize=str(height),
                      DataType=_gdal_type(info.dtype), BlockXSize=str(raster.block[0]),
                      BlockYSize=str(raster.block[1]))
    ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(width), ySize=str(height))
    ET.SubElement(source, "DstRect", **dict(zip(("xOff", "yOff", "xSize", "ySize"), map(_offset, dst))))
    if composite:
        ET.SubElement(source, "UseMaskBand").text = "true"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _pixels(value: float) -> int:
    return max(1, math.ceil(value - SNAP_PIXELS))


def _offset(value: float) -> str:
    whole = round(value)
    return str(whole) if abs(value - whole) < SNAP_PIXELS else repr(value)


def _gdal_type(dtype: str) -> str:
    return {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32",
            "float32": "Float32", "float64": "Float64"}[dtype]
