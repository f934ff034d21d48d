"""Translate a georeferenced scene of any size into a map GeoTIFF: streaming, tiled, blended inference.

Three stages overlap so the generator is the bottleneck:

- a reader thread reads one full-width strip of window rows at a time, scales it to [-1, 1], fills masked
  pixels (push-pull), pads the scene border by reflection and queues batches of windows (bounded queue);
- the calling thread runs the generator on each batch (on CUDA: pinned memory, non-blocking copies,
  channels_last, autocast, and one batch in flight while the previous result is copied back);
- a writer thread merges window outputs with the blend window and writes every output row as soon as no
  later window touches it, to a tiled GeoTIFF beside the output, which then becomes the final COG.

Memory is bounded by a few strips of one tile's height: it depends on the scene width, never its height.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from geo_sat2map import __version__
from geo_sat2map.atomic import atomic_output, check_output_path
from geo_sat2map.checkpoint import GeneratorMeta, load_generator
from geo_sat2map.device import precision_name, resolve_device, resolve_precision
from geo_sat2map.errors import UserError
from geo_sat2map.fill import fill_invalid
from geo_sat2map.models import NORM_MODES, InferenceGenerator
from geo_sat2map.progress import progress_bar
from geo_sat2map.raster_io import (
    RasterInfo,
    open_raster,
    raster_info,
    require_georeferenced,
    resolve_bands,
    scene_scaling,
)
from geo_sat2map.raster_io.output import (
    COMPRESSIONS,
    OutputOptions,
    RGBAStripWriter,
    bounded_gdal_cache,
    finish_output,
    streaming_cache_bytes,
)
from geo_sat2map.raster_io.strips import read_rows
from geo_sat2map.scaling import UINT8_KIND, InputScaling
from geo_sat2map.windows import BLEND_MODES, DEFAULT_BLEND, RowAssembler, WindowGrid

log = logging.getLogger("geo_sat2map")

TILE_MULTIPLE = 256  # both generator families downsample 8 times
SCALING_MODES = ("auto", "scene")
DEFAULT_BATCH = {"cpu": 4, "cuda": 16, "mps": 8}
QUEUE_BATCHES = 4  # batches buffered between stages: enough to hide I/O jitter, small for memory
POLL_SECONDS = 0.1  # how often blocked threads look at the stop flag
INTERMEDIATE_COMPRESSION = "zstd"  # the streamed file that becomes the COG: fast to write and to read back


@dataclass(frozen=True)
class TranslateConfig:
    """One translate run. ``None`` means "decide from the checkpoint / device" (see ``translate``)."""

    input: Path
    output: Path
    weights: Path
    tile_size: int | None = None  # default: the checkpoint's training tile size, else 256
    overlap: int | None = None  # default: tile_size // 4
    blend: str = DEFAULT_BLEND
    batch_size: int | None = None  # default: 4 on CPU, 16 on CUDA, 8 on MPS
    device: str = "auto"
    precision: str = "auto"
    norm_stats: str | None = None  # default: the checkpoint's norm mode
    bands: tuple[int, int, int] | None = None  # default: the checkpoint's bands, else the RGB-tagged bands
    scaling: str = "auto"  # "auto": checkpoint stretch for non-8-bit input if it has one; "scene": always per scene
    output_options: OutputOptions = field(default_factory=OutputOptions)
    overwrite: bool = False
    allow_ungeoreferenced: bool = False
    progress: bool = True


@dataclass(frozen=True)
class TranslateReport:
    """What a run did; ``stream_seconds`` covers read + inference + write, ``seconds`` the whole call."""

    output: Path
    width: int
    height: int
    tile_size: int
    overlap: int
    blend: str
    batch_size: int
    device: str
    precision: str
    norm_mode: str
    scaling: InputScaling
    windows: int
    windows_run: int
    stream_seconds: float
    model_seconds: float  # time the calling thread spent running the generator (and fetching its results)
    seconds: float

    @property
    def generator_busy(self) -> float:
        """Share of the streaming stage spent in the generator: 1.0 means reading and writing are fully hidden."""
        return self.model_seconds / self.stream_seconds if self.stream_seconds > 0 else 1.0

    @property
    def windows_per_second(self) -> float:
        """Throughput of the streaming stage over all windows of the grid (skipped ones included)."""
        return self.windows / self.stream_seconds if self.stream_seconds > 0 else float("inf")


def default_overlap(tile_size: int) -> int:
    return tile_size // 4


def translate(config: TranslateConfig) -> TranslateReport:
    """Translate ``config.input`` into an RGBA map at ``config.output`` (same CRS, transform and size)."""
    started = time.perf_counter()
    run = _prepare(config)
    options = config.output_options
    cache = streaming_cache_bytes(run.info.width, run.grid.tile, options.blocksize)
    with bounded_gdal_cache(cache), atomic_output(run.output, overwrite=config.overwrite, what="output") as final_tmp:
        with _stream_target(run.output, final_tmp, options.cog) as stream_path:
            stream = _Pipeline(
                source=Path(config.input), bands=run.bands, scaling=run.scaling, grid=run.grid, blend=config.blend,
                batch_size=run.batch_size, runner=ModelRunner(run.model, run.device, run.dtype),
                writer_factory=lambda: RGBAStripWriter(
                    stream_path, run.info.width, run.info.height, run.info.crs, run.info.transform, run.tags,
                    compress=INTERMEDIATE_COMPRESSION if options.cog else options.compress,
                    blocksize=options.blocksize, extra_options=None if options.cog else options.gdal_options(),
                ),
            )
            try:
                windows_run, stream_seconds = stream.run(progress=config.progress)
            except torch.cuda.OutOfMemoryError:
                raise UserError(
                    f"GPU out of memory at --batch-size {run.batch_size}, --tile-size {run.grid.tile}: "
                    "lower --batch-size, or use --precision bf16"
                ) from None
            model_seconds, stream, run.model = stream.model_seconds, None, None  # free the model for the COG step
            if windows_run == 0:
                log.warning("%s: no valid pixel in the scene; the output is fully transparent", config.input)
            log.info("writing %s", "Cloud-Optimized GeoTIFF" if options.cog else "overviews")
            finish_output(stream_path, final_tmp, options)
    report = TranslateReport(
        output=run.output, width=run.info.width, height=run.info.height, tile_size=run.grid.tile,
        overlap=run.grid.overlap, blend=config.blend, batch_size=run.batch_size, device=str(run.device),
        precision=precision_name(run.dtype), norm_mode=run.norm_mode, scaling=run.scaling, windows=len(run.grid),
        windows_run=windows_run, stream_seconds=stream_seconds, model_seconds=model_seconds,
        seconds=time.perf_counter() - started,
    )
    log.info("wrote %s: %d windows in %.1f s (%.2f windows/s, generator busy %.0f %% of the stream)", run.output,
             report.windows, report.seconds, report.windows_per_second, 100 * report.generator_busy)
    return report


@dataclass
class _Run:
    """Everything decided before streaming starts (inputs validated, model loaded)."""

    output: Path
    info: RasterInfo
    bands: tuple[int, ...]
    scaling: InputScaling
    grid: WindowGrid
    model: InferenceGenerator | None  # dropped once streaming is done
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    norm_mode: str
    tags: dict[str, str]


def _prepare(config: TranslateConfig) -> _Run:
    """Validate options, output path, input and weights (cheapest first); load the model; plan the grid."""
    _check_options(config)
    output = check_output_path(config.output, config.overwrite, "output")
    with open_raster(config.input) as ds:
        require_georeferenced(ds, config.allow_ungeoreferenced)
        info = raster_info(ds)
        loaded = load_generator(config.weights)
        bands = resolve_bands(ds, config.bands or loaded.meta.bands)
        if len(bands) != 3:
            raise UserError(f"{config.weights}: the checkpoint's bands {bands} are not three; pass --bands R,G,B")
        scaling, scaling_source = _input_scaling(ds, bands, info.dtype, loaded.meta, config.scaling)
    tile = config.tile_size or _checkpoint_tile(loaded.meta)
    overlap = default_overlap(tile) if config.overlap is None else config.overlap
    if overlap >= tile:
        raise UserError(f"--overlap {overlap}: must be smaller than the tile size ({tile})")
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    batch_size = config.batch_size or DEFAULT_BATCH.get(device.type, 4)
    norm_mode = config.norm_stats or loaded.meta.norm_mode
    grid = WindowGrid.build(info.height, info.width, tile, overlap, origin=_lattice_origin(info))
    _warn_on_resolution(info, loaded.meta)

    log.info("input: %s (%d x %d, %s, bands %s)", config.input, info.width, info.height, info.dtype,
             ",".join(map(str, bands)))
    log.info("scaling: %s (%s)", scaling.describe(), scaling_source)
    log.info("model: %s %s width %d, norm stats %s, on %s %s, batch %d", loaded.path.name, loaded.meta.arch,
             loaded.meta.width, norm_mode, device, precision_name(dtype), batch_size)
    log.info("windows: %d (%d x %d) of %d px, overlap %d, blend %s", len(grid), *grid.shape, tile, overlap,
             config.blend)
    tags = _output_tags(config, bands, scaling, norm_mode, tile, overlap, loaded.path.name, loaded.sha256)
    model = loaded.for_inference(norm_mode)
    return _Run(output, info, bands, scaling, grid, model, device, dtype, batch_size, norm_mode, tags)


def _check_options(config: TranslateConfig) -> None:
    if config.tile_size is not None and (config.tile_size <= 0 or config.tile_size % TILE_MULTIPLE):
        raise UserError(f"--tile-size {config.tile_size}: must be a positive multiple of {TILE_MULTIPLE}")
    if config.overlap is not None and config.overlap < 0:
        raise UserError(f"--overlap {config.overlap}: must be 0 or more pixels")
    if config.blend not in BLEND_MODES:
        raise UserError(f"--blend {config.blend!r}: expected one of {', '.join(BLEND_MODES)}")
    if config.batch_size is not None and config.batch_size < 1:
        raise UserError(f"--batch-size {config.batch_size}: must be at least 1")
    if config.norm_stats is not None and config.norm_stats not in NORM_MODES:
        raise UserError(f"--norm-stats {config.norm_stats!r}: expected one of {', '.join(NORM_MODES)}")
    if config.scaling not in SCALING_MODES:
        raise UserError(f"--scaling {config.scaling!r}: expected one of {', '.join(SCALING_MODES)}")
    if config.output_options.compress not in COMPRESSIONS:
        raise UserError(f"--compress {config.output_options.compress!r}: expected one of {', '.join(COMPRESSIONS)}")


def _checkpoint_tile(meta: GeneratorMeta) -> int:
    tile = meta.tile_size
    return tile if tile and tile % TILE_MULTIPLE == 0 else TILE_MULTIPLE


def _input_scaling(
    ds: Any, bands: tuple[int, ...], dtype: str, meta: GeneratorMeta, mode: str
) -> tuple[InputScaling, str]:
    """uint8 input: x/127.5-1. Other dtypes: the checkpoint's stretch if it has one (and mode is auto),
    else a 2-98 % stretch computed once for the whole scene (never per tile: that would make seams)."""
    if dtype == "uint8":
        return InputScaling.uint8(len(bands)), "8-bit input"
    if mode == "auto" and meta.scaling is not None and meta.scaling.kind != UINT8_KIND:
        if len(meta.scaling.low) != len(bands):
            raise UserError(f"the checkpoint's input scaling has {len(meta.scaling.low)} bands, not {len(bands)}")
        return meta.scaling, "from the checkpoint"
    return scene_scaling(ds, bands), "computed once for this scene"


def _lattice_origin(info: RasterInfo) -> tuple[int, int]:
    """(row, col) of the scene's first pixel on the global pixel lattice of its CRS (north-up grids only)."""
    t = info.transform
    if not info.georeferenced or t.b or t.d or not t.a or not t.e:
        return (0, 0)
    return round(t.f / t.e), round(t.c / t.a)


def _warn_on_resolution(info: RasterInfo, meta: GeneratorMeta) -> None:
    if meta.resolution is None or info.crs is None or not info.crs.is_projected:
        return
    pixel = (abs(info.transform.a) * abs(info.transform.e)) ** 0.5
    ratio = pixel / meta.resolution
    if not 2 / 3 <= ratio <= 1.5:
        log.warning(
            "pixel size %.3g differs from the training resolution %.3g (CRS units); results may suffer. "
            "Resample the scene first (e.g. gdalwarp -tr) for best results", pixel, meta.resolution,
        )


def _output_tags(
    config: TranslateConfig, bands: tuple[int, ...], scaling: InputScaling, norm_mode: str,
    tile: int, overlap: int, model_file: str, model_sha256: str,
) -> dict[str, str]:
    return {
        "TIFFTAG_SOFTWARE": f"geo-sat2map {__version__}",
        "GEO_SAT2MAP_VERSION": __version__,
        "MODEL_FILE": model_file,
        "MODEL_SHA256": model_sha256,
        "TILE_SIZE": str(tile),
        "OVERLAP": str(overlap),
        "BLEND": config.blend,
        "NORM_MODE": norm_mode,
        "INPUT_BANDS": ",".join(map(str, bands)),
        "INPUT_SCALING": json.dumps(scaling.to_dict()),
        "SOURCE": Path(config.input).name,
    }


@contextlib.contextmanager
def _stream_target(dest: Path, final_tmp: Path, cog: bool) -> Iterator[Path]:
    """Where the streamed GeoTIFF goes: the final temp file itself, or (for a COG) a second temp file beside it."""
    if not cog:
        yield final_tmp
        return
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".stream.tif.part", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


class ModelRunner:
    """Runs the generator on batches of windows: ``collect(submit(batch))`` -> numpy float32 outputs.

    Moves the model to ``device`` (channels_last on CUDA). On CUDA, inputs come pinned, copies are
    non-blocking and one batch can stay in flight while the previous one is copied back.
    """

    def __init__(self, model: InferenceGenerator, device: torch.device, dtype: torch.dtype) -> None:
        model = model.to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model, self.device, self.dtype = model, device, dtype
        self.pin_memory = device.type == "cuda"

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """On CPU, flush denormals to zero while running: tiny activations (common in deep U-Nets with
        untrained or weakly trained layers) otherwise take a slow path and can halve throughput."""
        if self.device.type != "cpu":
            yield
            return
        torch.set_flush_denormal(True)
        try:
            yield
        finally:
            torch.set_flush_denormal(False)  # PyTorch's default; there is no getter to restore from

    def submit(self, inputs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Start a batch; returns a handle for ``collect``."""
        x = inputs.to(self.device, non_blocking=self.pin_memory)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype != torch.float32
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            y = self.model(x)
        y = y.float()
        if self.device.type != "cuda":
            return y.cpu(), None
        host = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(y, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host, done

    @staticmethod
    def collect(handle: tuple[torch.Tensor, Any]) -> np.ndarray:
        host, done = handle
        if done is not None:
            done.synchronize()
        return host.numpy()


@dataclass
class _RowDone:
    """Window row ``row`` has been fully queued; ``valid`` is the scene mask of rows [row_off, row_off + n)."""

    row: int
    row_off: int
    valid: np.ndarray


@dataclass
class _Batch:
    inputs: torch.Tensor | None  # (n, 3, tile, tile) in [-1, 1], or None when only rows are closed
    ids: list[tuple[int, int]]  # (window row, window column) of each input
    rows_done: list[_RowDone]
    skipped: int  # windows with no valid pixel since the previous batch (not run)


_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Pipeline:
    """Reader thread -> generator (calling thread) -> writer thread, with bounded queues and a stop flag.

    A failure in any stage stops the others and is re-raised in the calling thread; so is Ctrl-C.
    """

    def __init__(
        self, *, source: Path, bands: tuple[int, ...], scaling: InputScaling, grid: WindowGrid, blend: str,
        batch_size: int, runner: ModelRunner, writer_factory: Callable[[], RGBAStripWriter],
    ) -> None:
        self.source, self.bands, self.scaling, self.grid, self.blend = source, bands, scaling, grid, blend
        self.batch_size, self.runner, self.writer_factory = batch_size, runner, writer_factory
        self.stop = threading.Event()
        self.batches: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_BATCHES)
        self.results: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_BATCHES)
        self.reader = threading.Thread(target=self._read, name="translate-reader", daemon=True)
        self.writer = threading.Thread(target=self._write, name="translate-writer", daemon=True)
        self.writer_error: BaseException | None = None
        self.model_seconds = 0.0

    def run(self, progress: bool = True) -> tuple[int, float]:
        """Stream the whole scene; returns (windows run through the generator, seconds)."""
        started = time.perf_counter()
        bar = progress_bar(total=len(self.grid), unit="win", desc="translate", disable=not progress, dynamic_ncols=True)
        try:
            self.writer.start()
            self.reader.start()
            with self.runner.active():
                windows_run = self._run_model(bar)
            self._put_result(_END)
            self.writer.join()
            if self.writer_error is not None:
                raise self.writer_error
        finally:
            self.stop.set()
            bar.close()
            for thread in (self.reader, self.writer):
                if thread.is_alive():
                    thread.join()
        return windows_run, time.perf_counter() - started

    def _run_model(self, bar: tqdm) -> int:
        windows_run = 0
        in_flight: tuple[Any, _Batch] | None = None
        while (batch := self._next_batch()) is not _END:
            started = time.perf_counter()
            handle = self.runner.submit(batch.inputs) if batch.inputs is not None else None
            batch.inputs = None  # the writer needs only the outputs; do not keep inputs queued
            self.model_seconds += time.perf_counter() - started
            if in_flight is not None:  # collect the previous batch only now: keeps a GPU busy
                self._send(*in_flight)
            in_flight = (handle, batch)
            windows_run += len(batch.ids)
            bar.update(len(batch.ids) + batch.skipped)
        if in_flight is not None:
            self._send(*in_flight)
        return windows_run

    def _next_batch(self) -> Any:
        while True:
            if self.writer_error is not None:
                raise self.writer_error
            try:
                item = self.batches.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not self.reader.is_alive() and self.batches.empty():
                    raise RuntimeError("internal error: the reader thread stopped without a result") from None
                continue
            if isinstance(item, _Failed):
                raise item.exc
            return item

    def _send(self, handle: Any, batch: _Batch) -> None:
        started = time.perf_counter()
        outputs = self.runner.collect(handle) if handle is not None else None
        self.model_seconds += time.perf_counter() - started
        self._put_result((outputs, batch))

    def _put_result(self, item: Any) -> None:
        if not _put_unless_stopped(self.results, item, self.stop):
            raise self.writer_error or RuntimeError("internal error: the writer stopped early")

    # -- reader thread -------------------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            self._read_batches()
        except BaseException as exc:  # handed to the calling thread, which raises it
            _put_unless_stopped(self.batches, _Failed(exc), self.stop)

    def _read_batches(self) -> None:
        grid, tile = self.grid, self.grid.tile
        first_col, end_col = grid.padded_cols
        inputs = np.empty((self.batch_size, 3, tile, tile), np.float32)
        ids: list[tuple[int, int]] = []
        rows_done: list[_RowDone] = []
        skipped = 0
        mask_end = 0  # scene rows [0, mask_end) have had their mask sent
        with open_raster(self.source) as ds:
            for row in range(grid.shape[0]):
                top = grid.row_starts[row]
                r0, r1 = grid.rows_in_scene(row)
                data, valid = read_rows(ds, self.bands, r0, r1 - r0)
                # Reflection padding (of the raw strip: 4x smaller than floats): mirrored context, never zeros.
                pad = ((r0 - top, top + tile - r1), (-first_col, end_col - grid.width))
                strip = np.pad(data, ((0, 0), *pad), mode="reflect")
                strip = fill_invalid(self.scaling.to_unit(strip), np.pad(valid, pad, mode="reflect"))
                columns_valid = valid.any(axis=0)
                for col, left in enumerate(grid.col_starts):
                    if not columns_valid[max(left, 0):min(left + tile, grid.width)].any():
                        skipped += 1  # no valid pixel: the output stays masked there
                        continue
                    inputs[len(ids)] = strip[:, :, left - first_col:left - first_col + tile]
                    ids.append((row, col))
                    if len(ids) == self.batch_size:
                        if not self._emit(inputs, ids, rows_done, skipped):
                            return
                        inputs = np.empty_like(inputs)  # the queued batch keeps its own
                        ids, rows_done, skipped = [], [], 0
                del strip, data
                rows_done.append(_RowDone(row, mask_end, valid[mask_end - r0:].copy()))
                mask_end = r1
                if not ids:  # nothing to carry the row closure: send it on its own
                    if not self._emit(inputs, ids, rows_done, skipped):
                        return
                    rows_done, skipped = [], 0
        if (ids or rows_done or skipped) and not self._emit(inputs, ids, rows_done, skipped):
            return
        _put_unless_stopped(self.batches, _END, self.stop)

    def _emit(self, inputs: np.ndarray, ids: list[tuple[int, int]], rows_done: list[_RowDone], skipped: int) -> bool:
        tensor = None
        if ids:
            tensor = torch.from_numpy(inputs[:len(ids)])
            if self.runner.pin_memory:
                tensor = tensor.pin_memory()
        return _put_unless_stopped(self.batches, _Batch(tensor, list(ids), rows_done, skipped), self.stop)

    # -- writer thread -------------------------------------------------------------------------------------

    def _write(self) -> None:
        try:
            self._assemble_and_write()
        except BaseException as exc:  # the calling thread raises it
            self.writer_error = exc
            self.stop.set()

    def _assemble_and_write(self) -> None:
        assembler = RowAssembler(self.grid, self.blend)
        writer = self.writer_factory()
        completed = False
        try:
            while not self.stop.is_set():
                try:
                    item = self.results.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if item is _END:
                    completed = True
                    break
                outputs, batch = item
                for index, (row, col) in enumerate(batch.ids):
                    assembler.add(row, col, outputs[index])
                for done in batch.rows_done:
                    assembler.add_mask(done.row_off, done.valid)
                    released = assembler.release(done.row)
                    if released is not None:
                        row_off, values, valid = released
                        writer.write_rows(row_off, to_rgba(values, valid))
            if completed and assembler.released != self.grid.height:
                raise RuntimeError(f"internal error: {assembler.released} of {self.grid.height} rows written")
        finally:
            writer.close(flush=completed)


def _put_unless_stopped(target: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Block until ``item`` is queued (True) or the pipeline is stopping (False)."""
    while not stop.is_set():
        try:
            target.put(item, timeout=POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def to_rgba(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Generator-range (3, H, W) float32 values (overwritten) and a validity mask -> RGBA uint8.

    Same rounding as ``metrics.to_uint8``; masked pixels are 0 in every band. In place: rows are full width.
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
