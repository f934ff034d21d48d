"""Window grid, blend weights and streaming assembly for tiled inference (pure numpy, no I/O).

The grid covers the scene extended by ``margin = overlap // 2`` pixels of reflection padding on every side,
so scene-border pixels sit at least ``margin`` pixels inside their first window and get context on both
sides. Windows advance by a constant ``stride = tile - overlap``; the lattice's surplus over that span becomes
a little more reflection padding at both ends. Hence ``--overlap 0`` really means non-overlapping tiles, every
pair of neighbours shares exactly ``overlap`` pixels (no irregular last window with a triple overlap), and all
windows sit on the same phase of the generator's stride-2 sampling. That phase is also tied to the global
pixel lattice (``origin``), so the same ground pixel gets the same phase in any crop of the imagery.
A scene that fits in one window gets one window centred on it.

Overlaps are merged with per-window separable weights normalised by their accumulated sum, so any window
shape gives an exact weighted mean. The default ``feather`` window is flat except for a cosine cross-fade over
the overlap it actually shares with each neighbour; the two fades of a pair sum to one, every pixel in a window
interior comes from that window alone, and a single-window scene is reproduced exactly.

``RowAssembler`` accumulates window outputs one window row at a time and releases output rows as soon as no
later window can touch them, so memory depends on the scene width and tile size, never on its height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

BLEND_MODES = ("feather", "hann", "average")
DEFAULT_BLEND = "feather"
# Window starts are aligned to this many pixels of the global pixel lattice (when the stride allows): the
# phase that matters most for a U-Net's stride-2 layers, without padding scene borders by more than that.
PHASE_ALIGN = 32
# Smallest Hann weight: keeps weights positive where a pixel has a single covering window near its edge.
HANN_FLOOR = 1e-3


def axis_starts(length: int, tile: int, overlap: int, origin: int = 0) -> tuple[int, ...]:
    """Start offsets of the windows along one axis (negative = inside the reflection padding).

    ``origin`` is the scene's first pixel on a global pixel lattice (e.g. map x / pixel width): multi-window
    grids start on a multiple of ``phase_step(stride)`` of that lattice, so crops or overlapping scenes of the
    same imagery put the generator's stride-2 sampling on the same phase and agree where they overlap.
    """
    if length < 1 or tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need length >= 1, tile >= 1 and 0 <= overlap < tile (got {length}, {tile}, {overlap})")
    margin = overlap // 2
    span = length + 2 * margin
    if span <= tile:  # one window, centred: a one-tile scene is exactly one generator call
        return (-((tile - length) // 2),)
    stride = tile - overlap
    step = phase_step(stride)
    count = math.ceil((span - tile) / stride) + 1
    while True:
        # Any first start in [lowest, -margin] covers the span; take the phase-aligned one nearest the centre.
        lowest = length + margin - ((count - 1) * stride + tile)
        centred = (lowest - margin) / 2
        candidates = range(_ceil_to(origin + lowest, step) - origin, -margin + 1, step)
        if len(candidates):
            first = min(candidates, key=lambda start: (abs(start - centred), -start))
            return tuple(first + i * stride for i in range(count))
        count += 1  # no aligned position fits: one more window makes room


def phase_step(stride: int) -> int:
    """Alignment of window starts: the largest power of two dividing the stride, at most PHASE_ALIGN."""
    return min(PHASE_ALIGN, stride & -stride)


def _ceil_to(value: int, step: int) -> int:
    return -((-value) // step) * step


def _cosine_fade_in(length: int) -> np.ndarray:
    """Rises from ~0 to ~1 over ``length`` pixels; fade_in + reversed(fade_in) == 1 element-wise."""
    i = np.arange(length, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / length)


def axis_weights(starts: tuple[int, ...], tile: int, blend: str) -> tuple[np.ndarray, ...]:
    """One 1-D weight profile per window along an axis (float32, all > 0)."""
    if blend not in BLEND_MODES:
        raise ValueError(f"unknown blend {blend!r}; expected one of {', '.join(BLEND_MODES)}")
    profiles = []
    for index, start in enumerate(starts):
        weights = np.ones(tile, dtype=np.float64)
        if blend == "hann":
            i = np.arange(tile, dtype=np.float64)
            weights = np.maximum(np.sin(np.pi * (i + 0.5) / tile) ** 2, HANN_FLOOR)
        elif blend == "feather":
            # Fade only where a neighbour overlaps; the two fades of a pair sum to one.
            before = starts[index - 1] + tile - start if index > 0 else 0
            after = start + tile - starts[index + 1] if index + 1 < len(starts) else 0
            if before > 0:
                weights[:before] *= _cosine_fade_in(before)
            if after > 0:
                weights[tile - after:] *= _cosine_fade_in(after)[::-1]
        profiles.append(weights.astype(np.float32))
    return tuple(profiles)


@dataclass(frozen=True)
class WindowGrid:
    """Windows of ``tile`` x ``tile`` pixels over a ``height`` x ``width`` scene, in row-major order."""

    height: int
    width: int
    tile: int
    overlap: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    @classmethod
    def build(cls, height: int, width: int, tile: int, overlap: int, origin: tuple[int, int] = (0, 0)) -> WindowGrid:
        """``origin``: (row, col) of the scene's first pixel on the global pixel lattice (see ``axis_starts``)."""
        rows = axis_starts(height, tile, overlap, origin[0])
        return cls(height, width, tile, overlap, rows, axis_starts(width, tile, overlap, origin[1]))

    @property
    def shape(self) -> tuple[int, int]:
        """(window rows, window columns)."""
        return len(self.row_starts), len(self.col_starts)

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    @property
    def padded_cols(self) -> tuple[int, int]:
        """Scene columns [first, end) spanned by the window columns (may extend past 0 and ``width``)."""
        return self.col_starts[0], self.col_starts[-1] + self.tile

    def rows_in_scene(self, row: int) -> tuple[int, int]:
        """Scene rows [first, end) that window row ``row`` covers inside the scene."""
        start = self.row_starts[row]
        return max(start, 0), min(start + self.tile, self.height)

    def window_in_scene(self, row: int, col: int) -> tuple[slice, slice, slice, slice]:
        """Window (row, col) clipped to the scene: (scene rows, scene columns, window rows, window columns)."""
        top, left = self.row_starts[row], self.col_starts[col]
        r0, r1 = max(top, 0), min(top + self.tile, self.height)
        c0, c1 = max(left, 0), min(left + self.tile, self.width)
        return slice(r0, r1), slice(c0, c1), slice(r0 - top, r1 - top), slice(c0 - left, c1 - left)

    def new_rows(self, row: int) -> tuple[int, int]:
        """Scene rows [first, end) that window row ``row`` needs beyond those of the rows before it (read once)."""
        end = self.rows_in_scene(row)[1]
        return (self.rows_in_scene(row - 1)[1] if row else 0), end

    def region(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[WindowGrid, tuple[int, int]]:
        """The windows that a box of scene pixels (rows [r0, r1), columns [c0, c1)) needs, as a grid of their own
        over the part of the scene they cover, and that part's (row, col) offset in the scene.

        Every box pixel then gets exactly the windows, weights and reflection padding it gets in this grid: the
        windows touching the box are kept (their neighbours only cover pixels outside it), and at a scene edge
        enough windows to hold the pixels that the padding reflects."""
        row_starts, row_off, height = _axis_region(self.row_starts, self.tile, self.height, rows)
        col_starts, col_off, width = _axis_region(self.col_starts, self.tile, self.width, cols)
        return WindowGrid(height, width, self.tile, self.overlap, row_starts, col_starts), (row_off, col_off)

    def finished_rows(self, row: int) -> int:
        """Scene rows [0, result) are final once window rows 0..``row`` are merged (no later window touches them)."""
        if row + 1 >= len(self.row_starts):
            return self.height
        return min(max(self.row_starts[row + 1], 0), self.height)


def _axis_region(starts: tuple[int, ...], tile: int, length: int, span: tuple[int, int]
                 ) -> tuple[tuple[int, ...], int, int]:
    """Window starts (relative to the region), offset and length of the region that holds [span) on one axis."""
    if not 0 <= span[0] < span[1] <= length:
        raise ValueError(f"box {span} is not inside [0, {length})")
    first = next(i for i, s in enumerate(starts) if s + tile > span[0])
    last = max(i for i, s in enumerate(starts) if s < span[1])
    # Padding reflects pixels [1, pad] at the start and [length - 1 - pad, length - 1) at the end: keep windows
    # until the region holds them, so the region's reflection is the scene's.
    if starts[first] < 0:
        while last + 1 < len(starts) and starts[last] + tile <= -starts[first]:
            last += 1
    end_pad = starts[last] + tile - length
    if end_pad > 0:
        while first > 0 and max(starts[first], 0) > length - 1 - end_pad:
            first -= 1
    offset = max(starts[first], 0)
    return tuple(s - offset for s in starts[first:last + 1]), offset, min(starts[last] + tile, length) - offset


@dataclass(frozen=True)
class RowBand:
    """Window rows [first, end) of a grid whose output rows one worker owns (a contiguous band of the scene).

    Bands of one grid tile the output exactly and each pixel is computed as in a single pass: a band also runs
    the window row before ``first`` (``process_from``), whose windows overlap its first output rows, and keeps
    only its own rows. The lattice never depends on the split. ``halo``: scene rows above and below its own that
    must be exact too (context of a neighbourhood filter on the output): the band then also runs every window
    row touching them (``process_from`` .. ``process_end``).
    """

    grid: WindowGrid
    first: int
    end: int
    halo: int = 0

    @property
    def process_from(self) -> int:
        if not self.halo:
            return max(self.first - 1, 0)
        start = self.output_rows[0] - self.halo
        touching = next((w for w, top in enumerate(self.grid.row_starts) if top + self.grid.tile > start), self.first)
        return min(max(self.first - 1, 0), touching)

    @property
    def process_end(self) -> int:
        """Window rows [process_from, process_end) run; past ``end`` only for a halo below the band."""
        if not self.halo or self.end == self.grid.shape[0]:
            return self.end
        stop = self.output_rows[1] + self.halo
        return max(self.end, 1 + max(w for w, top in enumerate(self.grid.row_starts) if top < stop))

    @property
    def release_end(self) -> int:
        """Scene rows before this are finished once window rows up to ``process_end`` are merged."""
        return self.grid.finished_rows(self.process_end - 1)

    @property
    def output_rows(self) -> tuple[int, int]:
        """Scene rows [start, stop) this band writes."""
        start = self.grid.finished_rows(self.first - 1) if self.first > 0 else 0
        return start, self.grid.finished_rows(self.end - 1)

    def new_rows(self, row: int) -> tuple[int, int]:
        """Scene rows window row ``row`` needs beyond those already read for this band."""
        if row == self.process_from:
            return self.grid.rows_in_scene(row)
        return self.grid.new_rows(row)

    @classmethod
    def whole(cls, grid: WindowGrid) -> RowBand:
        return cls(grid, 0, grid.shape[0])

    @classmethod
    def split(cls, grid: WindowGrid, parts: int, halo: int = 0) -> list[RowBand]:
        """``parts`` contiguous bands of (nearly) equal numbers of window rows; empty bands are left out."""
        rows = grid.shape[0]
        edges = [round(i * rows / parts) for i in range(parts + 1)]
        return [cls(grid, a, b, halo) for a, b in zip(edges, edges[1:]) if b > a]


class RowBuffer:
    """Bookkeeping of a buffer of full-width scene rows that moves down the scene: rows [base, base + used) are
    held (buffer row 0 is scene row ``base``) and the validity mask has arrived for rows before ``mask_end``.
    Subclasses own the arrays (numpy here, torch in ``inference.engine``, both sliced alike) and ``_grow``."""

    grid: WindowGrid
    _sums: Any  # (channels, rows, width) weighted sums of the held rows
    _weights: Any  # (rows, width) summed weights
    _valid: Any  # (rows, width) boolean array of the held rows

    def __init__(self, first_row: int = 0) -> None:
        self._base = first_row  # first scene row not yet released
        self._used = 0  # buffer rows [0, _used) hold data
        self._mask_end = first_row  # scene rows before this have had their validity mask delivered

    @property
    def released(self) -> int:
        """Scene rows before this have been handed out by ``release``."""
        return self._base

    @property
    def buffered_rows(self) -> int:
        """Rows currently held (about one tile height in steady state)."""
        return self._used

    def _grow(self, rows: int) -> None:
        raise NotImplementedError

    def _ensure_rows(self, end: int) -> None:
        self._grow(end - self._base)
        self._used = max(self._used, end - self._base)

    def _rows(self, scene_rows: slice) -> slice:
        """Buffer rows of ``scene_rows``, growing the buffer to hold them; released rows are refused."""
        if scene_rows.start < self._base:
            raise ValueError(f"scene rows from {scene_rows.start} were already released (< {self._base})")
        self._ensure_rows(scene_rows.stop)
        return slice(scene_rows.start - self._base, scene_rows.stop - self._base)

    def _finishing(self, window_row: int) -> int:
        """How many held rows become final once window row ``window_row`` is merged (their mask must be in)."""
        end = self.grid.finished_rows(window_row)
        if end > self._base and end > self._mask_end:
            raise ValueError(f"rows up to {end} finished but the mask only reaches row {self._mask_end}")
        return max(end - self._base, 0)

    def _advance(self, count: int) -> None:
        """Drop the first ``count`` held rows (released): shift the rest up, zero the freed tail."""
        rest = self._used - count
        for buffer in (*self._sums[:, :self._used], self._weights[:self._used], self._valid[:self._used]):
            for start in range(0, rest, count):  # shift up in non-overlapping chunks: no temporary copy
                stop = min(start + count, rest)
                buffer[start:stop] = buffer[count + start:count + stop]
            buffer[rest:] = 0
        self._base, self._used = self._base + count, rest

    def add_mask(self, row_off: int, valid: Any) -> None:
        """Deliver the scene's validity mask (True = valid) for rows [row_off, row_off + len); rows in order."""
        if row_off != self._mask_end:
            raise ValueError(f"mask rows must arrive in order: expected row {self._mask_end}, got {row_off}")
        end = row_off + valid.shape[0]
        self._ensure_rows(end)
        self._valid[row_off - self._base:end - self._base] = valid
        self._mask_end = end


class RowAssembler(RowBuffer):
    """Weighted merge of window outputs that releases finished full-width rows of the scene.

    Holds only the unfinished rows (about one tile high): accumulated ``sum(w * value)``, ``sum(w)`` and the
    scene's validity mask for those rows, in buffers allocated once and shifted up as rows are released.
    """

    def __init__(self, grid: WindowGrid, blend: str = DEFAULT_BLEND, channels: int = 3) -> None:
        self.grid = grid
        self.channels = channels
        self._row_weights = axis_weights(grid.row_starts, grid.tile, blend)
        self._col_weights = axis_weights(grid.col_starts, grid.tile, blend)
        super().__init__()
        self._sums = np.zeros((channels, 0, grid.width), dtype=np.float32)
        self._weights = np.zeros((0, grid.width), dtype=np.float32)
        self._valid = np.zeros((0, grid.width), dtype=bool)
        self._grow(2 * grid.tile)  # one window row plus the carried-over overlap

    def _grow(self, rows: int) -> None:
        extra = rows - self._weights.shape[0]
        if extra > 0:  # only when a batch spans several window rows of a narrow scene
            width = self.grid.width
            self._sums = np.concatenate([self._sums, np.zeros((self.channels, extra, width), np.float32)], axis=1)
            self._weights = np.concatenate([self._weights, np.zeros((extra, width), np.float32)], axis=0)
            self._valid = np.concatenate([self._valid, np.zeros((extra, width), bool)], axis=0)

    def add(self, row: int, col: int, values: np.ndarray) -> None:
        """Merge one window's output (channels, tile, tile), float, for window (row, col) of the grid."""
        scene_rows, cols, win_rows, win_cols = self.grid.window_in_scene(row, col)
        weight = np.outer(self._row_weights[row][win_rows], self._col_weights[col][win_cols])
        rows = self._rows(scene_rows)
        self._sums[:, rows, cols] += values[:, win_rows, win_cols] * weight
        self._weights[rows, cols] += weight

    def release(self, window_row: int) -> tuple[int, np.ndarray, np.ndarray] | None:
        """After window row ``window_row`` is merged: (row_off, blended values, valid) of newly finished rows.

        ``valid`` is the scene mask restricted to pixels some window covered; blended values are 0 elsewhere.
        """
        count = self._finishing(window_row)
        if count == 0:
            return None
        weights = self._weights[:count]
        covered = weights > 0
        values = np.zeros((self.channels, count, self.grid.width), np.float32)
        np.divide(self._sums[:, :count], weights, out=values, where=covered)
        valid = self._valid[:count] & covered
        out = (self._base, values, valid)
        self._advance(count)
        return out


def to_rgba(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Generator-range (3, H, W) float32 values (overwritten) and a validity mask -> planar RGBA uint8.

    Same rounding as ``metrics.to_uint8``; masked pixels are 0 in every band.
    """
    np.clip(values, -1.0, 1.0, out=values)
    values += 1.0
    values *= 127.5
    np.rint(values, out=values)
    rgba = np.empty((4, *valid.shape), dtype=np.uint8)
    np.copyto(rgba[:3], values, casting="unsafe")
    rgba[:3] *= valid
    rgba[3] = valid
    rgba[3] *= 255
    return rgba
