"""make-tiles throughput on a synthetic satellite/map pair (UTM imagery, EPSG:3857 map), printed as a table.

    .venv/bin/python benchmarks/make_tiles_bench.py [--size 2048] [--keep DIR]

Each row is one full `make_tiles` call (footprints, windowed reads + map warp, PNG encoding, split, manifests),
measured as wall time on this machine; the scene is rendered once beforehand and not timed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from geo_sat2map.synthetic import SceneSpec, write_scene
from geo_sat2map.tiling import MakeTilesConfig, make_tiles

CASES = [
    ("tile 256, stride 256", {}),
    ("tile 256, stride 128", {"stride": 128}),
    ("tile 256, --resolution 2", {"resolution": 2.0}),
    ("tile 128, stride 128", {"tile_size": 128}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="satellite side in pixels (1 m)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the scene and datasets in this folder")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="make-tiles-bench-"))
    try:
        started = time.perf_counter()
        scene = write_scene(root / "scene", SceneSpec(width=args.size, height=args.size, clip_corner=True),
                            overwrite=True)
        print(f"scene {args.size}x{args.size} rendered in {time.perf_counter() - started:.1f} s (not timed below)\n")
        print(f"| {'case':<26} | {'windows':>7} | {'tiles':>5} | {'seconds':>7} | {'tiles/s':>7} |")
        print(f"|{'-' * 28}|{'-' * 9}|{'-' * 7}|{'-' * 9}|{'-' * 9}|")
        for index, (name, options) in enumerate(CASES):
            config = MakeTilesConfig(images=(str(scene.satellite),), maps=(str(scene.map),), overwrite=True,
                                     **options)
            result = make_tiles(config, root / f"tiles{index}", progress=False)
            tiles = sum(result.counts.values())
            windows = tiles + sum(result.skipped.values())
            rate = tiles / result.seconds
            print(f"| {name:<26} | {windows:>7} | {tiles:>5} | {result.seconds:>7.2f} | {rate:>7.1f} |")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
