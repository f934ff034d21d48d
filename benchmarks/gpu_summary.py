"""The GPU check's one table: every figure the GPU issues ask for, against its goal, from gpu_check.sh's output.

    python3 benchmarks/gpu_summary.py OUT > OUT/summary.md

Reads OUT/steps.tsv (step, exit status, seconds), OUT/tests.log, OUT/translate.json, OUT/train.json,
OUT/snap.json and OUT/cog.json; a figure whose step failed or did not run reads "missing".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# (figure, goal as text, lowest value that meets it); goals of the GPU issues, one H200, ngf/ndf 64.
GOALS = {
    "whole": ("translate whole call, Mpx/s", "≥ 100", 100.0),
    "stream": ("translate stream, Mpx/s", "≥ 250", 250.0),
    "busy": ("translate generator busy, %", "≥ 80", 80.0),
    "compile": ("translate --compile stream, Mpx/s", "≥ 450", 450.0),
    "steps": ("train steps/s at batch 1", "≥ 180", 180.0),
    "tiles": ("train tiles/s at batch 16", "≥ 1,500", 1500.0),
}


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tests_line(path: Path) -> str:
    """pytest's final line ("3 passed, 2 skipped in 9.1s"), or why there is none."""
    try:
        lines = [line.strip("= ") for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return "missing"
    return lines[-1] if lines else "missing"


def figures(out: Path, translate: dict) -> dict[str, float | None]:
    runs = translate.get("runs", {})
    default, compiled = runs.get("default", {}), runs.get("compile", {})
    train = _load(out / "train.json") or []

    def train_rate(batch: int, key: str) -> float | None:
        rows = [row for row in train if row.get("batch") == batch and row.get("variant") == "ours"]
        return rows[0][key] if rows else None

    busy = default.get("generator_busy")
    return {
        "whole": default.get("whole_mpx_per_s"), "stream": default.get("stream_mpx_per_s"),
        "busy": None if busy is None else 100 * busy, "compile": compiled.get("stream_mpx_per_s"),
        "steps": train_rate(1, "steps_per_s"), "tiles": train_rate(16, "tiles_per_s"),
    }


def summary(out: Path) -> str:
    translate = _load(out / "translate.json") or {}
    measured = figures(out, translate)
    lines = ["| figure | measured | goal | met |", "|---|---:|---:|---|"]
    for key, (name, goal, lowest) in GOALS.items():
        value = measured[key]
        cell = "missing" if value is None else f"{value:,.1f}"
        met = "-" if value is None else ("yes" if value >= lowest else "no")
        lines.append(f"| {name} | {cell} | {goal} | {met} |")
    share = translate.get("runs", {}).get("palette", {}).get("snap_share_of_device")
    if share is not None:
        lines.append(f"| palette snap + min-region, % of device time | {100 * share:.1f} | ≤ 5 | "
                     f"{'yes' if share <= 0.05 else 'no'} |")
    kernels = _load(out / "snap.json") or {}
    if kernels.get("snap_kernel_share") is not None:
        share = kernels["snap_kernel_share"]
        lines.append(f"| palette snap + min-region, % of kernel time (torch.profiler, {kernels['size']}²: "
                     f"{kernels['palette_kernel_s']:.3f} s snapped, {kernels['default_kernel_s']:.3f} s raw) "
                     f"| {100 * share:.1f} | ≤ 5 | {'yes' if share <= 0.05 else 'no'} |")
    if translate:
        lines.append(f"| translate scene, unet256 ngf {translate['width']} | {translate['size']}² | 16384², ngf 64 "
                     f"| {'yes' if (translate['size'], translate['width']) == (16384, 64) else 'no (dry run?)'} |")
        lines.append(f"| bare generator ({translate['bare_precision']}, batch 64), windows/s "
                     f"| {translate['bare_windows_per_s']:,.1f} | - | - |")
        for label, run in translate.get("runs", {}).items():
            lines.append(f"| translate {label}: {run['precision']}, batch {run['batch_size']}, compile "
                         f"{run['compile_seconds']:.1f} s, GPU peak {run['peak_gib']:.1f} GiB | "
                         f"{run['seconds']:.2f} s | - | - |")
    for row in _load(out / "cog.json") or []:
        lines.append(f"| COG {row['size']}², {row['codec']}, {row['threads']} threads: encode / total Mpx/s "
                     f"| {row['encode_mpx_per_s']:,.1f} / {row['total_mpx_per_s']:,.1f} | - | "
                     f"{'COG ok' if row['cog_ok'] else 'not a COG'} |")
    lines.append(f"| tests (-m cuda) | {_tests_line(out / 'tests.log')} | all pass | - |")
    try:
        steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines() if line]
    except OSError:
        steps = []
    for name, status, seconds in steps:
        lines.append(f"| step {name}: exit {status} | {seconds} s | - | {'yes' if status == '0' else 'no'} |")
    env = (out / "env.txt").read_text().strip().replace("\n", "; ") if (out / "env.txt").is_file() else "missing"
    return f"GPU check: {env}\n\n" + "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(summary(Path(sys.argv[1])))
