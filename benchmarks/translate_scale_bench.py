"""translate at scale on this machine: 2 processes (torchrun, gloo, 1 thread each) against 1 process.

    .venv/bin/python benchmarks/translate_scale_bench.py                      # 4096² scene, eight 1024² scenes
    .venv/bin/python benchmarks/translate_scale_bench.py --size 2048 --sheet 512 --sheets 4   # a quick look

Every row is the wall time of one whole command in fresh interpreters (start-up, model load, streaming,
encoding, and for a split scene the serial step on rank 0), best and median of ``--repeats`` interleaved rounds,
on the CPU with a random-weights ngf-``--width`` unet256 (the compute of a trained one). Rows:
- one scene, 1 process using every core (``OMP_NUM_THREADS`` = the cores), and 1 process on 1 thread (the
  per-process rate of the scaling model);
- one scene, 2 processes of 1 thread: ``-o map.tif`` (rank 0 assembles one COG from the parts through a VRT:
  the "serial" column is that assembly, parsed from rank 0's log) and ``-o map.vrt`` (parts listed in a VRT);
- ``--sheets`` scenes into a folder, 1 process and 2 processes (ranks share the scenes, largest first).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from translate_bench import make_scene, save_random_generator  # noqa: E402  (the same scenes and generator)

SERIAL = re.compile(r"(assembly|VRT) ([0-9.]+) s \(")


def run(command: list[str], threads: int, cwd: Path) -> tuple[float, str]:
    """Wall seconds and stderr of ``command``; exits if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stderr


def translate_command(processes: int, args: list[str]) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    return [*launcher, "-m", "geo_sat2map", "translate", *args, "--device", "cpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="side of the one big scene")
    parser.add_argument("--sheet", type=int, default=1024, help="side of each of the many scenes")
    parser.add_argument("--sheets", type=int, default=8, help="number of scenes")
    parser.add_argument("--width", type=int, default=16, help="generator ngf")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="threads of the 1-process rows")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all rows (interleaved); best and median")
    args = parser.parse_args()

    big = args.size**2 / 1e6
    many = args.sheets * args.sheet**2 / 1e6
    scene_job, folder_job = f"{args.size}² scene", f"{args.sheets} x {args.sheet}² scenes"
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as folder:
        tmp = Path(folder)
        weights = save_random_generator(tmp / "generator.pt", args.width)
        scene = str(make_scene(tmp / "scene.tif", args.size, args.size))
        sheets = [str(make_scene(tmp / f"sheet{i}.tif", args.sheet, args.sheet)) for i in range(args.sheets)]
        rows = [  # job, output, processes, threads, megapixels, arguments
            (scene_job, ".tif", 1, args.cores, big, [scene, "-o", "one.tif"]),
            (scene_job, ".tif", 1, 1, big, [scene, "-o", "one1.tif"]),
            (scene_job, ".tif", 2, 1, big, [scene, "-o", "two.tif"]),
            (scene_job, ".vrt", 2, 1, big, [scene, "-o", "two.vrt"]),
            (folder_job, "folder", 1, args.cores, many, [*sheets, "-o", "maps1"]),
            (folder_job, "folder", 2, 1, many, [*sheets, "-o", "maps2"]),
        ]
        times: list[list[float]] = [[] for _ in rows]
        serial: list[list[float]] = [[] for _ in rows]
        for round_ in range(args.repeats):  # interleaved, so a burst of load on the machine hits every row alike
            for index, (job, output, processes, threads, _, extra) in enumerate(rows):
                seconds, log = run(translate_command(processes, [*extra, "-w", str(weights), "--overwrite"]),
                                   threads, tmp)
                times[index].append(seconds)
                found = SERIAL.search(log)
                if found:
                    serial[index].append(float(found.group(2)))
                print(f"  round {round_ + 1}: {job} -> {output}, {processes} x {threads}: {seconds:.1f} s",
                      file=sys.stderr)

    best = [min(t) for t in times]
    print(f"translate at scale, CPU, ngf {args.width}, {args.cores} cores, best and median of {args.repeats}; "
          "wall time of the whole command (start-up included)")
    print("| job | output | processes x threads | wall s best (median) | Mpx/s (best) | serial step s (share) |")
    print("|---|---|---|---|---|---|")
    for index, (job, output, processes, threads, megapixels, _) in enumerate(rows):
        share = "-"
        if serial[index]:
            step = statistics.median(serial[index])
            share = f"{step:.1f} ({100 * step / statistics.median(times[index]):.0f} %)"
        median = statistics.median(times[index])
        print(f"| {job} | {output} | {processes} x {threads} | {best[index]:.1f} ({median:.1f}) "
              f"| {megapixels / best[index]:.2f} | {share} |")
    print(f"2 processes vs 1 process of {args.cores} threads (best times): one scene -> .tif x{best[0] / best[2]:.2f}, "
          f"-> .vrt x{best[0] / best[3]:.2f}; {args.sheets} scenes x{best[4] / best[5]:.2f}")


if __name__ == "__main__":
    main()
