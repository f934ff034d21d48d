"""Writing a tiles dataset: a private work folder beside OUT_DIR, renamed into place only when complete.

Layout of a finished dataset::

    OUT_DIR/train/<id>.png  val/<id>.png  test/<id>.png   A|B pairs (satellite left, map right), RGB uint8
    OUT_DIR/masks/<split>/<id>.png                        validity of tiles with nodata (255 = valid), grey uint8
    OUT_DIR/dataset.json                                  the manifest read by `train`
    OUT_DIR/tiles.geojson  tiles.qml                      tile footprints (WGS 84) and a QGIS style by split

While a run works, everything goes to ``.<name>.make-tiles-partial/`` beside OUT_DIR (with an owner file naming
the process). Any failure or Ctrl-C removes it; a run killed outright leaves it behind, and the next run removes
it and rebuilds (or refuses while the owning process is still alive). OUT_DIR only ever holds a whole dataset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from geo_sat2map import __version__
from geo_sat2map.atomic import pid_alive, swap_folder
from geo_sat2map.errors import UserError
from geo_sat2map.image_io import tile_mask_path, write_png

DATASET_FORMAT = "geo-sat2map-tiles"
DATASET_FORMAT_VERSION = 1
SPLIT_DIRS = ("train", "val", "test")
STAGING_DIR = ".staging"
OWNER_FILE = ".owner.json"
DATASET_FILE = "dataset.json"
MANIFEST_FILE = "tiles.geojson"
STYLE_FILE = "tiles.qml"
PNG_COMPRESS_LEVEL = 1
SPLIT_COLOURS = {"train": "31,120,180", "val": "255,127,0", "test": "227,26,28"}

log = logging.getLogger("geo_sat2map")


def _sibling(dest: Path, tag: str) -> Path:
    return dest.parent / f".{dest.name}.make-tiles-{tag}"


def _is_dataset(folder: Path) -> bool:
    try:
        return json.loads((folder / DATASET_FILE).read_text()).get("format") == DATASET_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_tile_size(size: int) -> None:
    if size < 8:
        raise UserError(f"--tile-size {size} is too small; use at least 8 (pix2pix uses 256)")


def check_destination(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an existing OUT_DIR without --overwrite, and never replace a folder that is not a tiles dataset."""
    dest = Path(out_dir)
    if dest.exists() and not dest.is_dir():
        raise UserError(f"output {dest} exists and is not a folder; choose another -o path")
    if dest.is_dir() and any(dest.iterdir()):  # an empty folder is simply used
        if not overwrite:
            raise UserError(f"output folder {dest} already exists; pass --overwrite to replace it")
        if not _is_dataset(dest):
            raise UserError(
                f"output folder {dest} is not a make-tiles dataset (no {DATASET_FILE}); refusing to replace it "
                "even with --overwrite - remove it yourself or choose another -o path"
            )
    return dest


def _claim_work_dir(dest: Path) -> Path:
    """Create the work folder, removing one left by a run that was killed (but not one still running)."""
    work = _sibling(dest, "partial")
    if work.exists():
        try:
            owner = json.loads((work / OWNER_FILE).read_text())
        except (OSError, ValueError):
            owner = {}
        if owner.get("host") == socket.gethostname() and owner.get("pid") != os.getpid() and pid_alive(
            int(owner.get("pid", -1))
        ):
            raise UserError(
                f"another make-tiles run (pid {owner['pid']}) is writing {dest} (work folder {work}); "
                "wait for it to finish, or stop it and run again"
            )
        log.warning("Removing %s, left by an interrupted run; rebuilding the dataset from scratch.", work)
        shutil.rmtree(work)
    stale_old = _sibling(dest, "old")
    if stale_old.exists():
        shutil.rmtree(stale_old)
    work.mkdir(parents=True)
    (work / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    for name in (*SPLIT_DIRS, STAGING_DIR):
        (work / name).mkdir()
    return work


def _move_into_place(work: Path, dest: Path) -> None:
    shutil.rmtree(work / STAGING_DIR, ignore_errors=True)
    (work / OWNER_FILE).unlink(missing_ok=True)
    swap_folder(work, dest, _sibling(dest, "old"))  # --overwrite: a failure in between puts the previous dataset back


@contextlib.contextmanager
def dataset_output(out_dir: str | os.PathLike[str], overwrite: bool) -> Iterator[Path]:
    """Yield a fresh work folder (with train/, val/, test/ and a staging folder) that becomes OUT_DIR on success."""
    dest = check_destination(out_dir, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = _claim_work_dir(dest)
    try:
        yield work
        _move_into_place(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_pair(path: Path, satellite: np.ndarray, map_rgb: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Write an A|B training pair: satellite (3, t, t) on the left, map on the right, as one PNG; and, when some
    pixel is invalid (``valid`` False), its mask beside it.

    zlib level 1: PNG encoding is most of make-tiles' time, and level 1 is ~3x faster than the default 6 for
    ~15 % larger files.
    """
    write_png(path, np.concatenate([satellite, map_rgb], axis=2), compress_level=PNG_COMPRESS_LEVEL)
    if valid is not None and not valid.all():
        write_png(_staged_mask(path), np.where(valid, 255, 0).astype(np.uint8), compress_level=PNG_COMPRESS_LEVEL)


class BackgroundWrites:
    """Runs tile writes on a few threads (PNG encoding releases the GIL) while the caller reads the next windows.

    At most ``2 x workers`` writes are in flight, so memory stays bounded; the first failure (Ctrl-C included) is
    raised in the caller, and leaving the block always waits for the threads, so nothing writes into the work
    folder after it is removed.
    """

    def __init__(self, workers: int | None = None):
        self.workers = workers or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="make-tiles-write")
        self._pending: deque[Future[None]] = deque()

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > 2 * self.workers:
            self._pending.popleft().result()

    def __enter__(self) -> BackgroundWrites:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            while exc_type is None and self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def stage_path(work: Path, tile_id: str) -> Path:
    return work / STAGING_DIR / f"{tile_id}.png"


def _staged_mask(staged: Path) -> Path:
    return staged.with_name(f"{staged.stem}.mask.png")


def place(work: Path, tile_id: str, split: str | None) -> tuple[str | None, str | None]:
    """Move a staged tile (and its mask, if it has one) into its split folder, or delete them when split is None;
    returns their OUT_DIR paths (the mask's None when the tile is valid everywhere)."""
    staged = stage_path(work, tile_id)
    mask = _staged_mask(staged)
    if split is None:
        staged.unlink()
        mask.unlink(missing_ok=True)
        return None, None
    relative = f"{split}/{tile_id}.png"
    os.replace(staged, work / relative)
    if not mask.exists():
        return relative, None
    mask_dest = tile_mask_path(work / relative)
    mask_dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(mask, mask_dest)
    return relative, mask_dest.relative_to(work).as_posix()


def _style_qml() -> str:
    """A QGIS layer style (categorised by "split") that QGIS applies when tiles.geojson is added."""
    symbols, categories = [], []
    for index, (split, rgb) in enumerate(SPLIT_COLOURS.items()):
        categories.append(f'      <category render="true" symbol="{index}" value="{split}" label="{split}"/>')
        props = {"color": f"{rgb},90", "outline_color": f"{rgb},255", "outline_width": "0.4", "style": "solid",
                 "outline_style": "solid", "outline_width_unit": "MM", "joinstyle": "miter"}
        options = "".join(f'<Option name="{k}" type="QString" value="{v}"/>' for k, v in props.items())
        legacy = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
        symbols.append(
            f'      <symbol name="{index}" type="fill" alpha="1" clip_to_extent="1" force_rhr="0">\n'
            f'        <layer class="SimpleFill" enabled="1" locked="0" pass="0">'
            f'<Option type="Map">{options}</Option>{legacy}</layer>\n'
            "      </symbol>"
        )
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.28.0" styleCategories="Symbology">\n'
        '  <renderer-v2 type="categorizedSymbol" attr="split" symbollevels="0" enableorderby="0" forceraster="0">\n'
        "    <categories>\n" + "\n".join(categories) + "\n    </categories>\n"
        "    <symbols>\n" + "\n".join(symbols) + "\n    </symbols>\n"
        "  </renderer-v2>\n"
        "</qgis>\n"
    )


def write_manifests(work: Path, dataset: dict[str, Any], features: list[dict[str, Any]]) -> None:
    """dataset.json (format header, ``dataset``, provenance), tiles.geojson (RFC 7946) and its QGIS style."""
    dataset = {
        "format": DATASET_FORMAT,
        "format_version": DATASET_FORMAT_VERSION,
        **dataset,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "generator": f"geo-sat2map {__version__}",
    }
    (work / DATASET_FILE).write_text(json.dumps(dataset, indent=2) + "\n")
    collection = {"type": "FeatureCollection", "name": "tiles", "features": features}
    (work / MANIFEST_FILE).write_text(json.dumps(collection, separators=(",", ":")) + "\n")
    (work / STYLE_FILE).write_text(_style_qml())
