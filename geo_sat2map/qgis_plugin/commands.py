"""The geo-sat2map command lines the algorithms run, built from plain values (no QGIS import: tested without it).

The choices mirror the CLI's (a test keeps them equal); ``None`` means "leave it to the CLI's default".
"""

from __future__ import annotations

from collections.abc import Sequence

BLEND_CHOICES = ("feather", "hann", "average")
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
OUTPUT_GRID_CHOICES = ("processing", "input")
RESAMPLING_CHOICES = ("average", "bilinear", "cubic", "cubic_spline", "lanczos", "nearest", "mode")
FORMAT_CHOICES = ("rgba", "paletted", "classes")
SCORE_NAMES = ("l1", "rmse", "psnr", "ssim", "acc_5", "acc_10", "acc_20")  # evaluate's image metrics
CLASS_SCORE_NAMES = ("overall_accuracy", "miou")  # with a palette


def translate_args(
    input_path: str, output: str, weights: str, *, tile_size: int | None = None, overlap: int | None = None,
    blend: str | None = None, batch_size: int | None = None, device: str | None = None,
    precision: str | None = None, bands: Sequence[int] | None = None, resolution: str | None = None,
    model_resolution: float | None = None, resampling: str | None = None, output_grid: str | None = None,
    bbox: str | None = None, bbox_crs: str | None = None, aoi: str | None = None, palette: str | None = None,
    min_region: int | None = None, output_format: str | None = None,
) -> list[str]:
    """Processing replaces its outputs (the save dialog has asked), hence --overwrite."""
    args = ["translate", input_path, "--output", output, "--weights", weights, "--overwrite"]
    args += _options(tile_size=tile_size, overlap=overlap, blend=blend, batch_size=batch_size, device=device,
                     precision=precision, resolution=resolution, model_resolution=model_resolution,
                     resampling=resampling, output_grid=output_grid, bbox=bbox, bbox_crs=bbox_crs, aoi=aoi,
                     palette=palette, min_region=min_region, format=output_format)
    if bands:
        args += ["--bands", ",".join(str(b) for b in bands)]
    return args


def make_tiles_args(
    pairs: Sequence[tuple[str, str]], output: str, *, tile_size: int | None = None, stride: int | None = None,
    val_fraction: float | None = None, test_fraction: float | None = None, min_valid: float | None = None,
    seed: int | None = None, aoi: str | None = None,
) -> list[str]:
    """--overwrite only ever replaces a previous make-tiles dataset (the CLI refuses any other folder)."""
    args = ["make-tiles", "--output", output, "--overwrite"]
    for image, map_path in pairs:
        args += ["--image", image, "--map", map_path]
    return args + _options(tile_size=tile_size, stride=stride, val_fraction=val_fraction,
                           test_fraction=test_fraction, min_valid=min_valid, seed=seed, aoi=aoi)


def evaluate_args(
    prediction: str, reference: str, *, palette: str | None = None, json_report: str | None = None
) -> list[str]:
    args = ["evaluate", prediction, reference]
    if json_report:
        args += ["--json", json_report, "--overwrite"]
    return args + _options(palette=palette)


def scores(result: dict) -> dict[str, float | None]:
    """The evaluate result's scores by name (SCORE_NAMES, then CLASS_SCORE_NAMES when a palette was used)."""
    metrics = result.get("metrics") or {}
    found = {name: metrics.get(name) for name in SCORE_NAMES}
    classes = result.get("classes")
    if classes:
        found.update({name: classes.get(name) for name in CLASS_SCORE_NAMES})
    return found


def _options(**values: object) -> list[str]:
    """keyword=value -> ['--keyword', 'value'] for the values that are set."""
    args: list[str] = []
    for name, value in values.items():
        if value is not None and value != "":
            args += [f"--{name.replace('_', '-')}", str(value)]
    return args
