"""make-tiles: aligned satellite/map raster pairs -> a pix2pix-style A|B tiles dataset with a georeferenced manifest.

Flow: validate options -> inspect every pair (metadata only) -> footprint overlap and AOI (pyproj + shapely) ->
candidate windows on the satellite grid -> read each window (satellite + map warped onto the same grid, both
dataset masks), skip tiles under --min-valid, stage the rest as PNG -> spatial block split -> move the staged
tiles into train/val/test -> manifests. All writing happens in a work folder renamed to OUT_DIR at the end.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from geo_sat2map.errors import UserError, first_line
from geo_sat2map.palette import PaletteLearner, load_palette
from geo_sat2map.progress import progress_bar
from geo_sat2map.raster_io.pairs import RESAMPLING_METHODS, PairSpec, inspect_pair, open_pair
from geo_sat2map.scaling import PERCENTILE_KIND, UINT8_KIND, InputScaling
from geo_sat2map.tiling.footprints import (
    Aoi,
    grid_outline,
    intersect_in,
    lonlat_bounds,
    read_aoi,
    tile_footprints_lonlat,
    to_pixels,
)
from geo_sat2map.tiling.splits import SPLITS, PlacedWindow, TooFewWindows, minimum_windows, plan_splits
from geo_sat2map.tiling.writer import (
    BackgroundWrites,
    check_destination,
    check_tile_size,
    dataset_output,
    place,
    stage_path,
    write_manifests,
    write_pair,
)

log = logging.getLogger("geo_sat2map")

# Why a candidate tile is dropped: how each reason reads in messages, and the option that decides it.
_REASON_TEXT = {
    "outside_overlap": ("outside the image/map overlap", "--min-valid"),
    "outside_aoi": ("outside the AOI", "--min-valid"),
    "image_nodata": ("image nodata", "--min-valid"),
    "map_nodata": ("map nodata", "--min-valid"),
    "split_buffer": ("split buffer", "--stride"),
}
SKIP_REASONS = tuple(_REASON_TEXT)
_EDGE_EPS = 1e-6  # pixel-coordinate slack for outlines that went through a reprojection round trip


@dataclass(frozen=True)
class TilePair:
    image: str
    map: str
    origin: str | None = None  # "--pairs FILE row N" for a row of a pairs CSV: named in errors about the pair


@dataclass(frozen=True)
class MakeTilesConfig:
    """Options of `geo-sat2map make-tiles` (see the README section for their meaning)."""

    images: tuple[str, ...] = ()
    maps: tuple[str, ...] = ()
    pairs_file: str | None = None  # CSV of image,map rows (paths relative to the CSV's folder)
    tile_size: int = 256
    stride: int | None = None  # None = tile_size
    aoi: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    min_valid: float = 0.95
    resolution: float | None = None
    image_resampling: str = "bilinear"
    map_resampling: str = "nearest"
    bands: tuple[int, ...] | None = None
    split_block: int = 4
    seed: int = 0
    palette: str | None = None  # palette JSON (or "synthetic") naming the learned map colours
    overwrite: bool = False

    @property
    def step(self) -> int:
        return self.stride or self.tile_size

    def validate(self) -> None:
        check_tile_size(self.tile_size)
        if self.stride is not None and self.stride < 1:
            raise UserError(f"--stride {self.stride} must be a positive number of pixels")
        for name, value in (("--val-fraction", self.val_fraction), ("--test-fraction", self.test_fraction)):
            if not 0 <= value < 1:
                raise UserError(f"{name} {value:g} is outside [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise UserError(
                f"--val-fraction {self.val_fraction:g} + --test-fraction {self.test_fraction:g} leave nothing for "
                "training; their sum must be below 1"
            )
        if not 0 <= self.min_valid <= 1:
            raise UserError(f"--min-valid {self.min_valid:g} is outside [0, 1]")
        if self.resolution is not None and not self.resolution > 0:
            raise UserError(f"--resolution {self.resolution:g} must be a positive ground size per pixel")
        for name, value in (("--image-resampling", self.image_resampling), ("--map-resampling", self.map_resampling)):
            if value not in RESAMPLING_METHODS:
                raise UserError(f"{name} {value!r}: use one of {', '.join(RESAMPLING_METHODS)}")
        if self.split_block < 1:
            raise UserError(f"--split-block {self.split_block} must be at least 1 tile")

    def resolve_pairs(self) -> list[TilePair]:
        """Pairs from the repeated --image/--map options (by order), then from --pairs."""
        if len(self.images) != len(self.maps):
            raise UserError(
                f"got {len(self.images)} --image and {len(self.maps)} --map options; give one --map per --image "
                "(pairs are matched by order)"
            )
        pairs = [TilePair(i, m) for i, m in zip(self.images, self.maps)]
        if self.pairs_file:
            pairs += read_pairs_csv(self.pairs_file)
        if not pairs:
            raise UserError(
                "no input: give --image SAT.tif --map MAP.tif (repeatable), --pairs FILE or --from-pix2pix DIR"
            )
        return pairs


def read_pairs_csv(path: str) -> list[TilePair]:
    """Rows of ``image,map``; an optional header row ``image,map``; relative paths are relative to the CSV."""
    folder = Path(path).parent
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    except OSError as exc:
        raise UserError(f"--pairs {path}: cannot read it ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, csv.Error) as exc:  # a binary file, another encoding, NUL bytes
        raise UserError(f"--pairs {path}: not a UTF-8 CSV file of image,map rows ({first_line(exc)})") from None
    if rows and [c.strip().lower() for c in rows[0]] == ["image", "map"]:
        rows = rows[1:]
    pairs = []
    for number, row in enumerate(rows, start=1):
        if len(row) != 2:
            raise UserError(f"--pairs {path}: row {number} has {len(row)} column(s); expected image,map")
        image, map_path = (str(folder / c.strip()) if not os.path.isabs(c.strip()) else c.strip() for c in row)
        pairs.append(TilePair(image, map_path, origin=f"--pairs {path} row {number}"))
    if not pairs:
        raise UserError(f"--pairs {path}: no image,map rows")
    return pairs


@dataclass
class TilingResult:
    out_dir: Path
    counts: dict[str, int]
    skipped: dict[str, int]
    seconds: float

    def summary(self) -> str:
        total = sum(self.counts.values())
        per_split = ", ".join(f"{s} {self.counts[s]}" for s in SPLITS)
        text = f"Wrote {total} tiles to {self.out_dir} in {self.seconds:.1f} s ({per_split})"
        dropped = dropped_text(self.skipped, total)
        return text + (f"; {dropped}" if dropped else "") + "."


def dropped_text(skipped: dict[str, int], kept: int) -> str:
    """"5 of 6 candidate tiles dropped: 5 as image nodata (see --min-valid)", or "" when none was dropped."""
    dropped = sum(skipped.values())
    if not dropped:
        return ""
    options = ", ".join(dict.fromkeys(_REASON_TEXT[k][1] for k, v in skipped.items() if v))
    return f"{dropped} of {dropped + kept} candidate tiles dropped: {_reasons(skipped)} (see {options})"


def _reasons(skipped: dict[str, int]) -> str:
    return ", ".join(f"{v} as {_REASON_TEXT[k][0]}" for k, v in skipped.items() if v)


def _too_few(kept: int, skipped: dict[str, int], config: MakeTilesConfig) -> UserError:
    """Too few tiles to split, with why the others were dropped and which option would keep more."""
    dropped = sum(skipped.values())
    hints = []
    if any(skipped.get(k) for k, (_, option) in _REASON_TEXT.items() if option == "--min-valid"):
        hints.append(f"lower --min-valid (now {config.min_valid:g})")
    hints += ["use a smaller --stride or --tile-size", "lower --val-fraction/--test-fraction (0 disables a split)"]
    kept_text = f"{kept} of {dropped + kept} candidate tiles kept" if dropped else f"{kept} tile(s)"
    why = f" (dropped: {_reasons(skipped)})" if dropped else ""
    return UserError(
        f"only {kept_text}, too few to split into train/val/test{why}; " + ", ".join(hints[:-1]) + ", or " + hints[-1]
    )


@dataclass
class _PairPlan:
    """Candidate windows of one pair after the footprint/AOI test, before any pixel is read."""

    index: int
    spec: PairSpec
    windows: list[tuple[int, int]]  # (col, row) on spec.grid
    skipped: Counter[str]


@dataclass
class _Tile:
    pair: int
    col: int
    row: int
    valid_fraction: float

    @property
    def id(self) -> str:
        return f"p{self.pair:02d}_r{self.row:06d}_c{self.col:06d}"


def _pair_region(spec: PairSpec, aoi: Aoi | None) -> tuple[BaseGeometry, BaseGeometry]:
    """(footprint overlap, overlap within the AOI) in the satellite CRS; UserError when the rasters miss."""
    grid = spec.image_grid
    image_outline = grid_outline(grid.transform, grid.width, grid.height)
    map_outline = grid_outline(spec.map_grid.transform, spec.map_grid.width, spec.map_grid.height)
    overlap = intersect_in(image_outline, grid.crs_wkt, map_outline, spec.map_grid.crs_wkt)
    if overlap.is_empty or overlap.area == 0:
        raise UserError(
            f"{spec.image_path} and {spec.map_path} do not overlap: image footprint "
            f"{lonlat_bounds(image_outline, grid.crs_wkt)}, map footprint "
            f"{lonlat_bounds(map_outline, spec.map_grid.crs_wkt)} (WGS 84 west, south, east, north)"
        )
    if aoi is None:
        return overlap, overlap
    return overlap, intersect_in(overlap, grid.crs_wkt, aoi.geometry, aoi.crs)


def _inspect(pair: TilePair, config: MakeTilesConfig) -> PairSpec:
    try:
        return inspect_pair(os.path.abspath(pair.image), os.path.abspath(pair.map), config.bands, config.resolution)
    except UserError as exc:
        if pair.origin is None:
            raise
        raise UserError(f"{pair.origin}: {exc}") from exc


def _pixel_bounds(region_px: BaseGeometry, grid_width: int, grid_height: int) -> tuple[int, int, int, int]:
    minx, miny, maxx, maxy = region_px.bounds
    return (
        max(0, math.floor(minx + _EDGE_EPS)),
        max(0, math.floor(miny + _EDGE_EPS)),
        min(grid_width, math.ceil(maxx - _EDGE_EPS)),
        min(grid_height, math.ceil(maxy - _EDGE_EPS)),
    )


def _plan_pair(index: int, spec: PairSpec, aoi: Aoi | None, config: MakeTilesConfig) -> _PairPlan:
    """Windows on a lattice anchored at the overlap's corner (the same with or without an AOI), kept when at
    least --min-valid of their area lies inside the overlap and the AOI."""
    overlap, region = _pair_region(spec, aoi)
    if region.is_empty or region.area == 0:
        return _PairPlan(index, spec, [], Counter())
    grid, tile = spec.grid, config.tile_size
    overlap_px, region_px = to_pixels(overlap, grid.transform), to_pixels(region, grid.transform)
    x0, y0, x1, y1 = _pixel_bounds(overlap_px, grid.width, grid.height)
    rx0, ry0, rx1, ry1 = _pixel_bounds(region_px, grid.width, grid.height)
    if rx1 - rx0 < tile or ry1 - ry0 < tile:
        clipped = aoi is not None and (rx0, ry0, rx1, ry1) != (x0, y0, x1, y1)
        where = "overlap of the pair inside the AOI" if clipped else "overlap of the pair"
        raise UserError(
            f"{spec.image_path} + {spec.map_path}: the {where} is only {max(0, rx1 - rx0)}x{max(0, ry1 - ry0)} "
            f"pixels on the satellite grid, smaller than --tile-size {tile}; use a smaller --tile-size"
            + (" or a finer --resolution" if config.resolution else "")
        )
    cols = np.arange(x0, x1 - tile + 1, config.step)
    rows = np.arange(y0, y1 - tile + 1, config.step)
    cc, rr = (a.ravel() for a in np.meshgrid(cols, rows))
    boxes = shapely.box(cc, rr, cc + tile, rr + tile)
    area = float(tile * tile)
    in_overlap = shapely.area(shapely.intersection(boxes, overlap_px)) / area
    in_region = shapely.area(shapely.intersection(boxes, region_px)) / area if aoi else in_overlap
    needed = max(config.min_valid, 1e-9)  # a tile must always have *some* area inside
    skipped: Counter[str] = Counter()
    windows = []
    for col, row, frac_overlap, frac_region in zip(cc, rr, in_overlap, in_region):
        if frac_overlap < needed:
            skipped["outside_overlap"] += 1
        elif frac_region < needed:
            skipped["outside_aoi"] += 1
        else:
            windows.append((int(col), int(row)))
    return _PairPlan(index, spec, windows, skipped)


def _dataset_scaling(scalings: Sequence[InputScaling]) -> InputScaling:
    """uint8 when every image is uint8, else the per-band mean of the images' low/high stretch."""
    if all(s.kind == UINT8_KIND for s in scalings):
        return InputScaling.uint8(len(scalings[0].low))
    percentiles = {s.percentiles for s in scalings if s.kind == PERCENTILE_KIND}
    return InputScaling(
        PERCENTILE_KIND,
        tuple(float(v) for v in np.mean([s.low for s in scalings], axis=0)),
        tuple(float(v) for v in np.mean([s.high for s in scalings], axis=0)),
        percentiles.pop() if len(percentiles) == 1 else None,
    )


def _warn_about(scalings: Sequence[InputScaling]) -> None:
    if len({s.kind for s in scalings}) > 1:
        log.warning(
            "The images mix 8-bit and other data types; dataset.json's scaling (used by train/translate) is the "
            "mean of their stretches. Tile them into separate datasets for a consistent input scaling."
        )


def _common(values: Sequence[Any]) -> Any:
    return values[0] if values and all(v == values[0] for v in values) else None


def _ground_resolution(specs: Sequence[PairSpec]) -> dict[str, Any]:
    """dataset.json's ``resolution_m`` (the mean over the images, when they agree within 1 %) and ``crs_kind``."""
    found = [spec.grid.ground_resolution() for spec in specs]
    metres = [m for m, _ in found]
    known = all(m is not None for m in metres) and max(metres) <= 1.01 * min(metres)
    return {"resolution_m": float(np.mean(metres)) if known else None, "crs_kind": _common([k for _, k in found])}


def _feature(
    tile: _Tile, split: str, paths: tuple[str, str | None], spec: PairSpec, size: int, footprint: BaseGeometry
) -> dict[str, Any]:
    ring = orient(footprint, sign=1.0).exterior.coords  # RFC 7946: exterior rings counter-clockwise
    transform = spec.grid.window_transform(tile.col, tile.row)
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[round(x, 9), round(y, 9)] for x, y in ring]]},
        "properties": {
            "id": tile.id,
            "split": split,
            "path": paths[0],
            "mask": paths[1],
            "pair": tile.pair,
            "image": spec.image_path,
            "map": spec.map_path,
            "window": [tile.col, tile.row, size, size],
            "valid_fraction": round(tile.valid_fraction, 4),
            "crs": spec.grid.crs_label,
            "transform": [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f],
        },
    }


def _image_entry(spec: PairSpec, scaling: InputScaling, tiles: int) -> dict[str, Any]:
    t = spec.grid.transform
    return {
        "image": spec.image_path,
        "map": spec.map_path,
        "scaling": scaling.to_dict(),
        "bands": list(spec.bands),
        "band_roles": list(spec.band_roles) if spec.band_roles else None,
        "dtype": spec.image_dtype,
        "crs": spec.grid.crs_label,
        "resolution": list(spec.grid.pixel_size),
        "grid": {"transform": [t.a, t.b, t.c, t.d, t.e, t.f], "width": spec.grid.width, "height": spec.grid.height},
        "tiles": tiles,
    }


def _require_aoi_hits(plans: Sequence[_PairPlan], aoi: Aoi) -> None:
    """An AOI that misses every pair is an error; one that misses some pairs is worth a warning."""
    missed = [p for p in plans if not p.windows and not p.skipped]
    if len(missed) == len(plans):
        footprints = "; ".join(
            lonlat_bounds(grid_outline(g.transform, g.width, g.height), g.crs_wkt)
            for g in (p.spec.image_grid for p in plans)
        )
        raise UserError(
            f"AOI {aoi.path} ({lonlat_bounds(aoi.geometry, aoi.crs)}) does not intersect the imagery "
            f"({footprints}; WGS 84 west, south, east, north)"
        )
    for p in missed:
        log.warning("AOI %s does not intersect %s; no tiles from that pair.", aoi.path, p.spec.image_path)


def _stage_tiles(
    plans: Sequence[_PairPlan], config: MakeTilesConfig, work: Path, skipped: Counter[str], progress: bool,
    palette: PaletteLearner,
) -> tuple[list[_Tile], list[InputScaling]]:
    """Read every candidate window, skip those under --min-valid, write the rest as staged A|B PNGs; their
    valid map pixels go to ``palette``."""
    tile, tiles, scalings = config.tile_size, [], []
    total = sum(len(p.windows) for p in plans)
    with progress_bar(total=total, desc="make-tiles", unit="tile", disable=not progress) as bar, BackgroundWrites() as writes:
        for plan in plans:
            with open_pair(plan.spec, config.image_resampling, config.map_resampling) as reader:
                scalings.append(reader.scaling)
                log.debug("%s: scaling %s", plan.spec.image_path, reader.scaling.describe())
                for col, row in plan.windows:
                    window = reader.read(col, row, tile)
                    both = window.image_valid & window.map_valid
                    fraction = float(both.mean())
                    if fraction < config.min_valid or fraction == 0:
                        worse = "image" if window.image_valid.mean() <= window.map_valid.mean() else "map"
                        skipped[f"{worse}_nodata"] += 1
                    else:
                        record = _Tile(plan.index, col, row, fraction)
                        satellite = reader.scaling.to_uint8(window.image)
                        map_rgb = window.map.copy()
                        satellite[:, ~both] = 0  # invalid in either half: black in both, like translate's nodata
                        map_rgb[:, ~both] = 0
                        palette.add(map_rgb, both)
                        writes.submit(write_pair, stage_path(work, record.id), satellite, map_rgb, both)
                        tiles.append(record)
                    bar.update()
    return tiles, scalings


def _place_tiles(
    work: Path, tiles: Sequence[_Tile], splits: Sequence[str | None], specs: Sequence[PairSpec], tile: int
) -> tuple[Counter[str], list[dict[str, Any]]]:
    """Move staged tiles into their split folders (dropping buffer tiles); returns counts and GeoJSON features."""
    counts: Counter[str] = Counter({s: 0 for s in SPLITS})
    features: list[dict[str, Any]] = []
    for t, split in zip(tiles, splits):
        if split is None:
            place(work, t.id, None)
    for index, spec in enumerate(specs):
        own = [(t, s) for t, s in zip(tiles, splits) if s is not None and t.pair == index]
        footprints = tile_footprints_lonlat(
            spec.grid.transform, spec.grid.crs_wkt, [(t.col, t.row, tile, tile) for t, _ in own]
        )
        for (t, split), footprint in zip(own, footprints):
            paths = place(work, t.id, split)
            counts[split] += 1
            features.append(_feature(t, split, paths, spec, tile, footprint))
    return counts, features


def make_tiles(
    config: MakeTilesConfig, out_dir: str | os.PathLike[str], *, progress: bool = True, command: str | None = None
) -> TilingResult:
    """Build a tiles dataset at ``out_dir`` from the configured satellite/map pairs (see the module docstring)."""
    started = time.perf_counter()
    config.validate()
    pairs = config.resolve_pairs()
    check_destination(out_dir, config.overwrite)
    aoi = read_aoi(config.aoi) if config.aoi else None
    specs = [_inspect(p, config) for p in pairs]
    plans = [_plan_pair(i, spec, aoi, config) for i, spec in enumerate(specs)]
    if aoi is not None:
        _require_aoi_hits(plans, aoi)
    tile, skipped = config.tile_size, Counter({r: 0 for r in SKIP_REASONS})
    for p in plans:
        skipped.update(p.skipped)
    candidates = sum(len(p.windows) for p in plans)
    if candidates < minimum_windows(config.val_fraction, config.test_fraction):
        error = _too_few(candidates, skipped, config)
        raise UserError(f"AOI {aoi.path}: {error}") if aoi is not None and skipped["outside_aoi"] else error
    for p in plans:
        log.info(
            "%s + %s: %d candidate windows on a %dx%d grid (%s); %s", p.spec.image_path, p.spec.map_path,
            len(p.windows), p.spec.grid.width, p.spec.grid.height, p.spec.grid.crs_label, p.spec.bands_chosen,
        )

    named = load_palette(config.palette) if config.palette else None
    with dataset_output(out_dir, config.overwrite) as work:
        learner = PaletteLearner(config.seed)
        tiles, scalings = _stage_tiles(plans, config, work, skipped, progress, learner)
        if not tiles:
            reasons = _reasons(skipped) or "none"
            raise UserError(
                f"no tile has at least --min-valid {config.min_valid:g} valid pixels in both halves "
                f"(skipped: {reasons}); check the masks/nodata of the inputs or lower --min-valid"
            )
        try:
            split = plan_splits(
                [PlacedWindow(t.pair, t.col, t.row) for t in tiles],
                tile, config.val_fraction, config.test_fraction, config.seed, config.split_block,
            )
        except TooFewWindows:
            raise _too_few(len(tiles), skipped, config) from None
        skipped["split_buffer"] += split.dropped
        counts, features = _place_tiles(work, tiles, split.splits, specs, tile)
        _warn_about(scalings)
        sizes = [spec.grid.pixel_size for spec in specs]
        palette = learner.result(named, source="make-tiles maps")
        if palette is not None:
            log.info("map palette: %d classes, %s", len(palette.names), palette.kind)
        dataset = {
            "tile_size": tile,
            "resolution": float(np.mean(sizes[0])) if _common(sizes) else None,
            "crs": _common([s.grid.crs_label for s in specs]),
            **_ground_resolution(specs),
            "bands": list(specs[0].bands),
            "band_roles": list(roles) if (roles := _common([s.band_roles for s in specs])) else None,
            "scaling": _dataset_scaling(scalings).to_dict(),
            "images": [
                _image_entry(spec, scaling, sum(1 for f in features if f["properties"]["pair"] == i))
                for i, (spec, scaling) in enumerate(zip(specs, scalings))
            ],
            "palette": palette.to_dict() if palette is not None else None,
            "counts": dict(counts),
            "skipped": dict(skipped),
            "command": command,
            "split": {
                "scheme": "blocks",
                "seed": config.seed,
                "val_fraction": config.val_fraction,
                "test_fraction": config.test_fraction,
                "block_tiles": split.block_tiles,
                "block_pixels": split.block_pixels,
                "blocks": split.blocks,
            },
            "tiling": {
                "stride": config.step,
                "min_valid": config.min_valid,
                "resolution": config.resolution,
                "image_resampling": config.image_resampling if config.resolution else None,
                "map_resampling": config.map_resampling,
                "aoi": os.path.abspath(config.aoi) if config.aoi else None,
            },
        }
        write_manifests(work, dataset, features)
    return TilingResult(Path(out_dir), dict(counts), dict(skipped), time.perf_counter() - started)
