"""Streaming Cloud-Optimized GeoTIFF writer: every tile is compressed once, in parallel, as its rows arrive.

GDAL's COG driver can only copy a finished GeoTIFF, decoding and re-encoding every tile; for a large map that
second pass costs more than the whole inference. Here each level (full resolution and every overview, whose
rows the caller computes) is a stream of rows: a complete block row is split into tiles that a thread pool
predicts and compresses (zlib and zstd release the GIL), and the compressed tiles are appended to a spill file
per level. ``close()`` then writes the header, the IFDs and the tile index, and appends the spill files with
byte copies: nothing is decoded or encoded twice.

File layout with ``cog=True``, as GDAL's COG driver writes it (and as ``check_cog_layout`` verifies): TIFF
header, GDAL's "ghost area" (structural metadata), the IFDs (full resolution, then overviews by decreasing size),
the tile offset / byte count arrays, then the tiles of the smallest overview, ..., the full-resolution tiles
last; each tile is preceded by its size (uint32) and followed by a copy of its last 4 bytes (GDAL's block leader
and trailer). GDAL then reports ``LAYOUT=COG``. With ``cog=False`` the same file has no ghost area and no
leaders/trailers: a plain tiled GeoTIFF with internal overviews.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import queue
import struct
import tempfile
import threading
import time
import warnings
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from geo_sat2map.errors import UserError
from geo_sat2map.raster_io import tiff_format as tf

# Optional accelerators (the "fast" extra). ISA-L writes the same DEFLATE streams ~5x faster than zlib at its
# levels 1-3, with a better ratio than zlib's 1-3; zstd is ~3x faster than zlib level 1 and smaller, but not
# every TIFF reader decodes it (GDAL >= 2.3 does). Both release the GIL, as zlib does.
try:
    from isal import isal_zlib
except ImportError:  # pragma: no cover - depends on the environment
    isal_zlib = None
try:
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None

# DEFLATE levels 1-3 go through ISA-L when it is installed; set False to force zlib (e.g. to compare).
ISAL_DEFLATE = isal_zlib is not None

CLASSIC_TIFF_LIMIT = 2**32 - 1  # last byte offset a classic TIFF can address
SAMPLES = 4  # R, G, B, alpha (one-band class maps have 1)


@dataclass(frozen=True)
class _Codec:
    tiff_id: int
    default_level: int | None
    levels: range | None  # accepted ``level`` values (None: the codec takes no level)
    make: Callable[[int | None], Callable[[np.ndarray], bytes]]  # level -> thread-safe compress function


def deflate_engine(level: int) -> str:
    """Which library encodes DEFLATE at ``level`` here: "isa-l" or "zlib"."""
    return "isa-l" if ISAL_DEFLATE and isal_zlib is not None and level <= isal_zlib.ISAL_BEST_COMPRESSION else "zlib"


def _deflate(level: int | None) -> Callable[[np.ndarray], bytes]:
    if deflate_engine(level) == "isa-l":
        return lambda data: isal_zlib.compress(data, level)
    return lambda data: zlib.compress(data, level)


def _zstd(level: int | None) -> Callable[[np.ndarray], bytes]:
    local = threading.local()  # a ZstdCompressor must not be used by two threads at once

    def compress(data: np.ndarray) -> bytes:
        compressor = getattr(local, "compressor", None)
        if compressor is None:
            compressor = local.compressor = zstandard.ZstdCompressor(level=level)
        return compressor.compress(data)

    return compress


_CODECS: dict[str, _Codec] = {
    # Level 1: see benchmarks/cog_bench.py; higher levels cost far more time than they save bytes on maps.
    "deflate": _Codec(8, 1, range(1, 10), _deflate),
    "none": _Codec(1, None, None, lambda level: lambda data: data.tobytes()),
}
if zstandard is not None:
    _CODECS["zstd"] = _Codec(50000, 1, range(-7, 23), _zstd)

# Compressions this writer encodes; for any other (e.g. LZW) use the GDAL path in raster_io/output.py.
FAST_CODECS: tuple[str, ...] = tuple(_CODECS)


@dataclass
class COGWriterStats:
    """Where the time and bytes went, for benchmarks and logs."""

    tiles: int = 0
    raw_bytes: int = 0  # tile bytes before compression (edge tiles padded)
    compressed_bytes: int = 0  # tile payloads after compression
    write_seconds: float = 0.0  # caller's wall time in write_rows: copies, and waits when the pool is behind
    drain_seconds: float = 0.0  # close() waiting for the last tiles to be compressed and stored
    encode_seconds: float = 0.0  # CPU seconds of the pool's threads in predictor + compression (summed)
    assemble_seconds: float = 0.0  # close(): header, IFDs and byte copies of the spill files
    file_bytes: int = 0

    def items(self):
        """Wall-clock stages as (name, seconds) pairs, like ``GDALMapSink.stats``: "encode" (the caller's time
        in write_rows and waiting for the last tiles) and "assemble"."""
        return {"encode": self.write_seconds + self.drain_seconds, "assemble": self.assemble_seconds}.items()


@dataclass
class _BlockRow:
    """A complete block row of one level, owned by the pool until all its tiles are stored."""

    buffer: np.ndarray  # (blocksize, padded width, 4)
    pending: int  # tiles not yet stored


@dataclass
class _LevelStream:
    width: int
    height: int
    spill_path: Path
    spill_fd: int
    rows_received: int = 0
    block: np.ndarray | None = None  # the block row being filled
    filled: int = 0  # rows of ``block`` filled
    free: deque[np.ndarray] = field(default_factory=deque)  # encoded block rows' buffers, for reuse
    spill_bytes: int = 0
    tile_offsets: list[int] = field(default_factory=list)  # of each payload within the spill file
    tile_sizes: list[int] = field(default_factory=list)


class StreamingCOGWriter:
    """RGBA (or one-band class) uint8 map written in one pass: block rows are compressed in parallel as they arrive, overview rows
    are supplied by the caller (computed on the GPU), and close() assembles a COG by copying compressed bytes.

    ``path`` is a temporary path chosen by the caller (the atomic rename happens outside); spill files go
    beside it under hidden names and are always removed. Levels are independent streams: rows of each level
    arrive in order, and the caller interleaves levels as it likes. The caller's thread only copies rows into
    block-row buffers; a pool of ``threads`` compresses tiles and one more thread appends them, in order, to
    the level's spill file. Memory stays bounded: at most ``2 * threads`` tiles are in flight (write_rows
    blocks beyond that) and block-row buffers are reused. Use as a context manager (abort on an exception,
    close otherwise) or call ``close()`` / ``abort()``. One producer thread.

    ``samples=1``: one band of class indices, with a ``colormap`` (PHOTOMETRIC=palette, the GDAL colour table) or
    without (grey, min-is-black), and ``nodata`` (GDAL_NODATA) for the mask. ``bits`` 1, 2 or 4 packs that many
    bits a pixel (TIFF BitsPerSample, GDAL's NBITS; rows must then hold values below ``2 ** bits``): a class map
    of a few classes shrinks by about half. libtiff's predictor takes 8-bit samples or wider, so not with it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        crs: rasterio.crs.CRS | str | None,
        transform: Affine,
        tags: Mapping[str, str],
        *,
        compress: str = "deflate",
        level: int | None = None,
        predictor: bool = True,
        blocksize: int = 512,
        threads: int | None = None,
        cog: bool = True,
        bigtiff: bool | None = None,  # None: only when the file would not fit a classic TIFF
        samples: int = SAMPLES,
        colormap: list[tuple[int, int, int]] | None = None,
        nodata: int | None = None,
        bits: int = 8,
    ) -> None:
        codec = _CODECS.get(compress.lower())
        if codec is None:
            raise ValueError(f"compression {compress!r} is not one the streaming writer encodes "
                             f"({', '.join(FAST_CODECS)}); write it through GDAL instead")
        if level is not None and (codec.levels is None or level not in codec.levels):
            raise ValueError(f"level {level} is not valid for {compress}")
        if blocksize < 16 or blocksize % 16:
            raise ValueError(f"blocksize {blocksize}: TIFF tiles must be a positive multiple of 16")
        if samples not in (1, SAMPLES) or (colormap is not None and samples != 1):
            raise ValueError(f"samples={samples}: RGBA (4) or one band (1, optionally with a colour map)")
        if bits not in (1, 2, 4, 8) or (bits < 8 and (samples != 1 or (predictor and compress.lower() != "none"))):
            raise ValueError(f"bits={bits}: 1, 2 or 4 (packed) for one band without a predictor, else 8")
        if colormap is not None and len(colormap) > 1 << bits:
            raise ValueError(f"a colour map of {len(colormap)} entries does not fit {bits}-bit pixels")
        if width < 1 or height < 1:
            raise ValueError(f"raster size {width}x{height} must be at least 1x1")
        threads = threads if threads is not None else available_cpus()
        if threads < 1:
            raise ValueError(f"threads={threads}: at least one encoding thread is needed")
        self.path = Path(path)
        self.samples, self.colormap, self.bits = samples, colormap, bits
        self._photometric = 2 if samples == SAMPLES else 3 if colormap is not None else 1  # RGB, palette, grey
        self.blocksize, self.cog, self._bigtiff = blocksize, cog, bigtiff
        self.compression = compress.lower()
        self._codec = codec
        self._compress = codec.make(level if level is not None else codec.default_level)
        self._predictor = predictor and compress.lower() != "none"
        self.levels = level_sizes(width, height, blocksize)
        self.overview_levels = len(self.levels) - 1  # rows the caller supplies for levels 1..overview_levels
        self._tile_bytes = blocksize * blocksize * samples * bits // 8
        self.stats = COGWriterStats()
        self._geo_tags = georeferencing_tags(crs, transform, tags, nodata)
        self._streams: list[_LevelStream] = []
        self._state = "open"
        self._output_started = False
        self._error: BaseException | None = None  # first failure seen by the storing thread
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cog-encode")
        self._slots = threading.BoundedSemaphore(2 * threads)  # tiles in flight (backpressure)
        self._finished: queue.SimpleQueue[tuple[_LevelStream, _BlockRow, Future] | None] = queue.SimpleQueue()
        self._storer = threading.Thread(target=self._store_in_order, name="cog-store", daemon=True)
        try:
            for index, (w, h) in enumerate(self.levels):
                fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=f".level{index}.tiles",
                                            dir=self.path.parent)
                self._streams.append(_LevelStream(w, h, Path(name), fd))
        except BaseException:
            self.abort()
            raise
        self._storer.start()

    # ----------------------------------------------------------------------------------------- streaming

    def write_rows(self, level: int, rgba: np.ndarray, row_off: int | None = None) -> None:
        """(rows, level_width, samples) uint8, pixel-interleaved; rows of each level arrive in order.

        ``row_off`` (optional) is the first row's index, checked against the rows received so far. The rows
        are copied: the caller may reuse its buffer as soon as this returns.
        """
        if self._state != "open":
            raise ValueError(f"write_rows on a writer that is {self._state}")
        if not 0 <= level < len(self.levels):
            raise ValueError(f"level {level} does not exist (this map has levels 0..{len(self.levels) - 1})")
        stream = self._streams[level]
        if not isinstance(rgba, np.ndarray) or rgba.dtype != np.uint8:
            raise ValueError(f"level {level}: rows must be a uint8 array, got {getattr(rgba, 'dtype', type(rgba))}")
        if rgba.ndim != 3 or rgba.shape[1:] != (stream.width, self.samples):
            raise ValueError(f"level {level}: rows must have shape (rows, {stream.width}, {self.samples}), "
                             f"got {rgba.shape}")
        if row_off is not None and row_off != stream.rows_received:
            raise ValueError(f"level {level}: rows out of order: expected row {stream.rows_received}, got {row_off}")
        if stream.rows_received + rgba.shape[0] > stream.height:
            raise ValueError(f"level {level}: {stream.rows_received + rgba.shape[0]} rows written, "
                             f"but it has {stream.height}")
        if self.bits < 8 and rgba.size and int(rgba.max()) >= 1 << self.bits:
            raise ValueError(f"level {level}: value {int(rgba.max())} does not fit {self.bits}-bit pixels")
        self._raise_failure()
        started = time.perf_counter()
        done = 0
        while done < rgba.shape[0]:
            if stream.block is None:
                stream.block = self._block_buffer(stream)
            take = min(rgba.shape[0] - done, self.blocksize - stream.filled)
            stream.block[stream.filled:stream.filled + take, :stream.width] = rgba[done:done + take]
            stream.filled += take
            stream.rows_received += take
            done += take
            if stream.filled == self.blocksize or stream.rows_received == stream.height:
                self._submit_block_row(stream)
        self.stats.write_seconds += time.perf_counter() - started

    def _block_buffer(self, stream: _LevelStream) -> np.ndarray:
        if stream.free:  # reuse: fresh pages would cost a page fault each
            return stream.free.popleft()
        tiles_across = -(-stream.width // self.blocksize)
        block = np.empty((self.blocksize, tiles_across * self.blocksize, self.samples), np.uint8)
        block[:, stream.width:] = 0  # TIFF edge tiles are whole tiles: zeros (transparent) beyond the edge
        return block

    def _submit_block_row(self, stream: _LevelStream) -> None:
        row = _BlockRow(stream.block, pending=stream.block.shape[1] // self.blocksize)
        if stream.filled < self.blocksize:  # the last block row: zeros below the edge too
            row.buffer[stream.filled:] = 0
        stream.block, stream.filled = None, 0
        for col in range(row.pending):
            self._slots.acquire()
            self._finished.put((stream, row, self._pool.submit(self._encode_tile, row.buffer, col)))

    def _encode_tile(self, block: np.ndarray, col: int) -> tuple[bytes, float]:
        """Runs in the pool: horizontal predictor (TIFF predictor 2, per tile row) or bit packing, and compression."""
        start = time.thread_time()  # CPU time: what a tile costs a core, however busy the machine is
        tile = block[:, col * self.blocksize:(col + 1) * self.blocksize]
        if self._predictor:
            payload = np.empty_like(tile)
            payload[:, 0] = tile[:, 0]
            np.subtract(tile[:, 1:], tile[:, :-1], out=payload[:, 1:])  # uint8 wraps modulo 256, as TIFF wants
        elif self.bits < 8:
            payload = pack_bits(tile[..., 0], self.bits)
        else:
            payload = np.ascontiguousarray(tile)
        return self._compress(payload), time.thread_time() - start

    def _store_in_order(self) -> None:
        """The storing thread: appends finished tiles to their level's spill file in submission order."""
        while (item := self._finished.get()) is not None:
            stream, row, future = item
            try:
                if self._error is None:
                    data, seconds = future.result()
                    self._store(stream, data)
                    self.stats.encode_seconds += seconds
                    self.stats.tiles += 1
                    self.stats.raw_bytes += self._tile_bytes
                    self.stats.compressed_bytes += len(data)
            except OSError as exc:
                self._error = UserError(f"{self.path}: could not write the map ({exc.strerror or exc})")
                self._error.__cause__ = exc
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by _raise_failure
                self._error = self._error or exc
            finally:
                row.pending -= 1
                if row.pending == 0:
                    stream.free.append(row.buffer)
                self._slots.release()

    def _store(self, stream: _LevelStream, data: bytes) -> None:
        if self.cog:  # GDAL's block leader (payload size) and trailer (its last 4 bytes again)
            parts = [struct.pack("<I", len(data)), data, data[-4:]]
            stream.tile_offsets.append(stream.spill_bytes + 4)
        else:
            parts = [data]
            stream.tile_offsets.append(stream.spill_bytes)
        stream.tile_sizes.append(len(data))
        total = sum(len(part) for part in parts)
        written = os.writev(stream.spill_fd, parts)
        if written < total:  # a short write: finish it plainly
            _write_all(stream.spill_fd, b"".join(parts)[written:])
        stream.spill_bytes += total

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    # ----------------------------------------------------------------------------------------- finishing

    def close(self) -> None:
        """All rows of all levels written: assemble the final file at ``path`` (removed again on failure)."""
        if self._state != "open":
            raise ValueError(f"close on a writer that is {self._state}")
        try:
            missing = [f"level {i}: {s.rows_received} of {s.height} rows"
                       for i, s in enumerate(self._streams) if s.rows_received != s.height]
            if missing:
                raise ValueError("close() before all rows were written (" + "; ".join(missing) + ")")
            start = time.perf_counter()
            self._stop_threads(cancel=False)
            self.stats.drain_seconds = time.perf_counter() - start
            self._raise_failure()
            start = time.perf_counter()
            self._assemble()
            self.stats.assemble_seconds = time.perf_counter() - start
        except BaseException:
            self.abort()
            raise
        self._remove_spills()
        self._state = "closed"

    def abort(self) -> None:
        """Stop encoding and remove everything this writer created (spill files, and a partial output)."""
        if self._state in ("aborted", "closed"):
            return
        self._state = "aborted"
        self._stop_threads(cancel=True)
        self._remove_spills()
        if self._output_started:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> StreamingCOGWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.close()

    def _stop_threads(self, cancel: bool) -> None:
        """Let the pool finish (or cancel what has not started) and the storing thread store what is done."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        if self._storer.is_alive():
            self._finished.put(None)
            self._storer.join()

    def _remove_spills(self) -> None:
        for stream in self._streams:
            if stream.spill_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(stream.spill_fd)
                stream.spill_fd = -1
            with contextlib.suppress(FileNotFoundError):
                stream.spill_path.unlink()

    def _assemble(self) -> None:
        data_order = list(range(len(self.levels)))[::-1]  # smallest overview first, full resolution last
        bigtiff = bool(self._bigtiff)
        head = self._layout(bigtiff, data_order)
        if self._bigtiff is None and len(head) + sum(s.spill_bytes for s in self._streams) > CLASSIC_TIFF_LIMIT:
            bigtiff = True
            head = self._layout(bigtiff, data_order)
        self._output_started = True
        try:
            with open(self.path, "wb", buffering=0) as out:
                out.write(head)
                for index in data_order:
                    stream = self._streams[index]
                    os.lseek(stream.spill_fd, 0, os.SEEK_SET)
                    _copy_bytes(stream.spill_fd, out.fileno(), stream.spill_bytes)
                self.stats.file_bytes = out.tell()
        except OSError as exc:
            raise UserError(f"{self.path}: could not write the map ({exc.strerror or exc})") from exc

    def _layout(self, bigtiff: bool, data_order: list[int]) -> bytes:
        """Everything before the tile data: header, ghost area, IFDs and tile index arrays, as bytes."""
        ghost = tf.ghost_area() if self.cog else b""
        first_ifd = tf.header_bytes(bigtiff) + len(ghost)
        first_ifd += first_ifd & 1  # IFDs start on a word boundary
        # Sizes do not depend on the offsets' values, so lay out with zeros first, then fill them in.
        drafts = [self._level_tags(i, [0] * len(s.tile_sizes), bigtiff) for i, s in enumerate(self._streams)]
        ifd_at, far_at, position = [], [], first_ifd
        for tags in drafts:
            ifd_at.append(position)
            position += tf.ifd_byte_size(tags, bigtiff, far=_TILE_INDEX_TAGS)
        for tags in drafts:  # tile index arrays after all IFDs: one small read gets every IFD
            far_at.append({})
            for tag in tags:
                if tag.code in _TILE_INDEX_TAGS and not tag.inline(bigtiff):
                    far_at[-1][tag.code] = position
                    position += tf.word_aligned(len(tag.data))
        section_at = {}
        for index in data_order:
            section_at[index] = position
            position += self._streams[index].spill_bytes
        head = bytearray(tf.tiff_header(bigtiff, first_ifd) + ghost)
        head += b"\0" * (first_ifd - len(head))
        arrays = bytearray()
        for i, stream in enumerate(self._streams):
            tags = self._level_tags(i, [section_at[i] + o for o in stream.tile_offsets], bigtiff)
            next_ifd = ifd_at[i + 1] if i + 1 < len(ifd_at) else 0
            head += tf.encode_ifd(tags, ifd_at[i], bigtiff, next_ifd, far=far_at[i])
            for tag in sorted(tags, key=lambda t: t.code):
                if tag.code in far_at[i]:
                    arrays += tag.data.ljust(tf.word_aligned(len(tag.data)), b"\0")
        head += arrays
        assert len(head) == section_at[data_order[0]], "layout size mismatch"
        return bytes(head)

    def _level_tags(self, index: int, tile_offsets: list[int], bigtiff: bool) -> list[tf.Tag]:
        width, height = self.levels[index]
        stream = self._streams[index]
        tags = [
            tf.short_or_long(tf.IMAGE_WIDTH, width),
            tf.short_or_long(tf.IMAGE_LENGTH, height),
            tf.Tag.of(tf.BITS_PER_SAMPLE, tf.SHORT, [self.bits] * self.samples),
            tf.Tag.of(tf.COMPRESSION, tf.SHORT, [self._codec.tiff_id]),
            tf.Tag.of(tf.PHOTOMETRIC, tf.SHORT, [self._photometric]),
            tf.Tag.of(tf.SAMPLES_PER_PIXEL, tf.SHORT, [self.samples]),
            tf.Tag.of(tf.PLANAR_CONFIG, tf.SHORT, [1]),  # pixel-interleaved
            tf.short_or_long(tf.TILE_WIDTH, self.blocksize),
            tf.short_or_long(tf.TILE_LENGTH, self.blocksize),
            tf.Tag.of(tf.TILE_OFFSETS, tf.LONG8 if bigtiff else tf.LONG, tile_offsets),
            tf.Tag.of(tf.TILE_BYTE_COUNTS, tf.LONG, stream.tile_sizes),
            tf.Tag.of(tf.SAMPLE_FORMAT, tf.SHORT, [1] * self.samples),
        ]
        if self.samples == SAMPLES:
            tags.append(tf.Tag.of(tf.EXTRA_SAMPLES, tf.SHORT, [2]))  # unassociated alpha: GDAL's colorinterp alpha
        if self.colormap is not None:  # every IFD of a palette image needs its colour map
            table = list(self.colormap) + [(0, 0, 0)] * ((1 << self.bits) - len(self.colormap))
            tags.append(tf.Tag.of(tf.COLORMAP, tf.SHORT, [257 * c[channel] for channel in range(3) for c in table]))
        if self._predictor:
            tags.append(tf.Tag.of(tf.PREDICTOR, tf.SHORT, [2]))
        if index == 0:
            tags += self._geo_tags
        else:
            tags.append(tf.Tag.of(tf.NEW_SUBFILE_TYPE, tf.LONG, [tf.SUBFILE_REDUCED]))
        return tags


_TILE_INDEX_TAGS = (tf.TILE_OFFSETS, tf.TILE_BYTE_COUNTS)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """(rows, width) uint8 values below ``2 ** bits`` -> (rows, width * bits / 8) bytes, the first pixel in the
    highest bits (TIFF FillOrder 1). ``width * bits`` must be a multiple of 8 (a tile's is)."""
    per = 8 // bits
    groups = values.reshape(values.shape[0], -1, per)
    packed = groups[..., 0].copy()
    for i in range(1, per):
        packed <<= bits
        packed |= groups[..., i]
    return packed


def available_cpus() -> int:
    """CPUs this process may run on (the default number of encoding threads)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def overview_factors(width: int, height: int, blocksize: int) -> list[int]:
    """Power-of-two overview factors until the overview fits in one block (what GDAL's COG driver does)."""
    factors, factor = [], 2
    while max(width, height) / (factor // 2) > blocksize:
        factors.append(factor)
        factor *= 2
    return factors


def level_sizes(width: int, height: int, blocksize: int) -> list[tuple[int, int]]:
    """(width, height) of full resolution and of each overview: halved, rounding up, until one block holds it
    (``overview_factors``; gdaladdo's sizes). GDAL 3.10's COG driver rounds down instead (1025 -> 512, and
    513x512 gets one overview, not two): readers take either, as the overview's size gives its scale."""
    return [(width, height)] + [(math.ceil(width / f), math.ceil(height / f))
                                for f in overview_factors(width, height, blocksize)]


def georeferencing_tags(
    crs: rasterio.crs.CRS | str | None, transform: Affine, tags: Mapping[str, str], nodata: int | None = None
) -> list[tf.Tag]:
    """The GeoTIFF and GDAL metadata tags GDAL itself writes for this CRS, transform and metadata.

    GDAL writes a 1x1 template GeoTIFF in memory and its tags are copied verbatim: CRS encoding (GeoKeys,
    WKT fallbacks, axis order, PixelIsArea) stays GDAL's business.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.MemoryFile() as mem:
            with mem.open(driver="GTiff", width=1, height=1, count=1, dtype="uint8", crs=crs,
                          transform=transform, nodata=nodata) as ds:
                if tags:
                    ds.update_tags(**{str(k): str(v) for k, v in tags.items()})
            template = tf.read_structure(bytes(mem.getbuffer()))
    first = template.ifds[0]
    return [first.tags[code] for code in tf.GEOREFERENCING_TAGS if code in first.tags]


def _copy_bytes(src: int, dst: int, count: int) -> None:
    """Append ``count`` bytes from ``src`` to ``dst`` (both at their current positions), in the kernel if it can."""
    copied = 0
    try:
        while copied < count:
            n = os.copy_file_range(src, dst, count - copied)
            if n == 0:
                break
            copied += n
    except (AttributeError, OSError) as exc:  # no copy_file_range here, or not between these files
        if isinstance(exc, OSError) and exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL,
                                                          errno.EOPNOTSUPP, errno.EBADF):
            raise
    while copied < count:
        chunk = os.read(src, min(8 << 20, count - copied))
        if not chunk:
            raise OSError(errno.EIO, f"spill file ended {count - copied} bytes early")
        _write_all(dst, chunk)
        copied += len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ---------------------------------------------------------------------------------------------- checker

_GHOST_FLAGS = ("LAYOUT=IFDS_BEFORE_DATA", "BLOCK_ORDER=ROW_MAJOR", "BLOCK_LEADER=SIZE_AS_UINT4",
                "BLOCK_TRAILER=LAST_4_BYTES_REPEATED")


def check_cog_layout(path: str | os.PathLike[str], check_blocks: bool = True) -> list[str]:
    """Problems that keep ``path`` from being a Cloud-Optimized GeoTIFF laid out as GDAL's COG driver does.

    Written from the rules of GDAL's validate_cloud_optimized_geotiff.py, a little stricter: GDAL's ghost area
    right after the header (and the first IFD right after it), IFDs by decreasing size with increasing offsets,
    every IFD and tile index before any tile data, tile data of each level before that of the next larger
    level, row-major tiles, and (``check_blocks``) every tile's leader and trailer. Empty list: a valid COG.
    """
    try:
        structure = tf.read_structure(path)
    except (OSError, ValueError) as exc:
        return [f"cannot read the TIFF structure: {exc}"]
    problems: list[str] = []
    flags = set((structure.ghost or "").split())
    if structure.ghost is None:
        problems.append("no GDAL structural metadata (ghost area) after the TIFF header")
    else:
        problems += [f"the ghost area lacks {flag}" for flag in _GHOST_FLAGS if flag not in flags]
        if "KNOWN_INCOMPATIBLE_EDITION=YES" in flags:
            problems.append("the file was modified after it was written (KNOWN_INCOMPATIBLE_EDITION=YES)")
        expected = structure.ghost_end + (structure.ghost_end & 1)
        if structure.first_ifd != expected:
            problems.append(f"the first IFD is at byte {structure.first_ifd}, not right after the ghost area "
                            f"(byte {expected})")
    leader = 4 if "BLOCK_LEADER=SIZE_AS_UINT4" in flags else 0
    trailer = 4 if "BLOCK_TRAILER=LAST_4_BYTES_REPEATED" in flags else 0
    problems += _check_ifds(structure)
    problems += _check_data_order(structure, leader, trailer)
    if check_blocks and (leader or trailer) and not problems:
        problems += _check_leaders_trailers(path, structure, leader, trailer)
    return problems


def _describe(i: int, ifd: tf.Ifd) -> str:
    return f"IFD {i} ({ifd.value(tf.IMAGE_WIDTH)}x{ifd.value(tf.IMAGE_LENGTH)})"


def _check_ifds(structure: tf.TiffStructure) -> list[str]:
    problems = []
    images = [(i, ifd) for i, ifd in enumerate(structure.ifds)
              if not ifd.value(tf.NEW_SUBFILE_TYPE) & tf.SUBFILE_MASK]
    if not images or images[0][1].value(tf.NEW_SUBFILE_TYPE) & tf.SUBFILE_REDUCED:
        problems.append("the first image IFD is not the full-resolution image")
    for (_, previous), (i, ifd) in zip(images, images[1:]):
        if not ifd.value(tf.NEW_SUBFILE_TYPE) & tf.SUBFILE_REDUCED:
            problems.append(f"{_describe(i, ifd)} follows the main image but is not an overview")
        if (ifd.value(tf.IMAGE_WIDTH) > previous.value(tf.IMAGE_WIDTH)
                or ifd.value(tf.IMAGE_LENGTH) > previous.value(tf.IMAGE_LENGTH)):
            problems.append(f"{_describe(i, ifd)} is larger than the IFD before it")
    for i, (previous, ifd) in enumerate(zip(structure.ifds, structure.ifds[1:]), start=1):
        if ifd.offset < previous.offset:
            problems.append(f"{_describe(i, ifd)} is at byte {ifd.offset}, before the IFD it follows")
    for i, ifd in enumerate(structure.ifds):
        if tf.TILE_WIDTH not in ifd.tags:
            problems.append(f"{_describe(i, ifd)} is not tiled")
    return problems


def _level_tiles(ifd: tf.Ifd) -> list[tuple[int, int]]:
    """(offset, byte count) of each stored tile of an IFD, sparse (never written) tiles left out."""
    offsets, counts = ifd.ints(tf.TILE_OFFSETS), ifd.ints(tf.TILE_BYTE_COUNTS)
    return [(o, c) for o, c in zip(offsets, counts) if o and c]


def _check_data_order(structure: tf.TiffStructure, leader: int, trailer: int) -> list[str]:
    problems = []
    tiles = [_level_tiles(ifd) for ifd in structure.ifds]
    starts = [o - leader for level in tiles for o, _ in level]
    if not starts:
        return problems
    metadata_end = max(ifd.end for ifd in structure.ifds)
    if metadata_end > min(starts):
        problems.append(f"IFDs and tile indexes end at byte {metadata_end}, after tile data starts "
                        f"(byte {min(starts)}): the IFDs are not all before the data")
    for i, (ifd, level) in enumerate(zip(structure.ifds, tiles)):
        offsets = [o for o, _ in level]
        if offsets != sorted(offsets):
            problems.append(f"{_describe(i, ifd)}: tiles are not stored in row-major order")
    # Masks are stored with (interleaved with) the imagery of the same size: group IFDs by size.
    spans: dict[tuple[int, int], tuple[int, int, int]] = {}
    for i, (ifd, level) in enumerate(zip(structure.ifds, tiles)):
        if not level:
            continue
        size = (ifd.value(tf.IMAGE_WIDTH), ifd.value(tf.IMAGE_LENGTH))
        low = min(o for o, _ in level) - leader
        high = max(o + c for o, c in level) + trailer
        first, lo, hi = spans.get(size, (i, low, high))
        spans[size] = (first, min(lo, low), max(hi, high))
    ordered = sorted(spans.values())  # by IFD order: largest level first
    for (i, larger_lo, _), (j, _, smaller_hi) in zip(ordered, ordered[1:]):
        if smaller_hi > larger_lo:
            problems.append(f"tile data of {_describe(j, structure.ifds[j])} is not all before that of "
                            f"{_describe(i, structure.ifds[i])} (smallest overview first, full resolution last)")
    return problems


def _check_leaders_trailers(
    path: str | os.PathLike[str], structure: tf.TiffStructure, leader: int, trailer: int
) -> list[str]:
    problems = []
    with open(path, "rb") as fh:
        for i, ifd in enumerate(structure.ifds):
            bad = 0
            for offset, count in _level_tiles(ifd):
                if leader:
                    fh.seek(offset - 4)
                    if struct.unpack("<I", fh.read(4))[0] != count:
                        bad += 1
                        continue
                if trailer and count >= 4:
                    fh.seek(offset + count - 4)
                    end = fh.read(8)
                    if end[:4] != end[4:]:
                        bad += 1
            if bad:
                problems.append(f"{_describe(i, ifd)}: {bad} tile(s) with a wrong block leader or trailer")
    return problems
