"""One scene across processes: each torchrun rank translates a contiguous band of window rows into a part.

The window lattice never depends on the split (``windows.RowBand``) and every generator call gets a full
batch (``fixed_batch``), so the parts hold exactly the pixels of a one-process run. Parts are maps of their
own (COGs of scene rows [start, stop), transform derived from the scene's), written in a work folder beside
the output, each renamed only when complete and tagged with the run's identity and its rows:

- ``-o map.tif``: once every rank is done, rank 0 reads the parts back through a VRT into the sink a
  one-process run writes with (overview rows made as the engine makes them), renames the map onto
  ``map.tif`` and removes the work folder;
- ``-o map.vrt``: the work folder becomes ``map.parts/`` and ``map.vrt`` lists the parts (no serial
  re-encode: for mosaics too large for one host to encode).

One-band formats (``--format paletted|classes``) work alike: each part is a class map with its colour table,
nodata index and category sidecar, and the VRT repeats them (``raster_io.mosaic``).

After a crash or a torchrun restart, a part whose tags and layout match this run is reused; anything else in
the work folder (half-written files, parts of another split) is removed first.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from geo_sat2map.atomic import check_output_path, remove_leftovers, temp_prefix
from geo_sat2map.errors import UserError
from geo_sat2map.inference.crop import Crop, CroppedRows
from geo_sat2map.inference.engine import RowStyle
from geo_sat2map.inference.identity import RUN_ID_TAG, tags_match
from geo_sat2map.inference.ranks import launched_by_torchrun, process_group
from geo_sat2map.inference.stages import MapSink
from geo_sat2map.progress import RESULT
from geo_sat2map.inference.config import TranslateConfig
from geo_sat2map.inference.translate import (
    _output_tags,
    _prepare,
    _Run,
    _stream,
    _write_map,
    with_class_band,
    write_on_scene_grid,
)
from geo_sat2map.raster_io.mosaic import part_info, read_finished, write_parts_vrt
from geo_sat2map.raster_io.output import write_category_sidecar
from geo_sat2map.raster_io.strips import map_strips
from geo_sat2map.training import distributed
from geo_sat2map.windows import RowBand

log = logging.getLogger("geo_sat2map")

PART_ROWS_TAG = "PART_ROWS"
PARTS_VRT = "parts.vrt"  # the VRT rank 0 assembles from, inside the work folder


def runs_in_parts(output: Path) -> bool:
    """One scene goes through parts under torchrun, and for a VRT output (its parts are the map)."""
    return launched_by_torchrun() or output.suffix.lower() == ".vrt"


def work_folder(output: Path) -> Path:
    return output.parent / f".{output.name}.work"


def parts_folder(output: Path) -> Path:
    """Where the parts of ``-o map.vrt`` stay: ``map.parts/`` beside it."""
    return output.parent / f"{output.stem}.parts"


def part_name(band: RowBand) -> str:
    start, stop = band.output_rows
    return f"rows-{start:08d}-{stop:08d}.tif"


@dataclass(frozen=True)
class PartResult:
    rank: int
    name: str
    rows: tuple[int, int]
    reused: bool
    seconds: float  # writing the part (0 when reused)
    windows_run: int


@dataclass(frozen=True)
class PartsReport:
    """A split run, on any rank: every rank's part, and this rank's times."""

    output: Path
    width: int
    height: int
    processes: int
    parts: list[PartResult]
    seconds: float  # the whole call on this rank
    assemble_seconds: float  # rank 0's serial step after the parts: assembly (-o .tif) or listing (-o .vrt)

    @property
    def reused(self) -> list[PartResult]:
        return [part for part in self.parts if part.reused]

    @property
    def megapixels_per_second(self) -> float:
        return self.width * self.height / 1e6 / self.seconds if self.seconds > 0 else float("inf")


def translate_in_parts(config: TranslateConfig) -> PartsReport:
    """Translate one scene with every torchrun process (or one, for ``-o map.vrt`` without torchrun)."""
    started = time.perf_counter()
    output = Path(config.output)
    as_vrt = output.suffix.lower() == ".vrt"
    check_output_path(output, config.overwrite, "output")
    if as_vrt and parts_folder(output).exists() and not config.overwrite:
        raise UserError(f"{parts_folder(output)} already exists (the parts of a VRT map); pass --overwrite to "
                        "replace it")
    work = work_folder(output)
    with process_group(config.device) as (ctx, device):
        config = replace(config, device=str(device), fixed_batch=True, progress=config.progress and ctx.is_main)
        run = _prepare(config, ctx=ctx)
        config = with_class_band(config, run)
        if as_vrt and run.resample_back:
            raise UserError(f"{output}: a VRT map lists its parts on the processing grid; --output-grid input "
                            "needs a .tif output (or use --output-grid processing)")
        if as_vrt and run.crop is not None:
            raise UserError(f"{output}: a VRT map lists whole parts; --bbox/--aoi need a .tif output")
        bands = RowBand.split(run.grid, ctx.world_size)
        tags = _output_tags(config, run)
        if ctx.is_main:
            _clear_work_folder(work, [name for band in bands
                                      for name in (part_name(band), f"{part_name(band)}.aux.xml")])  # + categories
            log.info("%d processes: %d parts of window rows in %s", ctx.world_size, len(bands), work)
        distributed.barrier(ctx)
        mine = _part(config, run, bands[ctx.rank], work, tags, ctx.rank) if ctx.rank < len(bands) else None
        parts = [part for part in distributed.gather(ctx, mine) if part is not None]
        assemble_seconds = 0.0
        if ctx.is_main:
            for part in parts:
                if part.reused:
                    log.info("reused finished part %s (rows %d-%d; tags and layout verified)", part.name, *part.rows)
                else:
                    log.info("rank %d wrote part %s (rows %d-%d, %d windows) in %.1f s", part.rank, part.name,
                             *part.rows, part.windows_run, part.seconds)
            finished = time.perf_counter()
            if as_vrt:
                _publish_vrt(output, work, run, bands, tags, config.overwrite)
            else:
                _assemble(output, work, run, bands, tags, config)
            assemble_seconds = time.perf_counter() - finished
    report = PartsReport(output, run.output_info.width, run.output_info.height, ctx.world_size, parts,
                         time.perf_counter() - started, assemble_seconds)
    if ctx.is_main:
        slowest = max((part.seconds for part in parts), default=0.0)
        log.log(RESULT, "Wrote %s from %d parts (%d reused) in %.1f s (%.1f Mpx/s): slowest part %.1f s, %s %.1f s "
                "(%.0f %% of the run)", output, len(parts), len(report.reused), report.seconds,
                report.megapixels_per_second, slowest, "VRT" if as_vrt else "assembly", assemble_seconds,
                100 * assemble_seconds / report.seconds if report.seconds else 0.0)
    return report


def _clear_work_folder(work: Path, keep: list[str]) -> None:
    """Create the work folder, or empty it of everything but the parts this split may reuse."""
    work.mkdir(exist_ok=True)
    for entry in work.iterdir():
        if entry.name in keep:
            continue
        log.debug("removing %s (not a part of this split)", entry)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def _part(
    config: TranslateConfig, run: _Run, band: RowBand, work: Path, tags: dict[str, str], rank: int
) -> PartResult:
    """This rank's part: reused when a finished one matches the run, else translated."""
    start, stop = band.output_rows
    path = work / part_name(band)
    identity = {RUN_ID_TAG: tags[RUN_ID_TAG], PART_ROWS_TAG: f"{start},{stop}"}
    found = read_finished(path)
    if found is not None and tags_match(found.tags, identity) and (
            found.info.width, found.info.height) == (run.info.width, stop - start):
        if config.output_options.class_band is not None:  # it may have been killed between the part and this
            write_category_sidecar(path, config.output_options.class_band)
        return PartResult(rank, path.name, (start, stop), True, 0.0, 0)
    if found is not None:
        log.info("%s is not a part of this run (other model, settings or source); translating it again", path.name)
    started = time.perf_counter()
    stream, _ = _write_map(config, path, part_info(run.info, start, stop), {**tags, **identity},
                           lambda sink: _stream(config, run, sink, band), strip_rows=run.grid.tile, overwrite=True)
    return PartResult(rank, path.name, (start, stop), False,
                      time.perf_counter() - started, stream.windows_run)


def _assemble(
    output: Path, work: Path, run: _Run, bands: list[RowBand], tags: dict[str, str], config: TranslateConfig
) -> None:
    """One map from the parts, read back through a VRT and written by the sink a one-process run uses, with
    overview rows made the same way: the same file as one process would write."""
    vrt = work / PARTS_VRT
    write_parts_vrt(vrt, _parts(work, bands), run.info, tags=tags, overwrite=True)
    log.info("assembling %s from %d parts", output, len(bands))
    strip = config.output_options.blocksize
    if run.resample_back:
        write_on_scene_grid(config, run, vrt, tags)
    else:
        style = RowStyle.of(run.snap)
        _write_map(config, output, run.output_info, tags, lambda sink: _copy_rows(vrt, sink, strip, style, run.crop),
                   strip_rows=strip)
    shutil.rmtree(work)


def _copy_rows(vrt: Path, sink: MapSink, strip_rows: int, style: RowStyle, crop: Crop | None = None) -> None:
    """The parts' rows (``style``: RGBA or one-band classes) into the sink (through ``crop`` when the map is a
    subset of them)."""
    view = CroppedRows(sink, crop, style)
    for rows in map_strips(vrt, strip_rows):
        view.write_rows(0, rows)
    view.finish()


def _publish_vrt(
    output: Path, work: Path, run: _Run, bands: list[RowBand], tags: dict[str, str], overwrite: bool
) -> None:
    """Move the work folder to ``<stem>.parts/`` and list the parts (with overview levels) in the VRT at
    ``output``, which appears last. If that fails, the parts go back to the work folder for the rerun."""
    parts = parts_folder(output)
    old = None
    if parts.exists():  # allowed by --overwrite (checked up front)
        remove_leftovers(parts)
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(parts), suffix=".old", dir=output.parent))
        os.replace(parts, old / parts.name)
    os.replace(work, parts)
    try:
        write_parts_vrt(output, _parts(parts, bands), run.info, tags=tags, overwrite=overwrite, overview_dir=parts)
    except BaseException:
        os.replace(parts, work)
        if old is not None:
            os.replace(old / parts.name, parts)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _parts(folder: Path, bands: list[RowBand]) -> list[tuple[Path, int]]:
    return [(folder / part_name(band), band.output_rows[0]) for band in bands]
