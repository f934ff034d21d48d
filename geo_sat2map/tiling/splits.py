"""Spatial train/val/test split by blocks of tiles, with a buffer so that no two splits share a pixel.

Scheme (pure window math, no files):

1. Each pair's tiling grid is cut into square blocks of ``block_tiles x block_tiles`` tiles, anchored at the pair's
   first window. A window belongs to the block holding its top-left pixel.
2. The blocks that hold windows are shuffled with ``numpy.random.default_rng(seed)`` and filled in that order:
   val until it holds ``val_fraction`` of the windows, then test likewise; the rest is train. Every split with a
   non-zero fraction gets at least one block and train always keeps one. Blocks without windows count as train.
   If there are too few blocks for the fractions, the block side is halved (down to one tile, or with
   overlapping tiles down to the stride).
3. Buffer (only matters when ``stride < tile``, where windows straddle block edges). Held-out data is the scarce
   part, so the buffer is taken from train: a val or test window is kept unless it reaches into a block of the
   other held-out split (where val and test windows still meet inside a train block, val wins); a train window is
   kept only if it shares no pixel with a kept val or test window. So no val or test window overlaps a train
   window, val and test never overlap, and with ``stride == tile`` nothing is dropped.
4. Balance. The kept windows of every split must stay near its fraction: within ``BALANCE_TOLERANCE`` of it,
   relative, or within one window (a split cannot hold part of one). Step 2 picks the largest block side with
   enough blocks; when that plan is out of balance (with small blocks or a small scene, the buffer of step 3
   can eat most of train), the other sides are tried (larger ones too: less block edge, less buffer), and if
   none is balanced the split is refused (``UnbalancedSplit``).

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
# How far (relative) a split's share of the kept windows may stray from its asked fraction.
BALANCE_TOLERANCE = 0.5

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
    block_pixels: int  # side of the blocks
    blocks: dict[str, int]  # number of blocks per split
    tile_size: int

    @property
    def dropped(self) -> int:
        return sum(s is None for s in self.splits)

    @property
    def block_tiles(self) -> int | float:
        """The block side in tiles (a fraction for blocks of a few strides, with overlapping tiles)."""
        whole, rest = divmod(self.block_pixels, self.tile_size)
        return whole if not rest else self.block_pixels / self.tile_size


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


class TooFewWindows(UserError):
    """Fewer windows (or blocks) than the requested splits need."""


def too_few_windows(count: int) -> TooFewWindows:
    return TooFewWindows(
        f"only {count} tile(s): too few to split into train/val/test; "
        "lower --val-fraction/--test-fraction (0 disables a split) or use a smaller --tile-size or --stride"
    )


class UnbalancedSplit(UserError):
    """No block size gives every split a share near its fraction; the message names the closest plan."""


def _counts(splits: Sequence[str | None]) -> dict[str, int]:
    return {s: sum(1 for p in splits if p == s) for s in SPLITS}


def _deviation(counts: dict[str, int], fractions: dict[str, float]) -> float:
    """The worst relative distance of a split's window count from its asked share (0 = exact; inf = empty).

    A count within one window of the asked share counts as exact: a split cannot hold part of a window."""
    kept = sum(counts.values())
    worst = 0.0
    for split, fraction in fractions.items():
        if fraction == 0:
            continue
        wanted = fraction * kept
        if counts[split] == 0:
            return math.inf
        if abs(counts[split] - wanted) > 1:
            worst = max(worst, abs(counts[split] - wanted) / wanted)
    return worst


def _unbalanced(plan: SplitPlan, fractions: dict[str, float], tile_size: int) -> UnbalancedSplit:
    counts = _counts(plan.splits)
    kept = sum(counts.values())
    shares = ", ".join(
        f"{s} {counts[s]} ({100 * counts[s] / max(kept, 1):.0f} % for {100 * fractions[s]:.0f} %)"
        for s in SPLITS if fractions[s] > 0
    )
    text = f"the train/val/test split cannot stay near the asked fractions: the closest gives {shares}"
    if plan.dropped:
        return UnbalancedSplit(
            f"{text}, and drops {plan.dropped} of {len(plan.splits)} tiles as split buffer (overlapping tiles of "
            "different splits may not share a pixel): the scene is too small for that buffer; use --stride "
            f"{tile_size} (no overlap, no buffer), a smaller --tile-size, or lower --val-fraction/--test-fraction"
        )
    return UnbalancedSplit(
        f"{text}: too few tiles for these fractions; use a smaller --tile-size or --stride, more pairs, or other "
        "--val-fraction/--test-fraction (0 disables a split)"
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


def _lattice_step(windows: Sequence[PlacedWindow], tile_size: int) -> int:
    """The smallest spacing of window origins along a row or column (the stride), at most one tile."""
    step = tile_size
    for axis in ("col", "row"):
        by_group: dict[int, set[int]] = {}
        for w in windows:  # one pass, not one per group: make-tiles may cut hundreds of pairs
            by_group.setdefault(w.group, set()).add(getattr(w, axis))
        for values in map(sorted, by_group.values()):
            step = min([step, *(b - a for a, b in zip(values, values[1:]))])
    return max(1, step)


def _block_sides(block_tiles: int, windows: Sequence[PlacedWindow], tile_size: int) -> list[int]:
    """The block sides tried, in pixels: the asked one, halved down to one tile, or with overlapping tiles down
    to the stride (a block smaller than a tile holds fewer windows: a small share can be met more closely);
    then doubled until one block covers the largest pair (larger blocks have less edge, so the buffer along it
    takes less of train)."""
    step = _lattice_step(windows, tile_size)
    sides = [max(1, block_tiles) * tile_size]
    while sides[-1] > step:
        sides.append(max(step, sides[-1] // 2))
    extent = max(max(w.col for w in windows) - min(w.col for w in windows),
                 max(w.row for w in windows) - min(w.row for w in windows)) + tile_size
    larger = sides[0]
    while larger < extent:
        larger *= 2
        sides.append(larger)
    return sides


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
        return SplitPlan([], block_tiles * tile_size, {s: 0 for s in SPLITS}, tile_size)
    if val_fraction == 0 and test_fraction == 0:
        return SplitPlan(["train"] * len(windows), block_tiles * tile_size, {s: 0 for s in SPLITS}, tile_size)
    smallest = min(f for f in (val_fraction, test_fraction) if f > 0)
    wanted_blocks = math.ceil(MIN_BLOCKS_PER_FRACTION / smallest)
    balanced: list[SplitPlan] = []
    closest: tuple[float, SplitPlan] | None = None
    for block in _block_sides(block_tiles, windows, tile_size):
        plan = _plan_with_blocks(windows, tile_size, fractions, seed, block)
        if plan is None:
            continue
        deviation = _deviation(_counts(plan.splits), fractions)
        if deviation > BALANCE_TOLERANCE:  # the buffer shifted the shares: aim the fill at the shares it missed
            retry = _plan_with_blocks(windows, tile_size, fractions, seed, block, _corrected(plan, fractions))
            retry_deviation = None if retry is None else _deviation(_counts(retry.splits), fractions)
            if retry_deviation is not None and retry_deviation < deviation:
                plan, deviation = retry, retry_deviation
        if deviation <= BALANCE_TOLERANCE:
            if sum(plan.blocks.values()) >= wanted_blocks:
                return plan
            balanced.append(plan)
        elif closest is None or deviation < closest[0]:
            closest = (deviation, plan)
    if balanced:  # none has as many blocks as the fractions want: the finest balanced one
        return max(balanced, key=lambda p: sum(p.blocks.values()))
    if closest is None:
        raise too_few_windows(len(windows))
    raise _unbalanced(closest[1], fractions, tile_size)


def _corrected(plan: SplitPlan, fractions: dict[str, float]) -> dict[str, float]:
    """Fill targets that undo the shift of a first plan: a held-out split that ended with twice its share (train
    lost its buffer) is aimed at half its fraction."""
    counts = _counts(plan.splits)
    kept = max(1, sum(counts.values()))
    targets = dict(fractions)
    for split in ("val", "test"):
        if fractions[split] > 0 and counts[split]:
            targets[split] = fractions[split] ** 2 / (counts[split] / kept)
    return targets


def _plan_with_blocks(
    windows: Sequence[PlacedWindow], tile_size: int, fractions: dict[str, float], seed: int, block: int,
    targets: dict[str, float] | None = None,
) -> SplitPlan | None:
    """Steps 1-3 of the module docstring with blocks of ``block`` x ``block`` pixels, val and test filled to
    ``targets`` (default: their fractions); None if a split gets no block."""
    origins = _origins(windows)
    anchors = [
        (w.group, (w.col - origins[w.group][0]) // block, (w.row - origins[w.group][1]) // block) for w in windows
    ]
    assigned = _assign_blocks(Counter(anchors), targets or fractions, seed)
    if not _feasible(assigned, fractions):
        return None
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
    return SplitPlan(splits, block, {s: block_counts.get(s, 0) for s in SPLITS}, tile_size)
