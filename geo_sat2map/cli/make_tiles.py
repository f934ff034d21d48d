"""The `make-tiles` command: a thin layer over ``geo_sat2map.tiling`` (make_tiles / import_pix2pix)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from geo_sat2map import progress
from geo_sat2map.cli.options import bands_opt, overwrite_opt, quiet

# Kept in sync with geo_sat2map.raster_io.pairs.RESAMPLING_METHODS (imported lazily: fast --help).
RESAMPLING_CHOICES = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode")


@click.command("make-tiles")
@click.option("-i", "--image", "images", multiple=True, metavar="SAT.tif",
              help="Satellite raster (repeatable; paired with the --map at the same position). Defines the grid.")
@click.option("-m", "--map", "maps", multiple=True, metavar="MAP.tif",
              help="Map raster of the same ground, any CRS/resolution (8-bit RGB, RGBA or paletted); repeatable.")
@click.option("--pairs", "pairs_file", type=click.Path(dir_okay=False), default=None,
              help="CSV with image,map rows (paths relative to the CSV), in addition to --image/--map.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder to create: train/ val/ test/ A|B PNGs, dataset.json, tiles.geojson.")
@click.option("--tile-size", type=int, default=256, show_default=True, help="Tile side in pixels.")
@click.option("--stride", type=int, default=None,
              help="Pixels between tile origins [default: the tile size]; smaller = overlapping tiles.")
@click.option("--aoi", type=click.Path(dir_okay=False), default=None,
              help="Polygon(s) to tile within: GeoJSON (CRS from its \"crs\" member, default WGS 84) or WKT/EWKT.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="Share of tiles for val, in [0, 1).")
@click.option("--test-fraction", type=float, default=0.0, show_default=True, help="Share of tiles for test, in [0, 1).")
@click.option("--min-valid", type=float, default=0.95, show_default=True,
              help="Minimum fraction of pixels valid in both halves (dataset masks, AOI); others are skipped.")
@click.option("--resolution", type=float, default=None,
              help="Resample both rasters to this ground size per pixel (satellite CRS units) [default: the "
                   "satellite's own].")
@click.option("--image-resampling", type=click.Choice(RESAMPLING_CHOICES), default="bilinear", show_default=True,
              help="Resampling of the satellite image when --resolution changes its grid.")
@click.option("--map-resampling", type=click.Choice(RESAMPLING_CHOICES), default="nearest", show_default=True,
              help="Resampling of the map onto the satellite grid; nearest keeps flat map colours crisp "
                   "(mode is a good choice when the map is much finer than the grid).")
@bands_opt
@click.option("--split-block", type=int, default=4, show_default=True,
              help="Side, in tiles, of the spatial blocks assigned to train/val/test (halved automatically when "
                   "there are too few blocks).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split: same seed, same split.")
@click.option("--palette", default=None, metavar="FILE|synthetic",
              help='Names for the map colours learned into dataset.json: a palette JSON {"classes": [{"name", '
                   '"color"}]} or synthetic; a learned colour takes the name of the nearest one within dE 10.')
@click.option("--from-pix2pix", "pix2pix_dir", type=click.Path(file_okay=False), default=None,
              help="Import a pix2pix 'aligned' dataset (A|B images in train/, val/, test/) instead of rasters.")
@click.option("--direction", type=click.Choice(["AtoB", "BtoA"]), default="AtoB", show_default=True,
              help="With --from-pix2pix: AtoB = the left half (A) is the satellite image; BtoA = the right half.")
@overwrite_opt
@click.pass_context
def command(ctx: click.Context, images: tuple[str, ...], maps: tuple[str, ...], pairs_file: str | None, out_dir: Path,
            tile_size: int, stride: int | None, aoi: str | None, val_fraction: float, test_fraction: float,
            min_valid: float, resolution: float | None, image_resampling: str, map_resampling: str,
            bands: tuple[int, int, int] | None, split_block: int, seed: int, palette: str | None,
            pix2pix_dir: str | None,
            direction: str, overwrite: bool) -> None:
    """Cut aligned satellite/map raster pairs into A|B training tiles with a spatial train/val/test split.

    The satellite raster defines the pixel grid; the map is reprojected and resampled onto it window by window.
    Only the overlap of both footprints (and the --aoi) is tiled; tiles under --min-valid are skipped. Writes a
    pix2pix-compatible folder plus dataset.json and tiles.geojson (footprints by split, opens in QGIS).
    """
    from geo_sat2map.errors import UserError
    from geo_sat2map.tiling import MakeTilesConfig, Pix2PixImportConfig, import_pix2pix, make_tiles

    command_line = shlex.join(["geo-sat2map", *sys.argv[1:]])
    show_progress = not quiet(ctx)
    if pix2pix_dir is not None:
        if images or maps or pairs_file or aoi:
            raise UserError(
                "--from-pix2pix imports a ready A|B dataset; do not combine it with --image/--map/--pairs/--aoi"
            )
        result = import_pix2pix(
            Pix2PixImportConfig(source=pix2pix_dir, tile_size=tile_size, direction=direction, overwrite=overwrite),
            out_dir, progress=show_progress, command=command_line,
        )
    else:
        config = MakeTilesConfig(
            images=images, maps=maps, pairs_file=pairs_file, tile_size=tile_size, stride=stride, aoi=aoi,
            val_fraction=val_fraction, test_fraction=test_fraction, min_valid=min_valid, resolution=resolution,
            image_resampling=image_resampling, map_resampling=map_resampling, bands=bands, split_block=split_block,
            seed=seed, palette=palette, overwrite=overwrite,
        )
        result = make_tiles(config, out_dir, progress=show_progress, command=command_line)
    progress.emit("result", command="make-tiles", result=result)
    click.echo(result.summary())  # the result: also with -q
