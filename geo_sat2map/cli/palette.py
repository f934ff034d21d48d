"""The `palette` command: show a checkpoint's map palette and write it for evaluate, translate and QGIS."""

from __future__ import annotations

from pathlib import Path

import click

from geo_sat2map.cli.options import overwrite_opt

PALETTE_SUFFIXES = (".json", ".qml", ".clr")  # kept in sync with geo_sat2map.palette.PALETTE_WRITERS


def _check_outputs(ctx: click.Context, param: click.Parameter, values: tuple[Path, ...]) -> tuple[Path, ...]:
    for path in values:
        if path.suffix.lower() not in PALETTE_SUFFIXES:
            raise click.BadParameter(f"{path}: end the name in {', '.join(PALETTE_SUFFIXES)} (the format)")
    return values


@click.command("palette")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "outputs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              callback=_check_outputs, metavar="FILE.json|.qml|.clr",
              help="Write the palette (repeatable): .json = the palette evaluate/translate --palette read; "
                   ".qml = a QGIS style for paletted/class maps; .clr = a colour map QGIS's paletted renderer loads.")
@overwrite_opt
def command(source: Path, outputs: tuple[Path, ...], overwrite: bool) -> None:
    """Print the map palette of SOURCE (a generator.pt, or a palette JSON) and optionally write it.

    \b
    geo-sat2map palette run/generator.pt
    geo-sat2map palette run/generator.pt -o palette.json -o map.qml -o map.clr

    train stores the palette of its training maps: exact (flat maps: their colours) or clustered (k-means in
    CIELAB), with each class's share of the map pixels. translate --palette auto snaps to an exact one.
    """
    from geo_sat2map.palette import checkpoint_palette, load_palette, write_palette

    palette = load_palette(str(source)) if source.suffix.lower() == ".json" else checkpoint_palette(source)
    click.echo(palette.describe())
    for path in outputs:
        write_palette(palette, path, overwrite)
        click.echo(f"wrote {path}")
