#!/usr/bin/env python3
"""The whole mission on a synthetic world, with the real commands: `make demo` runs this.

1. generate two training scenes and a separate held-out scene (each a satellite raster in UTM at 1 m and a map
   in EPSG:3857 at another resolution: geo_sat2map.synthetic);
2. ``geo-sat2map make-tiles`` on the training pairs;
3. ``geo-sat2map train --config configs/demo.toml``;
4. ``geo-sat2map translate`` the held-out satellite scene into ``OUT/map.tif``;
5. ``geo-sat2map evaluate`` it against the held-out reference map (``--palette synthetic``);
6. write ``OUT/preview.png`` (input | prediction | reference, numbers underneath) and print a summary.

Everything goes under ``--out`` (default ``demo/``), which is emptied first (only if it is a previous demo
folder). The commands run as subprocesses of the installed ``geo-sat2map`` entry point: what a user would type.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from geo_sat2map.raster_io import open_raster, warped_onto
from geo_sat2map.synthetic import ScenePaths, SceneSpec, write_scene

ROOT = Path(__file__).resolve().parents[1]
MARKER = ".geo-sat2map-demo"
# Two training scenes (different towns 4 km apart) for variety; each 2048 x 2048 px at 1 m.
TRAIN_SCENES = (
    SceneSpec(seed=11, width=2048, height=2048, origin=(500_000.0, 5_300_000.0)),
    SceneSpec(seed=13, width=2048, height=2048, origin=(497_000.0, 5_303_000.0)),
)
# Held out: another seed (other streets, buildings, land use) 6 km away, with a masked corner like a scene edge.
HELDOUT_SCENE = SceneSpec(seed=12, width=1024, height=1024, origin=(506_000.0, 5_296_000.0), clip_corner=True)
PANEL = 512  # preview panel side, pixels


@dataclass
class Step:
    name: str
    seconds: float


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo", help="output folder (emptied first if it is a previous demo)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.toml"), help="training config")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's constant-LR epochs")
    parser.add_argument("--epochs-decay", type=int, default=None, help="override the config's decay epochs")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny scenes and one epoch: checks the pipeline in ~1 min, not accuracy"
    )
    args = parser.parse_args(argv)

    out = Path(args.out)
    start_clean(out)
    train_specs, heldout_spec = TRAIN_SCENES, HELDOUT_SCENE
    train_args = ["--config", args.config]
    if args.smoke:
        train_specs = (replace(TRAIN_SCENES[0], width=768, height=768),)
        heldout_spec = replace(HELDOUT_SCENE, width=512, height=512)
        train_args += ["--epochs", "1", "--epochs-decay", "0"]
    if args.epochs is not None:
        train_args += ["--epochs", str(args.epochs)]
    if args.epochs_decay is not None:
        train_args += ["--epochs-decay", str(args.epochs_decay)]

    steps: list[Step] = []
    began = time.perf_counter()

    print(f"1/6 generating the synthetic world under {out}/ ...", flush=True)
    t = time.perf_counter()
    train = [write_scene(out / f"train_scene_{i + 1}", spec) for i, spec in enumerate(train_specs)]
    heldout = write_scene(out / "heldout_scene", heldout_spec)
    steps.append(Step("generate scenes", time.perf_counter() - t))
    for pair in train:
        print(f"    training pair: {pair.satellite} + {pair.map}")
    print(f"    held-out pair: {heldout.satellite} + {heldout.map}")

    tiles, run_dir, prediction, report_path = out / "tiles", out / "run", out / "map.tif", out / "evaluation.json"
    commands = [
        ("make-tiles", ["make-tiles", *pair_options(train), "-o", tiles, "--stride", "128"]),
        ("train", ["train", tiles, "-o", run_dir, *train_args, "--device", "cpu"]),
        ("translate", ["translate", heldout.satellite, "-o", prediction, "-w", run_dir / "generator.pt"]),
        ("evaluate", ["evaluate", prediction, heldout.map, "--palette", "synthetic", "--json", report_path]),
    ]
    for number, (name, command) in enumerate(commands, start=2):
        print(f"\n{number}/6 $ geo-sat2map {' '.join(map(str, command))}", flush=True)
        t = time.perf_counter()
        code = subprocess.run([*entry_point(), *map(str, command)]).returncode
        if code != 0:
            print(f"\ndemo: 'geo-sat2map {name}' failed (exit {code}); see its message above", file=sys.stderr)
            return code
        steps.append(Step(name, time.perf_counter() - t))

    print("\n6/6 writing the preview ...", flush=True)
    t = time.perf_counter()
    report = json.loads(report_path.read_text())
    grid_note = check_prediction_grid(prediction, heldout.satellite)
    write_preview(out / "preview.png", heldout.satellite, prediction, heldout.map, report)
    steps.append(Step("preview", time.perf_counter() - t))

    print_summary(out, steps, time.perf_counter() - began, report, grid_note)
    return 0


def pair_options(pairs: list[ScenePaths]) -> list[str | Path]:
    """--image SAT --map MAP for each training pair, in order (make-tiles pairs them by position)."""
    return [option for pair in pairs for option in ("--image", pair.satellite, "--map", pair.map)]


def entry_point() -> list[str]:
    """The installed ``geo-sat2map`` script beside this Python, else ``python -m geo_sat2map``."""
    script = Path(sys.executable).with_name("geo-sat2map")
    return [str(script)] if script.exists() else [sys.executable, "-m", "geo_sat2map"]


def start_clean(out: Path) -> None:
    """Remove a previous demo folder; refuse to delete anything that is not one."""
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists()):
            sys.exit(f"demo: {out} exists and is not a previous demo folder; remove it or pass --out elsewhere")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("created by examples/demo.py; re-running the demo deletes this folder\n")


def check_prediction_grid(prediction: Path, satellite: Path) -> str:
    """The translated map must sit exactly on the input's grid, as a Cloud-Optimized GeoTIFF."""
    with open_raster(prediction) as pred, open_raster(satellite) as sat:
        same = pred.crs == sat.crs and pred.transform == sat.transform and pred.shape == sat.shape
        layout = pred.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "GTiff")
        return (
            f"{prediction}: {layout}, {pred.crs.to_string()}, {pred.width}x{pred.height}, "
            f"{'same grid as the input' if same else 'NOT ON THE INPUT GRID'}"
        )


def write_preview(path: Path, satellite: Path, prediction: Path, reference: Path, report: dict) -> None:
    """Three panels (held-out input | prediction | reference map on the input grid) and the scores underneath."""
    with open_raster(satellite) as sat:
        sat_rgb, sat_valid = _read_rgb(sat)
        with open_raster(reference) as ref_ds:
            with warped_onto(ref_ds, sat.crs, sat.transform, sat.width, sat.height) as ref:
                ref_rgb, ref_valid = _read_rgb(ref)
    with open_raster(prediction) as pred:
        pred_rgb, pred_valid = _read_rgb(pred)

    panels = [
        _panel(sat_rgb, sat_valid, Image.Resampling.LANCZOS),
        _panel(pred_rgb, pred_valid, Image.Resampling.LANCZOS),
        _panel(ref_rgb, ref_valid & sat_valid, Image.Resampling.NEAREST),
    ]
    gap, margin = 8, 10
    font = _font(17)
    m, c = report["metrics"], report["classes"]
    lines = [
        "held-out synthetic scene (never seen in training):  satellite input  |  prediction  |  reference map",
        f"map-class accuracy {100 * c['overall_accuracy']:.1f} %   mIoU {c['miou']:.3f}   L1 {m['l1']:.1f}   "
        f"PSNR {m['psnr']:.1f} dB   SSIM {m['ssim']:.3f}   acc(<10) {100 * m['acc_10']:.1f} %",
    ]
    width = 3 * PANEL + 2 * gap + 2 * margin
    height = PANEL + 2 * margin + len(lines) * 26 + 6
    canvas = Image.new("RGB", (width, height), "white")
    for i, panel in enumerate(panels):
        canvas.paste(panel, (margin + i * (PANEL + gap), margin))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((margin, PANEL + margin + 8 + 26 * i), line, fill=(20, 20, 20), font=font)
    canvas.save(path, optimize=True)


def _read_rgb(ds) -> tuple[np.ndarray, np.ndarray]:
    """Bands 1-3 and the dataset mask (True = valid) of a whole (demo-sized) raster."""
    return ds.read([1, 2, 3]), ds.dataset_mask() > 0


def _panel(rgb: np.ndarray, valid: np.ndarray, resampling: Image.Resampling) -> Image.Image:
    """The image over a light checkerboard where it is masked (as QGIS shows transparency), scaled to a panel."""
    yy, xx = np.mgrid[: valid.shape[0], : valid.shape[1]]
    checker = np.where(((yy // 16 + xx // 16) % 2)[None] == 0, 235, 205).astype(np.uint8)
    shown = np.where(valid[None], rgb, checker)
    image = Image.fromarray(np.ascontiguousarray(shown.transpose(1, 2, 0)))
    return image.resize((PANEL, PANEL), resampling)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def print_summary(out: Path, steps: list[Step], total: float, report: dict, grid_note: str) -> None:
    m, c = report["metrics"], report["classes"]
    print("\n" + "=" * 72)
    print(f"geo-sat2map demo finished in {total / 60:.1f} min")
    for step in steps:
        print(f"  {step.name:<16}{step.seconds:>8.1f} s")
    print(f"\nheld-out map-class accuracy: {100 * c['overall_accuracy']:.1f} %   (mIoU {c['miou']:.3f})")
    print(
        f"held-out image metrics: L1 {m['l1']:.2f}  RMSE {m['rmse']:.2f}  PSNR {m['psnr']:.2f} dB  "
        f"SSIM {m['ssim']:.3f}  acc(<5/10/20) {100 * m['acc_5']:.1f}/{100 * m['acc_10']:.1f}/{100 * m['acc_20']:.1f} %"
    )
    print(f"\n{grid_note}")
    print(f"outputs: {out / 'map.tif'} (open it in QGIS over {out / 'heldout_scene' / 'satellite.tif'}),")
    print(f"         {out / 'evaluation.json'}, {out / 'preview.png'}, the training run in {out / 'run'}/")


if __name__ == "__main__":
    sys.exit(main())
