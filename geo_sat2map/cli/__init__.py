"""Command-line interface: thin click commands over the library. Only this package imports click."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

import click

from geo_sat2map import __version__, progress
from geo_sat2map.cli.options import INTERRUPT_EXIT, exit_interrupted
from geo_sat2map.errors import Interrupted, UserError, first_line, stop_signals

log = logging.getLogger("geo_sat2map")
_EVENTS = "geo_sat2map.events"  # ctx.meta key of the JSON event writer (--progress json)


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
        except KeyboardInterrupt as exc:
            exit_interrupted(ctx, exc, "nothing was written at the output path.")
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # the safety net for bugs; junk input is refused by each reader as a UserError
            if ctx.find_root().meta.get("verbose"):
                traceback.print_exc()
            raise _InternalError(
                f"internal error: {type(exc).__name__}: {first_line(exc)} (a bug in geo-sat2map; rerun with -v for "
                "the traceback and please report it)"
            ) from None


class _InternalError(click.ClickException):
    """Printed by click as one ``Error: internal error: ...`` line; exits with INTERNAL_ERROR_EXIT."""

    exit_code = INTERNAL_ERROR_EXIT


class _EventGroup(_Group):
    """With --progress json, every failure also arrives as an ``error`` event (the Error: line stays as it is)."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            _error_event(ctx, exc.format_message(), exc.exit_code)
            raise
        except click.exceptions.Exit as exc:
            if exc.exit_code:
                _error_event(ctx, _exit_message(exc.exit_code), exc.exit_code)
            raise


def _exit_message(exit_code: int) -> str:
    """``interrupted`` (Ctrl-C), ``interrupted by SIGTERM`` / ``SIGHUP``, else the exit status."""
    if exit_code == INTERRUPT_EXIT:
        return "interrupted"
    stop = {128 + number: signal.Signals(number).name for number in stop_signals()}
    return f"interrupted by {stop[exit_code]}" if exit_code in stop else f"stopped with exit status {exit_code}"


def _error_event(ctx: click.Context, message: str, exit_code: int) -> None:
    """Through the command's own writer: ctx.exit() (Ctrl-C) has already closed the JSON mode by now."""
    writer = ctx.meta.get(_EVENTS)
    if writer is not None:
        writer.emit("error", message=message, exit_code=exit_code)


@click.group(cls=_EventGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="geo-sat2map")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging; show tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress and no log: only the result line (Wrote ..., Trained ...), warnings and errors.")
@click.option("--progress", "progress_mode", type=click.Choice(["bar", "json"]), default="bar", show_default=True,
              help="json: progress, log messages, the result and errors as JSON lines on stderr, for programs "
                   "(the QGIS plugin) instead of people.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool, progress_mode: str) -> None:
    """Turn georeferenced satellite imagery into map rasters with pix2pix, and train the model."""
    if verbose and quiet:
        raise click.UsageError("-v/--verbose and -q/--quiet are mutually exclusive")
    ctx.meta["verbose"] = verbose
    ctx.meta["quiet"] = quiet
    level = logging.DEBUG if verbose else progress.RESULT if quiet else logging.INFO
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(progress.ConsoleFormatter("%(message)s"))
    ctx.with_resource(_stop_signals(sigint=progress_mode == "json"))
    if progress_mode == "json":
        handler = _start_json_events(ctx)
    handler.addFilter(progress.ConsoleFilter(main=progress.main_rank()))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    # rasterio's "Dataset has no geotransform" warning would print two lines before, and repeat, our own check's
    # one-line error (or precede the output of --allow-ungeoreferenced); -v shows it.
    warnings.filterwarnings("default" if verbose else "ignore", message="Dataset has no geotransform")


def _start_json_events(ctx: click.Context) -> logging.Handler:
    """Send events to stderr until the command ends; returns the log handler that makes records events."""
    writer = ctx.meta[_EVENTS] = ctx.with_resource(progress.json_events(sys.stderr))
    writer.emit("start", command=ctx.invoked_subcommand, version=__version__)
    return progress.JsonLogHandler(writer)


@contextlib.contextmanager
def _stop_signals(sigint: bool) -> Iterator[None]:
    """Make SIGTERM and SIGHUP stop a run the way Ctrl-C does: they raise ``Interrupted`` in the main thread, so
    every clean-up of Ctrl-C runs and one line is printed. A signal inherited as ignored (``nohup`` ignores SIGHUP)
    stays ignored. With ``sigint`` (a calling program cancels us, --progress json) SIGINT raises
    KeyboardInterrupt even where it was inherited as ignored, and on Windows Ctrl-Break (all a program can send to
    a child's process group) does the same."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    handlers: dict[int, Any] = {
        number: _raise_interrupted for number in stop_signals() if signal.getsignal(number) is not signal.SIG_IGN
    }
    if sigint:
        handlers.update({getattr(signal, name): signal.default_int_handler
                         for name in ("SIGINT", "SIGBREAK") if hasattr(signal, name)})
    previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
    try:
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be restored from here
                signal.signal(number, handler)


def _raise_interrupted(signal_number: int, _frame: Any) -> None:
    """Raise ``Interrupted`` once: a repeated stop signal is ignored so that the clean-up it started can finish
    (SIGKILL still ends the process; a rerun removes what that leaves)."""
    for number in stop_signals():
        signal.signal(number, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signal_number).name, signal_number)


def _register() -> None:
    from geo_sat2map.cli import evaluate, make_tiles, palette, qgis, train, translate

    for module in (translate, make_tiles, train, evaluate, palette, qgis):
        cli.add_command(module.command)


_register()


def main() -> None:
    cli(prog_name="geo-sat2map")
