"""translate benchmark: bare-generator vs end-to-end windows/s, and peak memory vs scene size.

    python benchmarks/translate_bench.py                      # CPU (or CUDA if present), ngf 64, all parts
    python benchmarks/translate_bench.py --sizes 1024,2048 --width 8 --device cpu

Throughput: the same random-weights generator and batch size, on random batches in a loop (the ceiling,
measured before and after) and through ``translate`` on a synthetic uint8 scene with ``--overlap 0`` (read +
fill + model + blend + write; the COG conversion afterwards is reported separately). "Generator busy" is the
share of the streaming time spent inside the generator: unlike the ratio, it does not depend on other load
on the machine. Peak RSS: each scene size runs in its
own subprocess at default settings (overlap 64, feather, default batch) and reports its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from geo_sat2map.checkpoint import GeneratorMeta, load_generator, save_generator
from geo_sat2map.models import build_generator
from geo_sat2map.raster_io.output import OutputOptions
from geo_sat2map.device import resolve_device, resolve_precision
from geo_sat2map.translate import ModelRunner, TranslateConfig, TranslateReport, translate


def make_scene(path: Path, width: int, height: int) -> Path:
    """A uint8 RGB GeoTIFF with varied content, written in row chunks (never a full-scene array)."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(1.0, 0, 500_000, 0, -1.0, 4_000_000), tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", BIGTIFF="IF_SAFER")
    xx = np.arange(width)[None, :]
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, height, 512):
            rows = min(512, height - top)
            yy = np.arange(top, top + rows)[:, None]
            base = np.stack(np.broadcast_arrays(np.sin(xx / 17.0) * np.cos(yy / 23.0), np.sin((xx + yy) / 31.0),
                                                np.cos(xx / 11.0)))
            noise = rng.normal(0, 0.3, (3, rows, width))
            dst.write(np.clip((base + noise + 1.5) * 80, 0, 255).astype(np.uint8), window=Window(0, top, width, rows))
    return path


def save_random_generator(path: Path, width: int) -> Path:
    torch.manual_seed(0)
    save_generator(path, build_generator("unet256", width), GeneratorMeta("unet256", width, "instance"))
    return path


def scene_windows(scene: Path, count: int) -> torch.Tensor:
    """The first ``count`` 256 px windows of the scene, scaled as translate scales uint8 ([-1, 1])."""
    import rasterio

    with rasterio.open(scene) as ds:
        per_row = ds.width // 256
        rows = -(-count // per_row)
        data = ds.read(out_dtype="float32", window=((0, rows * 256), (0, per_row * 256))) / 127.5 - 1
    windows = [data[:, r * 256:(r + 1) * 256, c * 256:(c + 1) * 256] for r in range(rows) for c in range(per_row)]
    return torch.from_numpy(np.stack(windows[:count]))


def bare_windows_per_second(
    weights: Path, inputs: torch.Tensor, device: str, precision: str, batches: int
) -> float:
    """The generator alone, through translate's own ModelRunner (same device/precision/layout handling), on
    real windows (random inputs hit a different denormal/activation regime)."""
    dev = resolve_device(device)
    runner = ModelRunner(load_generator(weights).for_inference(), dev, resolve_precision(precision, dev))
    x = inputs.pin_memory() if runner.pin_memory else inputs
    with runner.active():
        runner.collect(runner.submit(x))  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            runner.collect(runner.submit(x))
        return len(x) * batches / (time.perf_counter() - start)


def end_to_end(scene: Path, weights: Path, out: Path, batch: int, device: str, precision: str) -> TranslateReport:
    return translate(TranslateConfig(input=scene, output=out, weights=weights, overlap=0, batch_size=batch,
                                     device=device, precision=precision, overwrite=True, progress=False,
                                     output_options=OutputOptions()))


def child(args: argparse.Namespace) -> None:
    """Subprocess body: translate one scene at default settings (or only load the model) and print peak RSS."""
    start = time.perf_counter()
    if args.child_scene == "baseline":
        load_generator(args.child_weights).for_inference()
        windows = 0
    else:
        report = translate(TranslateConfig(input=Path(args.child_scene), output=Path(args.child_out),
                                           weights=Path(args.child_weights), device=args.device,
                                           overwrite=True, progress=False))
        windows = report.windows
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "seconds": time.perf_counter() - start, "windows": windows}))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a
    subprocess would report its (large) parent's memory at fork time."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB, macOS: bytes


def peak_rss(scene: str, weights: Path, out: Path, device: str) -> dict:
    cmd = [sys.executable, __file__, "--device", device, "--child-scene", scene, "--child-weights", str(weights),
           "--child-out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=64, help="generator ngf (64 = the public pix2pix size)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", default="", help="comma-separated (default: 4 on CPU, 8,16,32 on CUDA)")
    parser.add_argument("--precisions", default="",
                        help="comma-separated (default: fp32 on CPU, fp32,bf16,fp16 on CUDA)")
    parser.add_argument("--throughput-size", type=int, default=2048, help="side of the throughput scene")
    parser.add_argument("--sizes", default="1024,2048,4096,8192", help="square scene sides for peak RSS")
    parser.add_argument("--tall", action="store_true",
                        help="also 1024 wide x 8192 and x 16384 high (memory must not grow with height)")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per batch size (median shown)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child-scene", help=argparse.SUPPRESS)
    parser.add_argument("--child-weights", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_scene:
        child(args)
        return

    on_gpu = args.device.startswith("cuda")
    default_batches = [8, 16, 32] if on_gpu else [4]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else default_batches
    precisions = args.precisions.split(",") if args.precisions else (["fp32", "bf16", "fp16"] if on_gpu else ["fp32"])
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, generator unet256 ngf {args.width}")
    with tempfile.TemporaryDirectory(prefix="translate-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        weights = save_random_generator(tmp / "generator.pt", args.width)
        if not args.skip_throughput:
            side = args.throughput_size
            scene = make_scene(tmp / f"scene{side}.tif", side, side)
            print(f"\nThroughput, {side}x{side} uint8 scene, --overlap 0, 256 px windows")
            print("| batch | precision | bare generator win/s | end-to-end win/s (stream) | ratio | generator busy | "
                  "whole call incl. COG (s) |")
            print("|---:|---|---:|---:|---:|---:|---:|")
            for batch in batch_sizes:
                batches = max(4, (side // 256) ** 2 // batch)
                inputs = scene_windows(scene, batch)
                for precision in precisions:
                    runs = []
                    for _ in range(args.repeat):  # bracket each run by bare runs: the machine's load drifts
                        before = bare_windows_per_second(weights, inputs, args.device, precision, batches)
                        report = end_to_end(scene, weights, tmp / "map.tif", batch, args.device, precision)
                        after = bare_windows_per_second(weights, inputs, args.device, precision, batches)
                        bare = (before + after) / 2
                        runs.append((report.windows_per_second / bare, bare, report))
                    ratio, bare, report = sorted(runs, key=lambda run: run[0])[len(runs) // 2]  # the median run
                    print(f"| {batch} | {precision} | {bare:.2f} | {report.windows_per_second:.2f} | {ratio:.2f} | "
                          f"{100 * report.generator_busy:.0f} % | {report.seconds:.1f} |", flush=True)
        if not args.skip_memory:
            shapes = [(int(s), int(s)) for s in args.sizes.split(",") if s]
            if args.tall:
                shapes += [(1024, 8192), (1024, 16384)]
            print("\nPeak RSS at default settings (overlap 64, feather, default batch), one subprocess per scene")
            print("| scene (W x H) | windows | peak RSS (MB) | seconds |")
            print("|---|---:|---:|---:|")
            base = peak_rss("baseline", weights, tmp / "unused.tif", args.device)
            print(f"| model loaded only | 0 | {base['peak_rss_mb']:.0f} | {base['seconds']:.1f} |")
            for width, height in shapes:
                scene = make_scene(tmp / f"rss{width}x{height}.tif", width, height)
                result = peak_rss(str(scene), weights, tmp / "rss-map.tif", args.device)
                print(f"| {width} x {height} | {result['windows']} | {result['peak_rss_mb']:.0f} | "
                      f"{result['seconds']:.1f} |", flush=True)
                scene.unlink()


if __name__ == "__main__":
    main()
