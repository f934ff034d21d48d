"""The device-resident translate engine: raw scene rows in, finished RGBA rows (and overview rows) out.

``StreamEngine`` is fed the scene's raw rows in order (``add_rows``) and processed one window row at a time
(``process_window_row``). Everything per pixel happens on the engine's device, in torch: scaling, reflection
padding, mask fill, window extraction (slices of one padded strip per window row), batching, the generator,
blend weighting and overlap-add (``fold``) into full-width row accumulators, normalisation, masking,
quantisation to RGBA uint8 and the overview pyramid. Finished rows leave through ``emit(level, rows)``;
nothing is read back to the host, so on CUDA the host only queues work. Decisions that need the mask (which windows to run, whether to fill) use a
host copy of the validity rows, never a device read.

Memory is bounded by the scene width: the accumulators hold about two tiles of rows, the raw rows one tile.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from geo_sat2map.inference.runner import StageClock
from geo_sat2map.inference.stages import QueueWorker
from geo_sat2map.inference.ops import (
    UnitScaler,
    downsample_classes,
    downsample_rgba,
    fill_invalid,
    quantize_rgba,
    reflect_index,
)
from geo_sat2map.inference.snap import SnapSpec, SnapStage
from geo_sat2map.scaling import InputScaling
from geo_sat2map.windows import RowBand, RowBuffer, WindowGrid, axis_weights

Emit = Callable[[int, torch.Tensor], None]  # (level, (rows, width, 4) uint8 RGBA on the engine's device)
Generator = Callable[[torch.Tensor], torch.Tensor]  # (n, 3, tile, tile) float32 in [-1, 1] -> same shape


class DeviceRowAssembler(RowBuffer):
    """Weighted overlap-add of whole window rows into full-width accumulators; releases finished rows.

    The device counterpart of ``windows.RowAssembler`` (its oracle): same weights, same release rule, but one
    ``fold`` per window row instead of one add per window.
    """

    def __init__(
        self, grid: WindowGrid, blend: str, device: torch.device, first_row: int = 0, keep_colour: bool = False,
    ) -> None:
        """``first_row``: the first scene row it will be given (a band of the scene starts there).
        ``keep_colour``: masked pixels that windows cover keep their colour (alpha 0), for maps resampled later."""
        self.grid, self.device, self.keep_colour = grid, device, keep_colour
        tile = grid.tile
        self.stride = grid.col_starts[1] - grid.col_starts[0] if len(grid.col_starts) > 1 else tile
        self.span = grid.col_starts[-1] + tile - grid.col_starts[0]
        self.crop = slice(-grid.col_starts[0], -grid.col_starts[0] + grid.width)  # scene columns in the span
        row_weights = np.stack(axis_weights(grid.row_starts, tile, blend))
        col_weights = np.stack(axis_weights(grid.col_starts, tile, blend))
        self.row_weights = torch.from_numpy(row_weights).to(device)
        self.col_weights = torch.from_numpy(col_weights).to(device)
        # Plain tiles (--overlap 0 with feather or average): every weight is 1 and windows do not overlap, so
        # each window is added in place (add_plain_window) instead of a weighted fold per window row.
        self.plain = self.stride == tile and bool((row_weights == 1).all() and (col_weights == 1).all())
        super().__init__(first_row)
        self._sums = torch.zeros((3, 0, grid.width), device=device)
        self._weights = torch.zeros((0, grid.width), device=device)
        self._valid = torch.zeros((0, grid.width), dtype=torch.bool, device=device)
        self._grow(2 * tile)

    def _grow(self, rows: int) -> None:
        extra = rows - self._weights.shape[0]
        if extra > 0:
            width = self.grid.width
            self._sums = torch.cat([self._sums, torch.zeros((3, extra, width), device=self.device)], dim=1)
            self._weights = torch.cat([self._weights, torch.zeros((extra, width), device=self.device)])
            self._valid = torch.cat([self._valid, torch.zeros((extra, width), dtype=torch.bool, device=self.device)])

    def add_row(self, row: int, outputs: torch.Tensor | None, ran: torch.Tensor | None) -> None:
        """Merge window row ``row``: ``outputs`` (columns, 3, tile, tile), zeros where a window did not run;
        ``ran`` (columns,) float 1/0. ``None`` when no window of the row ran."""
        grid, tile = self.grid, self.grid.tile
        top = grid.row_starts[row]
        r0, r1 = grid.rows_in_scene(row)
        self._rows(slice(r0, r1))
        if outputs is None:
            return
        columns = outputs.shape[0]
        b0, b1 = r0 - self._base, r1 - self._base
        rows = slice(r0 - top, r1 - top)
        row_w = self.row_weights[row]
        col_w = self.col_weights * ran[:, None]
        weighted = outputs * (row_w[:, None] * col_w[:, None, :])[:, None]
        sums = F.fold(weighted.reshape(columns, -1).T[None], output_size=(tile, self.span),
                      kernel_size=(tile, tile), stride=(1, self.stride))[0]
        col_sum = F.fold(col_w.T[None], output_size=(1, self.span), kernel_size=(1, tile), stride=(1, self.stride))
        weights = row_w[:, None] * col_sum[0, 0]
        self._sums[:, b0:b1] += sums[:, rows, self.crop]
        self._weights[b0:b1] += weights[rows, self.crop]

    def reserve(self, row: int) -> None:
        """Make room for window row ``row``'s scene rows (plain tiles are added window by window)."""
        self._rows(slice(*self.grid.rows_in_scene(row)))

    def add_plain_window(self, row: int, column: int, output: torch.Tensor) -> None:
        """Add one window of plain tiles (no overlap, unit weights): a copy into its place, weight 1."""
        scene_rows, cols, win_rows, win_cols = self.grid.window_in_scene(row, column)
        rows = self._rows(scene_rows)
        self._sums[:, rows, cols] += output[:, win_rows, win_cols]
        self._weights[rows, cols] += 1.0

    def release(self, row: int) -> tuple[int, torch.Tensor] | None:
        """After window row ``row`` is merged: (row_off, (rows, width, 4) RGBA uint8) of newly finished rows."""
        count = self._finishing(row)
        if count == 0:
            return None
        weights = self._weights[:count]
        covered = weights > 0
        scale = torch.where(covered, weights.reciprocal(), 0.0)  # a pixel no window covered stays 0 (and masked)
        values = self._sums[:, :count] * scale
        rgba = quantize_rgba(values, self._valid[:count] & covered, covered if self.keep_colour else None)
        out = (self._base, rgba)
        self._advance(count)
        return out


Downsample = Callable[[torch.Tensor, bool], torch.Tensor]  # (2k [+1 if last] rows, last) -> k [+1] rows


class OverviewPyramid:
    """Streams overview levels 1..``levels`` from full-resolution rows: RGBA (alpha-weighted 2x2 averages) or
    the ``downsample`` given (class rows: 2x2 modes)."""

    def __init__(self, levels: int, downsample: Downsample = downsample_rgba) -> None:
        self.levels, self.downsample = levels, downsample
        self._carry: list[torch.Tensor | None] = [None] * (levels + 1)  # rows of level l-1 waiting for a partner

    def push(self, rows: torch.Tensor, final: bool = False) -> list[tuple[int, torch.Tensor]]:
        """Full-resolution rows in order -> new (level, rows) of the overviews; ``final`` flushes the odd last
        rows of every level."""
        out = []
        for level in range(1, self.levels + 1):
            carry = self._carry[level]
            if carry is not None:
                rows = torch.cat([carry, rows])
            take = rows.shape[0] if final else rows.shape[0] - rows.shape[0] % 2
            self._carry[level] = None if final or take == rows.shape[0] else rows[take:]
            if take == 0:
                if not final:
                    break
                rows = rows[:0, : (rows.shape[1] + 1) // 2]
                continue
            rows = self.downsample(rows[:take], final)
            out.append((level, rows))
        return out

    def finish(self, width: int, bands: int, device: torch.device) -> list[tuple[int, torch.Tensor]]:
        return self.push(torch.zeros((0, width, bands), dtype=torch.uint8, device=device), final=True)


class LevelEmitter:
    """Full-resolution rows in order -> ``emit(0, rows)`` and the overview rows they complete (levels 1..n).

    ``clock`` times the pyramid alone (stage "overviews"), not the emits, which may wait on a writer.
    """

    def __init__(self, emit: Emit, overview_levels: int, clock: StageClock | None = None,
                 downsample: Downsample = downsample_rgba) -> None:
        self.emit, self.clock = emit, clock
        self.pyramid = OverviewPyramid(overview_levels, downsample) if overview_levels else None
        self._width, self._bands, self._device = 0, 4, torch.device("cpu")

    def rows(self, rows: torch.Tensor) -> None:
        self._width, self._bands, self._device = rows.shape[1], rows.shape[2], rows.device
        self.emit(0, rows)
        if self.pyramid is not None:
            self._emit_overviews(lambda: self.pyramid.push(rows))

    def finish(self) -> None:
        """Flush the overview rows still waiting for a partner row."""
        if self.pyramid is not None:
            self._emit_overviews(lambda: self.pyramid.finish(self._width, self._bands, self._device))

    def _emit_overviews(self, make: Callable[[], list[tuple[int, torch.Tensor]]]) -> None:
        with self.clock("overviews") if self.clock is not None else contextlib.nullcontext():
            overviews = make()
        for level, rows in overviews:
            self.emit(level, rows)


@dataclass
class _PendingRow:
    """A window row whose windows are (partly) still in the batch buffer."""

    row: int
    host_columns: np.ndarray  # indices of the window columns that run
    columns: torch.Tensor  # the same on the device
    outputs: torch.Tensor | None  # (all columns, 3, tile, tile), filled as batches finish (overlapping windows)
    remaining: int


Segment = tuple[int, int, int, int]  # (window row, first position in the row's runs, first batch slot, count)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on ``device`` without stalling a CUDA stream (pinned, non-blocking copy)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def class_downsample(spec: SnapSpec) -> Downsample:
    """Overviews of one-band class rows: 2x2 modes, never averages."""
    return lambda rows, last: downsample_classes(rows, len(spec.colours), spec.nodata, last)


@dataclass(frozen=True)
class RowStyle:
    """What the stream's output rows are, for whoever crops, resamples or re-reads them: the value of a masked
    pixel (in every band) and how their overview rows are made."""

    masked: int
    downsample: Downsample

    @classmethod
    def of(cls, snap: SnapSpec | None) -> RowStyle:
        """RGBA rows (masked pixels 0, alpha-weighted averages) or one-band class rows (the nodata index, modes)."""
        if snap is not None and snap.one_band:
            return cls(snap.nodata, class_downsample(snap))
        return cls(0, downsample_rgba)


class RowMerger:
    """The output half of the engine: generator outputs -> merged, finished RGBA rows and overview rows.

    Calls arrive in stream order: a row's mask rows, ``start_row`` when its windows are queued, then the batch
    outputs that contain them. Rows are merged and released strictly in window-row order. With ``snap``, the
    released rows go through a ``SnapStage`` (palette classes, majority filter, output format) first.
    """

    def __init__(
        self, grid: WindowGrid, blend: str, device: torch.device, band: RowBand, emit: Emit, overview_levels: int,
        clock: StageClock, keep_colour: bool = False, snap: SnapSpec | None = None,
    ) -> None:
        self.grid, self.device, self.band, self.clock = grid, device, band, clock
        first_row = grid.rows_in_scene(band.process_from)[0]
        self.assembler = DeviceRowAssembler(grid, blend, device, first_row, keep_colour)
        self.snap = SnapStage(snap, device, first_row, grid.height, keep_colour) if snap else None
        self.levels = LevelEmitter(emit, overview_levels, clock, RowStyle.of(snap).downsample)
        self._pending: deque[_PendingRow] = deque()
        self._rows: dict[int, _PendingRow] = {}

    def add_mask(self, row_off: int, valid: torch.Tensor) -> None:
        self.assembler.add_mask(row_off, valid)

    def start_row(self, row: int, host_columns: np.ndarray, columns: torch.Tensor) -> None:
        pending = _PendingRow(row, host_columns, columns, None, len(host_columns))
        self._pending.append(pending)
        self._rows[row] = pending
        if self.assembler.plain:
            self.assembler.reserve(row)
        self._release_finished()

    def add_outputs(self, outputs: torch.Tensor, segments: list[Segment]) -> None:
        """Place one batch's outputs: directly into the accumulators for plain tiles, else into the row's
        buffer, merged with one fold when the row is complete."""
        with self.clock("merge"):
            for row, position, slot, count in segments:
                pending = self._rows[row]
                if self.assembler.plain:
                    for offset in range(count):
                        column = int(pending.host_columns[position + offset])
                        self.assembler.add_plain_window(row, column, outputs[slot + offset])
                else:
                    if pending.outputs is None:
                        pending.outputs = self._row_outputs(pending, outputs.shape[1:])
                    index = pending.columns[position:position + count]
                    pending.outputs.index_copy_(0, index, outputs[slot:slot + count])
                pending.remaining -= count
        self._release_finished()

    def _row_outputs(self, pending: _PendingRow, shape: torch.Size) -> torch.Tensor:
        """Output buffer of a whole window row; windows that do not run are zeros (no weight in the merge)."""
        columns = len(self.grid.col_starts)
        outputs = torch.empty((columns, *shape), device=self.device)
        if len(pending.host_columns) < columns:
            idle = np.setdiff1d(np.arange(columns), pending.host_columns)
            outputs.index_fill_(0, to_device(idle, self.device), 0.0)
        return outputs

    def _release_finished(self) -> None:
        while self._pending and self._pending[0].remaining == 0:
            pending = self._pending.popleft()
            del self._rows[pending.row]
            with self.clock("merge"):
                if not self.assembler.plain:
                    ran = None
                    if pending.outputs is not None:
                        ran = torch.zeros(len(self.grid.col_starts), device=self.device)
                        ran.index_fill_(0, pending.columns, 1.0)
                    self.assembler.add_row(pending.row, pending.outputs, ran)
                released = self.assembler.release(pending.row)
            if released is not None and self.snap is not None:
                with self.clock("snap"):
                    released = self.snap.push(*released)
            if released is not None:
                self._emit_owned(*released)

    def _emit_owned(self, row_off: int, rgba: torch.Tensor) -> None:
        """Emit the released rows that belong to this band, and their overview rows."""
        start, stop = self.band.output_rows
        first, last = max(row_off, start), min(row_off + rgba.shape[0], stop)
        if last > first:
            self.levels.rows(rgba[first - row_off:last - row_off])

    def finish(self) -> None:
        self._release_finished()
        stop = self.band.release_end
        if self._pending or self.assembler.released != stop:
            raise RuntimeError(f"internal error: {self.assembler.released} of {stop} rows finished")
        self.levels.finish()


class BackgroundMerger:
    """A ``RowMerger`` on a thread of its own (a ``QueueWorker``), its calls handled in order.

    Merging, quantising and the overview pyramid then overlap the generator: on a CPU they run on other cores
    while the generator's threads wait at layer boundaries; on a GPU a second host thread queues their kernels.
    On CUDA both threads use the device's current stream, so kernels still run in the order they were queued.
    """

    def __init__(self, merger: RowMerger, max_queued: int = 4) -> None:
        self._worker = QueueWorker(lambda call: call[0](*call[1:]), "translate-merge", max_queued, merger.device)
        self.merger = merger

    def add_mask(self, row_off: int, valid: torch.Tensor) -> None:
        self._worker.put((self.merger.add_mask, row_off, valid))

    def start_row(self, row: int, host_columns: np.ndarray, columns: torch.Tensor) -> None:
        self._worker.put((self.merger.start_row, row, host_columns, columns))

    def add_outputs(self, outputs: torch.Tensor, segments: list[Segment]) -> None:
        self._worker.put((self.merger.add_outputs, outputs, segments))

    def finish(self) -> None:
        self._worker.put((self.merger.finish,))
        self._worker.close()

    def abandon(self) -> None:
        self._worker.abandon()

    @property
    def blocked(self) -> float:
        """The engine's time waiting for room in the merger's queue (merging is behind)."""
        return self._worker.blocked


class StreamEngine:
    """Window rows of raw scene strips -> finished RGBA rows, all on ``device`` (see the module docstring).

    The input half (strips, batches, the generator) runs on the calling thread; the output half is a
    ``RowMerger``, on a thread of its own when ``background`` (call ``finish`` or ``abandon`` at the end).
    """

    def __init__(
        self, *, grid: WindowGrid, blend: str, scaling: InputScaling, generator: Generator, device: torch.device,
        batch_size: int, emit: Emit, overview_levels: int = 0, fixed_batch: bool = False,
        clock: StageClock | None = None, band: RowBand | None = None, background: bool = False,
        keep_colour: bool = False, snap: SnapSpec | None = None,
    ) -> None:
        """``band``: only these window rows' output rows are emitted; default the whole scene (give it the
        ``snap.halo``). ``keep_colour``: see ``DeviceRowAssembler``. ``snap``: snap to a palette, filter and emit
        that output format (``inference.snap``)."""
        self.grid, self.generator, self.device = grid, generator, device
        self._to_unit = UnitScaler(scaling, device)
        self.clock = clock or StageClock(device)
        self.batch_size, self.fixed_batch = batch_size, fixed_batch
        self.band = band or RowBand.whole(grid)
        merger = RowMerger(grid, blend, device, self.band, emit, overview_levels, self.clock, keep_colour, snap)
        self.stride = merger.assembler.stride
        self._merger: RowMerger | BackgroundMerger = BackgroundMerger(merger) if background else merger
        tile = grid.tile
        first, end = grid.padded_cols  # lattice columns; those outside [0, width) are reflected
        self._left_index = to_device(reflect_index(first, 0, grid.width), device) if first < 0 else None
        self._right_index = (to_device(reflect_index(grid.width, end, grid.width), device)
                             if end > grid.width else None)
        self._batch = torch.empty((batch_size, 3, tile, tile), device=device)
        self._segments: list[Segment] = []
        self._filled = 0
        # Raw scene rows [_rows_start, _rows_end) on the device, and their validity on both sides.
        first_scene_row = grid.rows_in_scene(self.band.process_from)[0]
        self._rows_start = self._rows_end = first_scene_row
        self._raw: torch.Tensor | None = None
        self._valid_dev: torch.Tensor | None = None
        self._valid_host = np.zeros((0, grid.width), dtype=bool)
        self.windows_run = 0
        self.windows_skipped = 0

    # -- input -----------------------------------------------------------------------------------------------

    def add_rows(self, raw: torch.Tensor, valid_host: np.ndarray, valid: torch.Tensor) -> None:
        """Append scene rows [rows_end, rows_end + n): raw bands (bands, n, width) and validity, on the device
        (``raw``, ``valid``) and on the host (``valid_host``). Rows before the next window row are dropped."""
        if raw.shape[1] == 0:
            return
        self._merger.add_mask(self._rows_end, valid)
        if self._raw is None:
            self._raw, self._valid_dev, self._valid_host = raw, valid, valid_host
        else:
            self._raw = torch.cat([self._raw, raw], dim=1)
            self._valid_dev = torch.cat([self._valid_dev, valid])
            self._valid_host = np.concatenate([self._valid_host, valid_host])
        self._rows_end += raw.shape[1]

    def _drop_rows_before(self, row: int) -> None:
        drop = row - self._rows_start
        if drop > 0 and self._raw is not None:
            self._raw, self._valid_dev = self._raw[:, drop:], self._valid_dev[drop:]
            self._valid_host = self._valid_host[drop:]
            self._rows_start = row

    # -- window rows ------------------------------------------------------------------------------------------

    def process_window_row(self, row: int) -> None:
        """Queue the windows of window row ``row`` (its scene rows must have been added)."""
        grid = self.grid
        r0, r1 = grid.rows_in_scene(row)
        if r1 > self._rows_end:
            raise ValueError(f"window row {row} needs scene rows up to {r1}; only {self._rows_end} were added")
        self._drop_rows_before(r0)
        local = slice(r0 - self._rows_start, r1 - self._rows_start)
        valid_host = self._valid_host[local]
        columns = self._columns_to_run(valid_host)
        self.windows_skipped += len(grid.col_starts) - len(columns)
        if not len(columns):
            self._merger.start_row(row, columns, torch.empty(0))
            return
        device_columns = to_device(columns, self.device)
        self._merger.start_row(row, columns, device_columns)
        with self.clock("device"):
            strip = self._strip(row, self._raw[:, local], self._valid_dev[local], not valid_host.all())
        self._queue_windows(row, device_columns, strip)

    def _columns_to_run(self, valid_host: np.ndarray) -> np.ndarray:
        """Window columns with at least one valid pixel (the others stay transparent and are not run)."""
        grid, tile = self.grid, self.grid.tile
        counts = np.concatenate([[0], np.cumsum(valid_host.any(axis=0))])
        starts = np.asarray(grid.col_starts)
        first, last = np.clip(starts, 0, grid.width), np.clip(starts + tile, 0, grid.width)
        return np.flatnonzero(counts[last] > counts[first])

    def _strip(self, row: int, raw: torch.Tensor, valid: torch.Tensor, needs_fill: bool) -> torch.Tensor:
        """(3, tile, span) generator-range strip of window row ``row``: the scene rows it covers, reflection-padded
        to the whole lattice span, scaled, masked pixels filled. Interior rows and columns are plain slices; only
        the padding is gathered."""
        grid, tile = self.grid, self.grid.tile
        top = grid.row_starts[row]
        r0, r1 = grid.rows_in_scene(row)
        if top >= 0 and top + tile <= grid.height:
            raw_rows, valid_rows = raw, valid
        else:
            row_index = to_device(reflect_index(top - r0, top - r0 + tile, r1 - r0), self.device)
            raw_rows, valid_rows = raw.index_select(1, row_index), valid.index_select(0, row_index)
        strip = self._to_unit(self._pad_columns(raw_rows, 2))
        if needs_fill:
            strip = fill_invalid(strip, self._pad_columns(valid_rows, 1))
        return strip

    def _pad_columns(self, rows: torch.Tensor, dim: int) -> torch.Tensor:
        if self._left_index is None and self._right_index is None:
            return rows
        parts = [rows]
        if self._left_index is not None:
            parts.insert(0, rows.index_select(dim, self._left_index))
        if self._right_index is not None:
            parts.append(rows.index_select(dim, self._right_index))
        return torch.cat(parts, dim=dim)

    def _queue_windows(self, row: int, columns: torch.Tensor, strip: torch.Tensor) -> None:
        """Gather the row's windows to run (``columns``, on the device) from the strip into the batch buffer, one
        copy per batch they fall in (not one per window: on a GPU each copy is a launch); run every full batch."""
        windows = strip.unfold(2, self.grid.tile, self.stride).permute(2, 0, 1, 3)  # (columns, 3, tile, tile) view
        position = 0
        while position < len(columns):
            take = min(self.batch_size - self._filled, len(columns) - position)
            with self.clock("device"):
                torch.index_select(windows, 0, columns[position:position + take],
                                   out=self._batch[self._filled:self._filled + take])
            self._segments.append((row, position, self._filled, take))
            self._filled += take
            position += take
            if self._filled == self.batch_size:
                self._run_batch()

    def _run_batch(self) -> None:
        if self._filled == 0:
            return
        inputs = self._batch if self.fixed_batch else self._batch[:self._filled]
        outputs = self.generator(inputs)
        self.windows_run += self._filled
        self._merger.add_outputs(outputs, self._segments)
        self._segments, self._filled = [], 0

    def finish(self) -> None:
        """Run the last partial batch and flush every remaining row and overview row."""
        self._run_batch()
        self._merger.finish()

    @property
    def merge_waited(self) -> float:
        """Seconds this thread waited for a background merger that was behind (0 without one)."""
        return self._merger.blocked if isinstance(self._merger, BackgroundMerger) else 0.0

    def abandon(self) -> None:
        """Stop a background merger after a failure (nothing more is emitted)."""
        if isinstance(self._merger, BackgroundMerger):
            self._merger.abandon()
