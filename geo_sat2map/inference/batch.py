"""Many scenes: one map per scene in an output folder, resumable, shared between torchrun processes.

Each scene goes through ``translate`` with the model loaded once. A scene whose map already exists with this
run's identity (``RUN_ID``: model, settings, source) is skipped, so rerunning the same command after a crash
resumes; ``overwrite`` redoes every scene. A failing scene is reported on one line and the others go on.
Under torchrun the ranks share the scenes, largest first by pixel count (a static plan every rank agrees on);
each rank writes only its own maps, and rank 0 reports and writes the optional VRT of all maps.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from geo_sat2map.atomic import check_output_path
from geo_sat2map.checkpoint import LoadedGenerator, load_generator
from geo_sat2map.errors import UserError, first_line
from geo_sat2map.inference.identity import RUN_ID_TAG, run_id
from geo_sat2map.inference.ranks import from_main, largest_first, process_group
from geo_sat2map.inference.config import TranslateConfig
from geo_sat2map.inference.translate import run_precision, translate
from geo_sat2map.raster_io.mosaic import check_mosaic, raster_header, read_finished, write_vrt
from geo_sat2map.raster_io.output import check_creation_options
from geo_sat2map.training import distributed

log = logging.getLogger("geo_sat2map")

STATUSES = ("done", "skipped", "failed")


@dataclass(frozen=True)
class BatchConfig:
    """Scenes to translate into ``output_dir``/<stem>.tif with ``settings`` (whose input and output are
    ignored; its ``overwrite`` redoes finished scenes and replaces the VRT)."""

    inputs: tuple[Path, ...]
    output_dir: Path
    settings: TranslateConfig
    vrt: Path | None = None  # also write a VRT of all maps here (they must share a CRS)


@dataclass(frozen=True)
class SceneResult:
    input: Path
    output: Path
    status: str  # one of STATUSES
    megapixels: float
    seconds: float
    rank: int
    message: str = ""


@dataclass(frozen=True)
class BatchReport:
    scenes: list[SceneResult]  # in input order, from every rank
    processes: int
    seconds: float  # wall time of the whole call
    vrt: Path | None  # the VRT written, if any

    def of(self, status: str) -> list[SceneResult]:
        return [scene for scene in self.scenes if scene.status == status]

    @property
    def failed(self) -> list[SceneResult]:
        return self.of("failed")

    def table(self) -> str:
        """done / skipped / failed with megapixels and rates, the wall-clock total, and counts per rank."""
        lines = [f"{'scenes':<8} {'count':>6} {'Mpx':>9} {'seconds':>9} {'Mpx/s':>7}"]
        for status in STATUSES:
            scenes = self.of(status)
            megapixels = sum(s.megapixels for s in scenes)
            line = f"{status:<8} {len(scenes):>6} {megapixels:>9.2f}"
            if status == "done" and scenes:
                seconds = sum(s.seconds for s in scenes)
                line += f" {seconds:>9.1f} {megapixels / seconds if seconds else 0.0:>7.2f}"
            lines.append(line)
        done = sum(s.megapixels for s in self.of("done"))
        lines.append(f"{'wall':<8} {len(self.scenes):>6} {done:>9.2f} {self.seconds:>9.1f} "
                     f"{done / self.seconds if self.seconds else 0.0:>7.2f}  ({self.processes} process"
                     f"{'es' if self.processes > 1 else ''})")
        if self.processes > 1:
            per_rank = []
            for rank in range(self.processes):
                counts = [sum(1 for s in self.of(status) if s.rank == rank) for status in STATUSES]
                per_rank.append(f"rank {rank}: " + ", ".join(f"{n} {status}" for n, status in zip(counts, STATUSES)))
            lines.append("per process: " + "; ".join(per_rank))
        for scene in self.failed:
            lines.append(f"failed: {scene.input}")
        if self.vrt is not None:
            lines.append(f"mosaic: {self.vrt}")
        return "\n".join(lines)


def read_input_list(path: str | os.PathLike[str]) -> list[Path]:
    """Scene paths from a text file, one a line (blank lines and # comments skipped); relative paths are
    relative to the file's folder."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UserError(f"--input-list {path}: cannot read it ({exc.strerror or exc})") from None
    entries = [line.strip() for line in lines]
    return [path.parent / entry for entry in entries if entry and not entry.startswith("#")]


def plan_outputs(inputs: tuple[Path, ...], output_dir: Path) -> list[tuple[Path, Path]]:
    """(input, output_dir/<stem>.tif) per distinct input; a UserError when two inputs would write one map
    or a map would replace its own input."""
    planned: dict[Path, Path] = {}
    seen: set[str] = set()
    for source in inputs:
        real = os.path.realpath(source)
        if real in seen:
            log.warning("%s is listed more than once; translating it once", source)
            continue
        seen.add(real)
        output = output_dir / f"{source.stem}.tif"
        if output in planned:
            raise UserError(f"{planned[output]} and {source} would both be written to {output}; rename one or "
                            "translate them into different folders")
        if os.path.realpath(output) == real:
            raise UserError(f"{source}: its map would replace it ({output}); choose another -o folder")
        planned[output] = source
    return [(source, output) for output, source in planned.items()]


def translate_many(config: BatchConfig) -> BatchReport:
    """Translate every scene of ``config`` (see the module docstring); failures are in the report."""
    started = time.perf_counter()
    settings = config.settings
    jobs = plan_outputs(config.inputs, config.output_dir)
    _check_output_dir(config.output_dir)
    if config.vrt is not None:
        _check_vrt(config.vrt, config.output_dir, settings.overwrite)
    check_creation_options(settings.output_options)
    with process_group(settings.device) as (ctx, device):
        model = load_generator(settings.weights)
        resolved = run_precision(settings, model.meta, lambda: model.for_inference(settings.norm_stats), device, ctx)
        precision = resolved.name
        log.info("precision: %s (%s)", precision, resolved.reason)
        # Decided once for every scene (auto on a CPU measures): the scenes run at it as if asked for.
        base = replace(settings, device=str(device), precision=precision, progress=settings.progress and ctx.is_main)
        plan, problem = from_main(ctx, _plan(jobs, ctx.world_size, config.vrt) if ctx.is_main else None)
        if problem:
            raise UserError(problem)
        config.output_dir.mkdir(exist_ok=True)  # only once every check passed: a refused run creates nothing
        mine = []
        for number, index in enumerate(plan[ctx.rank], 1):
            source, output = jobs[index]
            log.info("scene %d of %d%s: %s", number, len(plan[ctx.rank]), " on rank 0" if ctx.enabled else "", source)
            mine.append((index, _scene(base, source, output, model, (precision, device.type), ctx.rank)))
        gathered = [item for items in distributed.gather(ctx, mine) for item in items]
        results = [result for _, result in sorted(gathered, key=lambda item: item[0])]
        vrt = None
        if ctx.is_main and config.vrt is not None:
            vrt = _write_mosaic(config.vrt, results, settings.overwrite)
        vrt = from_main(ctx, vrt)
    return BatchReport(results, ctx.world_size, time.perf_counter() - started, vrt)


def _check_output_dir(folder: Path) -> None:
    """The output folder can be used: a writable folder, or one that can be created (that happens later)."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"-o {folder}: exists and is not a folder; several inputs need an output folder")
    if not folder.parent.is_dir():
        raise UserError(f"output folder {folder.parent} does not exist; create it first")
    writable = folder if folder.is_dir() else folder.parent
    if not os.access(writable, os.W_OK | os.X_OK):
        raise UserError(f"output folder {writable} is not writable")


def _check_vrt(vrt: Path, output_dir: Path, overwrite: bool) -> None:
    """``--vrt`` may be written; inside an output folder that is still to be created nothing can be in its way."""
    if os.path.abspath(vrt.parent) == os.path.abspath(output_dir) and not output_dir.exists():
        return
    check_output_path(vrt, overwrite, "--vrt")


def _plan(jobs: list[tuple[Path, Path]], ranks: int, vrt: Path | None) -> tuple[list[list[int]], str]:
    """(scene indices per rank, largest first; a message if the scenes cannot share one VRT). Unreadable
    scenes count as empty here and fail, with their reason, where they are translated."""
    headers = []
    for source, _ in jobs:
        try:
            headers.append((source, raster_header(source)))
        except UserError:
            headers.append((source, None))
    problem = ""
    readable = [(source, info) for source, info in headers if info is not None]
    if vrt is not None and readable:
        try:
            check_mosaic(readable)
        except UserError as exc:
            problem = f"--vrt {vrt}: {exc}"
    sizes = [info.width * info.height if info is not None else 0 for _, info in headers]
    return largest_first(sizes, ranks), problem


def _scene(
    base: TranslateConfig, source: Path, output: Path, model: LoadedGenerator, compute: tuple[str, str], rank: int
) -> SceneResult:
    """``compute``: the resolved precision and the device type (both in the run's identity)."""
    config = replace(base, input=source, output=output)
    if not base.overwrite:
        found = read_finished(output)
        if found is not None and found.tags.get(RUN_ID_TAG) == run_id(config, model.sha256, *compute):
            log.info("skipped %s: %s is finished with this model, settings and source", source, output)
            return SceneResult(source, output, "skipped", found.info.width * found.info.height / 1e6, 0.0, rank)
    try:
        report = translate(config, model)
    except UserError as exc:
        message = str(exc)
    except Exception as exc:  # noqa: BLE001 - one scene's failure must not stop the others; -v shows where
        message = f"{type(exc).__name__}: {first_line(exc)}"
        log.debug("traceback of the failure on %s", source, exc_info=True)
    else:
        return SceneResult(source, output, "done", report.width * report.height / 1e6, report.seconds, rank)
    if str(source) not in message:
        message = f"{source}: {message}"
    log.error("Error: %s", message)
    return SceneResult(source, output, "failed", 0.0, 0.0, rank, message)


def _write_mosaic(vrt: Path, results: list[SceneResult], overwrite: bool) -> Path | None:
    failed = [r for r in results if r.status == "failed"]
    if failed:
        log.warning("--vrt %s not written: %d scene(s) failed; rerun once they are fixed (finished maps are "
                    "skipped)", vrt, len(failed))
        return None
    write_vrt(vrt, [r.output for r in results], composite=True, overwrite=overwrite, overview_dir=vrt.parent)
    log.info("wrote %s: a mosaic of %d maps", vrt, len(results))
    return vrt
