"""The `translate` command: a thin layer over ``geo_sat2map.inference.translate``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from geo_sat2map import progress
from geo_sat2map.cli.options import (
    device_opt,
    exit_interrupted,
    overwrite_opt,
    parse_bands,
    precision_opt,
    quiet,
)

if TYPE_CHECKING:
    from geo_sat2map.inference import BatchConfig

# Kept in sync with geo_sat2map.windows / inference.translate / raster_io.output / models (imported lazily: fast --help).
BLEND_CHOICES = ("feather", "hann", "average")
COMPRESS_CHOICES = ("deflate", "zstd", "lzw", "none")
NORM_CHOICES = ("instance", "running")
SCALING_CHOICES = ("auto", "scene")
FORMAT_CHOICES = ("rgba", "paletted", "classes")  # geo_sat2map.inference.snap.OUTPUT_FORMATS
DEFAULT_MIN_REGION = 8  # geo_sat2map.inference.snap.DEFAULT_MIN_REGION
RESAMPLING_CHOICES = ("average", "bilinear", "cubic", "cubic_spline", "lanczos", "nearest", "mode")
OUTPUT_GRID_CHOICES = ("processing", "input")


def parse_bbox(
    ctx: click.Context | None, param: click.Parameter | None, value: str | None
) -> tuple[float, float, float, float] | None:
    """'XMIN,YMIN,XMAX,YMAX' -> four floats with XMIN < XMAX and YMIN < YMAX."""
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 4 or not all(abs(v) < float("inf") for v in numbers):
        raise click.BadParameter(f"{value!r}: expected XMIN,YMIN,XMAX,YMAX, e.g. 500000,4000000,501000,4001000")
    xmin, ymin, xmax, ymax = numbers
    if not (xmin < xmax and ymin < ymax):
        raise click.BadParameter(f"{value!r}: XMIN must be below XMAX and YMIN below YMAX")
    return numbers  # type: ignore[return-value]


def parse_resolution(ctx: click.Context | None, param: click.Parameter | None, value: str) -> str | float:
    """'auto', 'native' or a pixel size in metres (> 0)."""
    if value in ("auto", "native"):
        return value
    try:
        metres = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected auto, native or a pixel size in metres, e.g. 0.5") from None
    if not 0 < metres < float("inf"):  # also refuses nan
        raise click.BadParameter(f"{value!r}: a pixel size in metres must be a positive number")
    return metres


def parse_creation_options(
    ctx: click.Context | None, param: click.Parameter | None, values: tuple[str, ...]
) -> dict[str, str]:
    """('LEVEL=9', 'NUM_THREADS=4') -> {'LEVEL': '9', 'NUM_THREADS': '4'}."""
    options = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r}: expected NAME=VALUE, e.g. --co LEVEL=9")
        options[name.strip().upper()] = setting.strip()
    return options


@click.command("translate")
@click.argument("inputs", nargs=-1, metavar="INPUT...", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Map GeoTIFF to write (RGBA: the alpha band is the input's footprint); map.vrt: a VRT over "
                   "COG parts in map.parts/. With several inputs, or ending in /: a folder for <stem>.tif maps.")
@click.option("--input-list", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Text file of input paths, one a line (relative to the file's folder), besides any INPUT.")
@click.option("--vrt", "vrt", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With an output folder: also write this VRT of all the maps (one layer in QGIS; one CRS).")
@click.option("-w", "--weights", required=True, type=click.Path(path_type=Path),
              help="Generator checkpoint: geo-sat2map generator.pt, pix2pix *_net_G.pth or seed gen.pth.tar.")
@click.option("--tile-size", type=int, default=None,
              help="Window size in pixels, a multiple of 256 [default: the checkpoint's training tile size, else 256].")
@click.option("--overlap", type=int, default=None,
              help="Pixels shared by neighbouring windows; 0 = plain non-overlapping tiles "
                   "[default: a quarter of the tile size, 64 for 256].")
@click.option("--blend", type=click.Choice(BLEND_CHOICES), default="feather", show_default=True,
              help="How overlapping windows are merged: feather = cosine cross-fade over each overlap; "
                   "hann = raised-cosine bump over the whole window; average = plain mean.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Windows per generator call [default: 4 on CPU, 64 on CUDA (16 under 12 GiB), 8 on MPS]. Never changes results.")
@device_opt
@precision_opt
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the generator for the fixed batch shape: a one-time cost (tens of seconds on a "
                   "GPU, logged) that pays off on large scenes; falls back to eager if compiling fails.")
@click.option("--norm-stats", type=click.Choice(NORM_CHOICES), default=None,
              help="BatchNorm statistics at inference: per-tile (instance) or the trained running ones "
                   "[default: what the checkpoint says].")
@click.option("--bands", callback=parse_bands, default=None,
              help="Three 1-based source bands as R,G,B [default: the checkpoint's bands, found by their colour "
                   "interpretation when the scene tags them, else by index; else the bands tagged red, green, "
                   "blue, else 1,2,3].")
@click.option("--scaling", type=click.Choice(SCALING_CHOICES), default="auto", show_default=True,
              help="Non-8-bit input: auto = the checkpoint's stretch if it has one, else a 2-98 % stretch of "
                   "this scene; scene = always the stretch of this scene.")
@click.option("--resolution", default="auto", show_default=True, callback=parse_resolution, metavar="auto|native|METRES",
              help="Ground size of the pixels the generator sees: auto = the model's training resolution when it "
                   "is known and more than 10 % off the scene's, else the scene's own; native = the scene's own "
                   "pixels; or a pixel size in metres. The scene is resampled on the fly.")
@click.option("--model-resolution", type=click.FloatRange(min=0, min_open=True), default=None, metavar="METRES",
              help="The model's training pixel size in metres, for checkpoints that do not record it (public "
                   "pix2pix, seed) or to override it.")
@click.option("--resampling", type=click.Choice(RESAMPLING_CHOICES), default=None,
              help="GDAL resampling onto the processing grid [default: average when shrinking, bilinear when "
                   "enlarging].")
@click.option("--output-grid", type=click.Choice(OUTPUT_GRID_CHOICES), default="processing", show_default=True,
              help="processing = the map on the processing grid (same CRS and ground); input = resampled back onto "
                   "the scene's exact grid (same transform and size, nearest colour, the scene's own mask).")
@click.option("--alpha-threshold", type=click.FloatRange(min=0, max=1, min_open=True), default=0.5,
              show_default=True,
              help="An alpha band marks a pixel valid from this opacity on (nodata values and mask bands are "
                   "unaffected).")
@click.option("--bbox", callback=parse_bbox, default=None, metavar="XMIN,YMIN,XMAX,YMAX",
              help="Translate only this area (in the scene's CRS, or --bbox-crs); the map covers it. The windows "
                   "are the whole scene's, so its pixels equal those of a whole-scene run.")
@click.option("--bbox-crs", default=None, metavar="CRS", help="CRS of --bbox, e.g. EPSG:4326 [default: the scene's].")
@click.option("--aoi", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Translate only this polygon (GeoJSON, or WKT/EWKT text, as make-tiles reads): the map covers "
                   "its bounds, pixels outside it transparent.")
@click.option("--palette", default="auto", show_default=True, metavar="auto|none|FILE",
              help="Snap every valid pixel to its nearest map colour: auto = the checkpoint's learned palette when it "
                   "is exact (flat training maps); none = raw generator colours; FILE = a palette JSON "
                   '{"classes": [{"name", "color"}]} (e.g. for public checkpoints; `geo-sat2map palette` writes one).')
@click.option("--min-region", type=click.IntRange(min=0), default=DEFAULT_MIN_REGION, show_default=True,
              help="Snapped maps: remove specks smaller than about N pixels (two passes of a majority filter whose "
                   "window is the smallest odd square of at least 2N pixels); 0 = off.")
@click.option("--format", "output_format", type=click.Choice(FORMAT_CHOICES), default="rgba", show_default=True,
              help="rgba = colour + alpha; paletted = one band with a colour table and class names (QGIS shows the "
                   "legend); classes = one band of class indices with category names. One-band maps are packed to "
                   "the fewest bits (4 for up to 15 classes) and their nodata is the last value those hold (15).")
@click.option("--compress", type=click.Choice(COMPRESS_CHOICES), default="deflate", show_default=True,
              help="Output compression (RGBA with a horizontal predictor; one-band maps without, at a higher level).")
@click.option("--cog/--no-cog", default=True, show_default=True,
              help="Write a Cloud-Optimized GeoTIFF, or a plain tiled GeoTIFF with internal overviews.")
@click.option("--co", "creation_options", multiple=True, metavar="NAME=VALUE", callback=parse_creation_options,
              help="Extra GDAL creation option for the output, repeatable (e.g. --co LEVEL=9).")
@click.option("--allow-ungeoreferenced", is_flag=True,
              help="Accept an input without CRS or geotransform (the output has none either).")
@overwrite_opt
@click.pass_context
def command(ctx: click.Context, inputs: tuple[Path, ...], output: str, input_list: Path | None,
            vrt: Path | None, weights: Path, tile_size: int | None,
            overlap: int | None, blend: str, batch_size: int | None, device: str, precision: str, compile_model: bool,
            norm_stats: str | None, bands: tuple[int, int, int] | None, scaling: str, resolution: str | float,
            model_resolution: float | None, resampling: str | None, output_grid: str, alpha_threshold: float,
            bbox: tuple[float, float, float, float] | None, bbox_crs: str | None, aoi: Path | None,
            palette: str, min_region: int, output_format: str, compress: str, cog: bool,
            creation_options: dict[str, str], allow_ungeoreferenced: bool, overwrite: bool) -> None:
    """Translate georeferenced satellite scenes into map GeoTIFFs on exactly the same grid.

    \b
    One scene:    geo-sat2map translate scene.tif -o map.tif -w G.pt
    Many scenes:  geo-sat2map translate a.tif b.tif ... -o maps/ -w G.pt [--vrt maps.vrt]
    Many GPUs:    torchrun --nproc-per-node N -m geo_sat2map translate ... (see README, Large jobs)

    Any size: the scene is streamed through overlapping windows whose outputs are blended, so memory does not
    grow with the scene and no tile grid shows. Masked input pixels (nodata, alpha, mask bands) stay
    transparent in the output. Many scenes: a scene whose map is already finished with the same model and
    settings is skipped (rerun to resume), a failing scene does not stop the others. Under torchrun one scene is
    split into bands of rows, one per process (the same pixels as one process), and many scenes are shared.
    """
    from geo_sat2map.inference import BatchConfig, TranslateConfig, read_input_list, translate
    from geo_sat2map.inference.parts import runs_in_parts, translate_in_parts
    from geo_sat2map.raster_io.output import OutputOptions

    scenes = list(inputs) + (read_input_list(input_list) if input_list is not None else [])
    if not scenes:
        raise click.UsageError("Missing argument 'INPUT...' (or --input-list FILE).")
    to_folder = len(scenes) > 1 or output.endswith(("/", os.sep))
    if not to_folder and Path(output).is_dir():
        raise click.BadParameter(f"File {output!r} is a directory.", param_hint="'-o' / '--output'")
    if bbox is not None and aoi is not None:
        raise click.BadParameter("give --bbox or --aoi, not both", param_hint="'--aoi'")
    if bbox_crs is not None and bbox is None:
        raise click.BadParameter("goes with --bbox", param_hint="'--bbox-crs'")
    if vrt is not None and not to_folder:
        raise click.BadParameter("needs an output folder: several inputs, or -o ending in /", param_hint="'--vrt'")
    if vrt is not None and vrt.suffix.lower() != ".vrt":
        raise click.BadParameter(f"{vrt}: the mosaic file must end in .vrt", param_hint="'--vrt'")
    config = TranslateConfig(
        input=scenes[0], output=Path(output), weights=weights, tile_size=tile_size, overlap=overlap, blend=blend,
        batch_size=batch_size, device=device, precision=precision, compile=compile_model, norm_stats=norm_stats,
        bands=bands, scaling=scaling, resolution=resolution, model_resolution=model_resolution,
        resampling=resampling, output_grid=output_grid, alpha_threshold=alpha_threshold, bbox=bbox,
        bbox_crs=bbox_crs, aoi=aoi,
        output_options=OutputOptions(compress=compress, cog=cog, creation_options=creation_options),
        overwrite=overwrite, allow_ungeoreferenced=allow_ungeoreferenced, progress=not quiet(ctx),
        palette=palette, min_region=min_region, output_format=output_format,
    )
    if to_folder:
        _translate_folder(ctx, BatchConfig(tuple(scenes), Path(output), config, vrt))
        return
    report = translate_in_parts(config) if runs_in_parts(config.output) else translate(config)
    if progress.main_rank():
        progress.emit("result", command="translate", result=report)


def _translate_folder(ctx: click.Context, config: BatchConfig) -> None:
    """Many scenes: the summary table from rank 0; exit 1 if any scene failed (each was reported as it failed)."""
    from geo_sat2map.inference import translate_many

    try:
        report = translate_many(config)
    except KeyboardInterrupt as exc:
        exit_interrupted(ctx, exc, "finished maps are kept (a rerun skips them); the scene in progress left nothing.")
    if progress.main_rank():
        progress.emit("result", command="translate", result=report)
        click.echo(report.table())  # the result: also with -q
    if report.failed:
        ctx.exit(1)
