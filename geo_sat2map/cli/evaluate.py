"""The `evaluate` command: score a translated scene against a reference map, or a generator on a tile split."""

from __future__ import annotations

import click

from geo_sat2map import progress
from geo_sat2map.cli.options import device_opt, overwrite_opt, precision_opt, quiet


@click.command("evaluate")
@click.argument("inputs", nargs=-1, required=True, metavar="PRED.tif REF.tif | --weights G.pt DATA_DIR")
@click.option(
    "-w", "--weights", type=click.Path(dir_okay=False), default=None,
    help="Evaluate this generator on a tile dataset (make-tiles output or a pix2pix folder) instead of two rasters.",
)
@click.option("--split", default="val", show_default=True, help="With --weights: the dataset split to score.")
@click.option(
    "--palette", default=None, metavar="FILE|synthetic",
    help='Map palette for per-class accuracy/IoU: a JSON file {"classes": [{"name", "color": [r,g,b]}]} '
    "or 'synthetic' (the demo world's palette).",
)
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the report as JSON."
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="With --weights: tiles per batch."
)
@click.option(
    "--norm-stats", type=click.Choice(["instance", "running"]), default=None,
    help="With --weights: BatchNorm statistics at inference (default: what the checkpoint says, as translate).",
)
@device_opt
@precision_opt
@overwrite_opt
@click.pass_context
def command(
    ctx: click.Context,
    inputs: tuple[str, ...],
    weights: str | None,
    split: str,
    palette: str | None,
    json_out: str | None,
    batch_size: int,
    norm_stats: str | None,
    device: str,
    precision: str,
    overwrite: bool,
) -> None:
    """Score predicted maps against reference maps.

    \b
    Scene:    geo-sat2map evaluate map.tif reference.tif [--palette FILE|synthetic] [--json report.json]
    Dataset:  geo-sat2map evaluate --weights generator.pt tiles/ [--split val]

    Scene mode warps REF onto PRED's grid (nearest) when their grids differ and compares the pixels valid in
    both (dataset masks). Reports L1, RMSE, PSNR, SSIM and acc(d) = share of pixels whose largest channel
    difference is below d (8-bit levels); with --palette also per-class accuracy, IoU, mIoU and map-class
    accuracy. In dataset mode L1, RMSE and acc pool all pixels; PSNR and SSIM are means over tiles.
    """
    if weights is not None and len(inputs) != 1:
        raise click.UsageError("with --weights give exactly one DATA_DIR (a tile dataset folder)")
    if weights is None and len(inputs) != 2:
        raise click.UsageError("give PRED.tif and REF.tif (or --weights G.pt DATA_DIR)")
    from geo_sat2map.evaluate import EvaluateConfig, run_evaluation  # lazy: torch loads only when a command runs

    config = EvaluateConfig(
        prediction=inputs[0] if weights is None else None,
        reference=inputs[1] if weights is None else None,
        weights=weights,
        data_dir=inputs[0] if weights is not None else None,
        split=split,
        palette=palette,
        json_out=json_out,
        overwrite=overwrite,
        batch_size=batch_size,
        device=device,
        precision=precision,
        norm_mode=norm_stats,
        progress=not quiet(ctx),
    )
    report = run_evaluation(config)
    progress.emit("result", command="evaluate", result=report)
    click.echo(report.table())
    if json_out:
        click.echo(f"report written to {json_out}", err=True)
