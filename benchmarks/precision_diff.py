"""How far the default precision moves a trained generator's map from fp32, on the demo world.

    .venv/bin/python benchmarks/precision_diff.py --weights demo/run/generator.pt [--scene demo/heldout_scene/satellite.tif]

Translates the scene (default: the demo's held-out satellite scene, generated here as examples/demo.py makes it)
on the CPU at ``--precision fp32`` and at the default (``auto``: bf16 where the CPU has it natively, chosen by
measurement) or ``--precision`` given, and prints the difference over valid pixels: max and mean DN, the share of
samples off by more than 1 DN, and the share of pixels whose nearest palette colour (the synthetic world's map
classes, as ``evaluate --palette synthetic`` assigns them) changes. Twice: the network's raw colours
(``--palette none``) and the default output (``--palette auto``: snapped to the checkpoint's palette where it is
exact, so a pixel whose class flips moves by a whole colour step). Also prints the time of each call.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from geo_sat2map.inference import TranslateConfig, translate
from geo_sat2map.metrics import nearest_colour
from geo_sat2map.synthetic import PALETTE, SceneSpec, write_scene

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def demo_heldout_scene() -> SceneSpec:
    """examples/demo.py's held-out scene (another seed 6 km from the training towns, a masked corner)."""
    spec = importlib.util.spec_from_file_location("geo_sat2map_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module.HELDOUT_SCENE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, type=Path, help="a trained generator (e.g. demo/run/generator.pt)")
    parser.add_argument("--scene", type=Path, help="satellite scene (default: the demo's held-out scene)")
    parser.add_argument("--precision", default="auto", help="the precision compared with fp32 (default: auto)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="precision-diff-") as tmp_dir:
        tmp = Path(tmp_dir)
        scene = args.scene or write_scene(tmp / "heldout", demo_heldout_scene()).satellite
        for palette in ("none", "auto"):  # the network's raw colours, then the default output (snapped if exact)
            maps, resolved = {}, {}
            for name, precision in (("fp32", "fp32"), ("other", args.precision)):
                started = time.perf_counter()
                report = translate(TranslateConfig(input=scene, output=tmp / f"{name}.tif", weights=args.weights,
                                                   device="cpu", precision=precision, palette=palette,
                                                   progress=False, overwrite=True))
                print(f"--palette {palette} --precision {precision}: ran at {report.precision} in "
                      f"{time.perf_counter() - started:.1f} s")
                with rasterio.open(tmp / f"{name}.tif") as ds:
                    maps[name] = ds.read()
                resolved[name] = report.precision
            rows.append((palette, *difference(maps["fp32"], maps["other"])))
    print(f"\n{resolved['other']} vs fp32 over the valid pixels of {scene.name}:")
    print("| --palette | max DN | mean DN | samples > 1 DN | pixels whose nearest palette colour changes |")
    print("|---|---:|---:|---:|---:|")
    for palette, largest, mean, off, changed in rows:
        print(f"| {palette} | {largest} | {mean:.3f} | {off:.2f} % | {changed:.3f} % |")


def difference(fp32: np.ndarray, other: np.ndarray) -> tuple[int, float, float, float]:
    """Max and mean DN, % of samples off by more than 1 DN, % of pixels whose nearest map colour changes."""
    valid = fp32[3] > 0
    assert np.array_equal(valid, other[3] > 0), "the footprints differ"
    a, b = fp32[:3][:, valid].astype(int), other[:3][:, valid].astype(int)
    diff = np.abs(a - b)
    colours = np.array(list(PALETTE.values()))
    changed = nearest_colour(a, colours) != nearest_colour(b, colours)
    return int(diff.max()), float(diff.mean()), 100 * float((diff > 1).mean()), 100 * float(changed.mean())


if __name__ == "__main__":
    main()
