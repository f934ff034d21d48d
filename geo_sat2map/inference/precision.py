"""``--precision`` for translate and evaluate: the dtype asked for, or, for ``auto`` on the CPU, the one that
runs the run's own generator faster (measured on a few batches, then cached: see ``cpu_precision``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from geo_sat2map.cpu_precision import choose_on_cpu, measure_clock
from geo_sat2map.device import precision_name, resolve_precision
from geo_sat2map.inference.runner import GeneratorRunner, StageClock
from geo_sat2map.models import InferenceGenerator

# Probe batches of 2 windows, whatever the run's batch size (which must never change the result, so it must not
# change the choice either): batch 1 understates bf16's gain (1.2-1.5x where batch 2 shows 1.7x and batch 8
# 2x), and larger batches would cost more than the probe may add to a first run (ngf 64 on one thread: 2
# windows take 0.4 s at fp32, 0.25 s at bf16).
PROBE_BATCH = 2
PROBE_ROUNDS = 3  # timed rounds of fp32 then bf16, after a warm-up on one window; the fastest of each counts
PROBE_BUDGET_S = 1.0  # no third round once the first two took this long (large tiles, slow CPUs)


@dataclass(frozen=True)
class Precision:
    """The resolved compute dtype, why, and what deciding it cost (seconds of measurement, 0 when cached)."""

    dtype: torch.dtype
    reason: str
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return precision_name(self.dtype)


def inference_precision(
    spec: str, device: torch.device, model: Callable[[], InferenceGenerator], tile: int, arch: str, width: int,
    norm_mode: str,
) -> Precision:
    """The dtype for ``--precision spec`` running the generator ``model()`` gives (``arch`` of ``width``) on
    ``tile``-px windows; ``model`` is called only when the choice is measured."""
    dtype = resolve_precision(spec, device)
    if spec != "auto":
        return Precision(dtype, f"--precision {spec}")
    if device.type != "cpu":
        return Precision(dtype, f"auto on {device.type}: " + (
            "bf16, which this GPU supports" if dtype == torch.bfloat16 else "fp32 (no bf16 here)"))
    shape = {"arch": arch, "width": width, "norm": norm_mode, "tile": tile}
    choice = choose_on_cpu("generator", shape, lambda: time_generator(model(), tile, PROBE_BATCH), "window")
    return Precision(choice.dtype, f"auto: {choice.reason}", choice.seconds)


def time_generator(model: InferenceGenerator, tile: int, batch: int) -> tuple[float, float]:
    """CPU seconds per window of ``model`` at fp32 and at bf16 (``cpu_precision.measure_clock``), run as the
    engine runs it (``GeneratorRunner``, denormals flushed) on random input; rounds alternate the two and the
    fastest of each counts."""
    cpu = torch.device("cpu")
    runners = [GeneratorRunner(model, cpu, dtype, StageClock(cpu)) for dtype in (torch.float32, torch.bfloat16)]
    windows = torch.rand(batch, 3, tile, tile, generator=torch.Generator().manual_seed(0)) * 2 - 1
    best = [float("inf")] * len(runners)
    with runners[0].active():
        for runner in runners:  # warm-up: oneDNN builds its kernels for this dtype, the allocator its pools
            runner(windows[:1])
        started = time.perf_counter()
        for round_ in range(PROBE_ROUNDS):
            for index, runner in enumerate(runners):
                begun = measure_clock()
                runner(windows)
                best[index] = min(best[index], (measure_clock() - begun) / batch)
            if round_ >= 1 and time.perf_counter() - started > PROBE_BUDGET_S:
                break
    return best[0], best[1]
