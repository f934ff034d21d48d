"""Option decorators and parameter types shared by the commands (in the style of rasterio's rio/options.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import click

overwrite_opt = click.option(
    "--overwrite", is_flag=True, default=False, help="Replace an existing output instead of refusing."
)
device_opt = click.option(
    "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps (auto = best available)."
)
precision_opt = click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Compute precision; fp16 only on GPU (auto = bf16 on CUDA if supported; on a CPU with native bf16 the "
    "faster of fp32 and bf16, measured once and cached; else fp32).",
)


def parse_bands(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> tuple[int, ...] | None:
    """'1,2,3' -> (1, 2, 3); 1-based, positive integers."""
    if value is None:
        return None
    try:
        bands = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of band numbers, e.g. 1,2,3") from None
    if len(bands) != 3 or any(b < 1 for b in bands):
        raise click.BadParameter(f"{value!r}: give exactly three 1-based band numbers, e.g. 3,2,1")
    return bands


bands_opt = click.option(
    "--bands",
    callback=parse_bands,
    default=None,
    help="Three 1-based source bands as R,G,B (default: the bands tagged red, green, blue; else 1,2,3).",
)


def quiet(ctx: click.Context) -> bool:
    return bool(ctx.find_root().meta.get("quiet"))


INTERRUPT_EXIT = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def exit_interrupted(ctx: click.Context, exc: KeyboardInterrupt, message: str) -> NoReturn:
    """End a command stopped by Ctrl-C or a stop signal: ``Interrupted[ by SIGTERM]: <message>`` (from rank 0 only
    under torchrun) and exit status 130, or 128 + the signal number (143 SIGTERM, 129 SIGHUP)."""
    from geo_sat2map.errors import Interrupted
    from geo_sat2map.progress import main_rank

    signal_name = exc.signal_name if isinstance(exc, Interrupted) else None
    if main_rank():
        click.echo(f"Interrupted{f' by {signal_name}' if signal_name else ''}: {message}", err=True)
    ctx.exit(exc.exit_code if isinstance(exc, Interrupted) else INTERRUPT_EXIT)


def not_built(name: str, issue: str) -> Callable[..., Any]:
    """A placeholder command that says it is not built yet and exits non-zero."""

    @click.command(name, context_settings={"ignore_unknown_options": True}, help=f"[not built yet: {issue}]")
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        raise click.ClickException(f"'{name}' is not built yet ({issue})")

    return command
