"""translate at the model's ground resolution (issue 16): accuracy on the synthetic city, and the CPU checks.

    python benchmarks/resolution_bench.py                      # the accuracy table (trains a generator first)
    python benchmarks/resolution_bench.py --no-accuracy --speed --rss --before REV

Accuracy (``--accuracy``, on by default): a generator is trained at 1 m on the synthetic city with the demo's
recipe (examples/demo.py: its two 2048² training scenes, configs/demo.toml) made cheaper by default (ngf 16,
3 + 2 epochs: about 11 min in all on 2 busy CPU cores), then unseen scenes of the same world rendered at 3 m and
at 2 m are translated several ways and scored with ``evaluate_scene`` against their reference maps (``--palette
synthetic`` map-class accuracy):
- as before issue 16, on the scene's own pixels (``--resolution native``);
- by default (``--resolution auto``: a processing grid at the model's 1 m; the map on that grid);
- ``--resolution auto --output-grid input`` (the map brought back onto the scene's grid);
- resampled to 1 m by hand (GDAL warp, bilinear), translated, brought back (nearest): what users did before;
- a 1 m scene of the same world, as today (the reference point).

CPU checks (random-weights generators of ``--speed-ngf`` / ``--rss-ngf``; the ratios matter, not the seconds):
- ``--speed``: the whole-call breakdown (``TranslateReport.stages``) of a 3x enlarging call, with the share of
  the resampling stage; with ``--before REV`` also ``--resolution native`` against the same call on the code of
  git revision REV (alternating fresh processes; outputs compared pixel for pixel);
- ``--rss``: peak RSS of one fresh process translating a ``--rss-size``² scene at 0.5x and at 2x its pixel size
  (``--rss-height`` shortens the scene: the peak depends on the grid's width).

Measured (issue 16), commands as run:
    OMP_NUM_THREADS=1 python benchmarks/resolution_bench.py
    python benchmarks/resolution_bench.py --no-accuracy --speed --speed-size 1024 --speed-ngf 16 --before edabe89
    python benchmarks/resolution_bench.py --no-accuracy --speed --speed-size 512 --speed-ngf 64
    python benchmarks/resolution_bench.py --no-accuracy --rss --rss-ngf 64 --rss-height 512 --rss-model-ngf 0
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from translate_bench import cli_call, make_scene, run_translate, save_random_generator

from geo_sat2map.evaluate import evaluate_scene, load_palette
from geo_sat2map.inference import TranslateReport
from geo_sat2map.raster_io import open_raster, warped_onto, write_geotiff
from geo_sat2map.synthetic import SceneSpec, write_scene

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from demo import HELDOUT_SCENE, TRAIN_SCENES, entry_point, pair_options  # noqa: E402

MODEL_M = 1.0
GROUND_M = 1536  # side of each unseen scene on the ground


def unseen_scene(resolution: float) -> SceneSpec:
    """The demo's held-out town (seed 12, a masked corner), GROUND_M metres wide at ``resolution``."""
    side = round(GROUND_M / resolution)
    return SceneSpec(seed=HELDOUT_SCENE.seed, width=side, height=side, resolution=resolution,
                     origin=HELDOUT_SCENE.origin, clip_corner=True)


def train_generator(work: Path, args: argparse.Namespace) -> Path:
    """make-tiles + train with the demo's scenes and recipe, through the CLI; returns generator.pt."""
    pairs = [write_scene(work / f"train_{i}", spec) for i, spec in enumerate(TRAIN_SCENES)]
    overrides = [option for flag, value in (("--ngf", args.ngf), ("--epochs", args.epochs),
                                            ("--epochs-decay", args.epochs_decay)) if value is not None
                 for option in (flag, str(value))]
    commands = [
        ["make-tiles", *pair_options(pairs), "-o", work / "tiles", "--stride", "128"],
        ["train", work / "tiles", "-o", work / "run", "--config", ROOT / "configs" / "demo.toml", *overrides,
         "--device", "cpu", "--precision", "fp32"],
    ]
    # One OpenMP thread by default: on a shared machine, threads waiting for a descheduled sibling make small
    # CPU models several times slower (as tests/train_fixtures.py notes).
    env = {**os.environ, "OMP_NUM_THREADS": str(args.train_threads)}
    for command in commands:
        started = time.perf_counter()
        subprocess.run([*entry_point(), "-q", *map(str, command)], check=True, env=env)
        print(f"geo-sat2map {' '.join(map(str, command))}: {time.perf_counter() - started:.0f} s", flush=True)
    return work / "run" / "generator.pt"


def resample_by_hand(scene: Path, out: Path, resolution: float) -> Path:
    """The scene warped by GDAL (bilinear) onto a ``resolution`` grid over the same ground, mask carried."""
    with open_raster(scene) as ds:
        scale = resolution / ds.res[0]
        width, height = round(ds.width / scale), round(ds.height / scale)
        transform = ds.transform * Affine.scale(scale)
        with warped_onto(ds, ds.crs, transform, width, height, rasterio.enums.Resampling.bilinear) as vrt:
            data, mask = vrt.read([1, 2, 3]), vrt.dataset_mask() > 0
    write_geotiff(out, np.where(mask, data, 0), ds.crs, transform, mask=mask, photometric="RGB")
    return out


def back_onto_scene(prediction: Path, scene: Path, out: Path) -> Path:
    """A map brought back onto the scene's grid: nearest colour, the scene's own mask."""
    with open_raster(scene) as src, open_raster(prediction) as pred:
        with warped_onto(pred, src.crs, src.transform, src.width, src.height) as vrt:
            data, mask = vrt.read([1, 2, 3]), (vrt.dataset_mask() > 0) & (src.dataset_mask() > 0)
        write_geotiff(out, np.where(mask, data, 0), src.crs, src.transform, mask=mask, photometric="RGB")
    return out


def accuracy_table(work: Path, args: argparse.Namespace) -> None:
    started = time.perf_counter()
    weights = train_generator(work, args)
    palette = load_palette("synthetic")

    def score(prediction: Path, reference: Path) -> str:
        return f"{100 * evaluate_scene(prediction, reference, palette=palette).classes['overall_accuracy']:.1f} %"

    def translated(scene: Path, name: str, **options: object) -> Path:
        out = work / f"{name}.tif"
        run_translate(scene, weights, out, "cpu", precision="fp32", **options)
        return out

    columns: dict[str, dict[str, str]] = {}
    for resolution in args.scene_resolutions:
        paths = write_scene(work / f"scene_{resolution:g}m", unseen_scene(resolution))
        tag = f"{resolution:g}m"
        hand = translated(resample_by_hand(paths.satellite, work / f"{tag}_hand_1m.tif", MODEL_M), f"{tag}_hand",
                          resolution="native")
        columns[tag] = {
            "native": score(translated(paths.satellite, f"{tag}_native", resolution="native"), paths.map),
            "auto": score(translated(paths.satellite, f"{tag}_auto"), paths.map),
            "input": score(translated(paths.satellite, f"{tag}_input", output_grid="input"), paths.map),
            "hand": score(back_onto_scene(hand, paths.satellite, work / f"{tag}_hand_back.tif"), paths.map),
        }
        print(f"{tag} scene scored: {columns[tag]}", flush=True)
    one_metre = write_scene(work / "scene_1m", unseen_scene(MODEL_M))
    today_1m = score(translated(one_metre.satellite, "1m_native", resolution="native"), one_metre.map)

    rows = [
        ("as before issue 16, on its own pixels (`--resolution native`)", "native"),
        ("default: `--resolution auto` (1 m processing grid, map on it)", "auto"),
        ("`--resolution auto --output-grid input` (map on the scene's grid)", "input"),
        ("resampled to 1 m by hand (GDAL bilinear), translated, back (nearest)", "hand"),
    ]
    tags = list(columns)
    print(f"\nMap-class accuracy of unseen {GROUND_M} m scenes, generator trained at 1 m "
          f"({time.perf_counter() - started:.0f} s in all)")
    print("| how the scene is translated | " + " | ".join(f"{t} scene" for t in tags) + " |")
    print("|---|" + "---:|" * len(tags))
    for label, key in rows:
        print(f"| {label} | " + " | ".join(columns[t][key] for t in tags) + " |")
    print("| (a 1 m scene of the same world, as today) | " + " | ".join([today_1m] * len(tags)) + " |", flush=True)


def stage_breakdown(work: Path, args: argparse.Namespace, weights: Path) -> None:
    """A 3x enlarging call (1 m scene at 1/3 m): where its time goes."""
    side = args.speed_size
    scene = make_scene(work / "enlarge.tif", side, side)
    report: TranslateReport = run_translate(scene, weights, work / "enlarged.tif", "cpu", precision="fp32",
                                            resolution=1 / 3)
    print(f"\n3x enlarging call: {side}² scene at 1 m -> {report.width}² grid at 1/3 m, unet256 ngf "
          f"{args.speed_ngf}, {report.windows} windows (stages summed over their threads; read and encode overlap "
          "the generator)")
    stages = {name: seconds for name, seconds in report.stages.items() if seconds >= 0.005}
    print("| whole call s | " + " | ".join(stages) + " | resample share of the call |")
    print("|---:|" + "---:|" * (len(stages) + 1))
    print(f"| {report.seconds:.1f} | " + " | ".join(f"{s:.2f}" for s in stages.values())
          + f" | {100 * report.stages['resample'] / report.seconds:.1f} % |", flush=True)


def native_speed(work: Path, args: argparse.Namespace, weights: Path) -> None:
    """``--resolution native`` against the same call on the code of ``args.before``, in alternating processes."""
    before = work / "before"
    before.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "geo_sat2map"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    side = args.speed_size
    scene = make_scene(work / "native.tif", side, side)
    old_env = {**os.environ, "PYTHONPATH": str(before)}
    calls = {
        "before": ([], {"env": old_env, "cwd": before}),
        "now": (["--resolution", "native"], {"cwd": ROOT}),
    }
    walls: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, (extra, popen) in calls.items():
            command = ["translate", str(scene), "-o", str(work / f"native-{name}.tif"), "-w", str(weights),
                       "--device", "cpu", "--precision", "fp32", "--overwrite", *extra]
            walls[name].append(cli_call(command, **popen)[0])
    outputs = [read_map(work / f"native-{name}.tif") for name in calls]
    same = all(np.array_equal(a, b) for a, b in zip(*outputs))
    best = {name: min(seconds) for name, seconds in walls.items()}
    print(f"\n--resolution native vs revision {args.before}: {side}² scene, unet256 ngf {args.speed_ngf}, "
          f"CLI wall s (fresh processes, alternating, best of {args.repeats})")
    print("| code | wall s (each run) | best | ratio to before |")
    print("|---|---|---:|---:|")
    for name in calls:
        print(f"| {name} | {', '.join(f'{s:.1f}' for s in walls[name])} | {best[name]:.1f} | "
              f"{best[name] / best['before']:.3f} |")
    print(f"outputs (bands and mask) identical: {'yes' if same else 'NO'}", flush=True)


def read_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open_raster(path) as ds:
        return ds.read(), ds.dataset_mask()


def peak_rss(work: Path, args: argparse.Namespace, weights: Path) -> None:
    """Peak RSS of fresh processes. Memory is bounded by the grid's width, not its height, so ``--rss-height``
    may cut the scene's height to save time (the width, and so the peak, stays)."""
    width, height = args.rss_size, args.rss_height or args.rss_size
    scene = make_scene(work / "rss.tif", width, height)
    print(f"\nPeak RSS of one CLI process, {width} x {height} uint8 scene at 1 m, unet256 ngf {args.rss_ngf}, "
          "default options")
    print("| --resolution | processing grid | wall s | peak RSS (MB) |")
    print("|---|---|---:|---:|")
    for metres in (0.5, 2.0):
        wall, rss = cli_call(["translate", str(scene), "-o", str(work / "rss-map.tif"), "-w", str(weights),
                              "--device", "cpu", "--precision", "fp32", "--overwrite", "--resolution", str(metres)])
        print(f"| {metres:g} | {round(width / metres)} x {round(height / metres)} | {wall:.0f} | {rss:.0f} |",
              flush=True)
        (work / "rss-map.tif").unlink()
    if args.rss_model_ngf:  # what a wider generator adds: the same small native call with both widths
        small = make_scene(work / "rss-small.tif", 1024, 1024)
        for ngf, path in ((args.rss_ngf, weights),
                          (args.rss_model_ngf, save_random_generator(work / "rss_model.pt", args.rss_model_ngf))):
            wall, rss = cli_call(["translate", str(small), "-o", str(work / "rss-map.tif"), "-w", str(path),
                                  "--device", "cpu", "--precision", "fp32", "--overwrite", "--resolution", "native"])
            print(f"| native, 1024² scene, ngf {ngf} | 1024 x 1024 | {wall:.0f} | {rss:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accuracy", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ngf", type=int, default=16, help="accuracy: generator width (demo.toml: 32)")
    parser.add_argument("--epochs", type=int, default=3, help="accuracy: constant-LR epochs (demo.toml: 3)")
    parser.add_argument("--epochs-decay", type=int, default=2, help="accuracy: decay epochs (demo.toml: 3)")
    parser.add_argument("--train-threads", type=int, default=1, help="accuracy: OMP_NUM_THREADS of training")
    parser.add_argument("--scene-resolutions", type=lambda s: [float(v) for v in s.split(",")], default=[3.0, 2.0],
                        help="accuracy: pixel sizes of the unseen scenes, metres")
    parser.add_argument("--speed", action="store_true", help="the stage breakdown (and --before comparison)")
    parser.add_argument("--before", default=None, metavar="REV", help="--speed: git revision to compare native with")
    parser.add_argument("--speed-size", type=int, default=1024, help="--speed: scene side, pixels")
    parser.add_argument("--speed-ngf", type=int, default=16, help="--speed: generator width")
    parser.add_argument("--repeats", type=int, default=2, help="--before: calls per side")
    parser.add_argument("--rss", action="store_true", help="peak RSS at 0.5x and 2x the pixel size")
    parser.add_argument("--rss-size", type=int, default=8192, help="--rss: scene side, pixels")
    parser.add_argument("--rss-height", type=int, default=None, help="--rss: scene height (default: square)")
    parser.add_argument("--rss-ngf", type=int, default=4, help="--rss: generator width")
    parser.add_argument("--rss-model-ngf", type=int, default=64,
                        help="--rss: also a small native call at this width and at --rss-ngf (0: skip)")
    parser.add_argument("--tmp", default=None, help="work folder parent (default: the system's temporary folder)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory(prefix="resolution-bench-", dir=args.tmp) as tmp_dir:
        work = Path(tmp_dir)
        if args.accuracy:
            accuracy_table(work, args)
        if args.speed:
            weights = save_random_generator(work / f"speed_ngf{args.speed_ngf}.pt", args.speed_ngf)
            stage_breakdown(work, args, weights)
            if args.before:
                native_speed(work, args, weights)
        if args.rss:
            peak_rss(work, args, save_random_generator(work / f"rss_ngf{args.rss_ngf}.pt", args.rss_ngf))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
