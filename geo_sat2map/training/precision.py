"""``precision = "auto"``: time the step at fp32 and at bf16 for this configuration and keep the faster.

On CUDA, which is faster depends on the batch: at batch 1 the step is a chain of small kernels where
autocast's casts cost more than bf16 saves; at batch 16 bf16's tensor-core throughput wins. On a CPU with
native bf16 (avx512_bf16, AMX) bf16 usually wins (1.4-1.5x at ngf 64); the choice is cached per CPU, torch
and network shape (``cpu_precision``), and a CPU without native bf16 stays at fp32 unmeasured. The
candidates are timed on throwaway networks of the run's size, running the step the way the run will (CUDA
graph or eager), so the run's own weights and random streams are untouched. fp32 here is PyTorch's default
on CUDA: convolutions run on TF32 tensor cores. A resumed run keeps the choice it started with, so it
continues exactly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from geo_sat2map.cpu_precision import choose_on_cpu, cpu_model, measure_clock
from geo_sat2map.device import precision_name, resolve_precision
from geo_sat2map.training import distributed
from geo_sat2map.training.config import TrainConfig
from geo_sat2map.training.device_data import WorkerFeed
from geo_sat2map.training.distributed import DistContext
from geo_sat2map.training.loop import LOSS_NAMES, Pix2Pix
from geo_sat2map.training.steps import plan_graph, step_runner

log = logging.getLogger(__name__)

CANDIDATES = ("fp32", "bf16")
# bf16 must beat fp32 by this factor to be chosen: its coarser rounding is worth avoiding for a tie.
BF16_MARGIN = 1.05
TIMED_STEPS = 30
# On the CPU a step takes 0.1-1 s: two timed steps after one warm-up (the fastest counts) tell fp32 from bf16
# when bf16 must win by BF16_MARGIN, in a few seconds paid once per configuration (then cached).
CPU_TIMED_STEPS = 2
NAMES = {"fp32": "fp32 (TF32 convolutions)", "bf16": "bf16 autocast"}


@dataclass(frozen=True)
class PrecisionChoice:
    dtype: torch.dtype
    reason: str
    # What "auto" measured on CUDA, stored in checkpoint.pt so a resume keeps it: {gpu, batch_size, precision, reason}
    record: dict[str, Any] | None = None
    seconds: float = 0.0  # time spent measuring
    cuda: bool = True

    @property
    def label(self) -> str:
        name = precision_name(self.dtype)
        return NAMES.get(name, name) if self.cuda else name


def choose_precision(
    config: TrainConfig, device: torch.device, ctx: DistContext, stored: dict[str, Any] | None = None
) -> PrecisionChoice:
    """The compute dtype for this run and why (``stored``: the record of the run being resumed, if any)."""
    if config.precision != "auto":
        dtype = resolve_precision(config.precision, device)
        return PrecisionChoice(dtype, f"precision = {config.precision}", cuda=device.type == "cuda")
    if device.type == "cpu":
        return _choose_on_cpu(config, device, ctx, stored)
    if device.type != "cuda":
        return PrecisionChoice(torch.float32, f"{device.type}: auto is fp32 here (it measures on CUDA and CPUs)",
                               cuda=False)
    gpu = torch.cuda.get_device_name(device)
    if stored and stored.get("gpu") == gpu and stored.get("batch_size") == config.batch_size:
        return PrecisionChoice(
            resolve_precision(stored["precision"], device),
            f"kept from the start of this run, for an exact continuation ({stored['reason']})",
            stored,
        )
    if not torch.cuda.is_bf16_supported():
        return PrecisionChoice(torch.float32, "this GPU has no bf16")
    started = time.perf_counter()
    rates = {}
    for name in CANDIDATES:
        dtype = resolve_precision(name, device)
        rates[name] = measure_steps_per_s(config, device, dtype, plan_graph(config, device, dtype, ctx)[0])
    fast = rates["bf16"] > BF16_MARGIN * rates["fp32"]
    name, other = ("bf16", "fp32") if fast else ("fp32", "bf16")
    reason = (
        f"measured {rates[name]:.1f} steps/s against {rates[other]:.1f} for {NAMES[other]} at batch "
        f"{config.batch_size}" + ("" if fast else f" (bf16 is kept only when over {BF16_MARGIN:g}x faster)")
    )
    record = {"gpu": gpu, "batch_size": config.batch_size, "precision": name, "reason": reason}
    record = distributed.gather(ctx, record)[0]  # every process trains as rank 0 measured
    return PrecisionChoice(
        resolve_precision(record["precision"], device), record["reason"], record, time.perf_counter() - started
    )


def _choose_on_cpu(
    config: TrainConfig, device: torch.device, ctx: DistContext, stored: dict[str, Any] | None
) -> PrecisionChoice:
    """``auto`` on the CPU: the resumed run's choice, else fp32 or bf16 by ``cpu_precision.choose_on_cpu``."""
    cpu = cpu_model()
    if stored and stored.get("cpu") == cpu and stored.get("batch_size") == config.batch_size:
        return PrecisionChoice(
            resolve_precision(stored["precision"], device),
            f"kept from the start of this run, for an exact continuation ({stored['reason']})", stored, cuda=False,
        )
    shape = {"arch": config.arch, "ngf": config.ngf, "ndf": config.ndf, "crop": config.crop_size,
             "batch": config.batch_size, "gan": config.gan_mode}

    def seconds_per_step() -> tuple[float, float]:
        fp32, bf16 = (measure_steps_per_s(config, device, dtype, False, CPU_TIMED_STEPS, warmup=1)
                      for dtype in (torch.float32, torch.bfloat16))
        return 1 / fp32, 1 / bf16

    # Rank 0 alone measures (all ranks share the CPU's cores, and would time each other) and every process trains
    # as it chose.
    choice = choose_on_cpu("train step", shape, seconds_per_step, "step") if ctx.is_main else None
    mine = None if choice is None else {"cpu": cpu, "batch_size": config.batch_size, "precision": choice.precision,
                                        "reason": choice.reason}
    record = distributed.gather(ctx, mine)[0]
    return PrecisionChoice(resolve_precision(record["precision"], device), record["reason"], record,
                           choice.seconds if choice else 0.0, cuda=False)


def measure_steps_per_s(
    config: TrainConfig, device: torch.device, dtype: torch.dtype, graphed: bool, steps: int = TIMED_STEPS,
    warmup: int = 2,
) -> float:
    """Training steps/s of throwaway networks of ``config``'s size on random tiles, stepped eagerly or as a CUDA
    graph (as the run will step). Leaves the random streams as it found them."""
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else measure_clock  # on the CPU: one thread's CPU time (choose_on_cpu)
    with torch.random.fork_rng(devices=[device] if cuda else []):
        model = Pix2Pix(config, device, dtype, DistContext(), graphed=graphed)
        shape = (config.batch_size, 3, config.crop_size, config.crop_size)
        raw = (torch.rand(shape, device=device) * 2 - 1, torch.rand(shape, device=device) * 2 - 1)
        loss_sum = torch.zeros(len(LOSS_NAMES), device=device)
        prepare = WorkerFeed((), model.memory_format).prepare
        run = step_runner(model, prepare, loss_sum, config.batch_size)
        for _ in range(warmup):  # cuDNN's (oneDNN's) kernel choice, and the capture
            run(raw)
        _sync(device)
        started = clock()
        for _ in range(steps):
            run(raw)
        _sync(device)
        elapsed = clock() - started
    del model, run
    if cuda:
        torch.cuda.empty_cache()
    return steps / elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
