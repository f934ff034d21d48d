"""Crisp maps (issue 19): the acceptance measurements on the synthetic demo world, and the cost of snapping.

    python benchmarks/palette_bench.py                       # ~5 min on 2 CPU cores
    python benchmarks/palette_bench.py --pictures examples   # also the README's raw | snapped | paletted panels
    python benchmarks/palette_bench.py --cost-only           # only the cost of snapping (~2 min)
    python benchmarks/palette_bench.py --sizes-of demo/run/generator.pt demo/heldout_scene/satellite.tif
                                                             # only step 3's file sizes, for a given model and scene

1. A training scene and a held-out scene of the synthetic world (geo_sat2map.synthetic, as `make demo` makes them,
   smaller); ``make-tiles`` (learns the exact palette into dataset.json); ``train`` a small generator (quick-cpu
   recipe, few epochs).
2. ``translate`` the held-out scene raw (``--palette none``), snapped (``--palette auto``, default ``--min-region``),
   and as ``--format paletted`` / ``classes``; ``evaluate --palette synthetic`` each against the reference map.
3. The table: map-class accuracy (raw vs snapped), speckle (share of valid pixels whose class differs from the
   majority of their 3x3 neighbourhood, classes by nearest palette colour), file sizes (paletted vs the default
   RGBA COG, i.e. ``--format rgba --palette auto``: snapped colours), whether the classes file equals the
   snapped map's classes.
4. Cost: an ngf-64 generator (random weights, the compute of a trained one) with an exact palette on a
   ``--cost-size``² scene: the engine's "snap" stage seconds against the whole call, CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import rasterio
import torch
from click.testing import CliRunner

from translate_bench import save_random_generator

from geo_sat2map.checkpoint import load_generator
from geo_sat2map.cli import cli
from geo_sat2map.inference import TranslateConfig, translate
from geo_sat2map.inference.ops import majority_filter
from geo_sat2map.metrics import nearest_colour
from geo_sat2map.palette import load_palette, nodata_index
from geo_sat2map.synthetic import SceneSpec, write_scene

ROOT = Path(__file__).resolve().parents[1]


def geo_sat2map(*args: object) -> str:
    result = CliRunner().invoke(cli, ["-q", *map(str, args)])
    if result.exit_code != 0:
        raise SystemExit(f"geo-sat2map {' '.join(map(str, args))} failed:\n{result.output}")
    return result.output


def speckle(rgb: np.ndarray, valid: np.ndarray, colours: np.ndarray) -> float:
    """Share of valid pixels whose nearest-colour class differs from the majority class of their 3x3 window."""
    classes = torch.from_numpy(nearest_colour(rgb, colours).astype(np.int64))
    majority = majority_filter(classes, torch.from_numpy(valid), len(colours), 1, 1, 1)
    return float((classes != majority)[torch.from_numpy(valid)].float().mean())


def accuracy(prediction: Path, reference: Path, folder: Path) -> float:
    report = folder / f"{prediction.stem}.json"
    geo_sat2map("evaluate", prediction, reference, "--palette", "synthetic", "--json", report)
    return json.loads(report.read_text())["classes"]["overall_accuracy"]


def read_rgb(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(path) as ds:
        return ds.read([1, 2, 3]), ds.dataset_mask() > 0


def acceptance(work: Path, train_size: int, heldout_size: int, epochs: int,
               demo: Path | None = None) -> tuple[dict[str, object], dict]:
    """Train a small generator (or take ``make demo``'s trained one and held-out scene from the folder ``demo``)
    and measure raw against snapped maps of the held-out scene."""
    started = time.perf_counter()
    if demo is not None:
        weights, heldout = demo / "run" / "generator.pt", SimpleNamespace(
            satellite=demo / "heldout_scene" / "satellite.tif", map=demo / "heldout_scene" / "map.tif")
    else:
        train = write_scene(work / "train", SceneSpec(seed=11, width=train_size, height=train_size))
        heldout = write_scene(work / "heldout", SceneSpec(seed=12, width=heldout_size, height=heldout_size,
                                                          origin=(506_000.0, 5_296_000.0), clip_corner=True))
        geo_sat2map("make-tiles", "-i", train.satellite, "-m", train.map, "-o", work / "tiles", "--stride", 128,
                    "--palette", "synthetic")
        geo_sat2map("train", work / "tiles", "-o", work / "run", "--config", ROOT / "configs" / "quick-cpu.toml",
                    "--epochs", epochs, "--epochs-decay", max(1, epochs // 2), "--device", "cpu")
        weights = work / "run" / "generator.pt"
    train_seconds = time.perf_counter() - started
    learned = load_generator(weights).meta.palette
    maps = {name: work / f"{name}.tif" for name in ("raw", "snapped", "paletted", "classes")}
    common = ["-w", weights, "--device", "cpu"]
    geo_sat2map("translate", heldout.satellite, "-o", maps["raw"], *common, "--palette", "none")
    geo_sat2map("translate", heldout.satellite, "-o", maps["snapped"], *common)
    geo_sat2map("translate", heldout.satellite, "-o", maps["paletted"], *common, "--format", "paletted")
    geo_sat2map("translate", heldout.satellite, "-o", maps["classes"], *common, "--format", "classes")
    colours = np.array(load_palette("synthetic").colours, np.uint8)
    raw_rgb, valid = read_rgb(maps["raw"])
    snapped_rgb, _ = read_rgb(maps["snapped"])
    with rasterio.open(maps["classes"]) as ds:
        class_values = ds.read(1)
    palette_colours = np.array(learned.colours, np.uint8)
    snapped_classes = np.where(valid, nearest_colour(snapped_rgb, palette_colours), nodata_index(len(learned.colours)))
    results = {
        "model": str(weights),
        "learned palette": f"{len(learned.names)} classes, {learned.kind}",
        "train (make-tiles + train) s": round(train_seconds, 1) if demo is None else "(make demo's)",
        "accuracy raw": accuracy(maps["raw"], heldout.map, work),
        "accuracy snapped": accuracy(maps["snapped"], heldout.map, work),
        "speckle raw": speckle(raw_rgb, valid, colours),
        "speckle snapped": speckle(snapped_rgb, valid, colours),
        "size rgba (bytes)": maps["snapped"].stat().st_size,
        "size paletted (bytes)": maps["paletted"].stat().st_size,
        "size raw rgba (bytes)": maps["raw"].stat().st_size,
        "classes == snapped": bool((class_values == snapped_classes).all()),
    }
    return results, {"heldout": heldout, "maps": maps}


def sizes(work: Path, weights: Path, scene: Path) -> dict[str, object]:
    """File sizes of ``scene`` translated by ``weights`` as the default RGBA COG and as ``--format paletted``
    (both with the defaults: --palette auto, --min-region 8, DEFLATE)."""
    maps = {name: work / f"sizes_{name}.tif" for name in ("rgba", "paletted")}
    common = ["-w", weights, "--device", "cpu", "--precision", "fp32"]
    geo_sat2map("translate", scene, "-o", maps["rgba"], *common)
    geo_sat2map("translate", scene, "-o", maps["paletted"], *common, "--format", "paletted")
    rgba, paletted = maps["rgba"].stat().st_size, maps["paletted"].stat().st_size
    with rasterio.open(maps["paletted"]) as ds:
        bits = ds.tags(1, "IMAGE_STRUCTURE").get("NBITS", "8")
    return {"scene": f"{scene} ({ds.width}x{ds.height})", "model": str(weights), "size rgba (bytes)": rgba,
            f"size paletted (bytes, {bits}-bit)": paletted, "paletted / RGBA size": round(paletted / rgba, 4)}


def cost(work: Path, size: int) -> dict[str, object]:
    """Snap + min-region seconds (the engine's "snap" stage) against the whole call, ngf 64 on the CPU."""
    from affine import Affine

    scene = work / "cost_scene.tif"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    data = np.stack([np.sin(xx / 9.0) + np.cos(yy / 7.0), np.cos((xx - yy) / 11.0), np.sin(xx * yy / 900.0)])
    data = np.clip((data + 2) / 4 * 255 + rng.normal(0, 6, data.shape), 0, 255).astype(np.uint8)
    with rasterio.open(scene, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(1, 0, 500_000, 0, -1, 4_000_000)) as dst:
        dst.write(data)
    weights = save_random_generator(work / "ngf64.pt", 64, palette=replace(load_palette("synthetic"), kind="exact"))
    rows = {label: translate(TranslateConfig(input=scene, output=work / f"cost_{label}.tif", weights=weights,
                                             device="cpu", progress=False, palette=label))
            for label in ("none", "auto")}
    raw, snapped = rows["none"], rows["auto"]
    return {
        "cost scene": f"{size}x{size}, ngf 64, CPU",
        "whole call raw s": round(raw.seconds, 2),
        "whole call snapped s": round(snapped.seconds, 2),
        "snap stage s": round(snapped.stages.get("snap", 0.0), 2),
        "snap share of the call": round(snapped.stages.get("snap", 0.0) / snapped.seconds, 4),
    }


def pictures(out: Path, maps: dict[str, Path], heldout) -> None:
    """raw | snapped panels (a crop at full resolution) and the paletted map as QGIS renders it."""
    from PIL import Image

    crop = (slice(250, 506), slice(250, 506))
    panels = []
    for name in ("raw", "snapped"):
        rgb, valid = read_rgb(maps[name])
        panels.append(np.where(valid[None], rgb, 255)[:, crop[0], crop[1]].transpose(1, 2, 0))
    with rasterio.open(heldout.satellite) as ds:
        satellite = ds.read([1, 2, 3])[:, crop[0], crop[1]].transpose(1, 2, 0)
    gap = np.full((256, 6, 3), 255, np.uint8)
    strip = np.concatenate([satellite, gap, panels[0], gap, panels[1]], axis=1)
    Image.fromarray(strip).resize((strip.shape[1] * 2, 512), Image.Resampling.NEAREST).save(out / "palette_raw_snapped.png")
    script = ROOT / "examples" / "qgis_paletted.py"
    with tempfile.TemporaryDirectory(prefix="qgis-home-") as home:  # QGIS writes its profile under HOME
        subprocess.run(["/usr/bin/python3", str(script), str(maps["paletted"]), str(out / "palette_qgis.png"),
                        "250", "250", "256"], check=True,
                       env={"QT_QPA_PLATFORM": "offscreen", "HOME": home, "PATH": "/usr/bin:/bin"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--heldout-size", type=int, default=768)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--cost-size", type=int, default=1024)
    parser.add_argument("--pictures", type=Path, default=None, help="write the README pictures into this folder")
    parser.add_argument("--cost-only", action="store_true", help="only the cost of snapping (step 4)")
    parser.add_argument("--demo", type=Path, default=None,
                        help="a `make demo` output folder: measure its trained generator on its held-out scene "
                             "instead of training a small one")
    parser.add_argument("--sizes-of", nargs=2, type=Path, metavar=("WEIGHTS", "SCENE"),
                        help="only the file sizes (step 3) of SCENE translated by WEIGHTS")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(tempfile.mkdtemp(prefix="palette-bench-"))
    try:
        if args.sizes_of:
            for key, value in sizes(work, *args.sizes_of).items():
                print(f"| {key} | {value} |")
            return
        if args.cost_only:
            for key, value in cost(work, args.cost_size).items():
                print(f"| {key} | {value} |")
            return
        results, made = acceptance(work, args.train_size, args.heldout_size, args.epochs, args.demo)
        results.update(cost(work, args.cost_size))
        print_table(results)
        if args.pictures is not None:
            pictures(args.pictures, made["maps"], made["heldout"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_table(results: dict[str, object]) -> None:
    ratio = results["speckle raw"] / max(results["speckle snapped"], 1e-9)
    size_ratio = results["size paletted (bytes)"] / results["size rgba (bytes)"]
    print("| measurement | value |\n|---|---|")
    for key, value in results.items():
        print(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    print(f"| speckle falls | {ratio:.1f}x (needs >= 5x) |")
    print(f"| paletted / RGBA size | {size_ratio:.3f} (needs <= 1/3) |")
    print(f"| accuracy snapped >= raw | {results['accuracy snapped'] >= results['accuracy raw']} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
