"""The `translate` command: a thin layer over ``geo_sat2map.inference.translate``."""

from __future__ import annotations

from pathlib import Path

import click

from geo_sat2map import progress
from geo_sat2map.cli.options import device_opt, overwrite_opt, parse_bands, precision_opt, quiet

# Kept in sync with geo_sat2map.windows / inference.translate / raster_io.output / models (imported lazily: fast --help).
BLEND_CHOICES = ("feather", "hann", "average")
COMPRESS_CHOICES = ("deflate", "zstd", "lzw", "none")
NORM_CHOICES = ("instance", "running")
SCALING_CHOICES = ("auto", "scene")


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
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Map GeoTIFF to write (RGBA: the alpha band is the input's footprint).")
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
              help="Windows per generator call [default: 4 on CPU, 16 on CUDA, 8 on MPS]. Never changes results.")
@device_opt
@precision_opt
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the generator for the fixed batch shape: a one-time cost (tens of seconds on a "
                   "GPU, logged) that pays off on large scenes; falls back to eager if compiling fails.")
@click.option("--norm-stats", type=click.Choice(NORM_CHOICES), default=None,
              help="BatchNorm statistics at inference: per-tile (instance) or the trained running ones "
                   "[default: what the checkpoint says].")
@click.option("--bands", callback=parse_bands, default=None,
              help="Three 1-based source bands as R,G,B [default: the checkpoint's bands, else the bands tagged "
                   "red, green, blue, else 1,2,3].")
@click.option("--scaling", type=click.Choice(SCALING_CHOICES), default="auto", show_default=True,
              help="Non-8-bit input: auto = the checkpoint's stretch if it has one, else a 2-98 % stretch of "
                   "this scene; scene = always the stretch of this scene.")
@click.option("--compress", type=click.Choice(COMPRESS_CHOICES), default="deflate", show_default=True,
              help="Output compression (with a horizontal predictor).")
@click.option("--cog/--no-cog", default=True, show_default=True,
              help="Write a Cloud-Optimized GeoTIFF, or a plain tiled GeoTIFF with internal overviews.")
@click.option("--co", "creation_options", multiple=True, metavar="NAME=VALUE", callback=parse_creation_options,
              help="Extra GDAL creation option for the output, repeatable (e.g. --co LEVEL=9).")
@click.option("--allow-ungeoreferenced", is_flag=True,
              help="Accept an input without CRS or geotransform (the output has none either).")
@overwrite_opt
@click.pass_context
def command(ctx: click.Context, input_path: Path, output: Path, weights: Path, tile_size: int | None,
            overlap: int | None, blend: str, batch_size: int | None, device: str, precision: str, compile_model: bool,
            norm_stats: str | None, bands: tuple[int, int, int] | None, scaling: str, compress: str, cog: bool,
            creation_options: dict[str, str], allow_ungeoreferenced: bool, overwrite: bool) -> None:
    """Translate a georeferenced satellite scene INPUT into a map GeoTIFF on exactly the same grid.

    Any size: the scene is streamed through overlapping windows whose outputs are blended, so memory does not
    grow with the scene and no tile grid shows. Masked input pixels (nodata, alpha, mask bands) stay
    transparent in the output.
    """
    from geo_sat2map.inference import TranslateConfig, translate
    from geo_sat2map.raster_io.output import OutputOptions

    report = translate(TranslateConfig(
        input=input_path, output=output, weights=weights, tile_size=tile_size, overlap=overlap, blend=blend,
        batch_size=batch_size, device=device, precision=precision, compile=compile_model, norm_stats=norm_stats,
        bands=bands, scaling=scaling,
        output_options=OutputOptions(compress=compress, cog=cog, creation_options=creation_options),
        overwrite=overwrite, allow_ungeoreferenced=allow_ungeoreferenced, progress=not quiet(ctx),
    ))
    progress.emit("result", command="translate", result=report)
