"""Translate a georeferenced scene of any size into a map GeoTIFF: streaming, tiled, blended inference.

The orchestration of the ``inference`` package: validate inputs (cheapest first), load the model while the
device starts and the checkpoint is hashed on other threads, then stream. Raw rows are read ahead on reader
threads (``stages.ChunkReader``), every per-pixel step runs on the device (``engine.StreamEngine``), and
finished uint8 rows plus in-stream overview rows are downloaded and encoded on a writer thread
(``stages.RowWriter``) into the map sink: by default a COG assembled from already-compressed tiles (no second
encode); for codecs or creation options it cannot write, GDAL's own COG copy. The output is written beside
``OUTPUT`` and renamed only on success.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pyproj
import shapely
import torch
from affine import Affine

from geo_sat2map import __version__
from geo_sat2map.atomic import atomic_output, check_output_path, file_sha256
from geo_sat2map.checkpoint import GeneratorMeta, LoadedGenerator, load_generator
from geo_sat2map.device import resolve_device, resolve_precision
from geo_sat2map.errors import UserError
from geo_sat2map.inference.config import OUTPUT_GRIDS, RESOLUTION_MODES, TranslateConfig
from geo_sat2map.inference.crop import Crop, CroppedRows, Footprint
from geo_sat2map.inference.engine import RowStyle, StreamEngine
from geo_sat2map.inference.identity import RUN_ID_TAG, run_id
from geo_sat2map.inference.precision import Precision, inference_precision
from geo_sat2map.inference.ranks import from_main
from geo_sat2map.inference.runner import GeneratorRunner, StageClock, device_context
from geo_sat2map.inference.snap import SnapSpec, check_snap_options, resolve_snap
from geo_sat2map.inference.stages import ChunkReader, RowWriter
from geo_sat2map.models import NORM_MODES, InferenceGenerator
from geo_sat2map.progress import RESULT, progress_bar
from geo_sat2map.raster_io import RasterInfo, match_bands, open_raster, raster_info, require_georeferenced, scene_scaling
from geo_sat2map.raster_io.grid import (
    RESAMPLING_METHODS,
    GridRows,
    ProcessingGrid,
    check_grid_size,
    north_up,
    pixel_box,
    resampled_grid,
    map_on_scene_grid,
    window_info,
)
from geo_sat2map.raster_io.output import (
    COMPRESSIONS,
    ClassBand,
    check_creation_options,
    open_map_sink,
    open_scratch_sink,
    scratch_path,
    streaming_cache_bytes,
    streaming_gdal_env,
    write_category_sidecar,
)
from geo_sat2map.raster_io.rasterize import polygon_mask
from geo_sat2map.raster_io.strips import streaming_dtype
from geo_sat2map.scaling import UINT8_KIND, InputScaling
from geo_sat2map.tiling.footprints import densify, grid_outline, lonlat_bounds, read_aoi
from geo_sat2map.tiling.footprints import reproject as reproject_geometry
from geo_sat2map.training.distributed import DistContext
from geo_sat2map.windows import BLEND_MODES, RowBand, WindowGrid

log = logging.getLogger("geo_sat2map")

_Filled = TypeVar("_Filled")
TILE_MULTIPLE = 256  # both generator families downsample 8 times
SCALING_MODES = ("auto", "scene")
DEFAULT_BATCH = {"cpu": 4, "cuda": 64, "mps": 8}
SMALL_GPU_BATCH, SMALL_GPU_BYTES = 16, 12 * 2**30  # see default_batch_size
READ_THREADS = {"cpu": 1, "cuda": 4, "mps": 2}  # reading only has to keep up with the device
MAX_GPU_READ_THREADS = 8  # a graphed H200 generator takes ~0.4 GB/s of decoded uint8 RGB: 4 threads fell behind
AUTO_RESOLUTION_TOLERANCE = 0.10  # `--resolution auto` resamples when scene and model differ by more than this
PRECISION_TAG = "PRECISION"  # the resolved compute precision (fp32, bf16 or fp16)


@dataclass(frozen=True)
class TranslateReport:
    """What a run did. ``stream_seconds`` covers read + device work + write of the rows; ``seconds`` the whole
    call (model load and output assembly included). ``stages``: seconds per stage (device stages measured on
    the device; read and encode summed over their threads, so they overlap the stream)."""

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
    model_seconds: float  # device time spent in the generator
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    compile_seconds: float = 0.0
    peak_device_bytes: int = 0  # peak memory allocated on a CUDA device (0 elsewhere)

    @property
    def megapixels_per_second(self) -> float:
        """Scene pixels per second of the whole call."""
        return self.width * self.height / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    @property
    def generator_busy(self) -> float:
        """Share of the streaming stage spent in the generator: 1.0 means everything else is hidden."""
        return self.model_seconds / self.stream_seconds if self.stream_seconds > 0 else 1.0

    @property
    def windows_per_second(self) -> float:
        """Throughput of the streaming stage over all windows of the grid (skipped ones included)."""
        return self.windows / self.stream_seconds if self.stream_seconds > 0 else float("inf")


def default_batch_size(device: torch.device) -> int:
    """Windows per generator call when --batch-size is not given. On a GPU, 64: at 16 the H200 ran the generator at
    a fraction of its rate (launch-bound). A 16384² run at batch 64, ngf 64, bf16 peaked at 1.2 GiB there; fp32,
    wider generators or larger tiles take several times that, hence 16 on GPUs under 12 GiB."""
    if device.type == "cuda" and torch.cuda.get_device_properties(device).total_memory < SMALL_GPU_BYTES:
        return SMALL_GPU_BATCH
    return DEFAULT_BATCH.get(device.type, 4)


def default_read_threads(device: torch.device) -> int:
    """Reader threads when --read-threads is not given: on a GPU, half the CPUs between 4 and 8 (the rest
    encode the output and feed the device)."""
    if device.type == "cuda":
        return max(READ_THREADS["cuda"], min(MAX_GPU_READ_THREADS, (os.cpu_count() or 1) // 2))
    return READ_THREADS.get(device.type, 1)


def default_overlap(tile_size: int) -> int:
    return tile_size // 4


def translate(config: TranslateConfig, model: LoadedGenerator | None = None) -> TranslateReport:
    """Translate ``config.input`` into an RGBA map at ``config.output`` (same CRS, transform and size).

    ``model``: the checkpoint ``config.weights`` already loaded (with its SHA-256), to reuse over many scenes."""
    started = time.perf_counter()
    run = _prepare(config, model)
    prepared = time.perf_counter() - started
    config = with_class_band(config, run)
    tags = _output_tags(config, run)
    if run.resample_back:
        stream, sink_stages = _translate_via_processing_grid(config, run, tags)
    else:
        stream, sink_stages = _write_map(config, run.output, run.output_info, tags,
                                         lambda sink: _stream_into(config, run, sink), strip_rows=run.grid.tile)
    stages = {"prepare": prepared, **stream.stages, **sink_stages}
    out_info = run.output_info
    report = TranslateReport(
        output=run.output, width=out_info.width, height=out_info.height, tile_size=run.grid.tile,
        overlap=run.grid.overlap, blend=config.blend, batch_size=run.batch_size, device=str(run.device),
        precision=run.precision.name, norm_mode=run.norm_mode, scaling=run.scaling, windows=len(run.grid),
        windows_run=stream.windows_run, stream_seconds=stream.seconds, model_seconds=stages.get("generator", 0.0),
        seconds=time.perf_counter() - started, stages=stages, compile_seconds=stream.compile_seconds,
        peak_device_bytes=stream.peak_device_bytes,
    )
    if stream.windows_run == 0:
        log.warning("%s: no valid pixel in the scene; the output is fully transparent", config.input,
                    extra={"this_rank": True})  # about this rank's own scene: shown from every torchrun rank
    log.log(RESULT, "Wrote %s: %d windows in %.1f s (%.1f Mpx/s; stream %.2f windows/s, generator busy %.0f %%)",
            run.output, report.windows, report.seconds, report.megapixels_per_second, report.windows_per_second,
            100 * report.generator_busy)
    log.info("stages (s): %s", ", ".join(f"{name} {seconds:.2f}" for name, seconds in stages.items()))
    return report


def _write_map(
    config: TranslateConfig, output: Path, info: RasterInfo, tags: dict[str, str], fill: Callable[[Any], _Filled],
    strip_rows: int, overwrite: bool | None = None,
) -> tuple[_Filled, dict[str, float]]:
    """A map at ``output`` with the raster layout ``info``, its rows written by ``fill(sink)`` (strips of about
    ``strip_rows``), beside ``output`` and renamed on success. Returns what ``fill`` returned and the sink's
    seconds per stage."""
    options = config.output_options
    overwrite = config.overwrite if overwrite is None else overwrite
    cache = streaming_cache_bytes(info.width, strip_rows, options.blocksize)
    with streaming_gdal_env(cache), atomic_output(output, overwrite=overwrite, what="output") as tmp:
        sink = open_map_sink(tmp, info, tags, options)

        def fill_and_say(sink: Any) -> _Filled:
            filled = fill(sink)
            log.info("finishing %s", "the Cloud-Optimized GeoTIFF" if options.cog else "the GeoTIFF")
            return filled

        filled = _fill_sink(sink, fill_and_say)
    if options.class_band is not None:
        write_category_sidecar(output, options.class_band)
    return filled, dict(sink.stats.items())


def _fill_sink(sink: Any, fill: Callable[[Any], _Filled]) -> _Filled:
    """``fill(sink)`` then close the sink; abort it (its files removed) if anything fails."""
    try:
        filled = fill(sink)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    return filled


def _stream_into(config: TranslateConfig, run: _Run, sink: Any) -> _StreamResult:
    """The whole stream into the map's sink, through the crop when the map is a subset of the stream."""
    if run.crop is None:
        return _stream(config, run, sink)
    view = CroppedRows(sink, run.crop, RowStyle.of(run.snap))
    result = _stream(config, run, view)
    view.finish()
    return result


def _translate_via_processing_grid(
    config: TranslateConfig, run: _Run, tags: dict[str, str]
) -> tuple[_StreamResult, dict[str, float]]:
    """``--output-grid input`` on a resampled grid: the map is made on the processing grid into a hidden scratch
    file beside the output (colour, or class, kept under the mask), then resampled onto the scene's own grid."""
    info = run.info
    band = config.output_options.class_band
    scratch_band = None if band is None else replace(band, paletted=False)
    with scratch_path(run.output, ".grid.tif") as scratch:
        with streaming_gdal_env(streaming_cache_bytes(info.width, run.grid.tile)):
            stream = _fill_sink(open_scratch_sink(scratch, info, scratch_band), lambda sink: _stream(config, run, sink))
        started = time.perf_counter()
        _, stages = write_on_scene_grid(config, run, scratch, tags)
    stages["resample_back"] = time.perf_counter() - started
    return stream, stages


def write_on_scene_grid(
    config: TranslateConfig, run: _Run, processing_map: Path, tags: dict[str, str]
) -> tuple[None, dict[str, float]]:
    """The map at ``run.output`` on the scene's own grid, from a map on the processing grid (a file or a VRT of
    parts): nearest processing pixel for the colour or class, the scene's own mask for the alpha band or the
    nodata index."""
    strip = config.output_options.blocksize
    scene, offset, footprint = run.scene_out
    style = RowStyle.of(run.snap)

    def fill(sink: Any) -> None:
        view = CroppedRows(sink, Crop((0, scene.height), (0, scene.width), footprint), style)
        for rows in map_on_scene_grid(processing_map, scene, offset, run.bands, strip, config.alpha_threshold,
                                      style.masked):
            view.write_rows(0, rows)
        view.finish()

    return _write_map(config, run.output, scene, tags, fill, strip_rows=strip)


@dataclass
class _Run:
    """Everything decided before streaming starts (inputs validated, model loaded)."""

    output: Path
    info: RasterInfo  # the processing grid's layout: what the stream produces
    processing: ProcessingGrid
    resample_back: bool  # the map goes onto the scene's own grid afterwards (--output-grid input, resampled)
    region: tuple[int, int, int, int]  # (row, col, height, width) of the processing grid that is streamed
    crop: Crop | None  # the map within the stream (--bbox/--aoi); None: the whole stream
    scene_out: tuple[RasterInfo, tuple[int, int], Footprint | None]  # with resample_back: layout, offset, AOI
    bands: tuple[int, ...]
    scaling: InputScaling
    grid: WindowGrid
    model: InferenceGenerator
    model_file: str
    sha256: Future[str]  # hashed on a thread while the model loads
    device: torch.device
    precision: Precision
    batch_size: int
    norm_mode: str
    snap: SnapSpec | None = None  # snap to a palette (--palette, --min-region, --format)

    @property
    def output_info(self) -> RasterInfo:
        """The final map's layout."""
        if self.resample_back:
            return self.scene_out[0]
        if self.crop is None:
            return self.info
        (r0, r1), (c0, c1) = self.crop.rows, self.crop.cols
        return window_info(self.info, r0, c0, r1 - r0, c1 - c0)

    @property
    def dtype(self) -> torch.dtype:
        return self.precision.dtype


def with_class_band(config: TranslateConfig, run: _Run) -> TranslateConfig:
    """``config`` whose output options describe the one-band class map ``run`` writes, if it does."""
    if run.snap is None or not run.snap.one_band:
        return config
    band = ClassBand(run.snap.names, run.snap.colours, paletted=run.snap.output_format == "paletted")
    return replace(config, output_options=replace(config.output_options, class_band=band))


def _prepare(
    config: TranslateConfig, model: LoadedGenerator | None = None, ctx: DistContext | None = None
) -> _Run:
    """Validate options, output path, input and weights (cheapest first); load the model (unless ``model`` is
    the checkpoint already loaded); plan the grid; resolve the precision (under torchrun: rank 0's ``ctx``
    choice, so every part is made alike).

    Slow start-up work overlaps: the device starts (CUDA context) and the checkpoint is hashed on threads while
    the checkpoint is unpickled and the network built."""
    _check_options(config)
    output = check_output_path(config.output, config.overwrite, "output")
    device = resolve_device(config.device)
    resolve_precision(config.precision, device)  # a bad --precision fails before the model loads
    if device.type == "cuda":
        threading.Thread(target=_start_device, args=(device,), name="cuda-init", daemon=True).start()
    with open_raster(config.input) as ds:
        require_georeferenced(ds, config.allow_ungeoreferenced)
        info = raster_info(ds)
        if model is None:
            hasher = ThreadPoolExecutor(1, thread_name_prefix="sha256")
            sha256 = hasher.submit(_sha256_or_empty, config.weights)
            hasher.shutdown(wait=False)  # the hash finishes on its thread; the future holds it
            loaded = load_generator(config.weights, hash_file=False)
        else:
            sha256, loaded = _done(model.sha256), model
        bands = match_bands(ds, config.bands, loaded.meta.bands, loaded.meta.band_roles)
        if len(bands) != 3:
            raise UserError(f"{config.weights}: the checkpoint's bands {bands} are not three; pass --bands R,G,B")
        scaling, scaling_source = _input_scaling(ds, bands, info.dtype, loaded.meta, config.scaling)
    snap, snap_reason = resolve_snap(config.palette, config.min_region, config.output_format, loaded.meta.palette,
                                     config.weights)
    processing = _processing_grid(config, info, loaded.meta)
    resample_back = config.output_grid == "input" and not processing.native
    full = processing.info
    tile = config.tile_size or _checkpoint_tile(loaded.meta)
    overlap = default_overlap(tile) if config.overlap is None else config.overlap
    if overlap >= tile:
        raise UserError(f"--overlap {overlap}: must be smaller than the tile size ({tile})")
    batch_size = config.batch_size or default_batch_size(device)
    norm_mode = config.norm_stats or loaded.meta.norm_mode
    grid = WindowGrid.build(full.height, full.width, tile, overlap, origin=_lattice_origin(full))
    region, crop, scene_out = (0, 0, full.height, full.width), None, (processing.source, (0, 0), None)
    subset = _subset(config, processing)
    if subset is not None:
        box, area, geometry = subset
        grid, (row, col) = grid.region((box[0], box[1]), (box[2], box[3]))
        region = (row, col, grid.height, grid.width)
        crop_info = window_info(full, box[0], box[2], box[1] - box[0], box[3] - box[2])
        crop = Crop((box[0] - row, box[1] - row), (box[2] - col, box[3] - col), _footprint(geometry, crop_info))
        if resample_back:
            scene_out = _scene_window(processing.source, area, geometry)
        log.info("subset: %d x %d pixels of the %s grid (windows of the %d x %d px around them)", box[3] - box[2],
                 box[1] - box[0], "processing" if not processing.native else "scene's", grid.width, grid.height)
    info = window_info(full, region[0], region[1], region[2], region[3])
    network = loaded.for_inference(norm_mode)
    precision = run_precision(config, loaded.meta, lambda: network, device, ctx)

    log.info("input: %s (%d x %d, %s, bands %s)", config.input, info.width, info.height, info.dtype,
             ",".join(map(str, bands)))
    log.info("scaling: %s (%s)", scaling.describe(), scaling_source)
    log.info("model: %s %s width %d, norm stats %s, on %s %s, batch %d%s", loaded.path.name, loaded.meta.arch,
             loaded.meta.width, norm_mode, device, precision.name, batch_size, ", compiled" if config.compile else "")
    log.info("precision: %s (%s%s)", precision.name, precision.reason,
             f"; measuring took {precision.seconds:.1f} s" if precision.seconds else "")
    log.info("windows: %d (%d x %d) of %d px, overlap %d, blend %s", len(grid), *grid.shape, tile, overlap,
             config.blend)
    log.info("palette: %s; output %s", snap_reason, config.output_format)
    return _Run(output, info, processing, resample_back, region, crop, scene_out, bands, scaling, grid,
                network, loaded.path.name, sha256, device, precision, batch_size, norm_mode,
                snap)


def run_precision(
    config: TranslateConfig, meta: GeneratorMeta, network: Callable[[], InferenceGenerator], device: torch.device,
    ctx: DistContext | None = None,
) -> Precision:
    """The compute precision of a run of ``config`` with the generator ``network()`` gives (built from a
    checkpoint with ``meta``; only called when auto measures); under torchrun (``ctx``) rank 0's choice, so that
    every process computes alike."""

    def choose() -> Precision:
        return inference_precision(config.precision, device, network, config.tile_size or _checkpoint_tile(meta),
                                   meta.arch, meta.width, config.norm_stats or meta.norm_mode)

    if ctx is None or not ctx.enabled:
        return choose()
    return from_main(ctx, choose() if ctx.is_main else None)  # type: ignore[return-value]


def _done(value: str) -> Future[str]:
    future: Future[str] = Future()
    future.set_result(value)
    return future


def _sha256_or_empty(path: Path) -> str:
    """The checkpoint's SHA-256 (its identity in the output tags); "" if it cannot be read (load_generator then
    reports why)."""
    try:
        return file_sha256(path)
    except OSError:
        return ""


def _start_device(device: torch.device) -> None:
    """Create the CUDA context early (0.4 s or more) while the checkpoint loads on the main thread."""
    try:
        torch.empty(1, device=device)
    except Exception:  # noqa: BLE001 - any problem resurfaces, with its message, when the model moves there
        pass


@dataclass
class _StreamResult:
    windows_run: int
    seconds: float
    stages: dict[str, float]
    compile_seconds: float
    peak_device_bytes: int


def _stream(config: TranslateConfig, run: _Run, sink: Any, band: RowBand | None = None) -> _StreamResult:
    """Read -> device engine -> write, for every window row of ``band`` (default: the whole grid), with the
    run's device as this thread's current one (its worker threads bind themselves to it too)."""
    with device_context(run.device):
        return _stream_on_device(config, run, sink, band)


def _stream_on_device(config: TranslateConfig, run: _Run, sink: Any, band: RowBand | None) -> _StreamResult:
    device, grid = run.device, run.grid
    band = replace(band or RowBand.whole(grid), halo=run.snap.halo if run.snap else 0)
    clock = StageClock(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        runner = GeneratorRunner(run.model, device, run.dtype, clock, compile=config.compile,
                                 deterministic=config.fixed_batch)
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"--device {device}: not enough GPU memory for the model") from None
    writer = RowWriter(sink, device, clock)
    engine = StreamEngine(
        grid=grid, blend=config.blend, scaling=run.scaling, generator=runner, device=device,
        batch_size=run.batch_size, emit=writer.submit, overview_levels=sink.overview_levels,
        fixed_batch=device.type == "cuda" or config.compile or config.fixed_batch, clock=clock, background=True,
        band=band, keep_colour=run.resample_back, snap=run.snap,
    )
    threads = config.read_threads or default_read_threads(device)
    rows = GridRows(config.input, run.bands, run.processing, config.alpha_threshold, run.region)
    reader = ChunkReader(rows, band, streaming_dtype(run.info.dtype),
                         device=device, workers=threads, ahead=threads + 2)
    bar = progress_bar(total=(band.process_end - band.process_from) * grid.shape[1], unit="win", desc="translate",
                       disable=not config.progress, dynamic_ncols=True)
    counted = 0
    started = time.perf_counter()
    try:
        with runner.active():
            runner.warm_up(run.batch_size, grid.tile)
            started = time.perf_counter()  # the stream: compiling and capturing are one-time costs, reported apart
            for chunk in reader.chunks():
                with clock("upload"):
                    raw = chunk.raw.to(device, non_blocking=True)
                    valid = chunk.valid_tensor.to(device, non_blocking=True)
                engine.add_rows(raw, chunk.valid, valid)
                engine.process_window_row(chunk.row)
                done = engine.windows_run + engine.windows_skipped
                bar.update(done - counted)
                counted = done
            engine.finish()
            bar.update(engine.windows_run + engine.windows_skipped - counted)  # the last partial batch runs in finish()
        writer.close()
    except torch.cuda.OutOfMemoryError:
        engine.abandon()
        writer.abandon()
        raise UserError(
            f"GPU out of memory at --batch-size {run.batch_size}, --tile-size {grid.tile}: lower --batch-size, "
            "or use --precision bf16"
        ) from None
    except BaseException:
        engine.abandon()
        writer.abandon()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    stages = {"read": reader.seconds - rows.resample_seconds, **clock.totals(), "encode": writer.seconds,
              # Where the stream waited: the engine for reading or merging, the merger for writing, the writer for
              # the device. The largest names the stage that set the pace.
              "wait read": reader.waited, "wait merge": engine.merge_waited, "wait write": writer.blocked,
              "wait device": writer.download_waited}
    if not run.processing.native:
        stages["resample"] = rows.resample_seconds
    if runner.capture_seconds:
        stages["capture"] = runner.capture_seconds
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return _StreamResult(engine.windows_run, seconds, stages, runner.compile_seconds, peak)


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
    if config.resolution not in RESOLUTION_MODES and not (
            isinstance(config.resolution, (int, float)) and config.resolution > 0):
        raise UserError(f"--resolution {config.resolution!r}: expected auto, native or a pixel size in metres > 0")
    if config.model_resolution is not None and not config.model_resolution > 0:
        raise UserError(f"--model-resolution {config.model_resolution:g}: must be a pixel size in metres > 0")
    if config.resampling is not None and config.resampling not in RESAMPLING_METHODS:
        raise UserError(f"--resampling {config.resampling!r}: expected one of {', '.join(RESAMPLING_METHODS)}")
    if config.output_grid not in OUTPUT_GRIDS:
        raise UserError(f"--output-grid {config.output_grid!r}: expected one of {', '.join(OUTPUT_GRIDS)}")
    if not 0 < config.alpha_threshold <= 1:
        raise UserError(f"--alpha-threshold {config.alpha_threshold:g}: must be an opacity in (0, 1]")
    check_snap_options(config.output_format, config.min_region)
    if config.output_options.compress not in COMPRESSIONS:
        raise UserError(f"--compress {config.output_options.compress!r}: expected one of {', '.join(COMPRESSIONS)}")
    check_creation_options(config.output_options)


def _checkpoint_tile(meta: GeneratorMeta) -> int:
    tile = meta.tile_size
    return tile if tile and tile % TILE_MULTIPLE == 0 else TILE_MULTIPLE


def _input_scaling(
    ds: Any, bands: tuple[int, ...], dtype: str, meta: GeneratorMeta, mode: str
) -> tuple[InputScaling, str]:
    """uint8 input: x/127.5-1. Other dtypes: the checkpoint's stretch if it has one (and mode is auto),
    else a 2-98 % stretch computed once for the whole scene (never per tile: that would make seams). A model
    trained on 8-bit imagery given other data gets that stretch with a warning: its colours may not be the
    training images' colours."""
    if dtype == "uint8":
        return InputScaling.uint8(len(bands)), "8-bit input"
    if mode == "auto" and meta.scaling is not None and meta.scaling.kind != UINT8_KIND:
        if len(meta.scaling.low) != len(bands):
            raise UserError(f"the checkpoint's input scaling has {len(meta.scaling.low)} bands, not {len(bands)}")
        return meta.scaling, "from the checkpoint"
    if mode == "auto":  # --scaling scene asks for the stretch: no warning then
        log.warning(
            "the input is %s but the model was trained on 8-bit imagery: a per-scene 2-98 %% stretch maps it to 8 "
            "bits, so its colours may differ from the training images'. Translate an 8-bit rendering of the scene, "
            "or train on %s tiles (the checkpoint then stores their stretch); --scaling scene silences this",
            dtype, dtype,
        )
    return scene_scaling(ds, bands), "computed once for this scene"


def _lattice_origin(info: RasterInfo) -> tuple[int, int]:
    """(row, col) of the scene's first pixel on the global pixel lattice of its CRS (north-up grids only)."""
    t = info.transform
    if not info.georeferenced or t.b or t.d or not t.a or not t.e:
        return (0, 0)
    return round(t.f / t.e), round(t.c / t.a)


def _subset(
    config: TranslateConfig, processing: ProcessingGrid
) -> tuple[tuple[int, int, int, int], Any, Any] | None:
    """``--bbox``/``--aoi`` as (r0, r1, c0, c1) pixels of the processing grid, the area and the AOI polygon in
    the scene's CRS (None for a bbox); None when the whole scene is wanted."""
    if config.bbox is None and config.aoi is None:
        return None
    what = f"--aoi {config.aoi}" if config.aoi is not None else "--bbox " + ",".join(f"{v:g}" for v in config.bbox)
    scene = processing.source
    if not scene.georeferenced or scene.crs is None:
        raise UserError(f"{what}: {scene.path} has no CRS, so no area can be placed on it")
    if not north_up(scene.transform):
        raise UserError(f"{what}: {scene.path} is not a north-up grid; warp it first (gdalwarp)")
    crs = scene.crs.to_wkt()
    if config.bbox_crs is not None:
        try:
            pyproj.CRS.from_user_input(config.bbox_crs)
        except pyproj.exceptions.CRSError:
            raise UserError(f"--bbox-crs {config.bbox_crs!r}: not a CRS pyproj knows, e.g. EPSG:4326") from None
    if config.aoi is not None:
        aoi = read_aoi(config.aoi)
        geometry = area = reproject_geometry(densify(aoi.geometry), aoi.crs, crs)
    else:
        geometry, area = None, _bbox_area(config, crs)
    box = None if area.is_empty else pixel_box(area.bounds, processing.transform, processing.width,
                                                processing.height)
    if box is None:
        raise UserError(f"{what}: does not overlap {scene.path} (the scene covers "
                        f"{lonlat_bounds(grid_outline(scene.transform, scene.width, scene.height), crs)}, "
                        "WGS 84 west, south, east, north)")
    return box, area, geometry


def _footprint(geometry: Any, layout: RasterInfo) -> Footprint | None:
    """Rows of the AOI polygon's mask on ``layout``'s grid (None: no polygon, keep every pixel)."""
    if geometry is None:
        return None
    return lambda row, rows: polygon_mask(geometry, layout.transform @ Affine.translation(0, row),
                                          (rows, layout.width))


def _scene_window(
    scene: RasterInfo, area: Any, geometry: Any
) -> tuple[RasterInfo, tuple[int, int], Footprint | None]:
    """With ``--output-grid input``: the window of the scene's own grid that the subset's ``area`` covers."""
    box = pixel_box(area.bounds, scene.transform, scene.width, scene.height)
    assert box is not None  # the processing grid's box overlapped, and it covers the scene to within a pixel
    layout = window_info(scene, box[0], box[2], box[1] - box[0], box[3] - box[2])
    return layout, (box[0], box[2]), _footprint(geometry, layout)


def _bbox_area(config: TranslateConfig, crs: str) -> Any:
    """``--bbox`` as a polygon in the scene's CRS ``crs`` (from ``--bbox-crs``; the scene's own by default)."""
    area = densify(shapely.box(*config.bbox))
    return reproject_geometry(area, config.bbox_crs, crs) if config.bbox_crs else area


def _processing_grid(config: TranslateConfig, info: RasterInfo, meta: GeneratorMeta) -> ProcessingGrid:
    """The grid the generator sees the scene on (``--resolution``), logged with the reason for it."""
    scene = ProcessingGrid.of_scene(info)
    scene_m = scene.resolution_m
    model_m = config.model_resolution or meta.ground_resolution()
    if config.resolution == "native":
        log.info("resolution: the scene's own pixels (--resolution native)")
        return scene
    if config.resolution == "auto":
        if model_m is None:
            log.info("resolution: the scene's own pixels (the model's training resolution is unknown; pass "
                     "--model-resolution METRES to translate at it)")
            return scene
        if scene_m is None:
            log.info("resolution: the scene's own pixels (its pixel size in metres is unknown)")
            return scene
        if abs(scene_m / model_m - 1) <= AUTO_RESOLUTION_TOLERANCE:
            log.info("resolution: the scene's own %.3g m pixels (within %d %% of the model's %.3g m)", scene_m,
                     round(100 * AUTO_RESOLUTION_TOLERANCE), model_m)
            return scene
        target, how = model_m, "the model's resolution, --resolution auto"
    else:
        target, how = float(config.resolution), "--resolution"
    grid = resampled_grid(info, target, config.resampling)
    check_grid_size(grid, scene_m, how)
    log.info("resolution: %.3g m scene pixels resampled to %.3g m (%s, %s resampling): a %d x %d grid; output on "
             "the %s grid", scene_m, target, how, grid.resampling, grid.width, grid.height,
             "scene's" if config.output_grid == "input" else "processing")
    return grid


def _output_tags(config: TranslateConfig, run: _Run) -> dict[str, str]:
    model_sha256 = run.sha256.result()
    return {
        "TIFFTAG_SOFTWARE": f"geo-sat2map {__version__}",
        "GEO_SAT2MAP_VERSION": __version__,
        "MODEL_FILE": run.model_file,
        "MODEL_SHA256": model_sha256,
        "TILE_SIZE": str(run.grid.tile),
        "OVERLAP": str(run.grid.overlap),
        "BLEND": config.blend,
        "NORM_MODE": run.norm_mode,
        "INPUT_BANDS": ",".join(map(str, run.bands)),
        "INPUT_SCALING": json.dumps(run.scaling.to_dict()),
        "SOURCE": Path(config.input).name,
        PRECISION_TAG: run.precision.name,
        "PALETTE": json.dumps({"palette": config.palette, "min_region": config.min_region,
                               "format": config.output_format, "snapped": run.snap is not None}),
        "PROCESSING_RESOLUTION": (f"{run.processing.resolution_m:.6g}" if run.processing.resolution_m is not None
                                  else "unknown"),
        "PROCESSING_GRID": "native" if run.processing.native else f"{run.info.width}x{run.info.height}",
        "RESAMPLING": run.processing.resampling or "none",
        "OUTPUT_GRID": "input" if run.resample_back or run.processing.native else "processing",
        RUN_ID_TAG: run_id(config, model_sha256, run.precision.name, run.device.type),
    }

