"""Where a translate call spends its time: the report's stages and waits, INFO log lines with timestamps, and
optionally py-spy profiles of every thread (when the ``py-spy`` executable is on PATH).

    python3 benchmarks/translate_profile.py --size 16384 --out prof            # on a GPU machine
    python3 benchmarks/translate_profile.py --device cpu --size 1024 --width 8 --out prof   # a dry run

Each run (``--runs``, default ``default,compile``) translates the same synthetic uint8 scene (ngf-64 generator with
random weights) after one untimed warm-up call (cuDNN's kernel choice, pinned-memory pools). With py-spy, each
timed run is sampled twice into ``OUT/NAME.threads.txt`` (every thread, idle included) and
``OUT/NAME.gil.txt`` (only the thread holding the GIL), py-spy's "raw" collapsed-stack format; the summary
``OUT/NAME.top.txt`` lists, per thread, the frames that took the most samples.

``--snap-share`` (on a GPU; benchmarks/gpu_check.sh's ``snap_kernels`` step) settles the palette's device cost:
the default run and the snapped run (``palette``) under torch.profiler, the device time of all their kernels and
copies each, and the snapped run's extra device time as its share (CUDA-event stage times count the idle gaps
between a stage's kernels and so overstate it); ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from translate_bench import make_scene, run_translate, save_random_generator, write_palette  # noqa: E402

RUNS = {"default": {}, "compile": {"compile": True}, "palette": {"palette": None}, "fp32": {"precision": "fp32"}}


def profiled(out: Path, name: str, mode: str, call):  # type: ignore[no-untyped-def]
    """``call()`` while py-spy samples this process (``mode``: "threads" or "gil"); nothing without py-spy."""
    spy = shutil.which("py-spy")
    if spy is None:
        return call()
    flags = ["--threads", "--idle"] if mode == "threads" else ["--threads", "--gil"]
    if os.environ.get("PY_SPY_NATIVE"):  # C/C++ frames too (what a thread waits in: CUDA, GDAL, the GIL)
        flags.append("--native")
    path = out / f"{name}.{mode}.txt"
    recorder = subprocess.Popen([spy, "record", "--pid", str(os.getpid()), "--rate", "250", "--nonblocking",
                                 "--format", "raw", "-o", str(path), *flags],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    try:
        return call()
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)


def _activities() -> list:
    """What torch.profiler records: CPU activity, and CUDA activity where there is a GPU."""
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


def torch_profiled(out: Path, name: str, call):  # type: ignore[no-untyped-def]
    """``call()`` under torch.profiler (CPU and CUDA activity, every thread's CUDA runtime calls through CUPTI):
    the table of host and device time per op and runtime call goes to ``OUT/NAME.torchprof.txt``."""
    import torch

    with torch.profiler.profile(activities=_activities()) as prof:
        result = call()
    averages = prof.key_averages()
    text = [averages.table(sort_by="self_cpu_time_total", row_limit=45)]
    if torch.cuda.is_available():
        text.append(averages.table(sort_by="self_cuda_time_total", row_limit=25))
    (out / f"{name}.torchprof.txt").write_text("\n".join(text))
    return result


def kernel_seconds(prof) -> float:  # type: ignore[no-untyped-def]
    """Device time of every kernel and copy a torch.profiler profile saw (the device-side rows only: a CPU op's
    own row counts the kernels it launched again)."""
    from torch.autograd import DeviceType

    return sum(row.self_device_time_total for row in prof.key_averages() if row.device_type == DeviceType.CUDA) / 1e6


def snap_share(args: argparse.Namespace, scene: Path, weights: Path, tmp: Path) -> None:
    """The palette stage's share of the snapped run's kernel time: (snapped - default) / snapped."""
    import torch

    seconds = {}
    for name in ("default", "palette"):
        options = {"palette": str(write_palette(tmp / "palette.json"))} if name == "palette" else {}
        with torch.profiler.profile(activities=_activities()) as prof:
            run_translate(scene, weights, tmp / f"{name}.tif", args.device, **options)
        seconds[name] = kernel_seconds(prof)
        print(f"{name}: kernels and copies {seconds[name]:.3f} s of device time", flush=True)
    extra = seconds["palette"] - seconds["default"]
    share = extra / seconds["palette"] if seconds["palette"] > 0 else None
    print(f"snap + min-region: {extra:.3f} s, {'n/a (no device kernels)' if share is None else f'{100 * share:.1f} %'}"
          " of the snapped run's device time")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "width": args.width, "default_kernel_s": seconds["default"],
                                         "palette_kernel_s": seconds["palette"], "snap_kernel_share": share}))


def top_frames(path: Path, limit: int = 12) -> str:
    """Per thread: samples in all, then the innermost project/torch/rasterio frames that took the most."""
    per_thread: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return f"{path.name}: missing\n"
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        totals[thread] += int(count)
        inner = [f for f in frames[1:] if "geo_sat2map" in f or "rasterio" in f or "torch" in f
                 or ("(" not in f and "<" not in f)]  # native frames have no file
        key = " <- ".join(f.split(" (")[0] for f in (inner[-3:][::-1] if inner else frames[-1:]))
        per_thread[thread][key] += int(count)
    text = [f"== {path.name}"]
    for thread, total in totals.most_common():
        text.append(f"-- {thread}: {total} samples")
        for key, count in per_thread[thread].most_common(limit):
            text.append(f"   {100 * count / total:5.1f} %  {key}")
    return "\n".join(text) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--runs", default="default,compile")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--torch-profiler", action="store_true", help="torch.profiler tables instead of py-spy")
    parser.add_argument("--snap-share", action="store_true", help="only the palette's share of the kernel time")
    parser.add_argument("--json", type=Path, help="--snap-share: write its figures to this file")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    handler = logging.StreamHandler(sys.stdout)
    started = time.perf_counter()
    handler.setFormatter(logging.Formatter("%(relativeCreated)8.0f ms %(threadName)s: %(message)s"))
    logging.getLogger("geo_sat2map").addHandler(handler)
    logging.getLogger("geo_sat2map").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="translate-profile-") as tmp_dir:
        tmp = Path(tmp_dir)
        weights = save_random_generator(tmp / "generator.pt", args.width)
        scene = make_scene(tmp / "scene.tif", args.size, args.size)
        print(f"scene {args.size}² made at {time.perf_counter() - started:.1f} s", flush=True)
        run_translate(scene, weights, tmp / "warm.tif", args.device)  # warm-up, untimed
        if args.snap_share:
            snap_share(args, scene, weights, tmp)
            return
        for name in args.runs.split(","):
            options = dict(RUNS[name])
            if "palette" in options:
                options["palette"] = str(write_palette(tmp / "palette.json"))
            modes = ("torch",) if args.torch_profiler else ("threads", "gil") if name == "default" else ("threads",)
            for mode in modes:
                print(f"\n=== {name} ({mode} profile)", flush=True)
                def call() -> object:
                    return run_translate(scene, weights, tmp / f"{name}.tif", args.device, **options)

                report = torch_profiled(args.out, name, call) if mode == "torch" else profiled(args.out, name, mode, call)
                mpx = report.width * report.height / 1e6
                print(f"whole {report.seconds:.2f} s ({report.megapixels_per_second:.0f} Mpx/s), stream "
                      f"{report.stream_seconds:.2f} s ({mpx / report.stream_seconds:.0f} Mpx/s), generator busy "
                      f"{100 * report.generator_busy:.0f} %, batch {report.batch_size}, {report.precision}")
                print("stages: " + ", ".join(f"{k} {v:.2f}" for k, v in report.stages.items()), flush=True)
                if mode != "torch":
                    (args.out / f"{name}.top.txt").open("a").write(top_frames(args.out / f"{name}.{mode}.txt"))


if __name__ == "__main__":
    main()
