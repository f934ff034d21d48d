"""Training data kept decoded on the training device, and the recipe's augmentation run there as tensor ops.

The train tiles are decoded and resized to ``load_size`` once (the resize draws nothing at random, and it is
the very function the worker path runs), into one uint8 ``(N, 6, L, L)`` tensor. Each step then crops, flips
and rotates its batch with one gather whose indices come from ``draw_sample(seed, epoch, tile)``, the draws
the worker path makes, and scales it to [-1, 1] by table lookup. So both paths feed the step bit-identical
batches. Per step the host only draws three numbers per tile; the device work has static shapes and no host
synchronisation, so it is captured in the step's CUDA graph.

Both paths present the same interface to the loop (``WorkerFeed`` and ``DeviceFeed``): an iterable of *raw*
batches (tuples of host tensors, copied to the device by the step runner) and ``prepare(raw)``, device-only
tensor ops that turn a raw batch on the device into the step's ``(A, B)``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from geo_sat2map.training.data import (
    EpochKeyedSampler,
    PairDataset,
    draw_sample,
    make_loader,
    orient,
    to_unit,
)

GIB = 1024**3
UPLOAD_BATCH = 16  # tiles decoded per DataLoader item while uploading
DEVICE_VAL_BATCH = 32  # validation tiles per forward pass when they are on the device


@dataclass(frozen=True)
class DataPlan:
    on_device: bool
    reason: str
    bytes_needed: int


def plan_device_data(
    mode: str, device: torch.device, n_train: int, load_size: int, n_val: int, crop_size: int, share: float,
    device_memory: int | None = None,
) -> DataPlan:
    """Whether the tiles live on the device (``mode`` "auto", "on" or "off"), and why, in words for the log.

    "auto" keeps them there on CUDA when the uint8 train tiles at ``load_size`` plus the validation inputs fit in
    ``share`` of the GPU's memory (``device_memory``, default: the GPU's total). Elsewhere "auto" keeps the worker
    path, so CPU runs behave as before; "on" decodes into memory on any device.
    """
    needed = n_train * 6 * load_size**2 + n_val * 3 * crop_size**2
    size = f"{needed / GIB:.2f} GiB"
    if mode == "off":
        return DataPlan(False, "device_data = off: tiles decoded and augmented every step", needed)
    if mode == "on":
        return DataPlan(True, f"device_data = on: {size} of tiles decoded once into {device.type} memory", needed)
    if device.type != "cuda":
        return DataPlan(False, f"{device.type}: tiles decoded and augmented every step; device_data = on keeps "
                               "them decoded in memory", needed)
    if device_memory is None:
        device_memory = torch.cuda.get_device_properties(device).total_memory
    budget = share * device_memory
    if needed > budget:
        return DataPlan(False, f"the tiles need {size} at load_size {load_size}, more than device_data_share "
                               f"{share:g} of the GPU's {device_memory / GIB:.0f} GiB (raise device_data_share to "
                               "keep them on the GPU)", needed)
    return DataPlan(True, f"{size} of tiles decoded once into GPU memory (within device_data_share {share:g} of "
                          f"{device_memory / GIB:.0f} GiB)", needed)


class _View(Dataset):
    """Index -> ``view(index)`` (``PairDataset.resized`` or ``centre_crop``), for decoding a whole tile set in
    DataLoader workers."""

    def __init__(self, view: Callable[[int], Any], length: int) -> None:
        self.view, self.length = view, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.view(index)


def _decode_into(dataset: PairDataset, view: Callable[[int], Any], device: torch.device, workers: int) -> Iterator[Any]:
    """Batches of ``view`` over ``dataset`` decoded by ``workers`` processes (pinned for an asynchronous copy on
    CUDA)."""
    return iter(make_loader(_View(view, len(dataset)), workers, batch_size=UPLOAD_BATCH,
                            pin_memory=device.type == "cuda"))


class UnitScale:
    """uint8 -> [-1, 1] by table lookup: the 256 values ``to_unit`` gives on the CPU, so the result is the worker
    path's to the bit on any device (CUDA divides by a scalar as a multiplication by its reciprocal)."""

    def __init__(self, device: torch.device) -> None:
        self.table = to_unit(torch.arange(256, dtype=torch.uint8)).to(device)

    def __call__(self, image: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        values = self.table.index_select(0, image.flatten().long())  # index_select: no host sync, capturable
        return values.view(image.shape).contiguous(memory_format=memory_format)


def orientation_maps(crop_size: int, load_size: int, device: torch.device) -> torch.Tensor:
    """(16, crop²) int64: for each ``SampleDraw.orientation``, the flat offset in a resized tile (relative to the
    crop corner) of every output pixel. Made by applying ``orient`` itself to a grid of coordinates, so a gather
    with them reproduces the worker path's flips and rotations exactly."""
    rows = torch.arange(crop_size).view(-1, 1).expand(crop_size, crop_size)
    cols = torch.arange(crop_size).view(1, -1).expand(crop_size, crop_size)
    offsets = rows * load_size + cols
    maps = [
        orient(offsets, bool(code & 1), bool(code & 2), code >> 2).reshape(-1) for code in range(16)
    ]
    return torch.stack(maps).to(device)


class DeviceTiles:
    """The train tiles, resized to ``load_size``, as one uint8 (N, 6, L, L) tensor on ``device``."""

    def __init__(self, dataset: PairDataset, device: torch.device, workers: int) -> None:
        augment = dataset.augment
        assert augment is not None
        self.augment, self.seed = augment, dataset.seed
        size = augment.load_size
        started = time.perf_counter()
        self.data = torch.empty((len(dataset), 6, size, size), dtype=torch.uint8, device=device)
        done = 0
        for batch in _decode_into(dataset, dataset.resized, device, workers):
            self.data[done : done + len(batch)].copy_(batch, non_blocking=True)
            done += len(batch)
        self.maps = orientation_maps(augment.crop_size, size, device)
        self.to_unit = UnitScale(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.upload_seconds = time.perf_counter() - started

    def params(self, keys: Sequence[tuple[int, int]]) -> torch.Tensor:
        """(n, 3) int64 on the host (pinned for an asynchronous copy on CUDA): per key ``(epoch, index)``, the
        tile, its crop's flat corner offset in the resized tile and its orientation code."""
        size = self.augment.load_size
        rows = []
        for epoch, index in keys:
            draw = draw_sample(self.augment, self.seed, epoch, index)
            rows.append((index, draw.y * size + draw.x, draw.orientation))
        params = torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)
        return params.pin_memory() if self.data.is_cuda else params

    def crops(self, params: torch.Tensor) -> torch.Tensor:
        """uint8 (b, 6, crop, crop) for a batch of ``params`` rows: tensor ops only (no host sync, static shapes)."""
        crop = self.augment.crop_size
        tiles = self.data.index_select(0, params[:, 0]).flatten(2)  # (b, 6, L*L)
        index = self.maps.index_select(0, params[:, 2]) + params[:, 1:2]  # (b, crop*crop)
        out = tiles.gather(2, index[:, None, :].expand(-1, tiles.shape[1], -1))
        return out.view(-1, tiles.shape[1], crop, crop)


class DeviceFeed:
    """Batches cut from ``DeviceTiles`` in the sampler's order. A raw batch is ``(params,)``, drawn on the host
    batch by batch (about 50 us a tile) while the GPU runs earlier steps; the step runner copies it over."""

    def __init__(self, tiles: DeviceTiles, sampler: EpochKeyedSampler, batch_size: int,
                 memory_format: torch.memory_format) -> None:
        self.tiles, self.sampler, self.batch_size, self.memory_format = tiles, sampler, batch_size, memory_format

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        keys = iter(self.sampler)
        while batch := list(itertools.islice(keys, self.batch_size)):
            yield (self.tiles.params(batch),)

    def prepare(self, raw: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.tiles.crops(raw[0])
        to_unit = self.tiles.to_unit
        return to_unit(pair[:, :3], self.memory_format), to_unit(pair[:, 3:], self.memory_format)


class WorkerFeed:
    """The DataLoader's host batches ``(A, B)``; ``prepare`` only lays them out for the networks."""

    def __init__(self, loader: Iterable[Sequence[torch.Tensor]], memory_format: torch.memory_format) -> None:
        self.loader, self.memory_format = loader, memory_format

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return iter(self.loader)

    def prepare(self, raw: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        A, B = raw
        return A.contiguous(memory_format=self.memory_format), B.contiguous(memory_format=self.memory_format)


class DeviceValSet:
    """Validation centre crops (of at least one tile): A (uint8) on the device, B (uint8) and the validity on the
    host where the metrics run."""

    def __init__(self, dataset: PairDataset, device: torch.device, workers: int) -> None:
        inputs, targets, valid = [], [], []
        for a, b, v in _decode_into(dataset, dataset.centre_crop, device, workers):
            inputs.append(a.to(device, non_blocking=True))
            targets.append(b)
            valid.append(v)
        self.inputs, self.targets, self.valid = torch.cat(inputs), torch.cat(targets), torch.cat(valid)
        self.to_unit = UnitScale(device)

    def __len__(self) -> int:
        return len(self.targets)

    def batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(A in [-1, 1] on the device, B uint8 on the host, valid on the host)``, as ``loop.validate`` takes
        them."""
        for start in range(0, len(self), DEVICE_VAL_BATCH):
            stop = start + DEVICE_VAL_BATCH
            yield (self.to_unit(self.inputs[start:stop], torch.contiguous_format), self.targets[start:stop],
                   self.valid[start:stop])
