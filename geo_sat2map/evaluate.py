"""Scoring predicted maps: a translated scene against a reference map raster, or a generator on a tile dataset.

Scene mode (``evaluate_scene``): the reference is warped onto the prediction's grid (nearest neighbour, so map
colours stay exact) unless both share one grid; only pixels valid in both dataset masks are compared. The scene is
read in windows with a small halo, so memory is bounded and SSIM near window edges equals the whole-scene value.
Pixels are pooled over the scene for every metric.

Dataset mode (``evaluate_dataset``): the generator runs on every A|B tile of a split, in the same inference mode
translate uses (the checkpoint's norm mode unless overridden; dropout off), and its rounded uint8 output is compared
with B over the tile's valid pixels (its make-tiles mask, ``masks/<split>/<id>.png``; a tile without one is valid
everywhere). L1, RMSE and acc(d) pool those pixels of all tiles; PSNR and SSIM are per-tile values averaged over
tiles, the convention of the pix2pix literature.

With a palette, every pixel of both images is assigned its nearest palette colour, giving per-class accuracy,
IoU, mIoU and the overall map-class accuracy (see ``metrics.ClassAccumulator``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo_sat2map import __version__
from geo_sat2map.atomic import atomic_output, check_output_path
from geo_sat2map.checkpoint import load_generator
from geo_sat2map.device import resolve_device, resolve_precision
from geo_sat2map.errors import UserError
from geo_sat2map.image_io import read_rgb, read_tile_valid, split_pair, tile_mask_path
from geo_sat2map.inference.precision import Precision, inference_precision
from geo_sat2map.metrics import MetricAccumulator, to_uint8
from geo_sat2map.palette import Palette, load_palette
from geo_sat2map.progress import progress_bar
from geo_sat2map.raster_io import open_raster, raster_info, warped_onto
from geo_sat2map.raster_io.compare import (
    RGBWindowReader,
    footprint_text,
    grids_match,
    iter_chunks,
    overlap_window,
    with_halo,
)
from geo_sat2map.scaling import InputScaling

log = logging.getLogger("geo_sat2map")

SSIM_HALO = 5  # radius of the 11x11 SSIM window: a window read with this halo scores its interior exactly
TILE_SUFFIXES = (".png", ".jpg", ".jpeg")
UNET_MULTIPLE = 256  # both generator families halve the input 8 times


@dataclass
class EvaluationReport:
    """What an evaluation found: inputs, image metrics and (with a palette) map-class metrics."""

    mode: str  # "scene" or "dataset"
    inputs: dict[str, Any]
    metrics: dict[str, float]
    classes: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": "geo-sat2map",
            "version": __version__,
            "mode": self.mode,
            "inputs": self.inputs,
            "metrics": self.metrics,
            "classes": self.classes,
            "notes": self.notes,
        }

    def table(self) -> str:
        m = self.metrics
        lines = [f"{self.inputs['prediction']}  vs  {self.inputs['reference']}"]
        lines += [f"  {note}" for note in self.notes]
        lines.append(f"  {'L1':<11}{m['l1']:>9.2f}   mean |difference|, 8-bit levels")
        lines.append(f"  {'RMSE':<11}{m['rmse']:>9.2f}")
        lines.append(f"  {'PSNR':<11}{m['psnr']:>9.2f}   dB")
        lines.append(f"  {'SSIM':<11}{m['ssim']:>9.4f}")
        for key in sorted((k for k in m if k.startswith("acc_")), key=lambda k: int(k[4:])):
            label = f"acc(<{key[4:]})"
            lines.append(f"  {label:<11}{100 * m[key]:>8.1f} %   pixels whose worst channel is off by less")
        if self.classes is not None:
            c = self.classes
            lines.append("")
            lines.append(f"  map classes (palette: {self.inputs['palette']}; each pixel -> nearest palette colour)")
            lines.append(f"  {'class':<16}{'reference':>10}{'predicted':>11}{'accuracy':>10}{'IoU':>8}")
            for name, row in c["classes"].items():
                if not row["reference_share"] and not row["predicted_share"]:
                    continue
                accuracy = f"{100 * row['accuracy']:.1f} %" if row["accuracy"] is not None else "-"
                iou = f"{row['iou']:.3f}" if row["iou"] is not None else "-"
                lines.append(
                    f"  {name:<16}{100 * row['reference_share']:>8.1f} %{100 * row['predicted_share']:>9.1f} %"
                    f"{accuracy:>10}{iou:>8}"
                )
            lines.append(f"  map-class accuracy {100 * c['overall_accuracy']:.1f} %    mIoU {c['miou']:.3f}")
        return "\n".join(lines)


@dataclass(frozen=True)
class EvaluateConfig:
    """One evaluation: either ``prediction`` + ``reference`` (scene) or ``weights`` + ``data_dir`` (dataset)."""

    prediction: str | None = None
    reference: str | None = None
    weights: str | None = None
    data_dir: str | None = None
    split: str = "val"
    palette: str | None = None
    json_out: str | None = None
    overwrite: bool = False
    batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"
    norm_mode: str | None = None
    window_size: int = 512
    progress: bool = True


def run_evaluation(config: EvaluateConfig) -> EvaluationReport:
    """Run the evaluation ``config`` describes and, if asked, write its JSON report (atomically)."""
    if config.json_out is not None:
        check_output_path(config.json_out, config.overwrite, "JSON report")  # fail before the work, not after
    palette = load_palette(config.palette) if config.palette else None
    if config.weights is not None:
        if config.data_dir is None:
            raise UserError("--weights needs a tile dataset folder (DATA_DIR)")
        report = evaluate_dataset(
            config.weights, config.data_dir, split=config.split, palette=palette, batch_size=config.batch_size,
            device=config.device, precision=config.precision, norm_mode=config.norm_mode, progress=config.progress,
        )
    else:
        if config.prediction is None or config.reference is None:
            raise UserError("give PRED.tif and REF.tif, or --weights G.pt DATA_DIR")
        report = evaluate_scene(
            config.prediction, config.reference, palette=palette, window_size=config.window_size,
            progress=config.progress,
        )
    if config.json_out is not None:
        write_report_json(report, config.json_out, config.overwrite)
    return report


def write_report_json(report: EvaluationReport, path: str | os.PathLike[str], overwrite: bool = False) -> None:
    with atomic_output(path, overwrite=overwrite, what="JSON report") as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------- scenes


def evaluate_scene(
    prediction: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    *,
    palette: Palette | None = None,
    window_size: int = 512,
    progress: bool = False,
) -> EvaluationReport:
    """Compare a predicted map raster with a reference map raster over the pixels valid in both."""
    images = MetricAccumulator()
    classes = palette.accumulator() if palette else None
    with open_raster(prediction) as pred_ds, open_raster(reference) as ref_ds:
        _check_georeferencing(pred_ds, ref_ds)
        pred_reader = RGBWindowReader(pred_ds)
        same_grid = grids_match(pred_ds, ref_ds)
        area = overlap_window(pred_ds, ref_ds)
        if area is None:
            raise UserError(
                f"{prediction} and {reference} do not overlap (prediction: {footprint_text(pred_ds)}; "
                f"reference: {footprint_text(ref_ds)})"
            )
        view = contextlib.nullcontext(ref_ds) if same_grid else warped_onto(
            ref_ds, pred_ds.crs, pred_ds.transform, pred_ds.width, pred_ds.height
        )
        with view as ref_view:
            ref_reader = RGBWindowReader(ref_view, source=ref_ds)
            chunks = list(iter_chunks(area, window_size))
            for chunk in progress_bar(chunks, desc="evaluate", unit="window", disable=not progress, leave=False):
                halo, interior = with_halo(chunk, SSIM_HALO, pred_ds.width, pred_ds.height)
                pred, pred_valid = pred_reader.read(halo)
                ref, ref_valid = ref_reader.read(halo)
                valid = pred_valid & ref_valid & interior
                images.update(pred, ref, valid)
                if classes is not None and valid.any():
                    classes.update(pred, ref, valid)
    if images.pixels == 0:
        raise UserError(
            f"{prediction} and {reference} overlap, but no pixel is valid in both (check their masks / nodata)"
        )
    notes = [
        "same grid: compared pixel for pixel"
        if same_grid
        else "reference warped onto the prediction's grid (nearest neighbour)",
        f"{images.pixels:,} pixels valid in both; all metrics pooled over them",
    ]
    return EvaluationReport(
        mode="scene",
        inputs={
            "prediction": str(prediction),
            "reference": str(reference),
            "reference_warped": not same_grid,
            "palette": palette.source if palette else None,
        },
        metrics=images.result(per_image=False),
        classes=classes.result() if classes is not None else None,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------------- datasets


def _check_georeferencing(pred_ds, ref_ds) -> None:
    """Both georeferenced, or both not and the same size (then compared pixel for pixel)."""
    georeferenced = [raster_info(ds).georeferenced for ds in (pred_ds, ref_ds)]
    if all(georeferenced):
        return
    if not any(georeferenced) and pred_ds.shape == ref_ds.shape:
        return
    missing = pred_ds if not georeferenced[0] else ref_ds
    raise UserError(
        f"{missing.name}: has no CRS or geotransform; evaluate needs both rasters georeferenced (or both "
        "without georeferencing and of the same size, to compare them pixel for pixel)"
    )


def list_tiles(data_dir: str | os.PathLike[str], split: str) -> list[Path]:
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"{root}: tile dataset folder not found")
    folder = root / split
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise UserError(
            f"{root}: has no '{split}' split (folders: {', '.join(found) or 'none'}); choose one with --split"
        )
    tiles = sorted(p for p in folder.iterdir() if p.suffix.lower() in TILE_SUFFIXES and not p.name.startswith("."))
    if not tiles:
        hint = " (make-tiles writes test tiles with --test-fraction above 0)" if split == "test" else ""
        raise UserError(
            f"{folder}: the '{split}' split is empty, no .png/.jpg A|B tiles in it{hint}; choose another split with "
            "--split"
        )
    return tiles


def evaluate_dataset(
    weights: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    split: str = "val",
    palette: Palette | None = None,
    batch_size: int = 8,
    device: str = "auto",
    precision: str = "auto",
    norm_mode: str | None = None,
    progress: bool = False,
) -> EvaluationReport:
    """Run a generator on the A halves of a split's tiles and score its outputs against the B halves."""
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    tiles = list_tiles(data_dir, split)
    loaded = load_generator(weights)
    torch_device = resolve_device(device)
    resolve_precision(precision, torch_device)  # a bad --precision fails before any tile is read
    net = loaded.for_inference(norm_mode).to(torch_device)
    scaling = InputScaling.uint8(3)  # tiles are stored as 8-bit, already scaled by make-tiles
    images = MetricAccumulator()
    classes = palette.accumulator() if palette else None
    chosen: list[Precision] = []  # decided on the first batch, whose tile size auto's measurement needs

    def flush(batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        inputs = torch.from_numpy(np.stack([scaling.to_unit(a) for a, _, _ in batch])).to(torch_device)
        if not chosen:
            chosen.append(inference_precision(precision, torch_device, lambda: net, inputs.shape[-1], loaded.meta.arch,
                                              loaded.meta.width, norm_mode or loaded.meta.norm_mode))
            log.info("precision: %s (%s)", chosen[0].name, chosen[0].reason)
        dtype = chosen[0].dtype
        with torch.inference_mode(), torch.autocast(torch_device.type, dtype=dtype, enabled=dtype != torch.float32):
            outputs = to_uint8(net(inputs))
        for pred, (_, target, valid) in zip(outputs, batch):
            images.update(pred, target, valid)
            if classes is not None and valid.any():
                classes.update(pred, target, valid)

    batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for path in progress_bar(tiles, desc=f"evaluate {split}", unit="tile", disable=not progress, leave=False):
        a, b = split_pair(read_rgb(path), path)
        side = a.shape[1]
        if side % UNET_MULTIPLE:
            raise UserError(
                f"{path}: tiles are {side} px; the {loaded.meta.arch} generator needs multiples of {UNET_MULTIPLE} "
                "(re-make the tiles with make-tiles --tile-size 256, or import a pix2pix folder with "
                "make-tiles --from-pix2pix DIR)"
            )
        if batch and batch[0][0].shape != a.shape:
            flush(batch)
            batch = []
        batch.append((a, b, read_tile_valid(path, side)))
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    if images.pixels == 0:
        raise UserError(f"{Path(data_dir) / split}: no tile has a valid pixel (see their masks/ files)")
    masked = sum(tile_mask_path(p).is_file() for p in tiles)

    return EvaluationReport(
        mode="dataset",
        inputs={
            "prediction": f"{loaded.path} ({loaded.meta.arch}, width {loaded.meta.width}, "
            f"norm {norm_mode or loaded.meta.norm_mode})",
            "reference": f"{Path(data_dir) / split} ({len(tiles)} tiles)",
            "weights": str(loaded.path),
            "weights_sha256": loaded.sha256,
            "data_dir": str(data_dir),
            "split": split,
            "tiles": len(tiles),
            "norm_mode": norm_mode or loaded.meta.norm_mode,
            "precision": chosen[0].name,
            "palette": palette.source if palette else None,
        },
        metrics=images.result(per_image=True),
        classes=classes.result() if classes is not None else None,
        notes=[
            f"{len(tiles)} tiles of {split}; L1, RMSE, acc pooled over all valid pixels; PSNR, SSIM = mean of "
            "per-tile values",
            f"{images.pixels:,} valid pixels scored; {masked} tile(s) with nodata scored on their masks/ only",
        ],
    )
