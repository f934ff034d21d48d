"""COG output benchmark: the streaming COG writer vs today's GDAL path, on a map-like RGBA uint8 image.

    .venv/bin/python benchmarks/cog_bench.py                       # 8192 x 8192, threads 1 and all CPUs
    .venv/bin/python benchmarks/cog_bench.py --size 4096 --threads 1,2,4 --deflate-levels 1,2,6 --noise 0

The image is held in memory (a synthetic web map, mirrored to size, plus Gaussian noise of --noise levels on
RGB like a generator's output, and a tilted transparent footprint edge); its overview rows are computed
beforehand (2x2 mean, as the GPU will) and not timed. Each case writes the full-resolution rows and the
overview rows in bands of --band rows, interleaved, and is timed by wall clock:

- ours: ``StreamingCOGWriter``; "encode" is the streaming part (write_rows calls and waiting for the last
  tiles), "assemble" is close()'s header + byte copies. "thread Mpx/s" is full-resolution pixels per second of
  one pool thread's encode CPU time (overviews included): the rate to multiply by a core count; "caller
  Mpx/s" is the same for the calling thread's CPU time (copies into block rows, spill writes, assembly):
  the serial part, a ceiling whatever the core count.
- gdal: today's path, raster_io/output.py's GDALMapSink as translate uses it: a tiled GTiff streamed with GDAL
  (ZSTD, GDAL_NUM_THREADS=ALL_CPUS), then GDAL's COG driver copy (re-reads, builds overviews, re-encodes).

Mpx/s are full-resolution megapixels per second of each stage. "COG" is check_cog_layout's verdict.
Other processes on the machine change the numbers: note `uptime` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from affine import Affine

from geo_sat2map.raster_io import cog
from geo_sat2map.raster_io.cog import FAST_CODECS, StreamingCOGWriter, available_cpus, check_cog_layout, level_sizes
from geo_sat2map.raster_io.core import RasterInfo
from geo_sat2map.raster_io.output import GDALMapSink, OutputOptions, streaming_cache_bytes, streaming_gdal_env
from geo_sat2map.synthetic import SceneSpec, make_world, render_map

CRS = "EPSG:3857"
TRANSFORM = Affine(0.6, 0.0, 1_000_000.0, 0.0, -0.6, 6_000_000.0)


def map_like(size: int, noise: float, seed: int = 0) -> np.ndarray:
    """(size, size, 4) uint8: a rendered synthetic map mirrored to size, noise on RGB, transparent corners."""
    rendered = render_map(make_world(SceneSpec(seed=seed, width=1400, height=1400))).data.transpose(1, 2, 0)
    side = min(rendered.shape[:2])
    base = rendered[:side, :side]
    reps = -(-size // side)
    row = np.concatenate([base if i % 2 == 0 else base[:, ::-1] for i in range(reps)], axis=1)[:, :size]
    rgb = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(reps)], axis=0)[:size]
    image = np.empty((size, size, 4), np.uint8)
    rng = np.random.default_rng(seed)
    noise_tile = np.round(rng.normal(0.0, noise, (1021, 1021, 3))).astype(np.int16) if noise > 0 else None
    xx = np.arange(size)[None, :]
    for top in range(0, size, 1021):  # in bands: the noise and footprint never need a full float image
        rows = slice(top, min(size, top + 1021))
        yy = np.arange(rows.start, rows.stop)[:, None]
        band = rgb[rows].astype(np.int16)
        if noise_tile is not None:
            band += np.tile(noise_tile, (1, -(-size // 1021), 1))[:band.shape[0], :size]
        # A scene footprint tilted by ~12 degrees: the four corners are outside (alpha 0, RGB 0).
        inside = (np.abs((xx - size / 2) * 0.978 + (yy - size / 2) * 0.208) < 0.46 * size) & \
                 (np.abs((yy - size / 2) * 0.978 - (xx - size / 2) * 0.208) < 0.46 * size)
        image[rows, :, :3] = np.where(inside[..., None], np.clip(band, 0, 255), 0)
        image[rows, :, 3] = np.where(inside, 255, 0)
    return image


def overview_levels(image: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Each level as the 2x2 mean of the previous one (edges replicated to even sizes)."""
    levels = [image]
    for width, height in sizes[1:]:
        prev = levels[-1].astype(np.uint16)
        prev = np.pad(prev, ((0, 2 * height - prev.shape[0]), (0, 2 * width - prev.shape[1]), (0, 0)), mode="edge")
        mean = (prev[0::2, 0::2] + prev[1::2, 0::2] + prev[0::2, 1::2] + prev[1::2, 1::2] + 2) // 4
        levels.append(np.ascontiguousarray(mean.astype(np.uint8)))
    return levels


def run_ours(levels: list[np.ndarray], path: Path, band: int, **options) -> dict:
    height, width = levels[0].shape[:2]
    start, caller_cpu = time.perf_counter(), time.thread_time()
    with StreamingCOGWriter(path, width, height, CRS, TRANSFORM, {"MODEL": "bench"}, **options) as writer:
        assert len(writer.levels) == len(levels)
        done = [0] * len(levels)
        while any(d < lvl.shape[0] for d, lvl in zip(done, levels)):
            for k, lvl in enumerate(levels):
                rows = max(1, band >> k)  # overview rows arrive in step with the full-resolution rows
                if done[k] < lvl.shape[0]:
                    writer.write_rows(k, lvl[done[k]:done[k] + rows])
                    done[k] = min(lvl.shape[0], done[k] + rows)
    total, caller_cpu = time.perf_counter() - start, time.thread_time() - caller_cpu
    stats = writer.stats
    return {"encode": total - stats.assemble_seconds, "assemble": stats.assemble_seconds, "total": total,
            "thread_rate": width * height / stats.encode_seconds / 1e6,
            "caller_rate": width * height / caller_cpu / 1e6, "bytes": path.stat().st_size}


def run_gdal(levels: list[np.ndarray], path: Path, band: int, compress: str, level: int | None) -> dict:
    """Today's path, ``GDALMapSink`` as translate uses it: a streamed tiled ZSTD GTiff, then GDAL's COG copy."""
    height, width = levels[0].shape[:2]
    info = RasterInfo(str(path), width, height, 4, "uint8", CRS, TRANSFORM, True)
    options = OutputOptions(compress=compress, creation_options={"LEVEL": str(level)} if level is not None else {})
    start = time.perf_counter()
    with streaming_gdal_env(streaming_cache_bytes(width, band)):
        sink = GDALMapSink(path, info, {"MODEL": "bench"}, options)
        try:
            for top in range(0, height, band):
                sink.write_rows(0, levels[0][top:top + band])
            sink.close()
        except BaseException:
            sink.abort()
            raise
    total = time.perf_counter() - start
    return {"encode": total - sink.stats["assemble"], "assemble": sink.stats["assemble"], "total": total,
            "thread_rate": None, "caller_rate": None, "bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192, help="side of the square map (pixels)")
    parser.add_argument("--threads", default="", help="comma-separated pool sizes (default: 1 and all CPUs)")
    parser.add_argument("--deflate-levels", default="1,6", help="levels for our DEFLATE runs")
    parser.add_argument("--engines", default="isa-l,zlib",
                        help="DEFLATE engines to compare at levels 1-3 (isa-l needs the isal package)")
    parser.add_argument("--zstd-levels", default="1", help="zstd levels (if the zstandard package is installed)")
    parser.add_argument("--noise", type=float, default=1.0, help="std of the Gaussian noise on RGB (0: clean)")
    parser.add_argument("--band", type=int, default=256, help="full-resolution rows per write")
    parser.add_argument("--skip-gdal", action="store_true", help="skip today's GDAL path (slow)")
    parser.add_argument("--gdal-levels", default="6,1", help="DEFLATE levels for the GDAL COG copy")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the output files (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    cpus = available_cpus()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cpus})

    started = time.perf_counter()
    image = map_like(args.size, args.noise)
    sizes = level_sizes(args.size, args.size, 512)
    levels = overview_levels(image, sizes)
    megapixels = args.size * args.size / 1e6
    print(f"{args.size}x{args.size} RGBA map (noise {args.noise}), {len(levels) - 1} overviews, made in "
          f"{time.perf_counter() - started:.1f} s (not timed); {cpus} CPUs, load {os.getloadavg()[0]:.2f}\n")
    print("| writer | codec | threads | encode Mpx/s | assemble Mpx/s | total Mpx/s | thread Mpx/s | caller Mpx/s "
          "| MB | COG |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    rows: list[dict] = []

    def row(name: str, codec: str, n: str, result: dict, path: Path) -> None:
        problems = check_cog_layout(path)
        rows.append({"writer": name, "codec": codec, "threads": n, "size": args.size, "cog_ok": not problems,
                     "encode_mpx_per_s": megapixels / result["encode"],
                     "total_mpx_per_s": megapixels / result["total"], **result})
        rates = ["" if result[key] is None else f"{result[key]:.1f}" for key in ("thread_rate", "caller_rate")]
        print(f"| {name} | {codec} | {n} | {megapixels / result['encode']:.1f} | "
              f"{megapixels / result['assemble']:.0f} | {megapixels / result['total']:.1f} | {' | '.join(rates)} | "
              f"{result['bytes'] / 1e6:.1f} | {'ok' if not problems else problems[0]} |", flush=True)
        path.unlink()

    with tempfile.TemporaryDirectory(prefix="cog-bench-", dir=args.tmp) as tmp_dir:
        tmp = Path(tmp_dir)
        engines = [e for e in args.engines.split(",") if e != "isa-l" or cog.isal_zlib is not None]
        cases = []
        for level in (int(level) for level in args.deflate_levels.split(",") if level):
            for engine in engines if level <= 3 else ["zlib"]:
                cases.append(("deflate", level, engine))
        if "zstd" in FAST_CODECS:
            cases += [("zstd", int(level), "zstd") for level in args.zstd_levels.split(",") if level]
        for codec, level, engine in cases:
            cog.ISAL_DEFLATE = engine == "isa-l"
            for n in threads:
                path = tmp / "ours.tif"
                result = run_ours(levels, path, args.band, compress=codec, level=level, threads=n)
                label = f"{codec} {level}" + (f" ({engine})" if codec == "deflate" else "")
                row("ours", label, str(n), result, path)
        if not args.skip_gdal:
            for level in args.gdal_levels.split(","):
                path = tmp / "gdal.tif"
                result = run_gdal(levels, path, args.band, "deflate", int(level))
                row("gdal strips + COG copy", f"deflate {level}", "all", result, path)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
