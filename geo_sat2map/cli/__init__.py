"""Command-line interface: thin click commands over the library. Only this package imports click."""

from __future__ import annotations

import logging
import sys
import traceback
import warnings

import click

from geo_sat2map import __version__
from geo_sat2map.errors import UserError, first_line

log = logging.getLogger("geo_sat2map")


# Exit status of an unexpected exception (a bug, not a user mistake); EX_SOFTWARE in BSD sysexits.h.
INTERNAL_ERROR_EXIT = 70


class _Group(click.Group):
    """Turns library UserErrors into one-line messages and bugs into one 'internal error' line; -v shows the
    traceback too."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if ctx.find_root().meta.get("verbose"):
                traceback.print_exc()
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted: nothing was written at the output path.", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # the safety net for bugs; junk input is refused by each reader as a UserError
            if ctx.find_root().meta.get("verbose"):
                traceback.print_exc()
            click.echo(
                f"Error: internal error: {type(exc).__name__}: {first_line(exc)} (a bug in geo-sat2map; rerun with "
                "-v for the traceback and please report it)",
                err=True,
            )
            ctx.exit(INTERNAL_ERROR_EXIT)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="geo-sat2map")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging; show tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Turn georeferenced satellite imagery into map rasters with pix2pix, and train the model."""
    if verbose and quiet:
        raise click.UsageError("-v/--verbose and -q/--quiet are mutually exclusive")
    ctx.meta["verbose"] = verbose
    ctx.meta["quiet"] = quiet
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    # rasterio's "Dataset has no geotransform" warning would print two lines before, and repeat, our own check's
    # one-line error (or precede the output of --allow-ungeoreferenced); -v shows it.
    warnings.filterwarnings("default" if verbose else "ignore", message="Dataset has no geotransform")


def _register() -> None:
    from geo_sat2map.cli import evaluate, make_tiles, train, translate

    for module in (translate, make_tiles, train, evaluate):
        cli.add_command(module.command)


_register()


def main() -> None:
    cli(prog_name="geo-sat2map")
