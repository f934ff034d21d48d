"""What a run shows its user: metrics.jsonl, samples/epoch_NNN.png and curves.png (drawn with Pillow).

All files are written to a temporary name beside the destination and renamed, so a reader never sees a
half-written file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from geo_sat2map.atomic import atomic_output
from geo_sat2map.image_io import write_png

PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train: loss_D, loss_G_GAN", ("loss_D", "loss_G_GAN")),
    ("train: loss_G_L1 (x lambda)", ("loss_G_L1",)),
    ("val: L1 (8-bit levels)", ("val_l1",)),
    ("val: PSNR (dB)", ("val_psnr",)),
    ("val: SSIM, acc(5), acc(10)", ("val_ssim", "val_acc_5", "val_acc_10")),
    ("learning rate", ("lr",)),
)
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44))
PANEL_SIZE = (420, 260)


def write_metrics(path: Path, history: Sequence[dict[str, Any]]) -> None:
    """One JSON object per epoch; rewritten whole so it always matches the checkpoint's history."""
    with atomic_output(path, overwrite=True, what="metrics") as tmp:
        tmp.write_text("".join(json.dumps(record) + "\n" for record in history))


def write_samples(path: Path, inputs: np.ndarray, predictions: np.ndarray, targets: np.ndarray) -> None:
    """A grid with one row per tile: input | prediction | target (uint8 (N, 3, H, W) each)."""
    rows = [np.concatenate(triple, axis=2) for triple in zip(inputs, predictions, targets)]
    with atomic_output(path, overwrite=True, what="samples") as tmp:
        write_png(tmp, np.concatenate(rows, axis=1))


def write_curves(path: Path, history: Sequence[dict[str, Any]]) -> None:
    """Losses, val metrics and LR against epoch, one small panel each."""
    width, height = PANEL_SIZE
    columns = 3
    rows = math.ceil(len(PANELS) / columns)
    image = Image.new("RGB", (columns * width, rows * height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    epochs = [float(record["epoch"]) for record in history]
    for i, (title, keys) in enumerate(PANELS):
        origin = ((i % columns) * width, (i // columns) * height)
        series = {key: [_finite(record.get(key)) for record in history] for key in keys}
        _panel(draw, font, origin, title, epochs, series)
    with atomic_output(path, overwrite=True, what="curves") as tmp:
        image.save(tmp, format="PNG")


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _panel(draw: ImageDraw.ImageDraw, font: Any, origin: tuple[int, int], title: str,
           xs: list[float], series: dict[str, list[float | None]]) -> None:
    ox, oy = origin
    width, height = PANEL_SIZE
    left, top, right, bottom = ox + 60, oy + 26, ox + width - 14, oy + height - 30
    draw.text((ox + 8, oy + 6), title, fill="black", font=font)
    values = [v for s in series.values() for v in s if v is not None]
    if not values:
        draw.text((left + 10, (top + bottom) // 2), "no data", fill="gray", font=font)
        return
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    x_lo, x_hi = min(xs), max(xs)
    x_span = (x_hi - x_lo) or 1.0

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x_lo) / x_span * (right - left) if x_hi > x_lo else (left + right) / 2
        return px, bottom - (y - lo) / (hi - lo) * (bottom - top)

    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    draw.text((ox + 4, top - 4), f"{hi:.4g}", fill="black", font=font)
    draw.text((ox + 4, bottom - 8), f"{lo:.4g}", fill="black", font=font)
    draw.text((left, bottom + 6), f"epoch {x_lo:g}", fill="black", font=font)
    draw.text((right - 60, bottom + 6), f"{x_hi:g}", fill="black", font=font)
    for n, (name, ys) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        points = [to_px(x, y) for x, y in zip(xs, ys) if y is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        if len(series) > 1:
            draw.text((right - 110, top + 4 + 12 * n), name, fill=colour, font=font)
