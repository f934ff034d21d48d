"""Spatial train/val/test split by blocks of tiles, with a buffer so that no two splits share a pixel.

Scheme (pure window math, no files):

1. Each pair's tiling grid is cut into square blocks of ``block_tiles x block_tiles`` tiles, anchored at the pair's
   first window. A window belongs to the block holding its top-left pixel.
2. The blocks that hold windows are shuffled with ``numpy.random.default_rng(seed)`` and filled in that order:
   val until it holds ``val_fraction`` of the windows, then test likewise; the rest is train. Every split with a
   non-zero fraction gets at least one block and train always keeps one. Blocks without windows count as train.
   If there are too few blocks for the fractions, the block side is halved (down to one tile).
3. Buffer (only matters when ``stride < tile``, where windows straddle block edges). Held-out data is the scarce
   part, so the buffer is taken from train: a val or test window is kept unless it reaches into a block of the
   other held-out split (where val and test windows still meet inside a train block, val wins); a train window is
   kept only if it shares no pixel with a kept val or test window. So no val or test window overlaps a train
   window, val and test never overlap, and with ``stride == tile`` nothing is dropped.

The result depends only on the windows, the fractions, the block size and the seed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geo_sat2map.errors import UserError

SPLITS = ("train", "val", "test")
# A split with fraction f should get at least this many blocks' worth of granularity: blocks >= MIN / f.
MIN_BLOCKS_PER_FRACTION = 2

BlockKey = tuple[int, int, int]  # (group, block column, block row)


@dataclass(frozen=True)
class PlacedWindow:
    """A tile window on the tiling grid of one pair (``group``); blocks never span groups."""

    group: int
    col: int
    row: int


@dataclass(frozen=True)
class SplitPlan:
    splits: list[str | None]  # per window, in input order; None = dropped as buffer
    block_tiles: int
    blocks: dict[str, int]  # number of blocks per split

    @property
    def dropped(self) -> int:
        return sum(s is None for s in self.splits)


class _WindowIndex:
    """Square windows of one size bucketed by tile-sized cells: overlap queries look at 3 x 3 cells only."""

    def __init__(self, tile_size: int):
        self.tile = tile_size
        self.cells: dict[tuple[int, int, int], list[PlacedWindow]] = {}

    def add(self, w: PlacedWindow) -> None:
        self.cells.setdefault((w.group, w.col // self.tile, w.row // self.tile), []).append(w)

    def overlaps(self, w: PlacedWindow) -> bool:
        cx, cy = w.col // self.tile, w.row // self.tile
        return any(
            abs(o.col - w.col) < self.tile and abs(o.row - w.row) < self.tile
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            for o in self.cells.get((w.group, cx + dx, cy + dy), ())
        )


def minimum_windows(val_fraction: float, test_fraction: float) -> int:
    """The fewest windows that can be split as asked: one for train and one per non-empty held-out split."""
    return 1 + (val_fraction > 0) + (test_fraction > 0)


def too_few_windows(count: int) -> UserError:
    return UserError(
        f"only {count} tile(s): too few to split into train/val/test; "
        "lower --val-fraction/--test-fraction (0 disables a split) or use a smaller --tile-size or --stride"
    )


def _origins(windows: Sequence[PlacedWindow]) -> dict[int, tuple[int, int]]:
    origins: dict[int, tuple[int, int]] = {}
    for w in windows:
        x, y = origins.get(w.group, (w.col, w.row))
        origins[w.group] = (min(x, w.col), min(y, w.row))
    return origins


def _assign_blocks(
    weights: Counter[BlockKey], fractions: dict[str, float], seed: int
) -> dict[BlockKey, str]:
    """Shuffle blocks and fill val, then test, to their target window counts; the rest is train."""
    keys = sorted(weights)
    order = np.random.default_rng(seed).permutation(len(keys))
    total = sum(weights.values())
    targets = {s: fractions[s] * total for s in ("val", "test")}
    counts = {"val": 0, "test": 0}
    assigned: dict[BlockKey, str] = {}
    for index in order:
        key = keys[index]
        weight = weights[key]
        split = "train"
        for name in ("val", "test"):
            wanted = targets[name] > 0 and (counts[name] == 0 or counts[name] + weight / 2 <= targets[name])
            if wanted:
                split = name
                counts[name] += weight
                break
        assigned[key] = split
    return assigned


def _feasible(assigned: dict[BlockKey, str], fractions: dict[str, float]) -> bool:
    present = set(assigned.values())
    return "train" in present and all(fractions[s] == 0 or s in present for s in ("val", "test"))


def plan_splits(
    windows: Sequence[PlacedWindow],
    tile_size: int,
    val_fraction: float,
    test_fraction: float,
    seed: int = 0,
    block_tiles: int = 4,
) -> SplitPlan:
    """Assign every window to train/val/test (or None = buffer) by the block scheme in this module's docstring."""
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    if not windows:
        return SplitPlan([], block_tiles, {s: 0 for s in SPLITS})
    if val_fraction == 0 and test_fraction == 0:
        return SplitPlan(["train"] * len(windows), block_tiles, {"train": 0, "val": 0, "test": 0})
    origins = _origins(windows)
    smallest = min(f for f in (val_fraction, test_fraction) if f > 0)
    wanted_blocks = math.ceil(MIN_BLOCKS_PER_FRACTION / smallest)
    k = max(1, block_tiles)
    while True:
        block = k * tile_size
        anchors = [
            (w.group, (w.col - origins[w.group][0]) // block, (w.row - origins[w.group][1]) // block) for w in windows
        ]
        weights = Counter(anchors)
        assigned = _assign_blocks(weights, fractions, seed)
        if k == 1 or (_feasible(assigned, fractions) and len(weights) >= wanted_blocks):
            break
        k //= 2
    if not _feasible(assigned, fractions):
        raise too_few_windows(len(windows))
    splits: list[str | None] = [None] * len(windows)
    for i, (w, anchor) in enumerate(zip(windows, anchors)):
        own = assigned[anchor]
        if own == "train":
            continue
        ox, oy = origins[w.group]
        touched = {
            assigned.get((w.group, bx, by), "train")
            for bx in range((w.col - ox) // block, (w.col + tile_size - 1 - ox) // block + 1)
            for by in range((w.row - oy) // block, (w.row + tile_size - 1 - oy) // block + 1)
        }
        if touched <= {own, "train"}:
            splits[i] = own
    held_out = _WindowIndex(tile_size)
    for i, w in enumerate(windows):
        if splits[i] == "val":
            held_out.add(w)
    for i, w in enumerate(windows):
        if splits[i] == "test" and held_out.overlaps(w):  # met a val window inside a train block: val wins
            splits[i] = None
    for i, w in enumerate(windows):
        if splits[i] == "test":
            held_out.add(w)
    for i, (w, anchor) in enumerate(zip(windows, anchors)):
        if assigned[anchor] == "train" and not held_out.overlaps(w):
            splits[i] = "train"
    block_counts = Counter(assigned.values())
    return SplitPlan(splits, k, {s: block_counts.get(s, 0) for s in SPLITS})
