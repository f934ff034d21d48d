"""translate benchmark: whole-call and stream throughput against the bare generator, per-stage times, memory.

    python benchmarks/translate_bench.py --device cuda               # the GPU acceptance table (16384² scene)
    python benchmarks/translate_bench.py --device cpu                # the CPU checks (6144² ratio, peak RSS)
    python benchmarks/translate_bench.py --device cpu --size 2048 --cpu-ratio-size 1024 --rss-sizes 512,1024
    python benchmarks/translate_bench.py --device cuda --suite check --json translate.json  # gpu_check.sh's part

GPU (one scene of ``--size``² uint8 RGB, DEFLATE-tiled like most delivered imagery, ngf-64 random-weights
unet256 with the compute of a trained one, default options unless the row says otherwise):
- the bare generator on the device alone (static batch, no copies): the ceiling, in windows/s and in Mpx/s of
  new pixels at the default overlap;
- ``translate`` runs: whole call (``TranslateReport.seconds``: model load + stream + output finished) and stream
  Mpx/s, generator busy, per-stage seconds (read, upload, input-side device work, generator, merge, overviews,
  download, encode, assemble), compile time, peak GPU memory;
- the CLI wall time of ``python -m geo_sat2map translate`` including interpreter start-up, with its peak RSS;
- bf16 against fp32 output difference (max / mean DN) on a crop.
CPU: whole CLI call at ``--overlap 0 --batch-size 8`` and the default precision (``auto``: measured on a first
call, with an empty precision cache) on ``--cpu-ratio-size``² against the bare fp32 generator (windows/s; bf16's
bare rate beside it), what ``auto``'s probe costs on a first and a later call, and peak RSS at default settings
for ``--rss-sizes`` (one subprocess each); ``--compile`` adds the compiled bare generator at fp32 and bf16 with
its compile time.
``--suite check``: the GPU check's short table (benchmarks/gpu_check.sh): the bare generator at the default
precision, the default run and the ``--compile`` run; ``--json`` writes its figures for the summary.
Ratios are measured within one run: machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from geo_sat2map.checkpoint import GeneratorMeta, load_generator, save_generator
from geo_sat2map.cpu_precision import CACHE_ENV, native_bf16
from geo_sat2map.device import resolve_device, resolve_precision
from geo_sat2map.inference import TranslateConfig, TranslateReport, translate
from geo_sat2map.inference.runner import GeneratorRunner, StageClock
from geo_sat2map.models import build_generator

STAGES = ("prepare", "read", "upload", "device", "generator", "merge", "overviews", "download", "encode", "assemble",
          "capture")


def make_scene(path: Path, width: int, height: int, compress: str = "deflate") -> Path:
    """A uint8 RGB GeoTIFF with varied content, written in row chunks (never a full-scene array)."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(1.0, 0, 500_000, 0, -1.0, 4_000_000), tiled=True, blockxsize=256,
                   blockysize=256, compress=compress, BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")
    xx = np.arange(width, dtype=np.float32)[None, :]
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, height, 1024):
            rows = min(1024, height - top)
            yy = np.arange(top, top + rows, dtype=np.float32)[:, None]
            base = np.stack(np.broadcast_arrays(np.sin(xx / 17.0) * np.cos(yy / 23.0), np.sin((xx + yy) / 31.0),
                                                np.cos(xx / 11.0) + 0 * yy))
            noise = rng.integers(-20, 21, (3, rows, width), dtype=np.int16)
            dst.write(np.clip((base + 1.5) * 80 + noise, 0, 255).astype(np.uint8), window=Window(0, top, width, rows))
    return path


def save_random_generator(path: Path, width: int, **meta: object) -> Path:
    """A unet256 of ``width`` with seeded random weights (``meta``: more GeneratorMeta fields, e.g. a palette)."""
    torch.manual_seed(0)
    save_generator(path, build_generator("unet256", width),
                   GeneratorMeta("unet256", width, "instance", **meta))  # type: ignore[arg-type]
    return path


def scene_windows(scene: Path, count: int) -> torch.Tensor:
    """The first ``count`` 256 px windows of the scene, scaled as translate scales uint8 ([-1, 1])."""
    import rasterio

    with rasterio.open(scene) as ds:
        per_row = ds.width // 256
        rows = min(-(-count // per_row), ds.height // 256)
        data = ds.read(out_dtype="float32", window=((0, rows * 256), (0, per_row * 256))) / 127.5 - 1
    windows = [data[:, r * 256:(r + 1) * 256, c * 256:(c + 1) * 256] for r in range(rows) for c in range(per_row)]
    return torch.from_numpy(np.stack([windows[i % len(windows)] for i in range(count)]))  # cycled on small scenes


def bare_windows_per_second(weights: Path, inputs: torch.Tensor, device: str, precision: str, seconds: float,
                            compile: bool = False) -> float:
    """The generator alone through translate's GeneratorRunner on a static device batch of real windows."""
    dev = resolve_device(device)
    runner = GeneratorRunner(load_generator(weights).for_inference(), dev, resolve_precision(precision, dev),
                             StageClock(dev), compile=compile)
    x = inputs.to(dev)
    with runner.active():
        for _ in range(3):  # warm-up (and compile)
            runner(x)
        _sync(dev)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or count < 3:
            runner(x)
            count += 1
            if count % 8 == 0:
                _sync(dev)
        _sync(dev)
        return len(x) * count / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_translate(scene: Path, weights: Path, out: Path, device: str, **options: object) -> TranslateReport:
    return translate(TranslateConfig(input=scene, output=out, weights=weights, device=device, overwrite=True,
                                     progress=False, **options))  # type: ignore[arg-type]


def cli_call(args: list[str], **popen: object) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``python -m geo_sat2map ARGS`` in a fresh interpreter (``popen``: e.g.
    ``env`` and ``cwd`` to run another checkout's code)."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "geo_sat2map", "-q", *args], **popen)  # type: ignore[call-overload]
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"geo-sat2map {' '.join(args)} failed")
    return wall, usage.ru_maxrss / 1024


def stage_cells(report: TranslateReport) -> str:
    return " | ".join(f"{report.stages.get(stage, 0.0):.2f}" for stage in STAGES)


def gpu_suite(args: argparse.Namespace, tmp: Path, weights: Path) -> None:
    """The GPU acceptance table. On a CPU (``--suite gpu --device cpu``, a dry run of this script) reduced
    precision becomes fp32 and compiling is skipped."""
    side = args.size
    on_gpu = args.device.startswith("cuda")
    low = "bf16" if on_gpu else "fp32"
    started = time.perf_counter()
    scene = make_scene(tmp / "scene.tif", side, side)
    mpx = side * side / 1e6
    print(f"scene {side}x{side} uint8 RGB DEFLATE ({mpx:.0f} Mpx) written in {time.perf_counter() - started:.0f} s")
    stride = 256 - 64
    inputs = scene_windows(scene, 64)
    print("\nBare generator on the device (static batch of 64 real windows, no copies)")
    print("| precision | compiled | windows/s | Mpx/s of new pixels at overlap 64 |")
    print("|---|---|---:|---:|")
    for precision, compiled in ((low, False), ("fp32", False), (low, on_gpu)):
        rate = bare_windows_per_second(weights, inputs, args.device, precision, args.seconds, compile=compiled)
        print(f"| {precision} | {'yes' if compiled else 'no'} | {rate:.0f} | {rate * stride * stride / 1e6:.0f} |",
              flush=True)

    print(f"\ntranslate, {side}x{side}: whole call = TranslateReport.seconds (model load + stream + output)")
    print("| run | whole s | whole Mpx/s | stream Mpx/s | generator busy | " + " | ".join(STAGES)
          + " | compile s | GPU peak GB |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(STAGES) + "---:|---:|")
    runs = [("default (bf16, batch 16)", {}), ("--batch-size 64", {"batch_size": 64}),
            ("--batch-size 64 --compile", {"batch_size": 64, "compile": on_gpu}),
            ("--precision fp32 --batch-size 64", {"batch_size": 64, "precision": "fp32"})]
    for label, options in runs:
        report = run_translate(scene, weights, tmp / "map.tif", args.device, **options)
        stream_mpx = mpx / report.stream_seconds
        print(f"| {label} | {report.seconds:.2f} | {report.megapixels_per_second:.0f} | {stream_mpx:.0f} | "
              f"{100 * report.generator_busy:.0f} % | {stage_cells(report)} | {report.compile_seconds:.1f} | "
              f"{report.peak_device_bytes / 2**30:.1f} |", flush=True)
    check_layout(tmp / "map.tif")

    print("\nCLI wall time including interpreter start-up (fresh process)")
    print("| command | wall s | Mpx/s | peak RSS (MB) |")
    print("|---|---:|---:|---:|")
    for extra in ([], ["--batch-size", "64"]):
        wall, rss = cli_call(["translate", str(scene), "-o", str(tmp / "cli.tif"), "-w", str(weights),
                              "--overwrite", *extra])
        print(f"| translate {' '.join(extra) or '(defaults)'} | {wall:.2f} | {mpx / wall:.0f} | {rss:.0f} |",
              flush=True)

    crop_side = min(side, 4096)
    crop = make_scene(tmp / "crop.tif", crop_side, crop_side)
    outputs = {}
    for name, precision in (("fp32", "fp32"), ("bf16", low)):
        run_translate(crop, weights, tmp / f"{name}.tif", args.device, precision=precision)
        outputs[name] = read_rgba(tmp / f"{name}.tif")
    diff = np.abs(outputs["fp32"][:3].astype(int) - outputs["bf16"][:3].astype(int))
    print(f"\nbf16 vs fp32 on a {crop_side}² crop: max {diff.max()} DN, mean {diff.mean():.3f} DN, "
          f"{100 * (diff > 1).mean():.2f} % of samples differ by more than 1 DN")


def check_suite(args: argparse.Namespace, tmp: Path, weights: Path) -> dict[str, object]:
    """The figures the GPU check reports: the bare generator, then translate with default options and with
    ``--compile`` (skipped on a CPU, where this is a dry run), on a ``--size``² scene."""
    side, on_gpu = args.size, args.device.startswith("cuda")
    started = time.perf_counter()
    scene = make_scene(tmp / "scene.tif", side, side)
    mpx = side * side / 1e6
    print(f"scene {side}x{side} uint8 RGB DEFLATE ({mpx:.0f} Mpx) written in {time.perf_counter() - started:.0f} s")
    device = resolve_device(args.device)
    precision = "bf16" if resolve_precision("auto", device) == torch.bfloat16 else "fp32"
    bare = bare_windows_per_second(weights, scene_windows(scene, 64), args.device, precision, args.seconds)
    figures: dict[str, object] = {"size": side, "width": args.width, "bare_windows_per_s": bare,
                                  "bare_precision": precision, "runs": {}}
    print(f"bare generator ({precision}, static batch of 64): {bare:.0f} windows/s")
    print("| run | whole s | whole Mpx/s | stream Mpx/s | generator busy | " + " | ".join(STAGES)
          + " | compile s | GPU peak GB |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(STAGES) + "---:|---:|")
    palette = write_palette(tmp / "palette.json")
    runs = (("default", {}), ("compile", {"compile": True}), ("palette", {"palette": str(palette)}),
            ("deterministic", {"fixed_batch": True}))  # the kernels split (torchrun) runs use
    for label, options in runs:
        if options.get("compile") and not on_gpu:
            print("| --compile | skipped on a CPU (dry run) |")
            continue
        report = run_translate(scene, weights, tmp / "map.tif", args.device, **options)
        figures["runs"][label] = {  # type: ignore[index]
            "whole_mpx_per_s": report.megapixels_per_second, "stream_mpx_per_s": mpx / report.stream_seconds,
            "generator_busy": report.generator_busy, "seconds": report.seconds,
            "compile_seconds": report.compile_seconds, "peak_gib": report.peak_device_bytes / 2**30,
            "precision": report.precision, "batch_size": report.batch_size, "stages": report.stages,
            "snap_share_of_device": snap_share(report),
        }
        print(f"| {label} | {report.seconds:.2f} | {report.megapixels_per_second:.0f} | "
              f"{mpx / report.stream_seconds:.0f} | {100 * report.generator_busy:.0f} % | {stage_cells(report)} | "
              f"{report.compile_seconds:.1f} | {report.peak_device_bytes / 2**30:.1f} |", flush=True)
    check_layout(tmp / "map.tif")
    return figures


# The stages that run on the device (timed there with CUDA events; wall time on a CPU).
DEVICE_STAGES = ("upload", "device", "generator", "merge", "overviews", "snap", "download")


def snap_share(report: TranslateReport) -> float:
    """Palette snapping and min-region's share of the run's device time."""
    device = sum(report.stages.get(stage, 0.0) for stage in DEVICE_STAGES)
    return report.stages.get("snap", 0.0) / device if device > 0 else 0.0


def write_palette(path: Path) -> Path:
    """An 8-class palette JSON (the synthetic world's colours): what --palette FILE snaps to."""
    from geo_sat2map import palette

    return palette.write_palette(palette.load_palette("synthetic"), path, overwrite=True)


def read_rgba(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read()


def check_layout(path: Path) -> None:
    """GDAL's view of the output: layout, compression, overviews (and our COG layout check when present)."""
    import rasterio

    with rasterio.open(path) as ds:
        structure = ds.tags(ns="IMAGE_STRUCTURE")
        print(f"\noutput: LAYOUT={structure.get('LAYOUT')}, COMPRESSION={structure.get('COMPRESSION')}, "
              f"overviews {ds.overviews(1)}, colorinterp {[c.name for c in ds.colorinterp]}")
    try:
        from geo_sat2map.raster_io.cog import check_cog_layout
    except ImportError:
        return
    problems = check_cog_layout(path)
    print("COG layout check: " + ("passed" if not problems else "; ".join(problems)))


def cpu_suite(args: argparse.Namespace, tmp: Path, weights: Path) -> None:
    side = args.cpu_ratio_size
    scene = make_scene(tmp / "ratio.tif", side, side)
    windows = (side // 256) ** 2  # --overlap 0 on a multiple of 256: exactly this many windows
    inputs = scene_windows(scene, 8)
    os.environ[CACHE_ENV] = str(tmp / "cache")  # the CLI call below is a first call: it pays auto's probe
    print(f"\nCPU: whole CLI call at --overlap 0 --batch-size 8, default precision, on {side}² ({windows} windows) "
          "vs the bare fp32 generator (bare measured before and after; torch threads "
          f"{torch.get_num_threads()}; native bf16: {native_bf16() or 'none'})")
    before = bare_windows_per_second(weights, inputs, "cpu", "fp32", args.seconds)
    call = ["translate", str(scene), "-o", str(tmp / "ratio-map.tif"), "-w", str(weights), "--overlap", "0",
            "--batch-size", "8", "--device", "cpu", "--overwrite"]
    wall, rss = cli_call(call)
    later, _ = cli_call(call)  # a later call: auto's choice comes from the cache
    after = bare_windows_per_second(weights, inputs, "cpu", "fp32", args.seconds)
    bf16 = bare_windows_per_second(weights, inputs, "cpu", "bf16", args.seconds) if native_bf16() else float("nan")
    bare = (before + after) / 2
    import rasterio

    with rasterio.open(tmp / "ratio-map.tif") as ds:
        precision = ds.tags().get("PRECISION", "?")
    print("| bare fp32 win/s | bare bf16 win/s | CLI precision | call | CLI call s | CLI win/s | ratio to bare fp32 "
          "| peak RSS (MB) |")
    print("|---:|---:|---|---|---:|---:|---:|---:|")
    print(f"| {bare:.2f} | {bf16:.2f} | {precision} | first (probe) | {wall:.1f} | {windows / wall:.2f} "
          f"| {windows / wall / bare:.2f} | {rss:.0f} |")
    print(f"| | | | later (cached) | {later:.1f} | {windows / later:.2f} | {windows / later / bare:.2f} | |",
          flush=True)
    check_layout(tmp / "ratio-map.tif")
    probe_cost(weights)
    if args.compile:
        print("\nCompiled bare generator (batch 8): compile s (first call), windows/s after")
        print("| precision | compile s | windows/s |")
        print("|---|---:|---:|")
        for name in ("fp32", "bf16"):
            started = time.perf_counter()
            rate = bare_windows_per_second(weights, inputs, "cpu", name, args.seconds, compile=True)
            print(f"| {name} | {time.perf_counter() - started - args.seconds:.0f} (incl. warm-up) | {rate:.2f} |",
                  flush=True)

    print("\nPeak RSS at default settings (overlap 64, feather, batch 4), one CLI process per scene")
    print("| scene | wall s | peak RSS (MB) |")
    print("|---|---:|---:|")
    for size in [int(s) for s in args.rss_sizes.split(",") if s]:
        scene = make_scene(tmp / f"rss{size}.tif", size, size)
        wall, rss = cli_call(["translate", str(scene), "-o", str(tmp / "rss-map.tif"), "-w", str(weights),
                              "--device", "cpu", "--overwrite"])
        print(f"| {size} x {size} | {wall:.1f} | {rss:.0f} |", flush=True)
        scene.unlink()


def probe_cost(weights: Path) -> None:
    """What ``auto`` adds to a translate call on the CPU: the probe on a first call, the cache on later ones."""
    from geo_sat2map.inference.precision import inference_precision

    loaded = load_generator(weights)
    network = loaded.for_inference()
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="precision-cache-")
    print("\nauto's probe (the network of the run above): seconds added per call")
    print("| call | seconds | chose | why |")
    print("|---|---:|---|---|")
    for call in ("first", "later"):
        started = time.perf_counter()
        chosen = inference_precision("auto", torch.device("cpu"), lambda: network, 256, loaded.meta.arch, loaded.meta.width,
                                     loaded.meta.norm_mode)
        print(f"| {call} | {time.perf_counter() - started:.3f} | {chosen.name} | {chosen.reason} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=64, help="generator ngf (64 = the public pix2pix size)")
    parser.add_argument("--size", type=int, default=16384, help="GPU: side of the scene")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each bare-generator measurement")
    parser.add_argument("--cpu-ratio-size", type=int, default=6144, help="CPU: side of the ratio scene")
    parser.add_argument("--rss-sizes", default="2048,8192", help="CPU: square scene sides for peak RSS")
    parser.add_argument("--suite", choices=("auto", "gpu", "cpu", "check"), default="auto",
                        help="auto: the GPU table on CUDA, the CPU checks elsewhere; check: gpu_check.sh's part")
    parser.add_argument("--json", type=Path, help="--suite check: write its figures to this JSON file")
    parser.add_argument("--compile", action="store_true", help="CPU: add the compiled bare generator rows")
    parser.add_argument("--tmp", default=None, help="folder for the scenes (default: a temporary folder)")
    args = parser.parse_args()
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"generator unet256 ngf {args.width}")
    with tempfile.TemporaryDirectory(prefix="translate-bench-", dir=args.tmp) as tmp_dir:
        tmp = Path(tmp_dir)
        weights = save_random_generator(tmp / "generator.pt", args.width)
        if args.suite == "check":
            figures = check_suite(args, tmp, weights)
            if args.json:
                args.json.write_text(json.dumps(figures, indent=1))
        elif args.suite == "gpu" or (args.suite == "auto" and args.device.startswith("cuda")):
            gpu_suite(args, tmp, weights)
        else:
            cpu_suite(args, tmp, weights)


if __name__ == "__main__":
    main()
