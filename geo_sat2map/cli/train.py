"""The `train` command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from geo_sat2map import progress
from geo_sat2map.cli.options import device_opt, overwrite_opt, precision_opt, quiet

# geo_sat2map.models.ARCHITECTURES, not imported here so that --help does not load torch (a test keeps them equal).
ARCH_CHOICES = ("unet256", "seed-unet")


@click.command("train", short_help="Train pix2pix on A|B tiles (make-tiles output).")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(path_type=Path),
              help="RUN_DIR: where generator.pt, checkpoint.pt, metrics and samples go (created if missing).")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML config (e.g. configs/pix2pix.toml, configs/quick-cpu.toml); default: the pix2pix recipe.")
@click.option("--epochs", type=click.IntRange(min=0), help="Epochs at constant LR (config key epochs).")
@click.option("--epochs-decay", type=click.IntRange(min=0),
              help="Further epochs with the LR decaying linearly to 0 (config key epochs_decay).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Tiles per step and process.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Adam learning rate.")
@click.option("--ngf", type=click.IntRange(min=1), help="Generator width.")
@click.option("--arch", type=click.Choice(ARCH_CHOICES), help="Generator architecture.")
@click.option("--seed", type=click.IntRange(min=0), help="Seed for weights, data order and augmentation.")
@device_opt
@precision_opt
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes (0 = load in-process).")
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from its checkpoint.pt.")
@overwrite_opt
@click.pass_context
def command(
    ctx: click.Context,
    data_dir: Path,
    run_dir: Path,
    config_file: Path | None,
    resume: bool,
    overwrite: bool,
    **options: Any,
) -> None:
    """Train the pix2pix GAN on DATA_DIR (make-tiles output, or a pix2pix folder with train/ and val/).

    Options given here override the config file; with --resume the run's own config is the base.
    Ctrl-C finishes the current step, saves a checkpoint and tells how to resume.

    Multi-GPU: torchrun --nproc_per_node N --no-python geo-sat2map train DATA_DIR -o RUN_DIR ...
    """
    from geo_sat2map.training import resume_hint, train

    overrides = {
        key: value
        for key, value in options.items()
        if value is not None and ctx.get_parameter_source(key) is not ParameterSource.DEFAULT
    }
    summary = train(
        data_dir, run_dir, config_file=config_file, overrides=overrides, resume=resume, overwrite=overwrite,
        progress=not quiet(ctx),
    )
    if not summary.main_process:
        return
    progress.emit("result", command="train", result=summary)
    if summary.interrupted:
        click.echo(
            f"Stopped after {summary.epochs_done} of {summary.total_epochs} epochs; checkpoint saved in {run_dir}. "
            f"Resume with: {resume_hint(data_dir, run_dir)}",
            err=True,
        )
        return
    message = f"Trained {summary.epochs_done} epochs: {run_dir / 'generator.pt'}"
    if summary.best_epoch is not None:
        message += f"; best val L1 {summary.best_val_l1:.2f} at epoch {summary.best_epoch}: {run_dir / 'generator_best.pt'}"
    click.echo(message, err=True)
