"""The spatial block split on its own: pure window math, many configurations, no files."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from geo_sat2map.errors import UserError
from geo_sat2map.tiling import PlacedWindow, plan_splits
from geo_sat2map.tiling.splits import UnbalancedSplit, _plan_with_blocks


def lattice(width: int, height: int, tile: int, stride: int, group: int = 0, offset: int = 0) -> list[PlacedWindow]:
    return [
        PlacedWindow(group, offset + c, offset + r)
        for r in range(0, height - tile + 1, stride)
        for c in range(0, width - tile + 1, stride)
    ]


def overlaps(a: PlacedWindow, b: PlacedWindow, tile: int) -> bool:
    return a.group == b.group and abs(a.col - b.col) < tile and abs(a.row - b.row) < tile


def assert_splits_disjoint(windows: list[PlacedWindow], splits: list[str | None], tile: int) -> None:
    """Paint every kept window's split on a pixel canvas per group: no pixel may get two different splits."""
    codes = {"train": 1, "val": 2, "test": 3}
    side = max(max(w.col, w.row) for w in windows) + tile
    canvases: dict[int, np.ndarray] = {}
    for w, s in zip(windows, splits):
        if s is None:
            continue
        canvas = canvases.setdefault(w.group, np.zeros((side, side), np.uint8))
        patch = canvas[w.row:w.row + tile, w.col:w.col + tile]
        assert not ((patch != 0) & (patch != codes[s])).any(), (w, s)
        patch[:] = codes[s]


@pytest.mark.parametrize("tile, stride, block, seed", [(32, 32, 4, 0), (32, 16, 4, 1), (32, 8, 2, 2), (64, 40, 3, 3),
                                                       (16, 5, 1, 4)])
def test_no_two_splits_share_a_pixel(tile, stride, block, seed):
    windows = lattice(1024, 768, tile, stride, offset=7) + lattice(512, 512, tile, stride, group=1)
    plan = plan_splits(windows, tile, 0.15, 0.1, seed=seed, block_tiles=block)
    by_split = {s: [w for w, p in zip(windows, plan.splits) if p == s] for s in ("train", "val", "test")}
    assert all(by_split.values())
    assert_splits_disjoint(windows, plan.splits, tile)
    if stride == tile:
        assert plan.dropped == 0  # blocks are whole tiles: no buffer needed
    else:
        assert plan.dropped > 0


def test_fractions_are_close_and_the_split_is_deterministic():
    windows = lattice(4096, 4096, 64, 64)  # 4096 windows, 256 blocks of 4x4 tiles
    plan = plan_splits(windows, 64, 0.1, 0.2, seed=5, block_tiles=4)
    counts = {s: plan.splits.count(s) for s in ("train", "val", "test")}
    assert abs(counts["val"] / len(windows) - 0.1) < 0.01 and abs(counts["test"] / len(windows) - 0.2) < 0.01
    assert plan.block_tiles == 4
    assert plan_splits(windows, 64, 0.1, 0.2, seed=5, block_tiles=4).splits == plan.splits
    assert plan_splits(windows, 64, 0.1, 0.2, seed=6, block_tiles=4).splits != plan.splits
    # whole blocks share one split
    blocks: dict[tuple[int, int], set] = {}
    for w, s in zip(windows, plan.splits):
        blocks.setdefault((w.col // 256, w.row // 256), set()).add(s)
    assert all(len(s) == 1 for s in blocks.values())


def test_blocks_shrink_when_there_are_too_few_for_the_fractions():
    windows = lattice(512, 512, 64, 64)  # 64 windows: 4 blocks of 4x4 tiles, too coarse for 10 %
    plan = plan_splits(windows, 64, 0.1, 0.0, seed=0, block_tiles=4)
    assert plan.block_tiles < 4 and plan.blocks["val"] >= 1 and plan.splits.count("val") > 0


def test_no_held_out_split_means_everything_is_train_and_too_few_tiles_is_an_error():
    windows = lattice(256, 256, 64, 32)
    assert set(plan_splits(windows, 64, 0.0, 0.0).splits) == {"train"}
    with pytest.raises(UserError, match="too few"):
        plan_splits([PlacedWindow(0, 0, 0), PlacedWindow(0, 64, 0)], 64, 0.1, 0.1)


def test_random_window_sets_keep_the_guarantee():
    rng = np.random.default_rng(0)
    for trial in range(20):
        tile = int(rng.integers(8, 40))
        cells = rng.integers(0, 60, size=(int(rng.integers(20, 200)), 2))
        windows = sorted({PlacedWindow(int(rng.integers(0, 2)), int(c) * 7, int(r) * 5) for c, r in cells},
                         key=lambda w: (w.group, w.row, w.col))
        try:
            plan = plan_splits(windows, tile, 0.2, 0.2, seed=trial, block_tiles=int(rng.integers(1, 5)))
        except UserError:
            continue
        kept = [(w, s) for w, s in zip(windows, plan.splits) if s is not None]
        for (a, sa), (b, sb) in itertools.combinations(kept, 2):
            if sa != sb:
                assert not overlaps(a, b, tile), (trial, a, sa, b, sb)


def test_the_buffer_comes_out_of_train_not_out_of_the_held_out_splits():
    windows = lattice(2048, 2048, 64, 16)  # 4-fold overlap each way
    plan = plan_splits(windows, 64, 0.1, 0.0, seed=3, block_tiles=4)
    val = plan.splits.count("val")
    assert val >= 0.09 * len(windows)  # about the asked-for share survives the buffer
    assert plan.dropped > 0 and plan.splits.count("train") + val + plan.dropped == len(windows)
    assert_splits_disjoint(windows, plan.splits, 64)


def test_the_split_stays_near_its_fractions_when_the_buffer_would_shift_it():
    windows = lattice(512, 512, 16, 5)  # 3x overlap each way: filled as asked, one-tile blocks leave train 49 %
    naive = _plan_with_blocks(windows, 16, {"train": 0.75, "val": 0.15, "test": 0.1}, 4, 16)
    assert naive.splits.count("train") / (len(windows) - naive.dropped) < 0.5
    plan = plan_splits(windows, 16, 0.15, 0.1, seed=4, block_tiles=1)
    kept = len(windows) - plan.dropped
    for split, fraction in (("train", 0.75), ("val", 0.15), ("test", 0.1)):
        assert abs(plan.splits.count(split) / kept - fraction) <= 0.5 * fraction, split
    assert plan.dropped > 0
    assert_splits_disjoint(windows, plan.splits, 16)


def test_a_scene_too_small_for_the_buffer_is_refused():
    windows = lattice(200, 200, 96, 8)  # any val tile costs train up to 23 x 23 overlapping windows
    with pytest.raises(UnbalancedSplit, match=r"cannot stay near.*split buffer.*--stride 96"):
        plan_splits(windows, 96, 0.1, 0.0)
