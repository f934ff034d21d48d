"""The host stages around the device engine: read-ahead of raw rows and downloading/writing finished rows.

- ``ChunkReader`` reads, for each window row, the scene rows it needs that were not read before, on a few
  threads (one GDAL handle each) and a few chunks ahead, straight into pinned memory when the device is a GPU.
- ``RowWriter`` downloads finished rows on a CUDA stream of its own (overlapping the compute stream) into
  pinned buffers and hands them to the map sink on a writer thread, which waits only for its own copy.
- ``QueueWorker`` is the thread-behind-a-bounded-queue both the writer and the engine's background merger run
  on: items handled in order, backpressure on the feeder, the first failure raised in the feeder.

They stop promptly when the run fails or is interrupted.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from geo_sat2map.inference.runner import StageClock, device_binder
from geo_sat2map.raster_io.grid import GridRows
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
    valid_tensor: torch.Tensor  # the same validity, pinned on CUDA (ready for a non-blocking upload)


class ChunkReader:
    """Reads the new rows of each window row in order, ``ahead`` chunks ahead on ``workers`` threads, into
    pinned memory for a CUDA ``device`` (the threads bind themselves to it first)."""

    def __init__(
        self, reader: GridRows, band: RowBand, dtype: np.dtype, *, device: torch.device, workers: int = 1,
        ahead: int = 3,
    ) -> None:
        self.reader, self.band, self.dtype, self.pin = reader, band, dtype, device.type == "cuda"
        self._bind = device_binder(device)
        self.workers, self.ahead = max(1, workers), max(1, ahead, workers)
        self.seconds = 0.0  # summed over threads
        self.waited = 0.0  # the consumer's time waiting for the next chunk (reading is behind when it grows)
        self._lock = threading.Lock()

    def chunks(self) -> Iterator[RawChunk]:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="translate-read", initializer=self._bind)
        futures: deque[Future[RawChunk]] = deque()
        try:
            for row in range(self.band.process_from, self.band.process_end):
                futures.append(pool.submit(self._read, row))
                if len(futures) >= self.ahead:
                    yield self._next(futures)
            while futures:
                yield self._next(futures)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _next(self, futures: deque[Future[RawChunk]]) -> RawChunk:
        started = time.perf_counter()
        chunk = futures.popleft().result()
        self.waited += time.perf_counter() - started
        return chunk

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
        # Pinned here, on a reader thread: pinning a few MB on the thread that feeds the device held it up.
        valid_tensor = torch.from_numpy(valid)
        if self.pin:
            valid_tensor = valid_tensor.pin_memory()
        with self._lock:
            self.seconds += time.perf_counter() - started
        return RawChunk(row, start, buffer, valid, valid_tensor)


_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int32): torch.int32, np.dtype(np.float32): torch.float32}


_END = object()


class QueueWorker:
    """A thread that calls ``handle(item)`` for every queued item, in order, with ``device`` as its current one.

    ``put`` blocks while ``max_queued`` items wait (the feeder cannot run ahead of the worker by more); the
    worker's first failure is raised by the next ``put`` or by ``close``; ``abandon`` stops it without handling
    what is still queued.
    """

    def __init__(self, handle: Callable[[Any], None], name: str, max_queued: int, device: torch.device) -> None:
        self.handle = handle
        self._bind = device_binder(device)
        self.error: BaseException | None = None
        self.blocked = 0.0  # the feeder's time waiting for room in the queue (the worker is behind)
        self._items: queue.Queue[Any] = queue.Queue(maxsize=max_queued)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        started = None
        while True:
            if self.error is not None:
                raise self.error
            if self._stopped.is_set():
                raise RuntimeError("internal error: a pipeline thread was stopped")
            try:
                if started is None:
                    self._items.put_nowait(item)
                else:
                    self._items.put(item, timeout=POLL_SECONDS)
                break
            except queue.Full:
                started = started or time.perf_counter()
        if started is not None:
            self.blocked += time.perf_counter() - started

    def _work(self) -> None:
        try:
            self._bind()
            while not self._stopped.is_set():
                try:
                    item = self._items.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                self.handle(item)
        except BaseException as exc:  # raised in the feeding thread by its next put() or by close()
            self.error = exc
            self._stopped.set()

    def close(self) -> None:
        """Wait until every queued item is handled; raise the worker's failure, if any."""
        self.put(_END)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        self._stopped.set()
        self._thread.join()


class RowWriter:
    """Downloads finished rows and writes them to the sink on a thread of its own (see the module docstring)."""

    def __init__(self, sink: MapSink, device: torch.device, clock: StageClock, max_queued: int = 8) -> None:
        self.sink, self.device, self.clock = sink, device, clock
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.seconds = 0.0  # writer thread time in the sink (encoding, file writes)
        self.download_waited = 0.0  # writer thread time waiting for downloads (the device is behind)
        self._worker = QueueWorker(self._write, "translate-write", max_queued, device)

    def submit(self, level: int, rows: torch.Tensor) -> None:
        """Queue (rows, width, 4) uint8 device rows of ``level``; blocks while the writer is behind."""
        if self._worker.error is not None:  # do not start a download for a writer that has failed
            raise self._worker.error
        self._worker.put((level, *self._download(rows)))

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

    @property
    def blocked(self) -> float:
        """The submitter's time waiting for room in the writer's queue (writing is behind)."""
        return self._worker.blocked

    def _write(self, item: tuple[int, torch.Tensor, torch.cuda.Event | None]) -> None:
        level, host, done = item
        started = time.perf_counter()
        if done is not None:
            done.synchronize()
        self.download_waited += time.perf_counter() - started
        started = time.perf_counter()
        self.sink.write_rows(level, host.numpy())
        self.seconds += time.perf_counter() - started

    def close(self) -> None:
        """Wait until every queued row is written; raise the writer's failure, if any."""
        self._worker.close()

    def abandon(self) -> None:
        """Stop without writing what is still queued (the run failed)."""
        self._worker.abandon()
