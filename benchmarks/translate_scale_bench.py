"""translate at scale on this machine: 2 processes (torchrun, gloo, 1 thread each) against 1 process.

    .venv/bin/python benchmarks/translate_scale_bench.py                      # 4096² scene, eight 1024² scenes
    .venv/bin/python benchmarks/translate_scale_bench.py --size 2048 --sheet 512 --sheets 4   # a quick look

Every row is the wall time of one whole command in fresh interpreters (start-up, model load, streaming,
encoding, and for a split scene the serial step on rank 0), on the CPU with a random-weights ngf-``--width``
unet256 (the compute of a trained one). Rows:
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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="scale-bench-") as folder:
        tmp = Path(folder)
        weights = save_random_generator(tmp / "generator.pt", args.width)
        scene = make_scene(tmp / "scene.tif", args.size, args.size)
        sheets = [make_scene(tmp / f"sheet{i}.tif", args.sheet, args.sheet) for i in range(args.sheets)]
        common = ["-w", str(weights), "--overwrite"]
        rows = []

        def row(job: str, processes: int, threads: int, megapixels: float, extra: list[str]) -> float:
            seconds, log = run(translate_command(processes, [*extra, *common]), threads, tmp)
            serial = SERIAL.search(log)
            rows.append((job, f"{processes} x {threads}", seconds, megapixels / seconds,
                         f"{float(serial.group(2)):.1f} ({100 * float(serial.group(2)) / seconds:.0f} %)"
                         if serial else "-"))
            print(f"  {job}, {processes} x {threads}: {seconds:.1f} s", file=sys.stderr)
            return seconds

        big = args.size**2 / 1e6
        many = args.sheets * args.sheet**2 / 1e6
        one = row(f"{args.size}² scene -> .tif", 1, args.cores, big, [str(scene), "-o", "one.tif"])
        row(f"{args.size}² scene -> .tif", 1, 1, big, [str(scene), "-o", "one1.tif"])
        split_tif = row(f"{args.size}² scene -> .tif", 2, 1, big, [str(scene), "-o", "two.tif"])
        split_vrt = row(f"{args.size}² scene -> .vrt", 2, 1, big, [str(scene), "-o", "two.vrt"])
        folder_one = row(f"{args.sheets} x {args.sheet}² -> folder", 1, args.cores, many,
                         [*map(str, sheets), "-o", "maps1"])
        folder_two = row(f"{args.sheets} x {args.sheet}² -> folder", 2, 1, many, [*map(str, sheets), "-o", "maps2"])

    print(f"translate at scale, CPU, ngf {args.width}, {args.cores} cores; processes x threads each; wall time of "
          "the whole command")
    print(f"| job | processes x threads | wall s | Mpx/s | serial step s (share) |")
    print("|---|---|---|---|---|")
    for job, layout, seconds, rate, serial in rows:
        print(f"| {job} | {layout} | {seconds:.1f} | {rate:.2f} | {serial} |")
    print(f"2 processes vs 1 ({args.cores} threads): one scene -> .tif x{one / split_tif:.2f}, -> .vrt "
          f"x{one / split_vrt:.2f}; {args.sheets} scenes x{folder_one / folder_two:.2f}")


if __name__ == "__main__":
    main()
