"""translate under ``torchrun``: joining the processes, sharing work between them, talking from rank 0.

The processes only coordinate (who does what, who is done), so they always use gloo, also on GPUs: no NCCL
communicator per GPU for a handful of small messages. A process may wait a long time for the others (a big
scene on another rank, the assembly on rank 0), hence the long collective timeout; a process that dies is
noticed by torchrun, which stops the others.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from datetime import timedelta

import torch

from geo_sat2map.device import resolve_device
from geo_sat2map.training import distributed
from geo_sat2map.training.distributed import DistContext

COORDINATION_TIMEOUT = timedelta(hours=24)


def launched_by_torchrun() -> bool:
    return distributed.context_from_env().enabled


@contextlib.contextmanager
def process_group(device_spec: str) -> Iterator[tuple[DistContext, torch.device]]:
    """This process's place in the launch and its device (``cuda:LOCAL_RANK`` for a CUDA device); only rank 0
    logs below warnings. A single process without torchrun gets a one-process context."""
    ctx = distributed.context_from_env()
    device = distributed.start(ctx, resolve_device(device_spec), backend="gloo", timeout=COORDINATION_TIMEOUT)
    logger = logging.getLogger("geo_sat2map")
    level = logger.level
    if not ctx.is_main:
        logger.setLevel(max(level, logging.WARNING))
    try:
        yield ctx, device
    finally:
        logger.setLevel(level)
        distributed.stop(ctx)


def from_main(ctx: DistContext, value: object) -> object:
    """Rank 0's ``value`` on every rank (one decision taken once, e.g. which rank translates which scene)."""
    return distributed.gather(ctx, value if ctx.is_main else None)[0]


def largest_first(sizes: Sequence[int], ranks: int) -> list[list[int]]:
    """Indices of ``sizes`` per rank: largest first, each to the rank with the least work so far (ties: the
    lower rank), which keeps the ranks' totals within one item of each other."""
    loads = [0] * ranks
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(ranks), key=lambda r: (loads[r], r))
        shares[rank].append(index)
        loads[rank] += sizes[index]
    return shares
