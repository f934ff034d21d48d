"""Data-parallel training across processes launched by ``torchrun`` (NCCL on GPUs, gloo on CPU).

Decisions (see README, train section):
- ``batch_size`` is per process; the global batch is ``batch_size x world_size``. Gradients are averaged
  over processes, so N processes at batch 1 take the step one process would take on those N tiles. The
  LR is used as given (no automatic scaling) and the schedule counts epochs, which are passes over the
  data shared between the processes (each process sees 1/N of the tiles per epoch).
- BatchNorm is *not* synchronised: each process normalises its own batch, so at batch 1 per process the
  statistics are per-tile (instance norm), exactly the pix2pix recipe and exactly what the "instance"
  inference mode reproduces. SyncBatchNorm would turn N processes into one batch-N BatchNorm, change the
  recipe with the number of GPUs, and add an all-reduce per BatchNorm layer.
- Only rank 0 validates and writes files; the others wait at a barrier.
"""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import timedelta
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env() -> DistContext:
    """The process's place in a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    return DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def start(
    ctx: DistContext, device: torch.device, backend: str | None = None, timeout: timedelta = timedelta(hours=1)
) -> torch.device:
    """Join the process group (``backend`` default: NCCL on CUDA, gloo otherwise); on CUDA each process takes
    the GPU of its local rank. ``timeout``: how long a process may wait for the others in a collective."""
    if not ctx.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Training: rank 0 validates and writes while the others wait in a collective (the default timeout
        # allows for a long validation).
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"), timeout=timeout)
    return device


def stop(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        # On a normal exit, meet the other ranks first: tearing gloo down while a peer is still in a collective
        # can abort that peer (SIGABRT). Not on an error, where a peer may be gone and a barrier would hang.
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def wrap(module: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    if not ctx.enabled:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def any_true(ctx: DistContext, flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of boolean flags over all processes (so every process stops at the same step)."""
    if not ctx.enabled:
        return flags
    values = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def mean_over_processes(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    if not ctx.enabled:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / ctx.world_size


def gather(ctx: DistContext, obj: Any) -> list[Any]:
    """Every process's ``obj``, indexed by rank (picklable objects; small ones, e.g. RNG states)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def weights_digest(modules: Iterable[nn.Module]) -> str:
    """sha256 of the learned parameters (not BN running statistics, which each process updates locally)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, param in module.named_parameters():
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def replica_digests(ctx: DistContext, modules: list[nn.Module]) -> list[str]:
    """Each process's weights digest; a difference means data-parallel training went out of sync (a bug)."""
    digests = gather(ctx, weights_digest(modules))
    if len(set(digests)) != 1:
        raise RuntimeError(f"processes hold different weights after training: {digests}")
    return digests
