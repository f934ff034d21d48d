"""The host stages around the device engine: read-ahead of raw rows and downloading/writing finished rows.

- ``ChunkReader`` reads, for each window row, the scene rows it needs that were not read before, on a few
  threads (one GDAL handle each) and a few chunks ahead, straight into pinned memory when the device is a GPU.
- ``RowWriter`` downloads finished rows on a CUDA stream of its own (overlapping the compute stream) into
  pinned buffers and hands them to the map sink on a writer thread, which waits only for its own copy.

Both stop promptly when the run fails or is interrupted; a failure in the writer is raised in the caller.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from geo_sat2map.inference.runner import StageClock
from geo_sat2map.raster_io.strips import RowReader
from geo_sat2map.windows import RowBand

POLL_SECONDS = 0.1  # how often a blocked thread looks at the stop flag


class MapSink(Protocol):
    """Where finished RGBA rows go (``raster_io.output``): full resolution is level 0, overviews 1.."""

    overview_levels: int  # overview levels the sink wants from the stream (0: it makes its own)

    def write_rows(self, level: int, rows: np.ndarray) -> None: ...


@dataclass
class RawChunk:
    """Scene rows [start, start + n) that window row ``row`` needs first: raw bands and validity (host)."""

    row: int
    start: int
    raw: torch.Tensor  # (bands, n, width), pinned on CUDA
    valid: np.ndarray  # (n, width) bool


class ChunkReader:
    """Reads the new rows of each window row in order, ``ahead`` chunks ahead on ``workers`` threads."""

    def __init__(
        self, reader: RowReader, band: RowBand, dtype: np.dtype, *, pin: bool, workers: int = 1, ahead: int = 3,
    ) -> None:
        self.reader, self.band, self.dtype, self.pin = reader, band, dtype, pin
        self.workers, self.ahead = max(1, workers), max(1, ahead, workers)
        self.seconds = 0.0  # summed over threads
        self._lock = threading.Lock()

    def chunks(self) -> Iterator[RawChunk]:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="translate-read")
        futures: deque[Future[RawChunk]] = deque()
        try:
            for row in range(self.band.process_from, self.band.end):
                futures.append(pool.submit(self._read, row))
                if len(futures) >= self.ahead:
                    yield futures.popleft().result()
            while futures:
                yield futures.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _read(self, row: int) -> RawChunk:
        started = time.perf_counter()
        start, stop = self.band.new_rows(row)
        width = self.band.grid.width
        shape = (len(self.reader.bands), stop - start, width)
        buffer = torch.empty(shape, dtype=_TORCH_DTYPES[self.dtype], pin_memory=self.pin)
        if stop > start:
            _, valid = self.reader.read(start, stop - start, out=buffer.numpy())
        else:
            valid = np.zeros((0, width), dtype=bool)
        with self._lock:
            self.seconds += time.perf_counter() - started
        return RawChunk(row, start, buffer, valid)


_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int32): torch.int32, np.dtype(np.float32): torch.float32}


_END = object()


class RowWriter:
    """Downloads finished rows and writes them to the sink on a thread of its own (see the module docstring)."""

    def __init__(self, sink: MapSink, device: torch.device, clock: StageClock, max_queued: int = 8) -> None:
        self.sink, self.device, self.clock = sink, device, clock
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.items: queue.Queue[Any] = queue.Queue(maxsize=max_queued)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.seconds = 0.0  # writer thread time in the sink (encoding, file writes)
        self.waited = 0.0  # writer thread time waiting for downloads to land
        self._thread = threading.Thread(target=self._work, name="translate-write", daemon=True)
        self._thread.start()

    def submit(self, level: int, rows: torch.Tensor) -> None:
        """Queue (rows, width, 4) uint8 device rows of ``level``; blocks while the writer is behind."""
        if self.error is not None:
            raise self.error
        host, done = self._download(rows)
        while not self.stop.is_set():
            try:
                self.items.put((level, host, done), timeout=POLL_SECONDS)
                return
            except queue.Full:
                continue
        raise self.error or RuntimeError("internal error: the writer stopped early")

    def _download(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        if self.stream is None:
            return rows, None
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream), self.clock("download", self.stream):
            host.copy_(rows, non_blocking=True)
        done = torch.cuda.Event()
        done.record(self.stream)
        rows.record_stream(self.stream)  # keep the device rows alive until the copy has run
        return host, done

    def _work(self) -> None:
        try:
            while True:
                try:
                    item = self.items.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    if self.stop.is_set():
                        return
                    continue
                if item is _END:
                    return
                level, host, done = item
                started = time.perf_counter()
                if done is not None:
                    done.synchronize()
                written = time.perf_counter()
                self.sink.write_rows(level, host.numpy())
                self.waited += written - started
                self.seconds += time.perf_counter() - written
        except BaseException as exc:  # raised in the calling thread by submit/close
            self.error = exc
            self.stop.set()

    def close(self) -> None:
        """Wait until every queued row is written; raise the writer's failure, if any."""
        while self._thread.is_alive() and not self.stop.is_set():
            try:
                self.items.put(_END, timeout=POLL_SECONDS)
                break
            except queue.Full:
                continue
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        """Stop without writing what is still queued (the run failed)."""
        self.stop.set()
        self._thread.join()
