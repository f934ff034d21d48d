"""Raster footprints, AOIs and their intersection, with pyproj + shapely (no rasterio, no GDAL vector stack).

Footprints are the outlines of pixel grids, densified before reprojection so that curved edges (UTM <-> Web
Mercator, geographic) stay accurate. All intersections are done in the satellite CRS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyproj
import shapely
from affine import Affine
from pyproj.exceptions import CRSError
from shapely import affinity
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from geo_sat2map.errors import UserError, first_line

# Vertices per edge when densifying outlines and AOIs before reprojection.
DENSIFY_POINTS = 64
# GeoJSON without a "crs" member is WGS 84 longitude/latitude (RFC 7946).
GEOJSON_DEFAULT_CRS = "OGC:CRS84"
WGS84 = "OGC:CRS84"


@dataclass(frozen=True)
class Aoi:
    """An area of interest: a (multi)polygon in its own CRS."""

    path: str
    geometry: BaseGeometry
    crs: str


def _crs(value: str) -> pyproj.CRS:
    return pyproj.CRS.from_user_input(value)


def densify(geometry: BaseGeometry, points_per_edge: int = DENSIFY_POINTS) -> BaseGeometry:
    """Add vertices so that the longest straight segment is at most 1/``points_per_edge`` of the extent."""
    minx, miny, maxx, maxy = geometry.bounds
    extent = max(maxx - minx, maxy - miny)
    return shapely.segmentize(geometry, extent / points_per_edge) if extent > 0 else geometry


def apply_affine(geometry: BaseGeometry, transform: Affine) -> BaseGeometry:
    t = transform
    return affinity.affine_transform(geometry, [t.a, t.b, t.d, t.e, t.c, t.f])


def grid_outline(transform: Affine, width: int, height: int) -> BaseGeometry:
    """The outline of a pixel grid in its CRS, densified (for reprojection)."""
    return apply_affine(densify(shapely.box(0, 0, width, height)), transform)


def reproject(geometry: BaseGeometry, src_crs: str, dst_crs: str) -> BaseGeometry:
    """``geometry`` (already densified) in ``dst_crs``; empty when it cannot be represented there."""
    src, dst = _crs(src_crs), _crs(dst_crs)
    if src == dst:
        return geometry
    transformer = pyproj.Transformer.from_crs(src, dst, always_xy=True)

    def project(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1], errcheck=False)
        return np.column_stack([x, y])

    out = shapely.transform(geometry, project)
    if not np.isfinite(shapely.get_coordinates(out)).all():
        return shapely.Polygon()  # outside the target CRS's domain
    return shapely.make_valid(out)


def intersect_in(outline: BaseGeometry, crs: str, other: BaseGeometry, other_crs: str) -> BaseGeometry:
    """``outline`` (in ``crs``) clipped by ``other`` (in ``other_crs``), returned in ``crs``.

    The clip is done in ``other_crs`` first: a large ``other`` (a world basemap in EPSG:3857, a continent-wide
    AOI) cannot always be projected into a local CRS such as a UTM zone, but the smaller outline can.
    """
    outline_there = reproject(outline, crs, other_crs)
    if outline_there.is_empty:  # the outline is the big one: project ``other`` instead
        return outline.intersection(reproject(densify(other), other_crs, crs))
    clipped = outline_there.intersection(other)
    if clipped.is_empty:
        return clipped
    return outline.intersection(reproject(densify(clipped), other_crs, crs))


def lonlat_bounds(geometry: BaseGeometry, crs: str) -> str:
    """"[west, south, east, north]" of a geometry in WGS 84 degrees, for messages."""
    lonlat = reproject(densify(geometry), crs, WGS84)
    if lonlat.is_empty:
        return "[outside WGS 84]"
    return "[" + ", ".join(f"{v:.5f}" for v in lonlat.bounds) + "]"


def to_pixels(geometry: BaseGeometry, transform: Affine) -> BaseGeometry:
    """A geometry in a grid's CRS expressed in that grid's pixel (col, row) coordinates."""
    return apply_affine(geometry, ~transform)


def tile_footprints_lonlat(
    transform: Affine, crs: str, windows: Sequence[tuple[int, int, int, int]], points_per_edge: int = 8
) -> list[BaseGeometry]:
    """WGS 84 polygons of pixel windows (col, row, width, height) of a grid, edges densified."""
    if not windows:
        return []
    boxes = [shapely.box(c, r, c + w, r + h) for c, r, w, h in windows]
    max_len = min(w for _, _, w, _ in windows) / points_per_edge
    in_crs = [apply_affine(shapely.segmentize(b, max_len), transform) for b in boxes]
    transformer = pyproj.Transformer.from_crs(_crs(crs), _crs(WGS84), always_xy=True)

    def project(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return list(shapely.transform(np.asarray(in_crs, dtype=object), project))


def _aoi_crs(value: object, path: str) -> str:
    """The CRS named by a GeoJSON "crs" member (the 2008 spec's {"type": "name", ...} or a plain string)."""
    name = value.get("properties", {}).get("name") if isinstance(value, dict) else value
    if not isinstance(name, str):
        raise UserError(f"AOI {path}: cannot understand its \"crs\" member {value!r}; use e.g. \"EPSG:32618\"")
    return name


def _polygons(geometry: BaseGeometry) -> list[BaseGeometry]:
    if isinstance(geometry, shapely.Polygon | shapely.MultiPolygon):
        return [geometry]
    if isinstance(geometry, shapely.GeometryCollection):
        return [p for g in geometry.geoms for p in _polygons(g)]
    return []


def _geojson_geometries(obj: dict, path: str) -> list[BaseGeometry]:
    kind = obj.get("type")
    if kind == "FeatureCollection":
        return [g for feature in obj.get("features", []) for g in _geojson_geometries(feature, path)]
    if kind == "Feature":
        return _geojson_geometries(obj["geometry"], path) if obj.get("geometry") else []
    try:
        return [shape(obj)]
    except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as exc:
        raise UserError(f"AOI {path}: not a GeoJSON geometry, Feature or FeatureCollection ({exc})") from exc


def read_aoi(path: str | os.PathLike[str]) -> Aoi:
    """Read a polygon AOI from GeoJSON (any CRS via its "crs" member; default WGS 84 lon/lat) or from a WKT /
    EWKT text file ("SRID=32618;POLYGON(...)"; default WGS 84 lon/lat). All polygons are merged."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UserError(f"AOI {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"AOI {path}: cannot read it ({exc})") from exc
    crs = GEOJSON_DEFAULT_CRS
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"AOI {path}: not valid GeoJSON ({exc})") from exc
        if not isinstance(obj, dict):
            raise UserError(f"AOI {path}: not a GeoJSON object")
        if "crs" in obj and obj["crs"] is not None:
            crs = _aoi_crs(obj["crs"], path)
        geometries = _geojson_geometries(obj, path)
    else:
        if text.upper().startswith("SRID="):
            srid, _, text = text.partition(";")
            crs = f"EPSG:{srid.split('=', 1)[1].strip()}"
        try:
            geometries = [shapely.from_wkt(text)]
        except shapely.errors.GEOSException as exc:
            raise UserError(f"AOI {path}: neither GeoJSON nor WKT ({first_line(exc)})") from exc
    try:
        _crs(crs)
    except CRSError as exc:
        raise UserError(f"AOI {path}: unknown CRS {crs!r}") from exc
    polygons = [p for g in geometries for p in _polygons(g)]
    if not polygons:
        kinds = sorted({g.geom_type for g in geometries}) or ["nothing"]
        raise UserError(f"AOI {path}: contains {', '.join(kinds)}; a Polygon or MultiPolygon is needed")
    merged = shapely.make_valid(shapely.union_all([shapely.make_valid(p) for p in polygons]))
    area = shapely.union_all(_polygons(merged))  # make_valid may add slivers of lower dimension
    if area.is_empty or area.area == 0:
        raise UserError(f"AOI {path}: its polygons are empty")
    return Aoi(path, area, crs)
