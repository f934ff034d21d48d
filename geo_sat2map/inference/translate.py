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
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from geo_sat2map import __version__
from geo_sat2map.atomic import atomic_output, check_output_path, file_sha256
from geo_sat2map.checkpoint import GeneratorMeta, LoadedGenerator, load_generator
from geo_sat2map.device import resolve_device, resolve_precision
from geo_sat2map.errors import UserError
from geo_sat2map.inference.engine import StreamEngine, to_device
from geo_sat2map.inference.identity import RUN_ID_TAG, run_id
from geo_sat2map.inference.precision import Precision, inference_precision
from geo_sat2map.inference.ranks import from_main
from geo_sat2map.inference.runner import GeneratorRunner, StageClock
from geo_sat2map.inference.stages import ChunkReader, RowWriter
from geo_sat2map.models import NORM_MODES, InferenceGenerator
from geo_sat2map.progress import progress_bar
from geo_sat2map.raster_io import RasterInfo, open_raster, raster_info, require_georeferenced, resolve_bands, scene_scaling
from geo_sat2map.raster_io.output import (
    COMPRESSIONS,
    OutputOptions,
    open_map_sink,
    streaming_cache_bytes,
    streaming_gdal_env,
)
from geo_sat2map.raster_io.strips import RowReader, streaming_dtype
from geo_sat2map.scaling import UINT8_KIND, InputScaling
from geo_sat2map.training.distributed import DistContext
from geo_sat2map.windows import BLEND_MODES, DEFAULT_BLEND, RowBand, WindowGrid

log = logging.getLogger("geo_sat2map")

_Filled = TypeVar("_Filled")
TILE_MULTIPLE = 256  # both generator families downsample 8 times
SCALING_MODES = ("auto", "scene")
DEFAULT_BATCH = {"cpu": 4, "cuda": 16, "mps": 8}
READ_THREADS = {"cpu": 1, "cuda": 4, "mps": 2}  # reading only has to keep up with the device
PRECISION_TAG = "PRECISION"  # the resolved compute precision (fp32, bf16 or fp16)


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
    compile: bool = False  # torch.compile the generator (fixed batch shape; pays off on large scenes)
    norm_stats: str | None = None  # default: the checkpoint's norm mode
    bands: tuple[int, int, int] | None = None  # default: the checkpoint's bands, else the RGB-tagged bands
    scaling: str = "auto"  # "auto": checkpoint stretch for non-8-bit input if it has one; "scene": always per scene
    output_options: OutputOptions = field(default_factory=OutputOptions)
    overwrite: bool = False
    allow_ungeoreferenced: bool = False
    progress: bool = True
    read_threads: int | None = None  # default: 1 on CPU, 4 on CUDA
    # Every generator call gets a full batch (the last one padded), as on CUDA: on the CPU a batch of another
    # size can move results by float ulps, so runs that must agree to the bit (split across processes) use it.
    fixed_batch: bool = False


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


def default_overlap(tile_size: int) -> int:
    return tile_size // 4


def translate(config: TranslateConfig, model: LoadedGenerator | None = None) -> TranslateReport:
    """Translate ``config.input`` into an RGBA map at ``config.output`` (same CRS, transform and size).

    ``model``: the checkpoint ``config.weights`` already loaded (with its SHA-256), to reuse over many scenes."""
    started = time.perf_counter()
    run = _prepare(config, model)
    stream, sink_stages = _write_map(config, run.output, run.info, _output_tags(config, run),
                                     lambda sink: _stream(config, run, sink), strip_rows=run.grid.tile)
    stages = {**stream.stages, **sink_stages}
    report = TranslateReport(
        output=run.output, width=run.info.width, height=run.info.height, tile_size=run.grid.tile,
        overlap=run.grid.overlap, blend=config.blend, batch_size=run.batch_size, device=str(run.device),
        precision=run.precision.name, norm_mode=run.norm_mode, scaling=run.scaling, windows=len(run.grid),
        windows_run=stream.windows_run, stream_seconds=stream.seconds, model_seconds=stages.get("generator", 0.0),
        seconds=time.perf_counter() - started, stages=stages, compile_seconds=stream.compile_seconds,
        peak_device_bytes=stream.peak_device_bytes,
    )
    if stream.windows_run == 0:
        log.warning("%s: no valid pixel in the scene; the output is fully transparent", config.input)
    log.info("wrote %s: %d windows in %.1f s (%.1f Mpx/s; stream %.2f windows/s, generator busy %.0f %%)",
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
        try:
            filled = fill(sink)
            log.info("finishing %s", "the Cloud-Optimized GeoTIFF" if options.cog else "the GeoTIFF")
            sink.close()
        except BaseException:
            sink.abort()
            raise
    return filled, dict(sink.stats.items())


@dataclass
class _Run:
    """Everything decided before streaming starts (inputs validated, model loaded)."""

    output: Path
    info: RasterInfo
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

    @property
    def dtype(self) -> torch.dtype:
        return self.precision.dtype


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
        bands = resolve_bands(ds, config.bands or loaded.meta.bands)
        if len(bands) != 3:
            raise UserError(f"{config.weights}: the checkpoint's bands {bands} are not three; pass --bands R,G,B")
        scaling, scaling_source = _input_scaling(ds, bands, info.dtype, loaded.meta, config.scaling)
    tile = config.tile_size or _checkpoint_tile(loaded.meta)
    overlap = default_overlap(tile) if config.overlap is None else config.overlap
    if overlap >= tile:
        raise UserError(f"--overlap {overlap}: must be smaller than the tile size ({tile})")
    batch_size = config.batch_size or DEFAULT_BATCH.get(device.type, 4)
    norm_mode = config.norm_stats or loaded.meta.norm_mode
    grid = WindowGrid.build(info.height, info.width, tile, overlap, origin=_lattice_origin(info))
    _warn_on_resolution(info, loaded.meta)
    network = loaded.for_inference(norm_mode)
    precision = run_precision(config, loaded.meta, network, device, ctx)

    log.info("input: %s (%d x %d, %s, bands %s)", config.input, info.width, info.height, info.dtype,
             ",".join(map(str, bands)))
    log.info("scaling: %s (%s)", scaling.describe(), scaling_source)
    log.info("model: %s %s width %d, norm stats %s, on %s %s, batch %d%s", loaded.path.name, loaded.meta.arch,
             loaded.meta.width, norm_mode, device, precision.name, batch_size, ", compiled" if config.compile else "")
    log.info("precision: %s (%s%s)", precision.name, precision.reason,
             f"; measuring took {precision.seconds:.1f} s" if precision.seconds else "")
    log.info("windows: %d (%d x %d) of %d px, overlap %d, blend %s", len(grid), *grid.shape, tile, overlap,
             config.blend)
    return _Run(output, info, bands, scaling, grid, network, loaded.path.name, sha256, device, precision, batch_size,
                norm_mode)


def run_precision(
    config: TranslateConfig, meta: GeneratorMeta, network: InferenceGenerator, device: torch.device,
    ctx: DistContext | None = None,
) -> Precision:
    """The compute precision of a run of ``config`` with ``network`` (built from a checkpoint with ``meta``);
    under torchrun (``ctx``) rank 0's choice, so that every process computes alike."""

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
    """Read -> device engine -> write, for every window row of ``band`` (default: the whole grid)."""
    device, grid = run.device, run.grid
    band = band or RowBand.whole(grid)
    clock = StageClock(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    try:
        runner = GeneratorRunner(run.model, device, run.dtype, clock, compile=config.compile)
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"--device {device}: not enough GPU memory for the model") from None
    writer = RowWriter(sink, device, clock)
    engine = StreamEngine(
        grid=grid, blend=config.blend, scaling=run.scaling, generator=runner, device=device,
        batch_size=run.batch_size, emit=writer.submit, overview_levels=sink.overview_levels,
        fixed_batch=device.type == "cuda" or config.compile or config.fixed_batch, clock=clock, background=True,
        band=band,
    )
    threads = config.read_threads or READ_THREADS.get(device.type, 1)
    reader = ChunkReader(RowReader(config.input, run.bands), band, streaming_dtype(run.info.dtype),
                         pin=device.type == "cuda", workers=threads, ahead=threads + 2)
    bar = progress_bar(total=(band.end - band.process_from) * grid.shape[1], unit="win", desc="translate",
                       disable=not config.progress, dynamic_ncols=True)
    counted = 0
    try:
        with runner.active():
            for chunk in reader.chunks():
                with clock("upload"):
                    raw = chunk.raw.to(device, non_blocking=True)
                    valid = to_device(chunk.valid, device)
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
    stages = {"read": reader.seconds, **clock.totals(), "encode": writer.seconds}
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
        RUN_ID_TAG: run_id(config, model_sha256, run.precision.name),
    }

