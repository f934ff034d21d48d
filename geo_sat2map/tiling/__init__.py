"""Training tiles: aligned satellite/map raster pairs (or a pix2pix dataset) -> an A|B tiles dataset.

Modules: ``footprints`` (raster outlines, AOIs, intersections with pyproj + shapely), ``splits`` (the spatial
block split, pure window math), ``writer`` (work folder, PNG pairs, manifests), ``make_tiles`` (the orchestrator)
and ``pix2pix_import``. Raster reading lives in ``geo_sat2map.raster_io.pairs``.
"""

from geo_sat2map.tiling.make_tiles import MakeTilesConfig, TilePair, TilingResult, make_tiles, read_pairs_csv
from geo_sat2map.tiling.pix2pix_import import Pix2PixImportConfig, import_pix2pix
from geo_sat2map.tiling.splits import PlacedWindow, SplitPlan, plan_splits

__all__ = [
    "MakeTilesConfig",
    "Pix2PixImportConfig",
    "PlacedWindow",
    "SplitPlan",
    "TilePair",
    "TilingResult",
    "import_pix2pix",
    "make_tiles",
    "plan_splits",
    "read_pairs_csv",
]
