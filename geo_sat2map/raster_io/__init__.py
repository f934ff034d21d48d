"""Raster I/O: the only part of geo-sat2map that touches rasterio.

Submodules by job: ``core`` (opening, validation, bands, masks, scene statistics, simple writes).
Other jobs (streaming COG output, warping) live in sibling modules of this package.
"""

from geo_sat2map.raster_io.core import (
    RGB_ROLES,
    RasterInfo,
    colour_roles,
    default_rgb_bands,
    match_bands,
    open_raster,
    raster_info,
    read_window,
    require_georeferenced,
    resolve_bands,
    scene_scaling,
    warped_onto,
    write_geotiff,
)

__all__ = [
    "RGB_ROLES",
    "RasterInfo",
    "colour_roles",
    "default_rgb_bands",
    "match_bands",
    "open_raster",
    "raster_info",
    "read_window",
    "require_georeferenced",
    "resolve_bands",
    "scene_scaling",
    "warped_onto",
    "write_geotiff",
]
