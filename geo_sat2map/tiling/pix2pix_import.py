"""Import a pix2pix "aligned" dataset (A|B images in train/, val/, test/) into the make-tiles layout.

Each image is split into its halves; the satellite half goes left, the map half right, each resized to the tile
size: the satellite with bicubic (as pix2pix itself loads images), the map with area averaging when shrinking
(thin roads and labels fade instead of vanishing, as they do with nearest) and nearest when enlarging (stays crisp).
The source's train/val/test assignment is kept. tiles.geojson lists the tiles with a null geometry (the images
carry no georeference), so it still opens in QGIS as an attribute table.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from geo_sat2map.errors import UserError
from geo_sat2map.image_io import probe_image, read_rgb, split_pair
from geo_sat2map.progress import progress_bar
from geo_sat2map.scaling import InputScaling
from geo_sat2map.tiling.make_tiles import TilingResult
from geo_sat2map.tiling.splits import SPLITS
from geo_sat2map.tiling.writer import (
    BackgroundWrites,
    check_destination,
    check_tile_size,
    dataset_output,
    write_manifests,
    write_pair,
)

# The extensions the public pix2pix data loader accepts.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp"}
DIRECTIONS = ("AtoB", "BtoA")


@dataclass(frozen=True)
class Pix2PixImportConfig:
    source: str
    tile_size: int = 256
    direction: str = "AtoB"  # AtoB: A (left half) is the satellite image, as in the pix2pix maps dataset
    overwrite: bool = False


def _source_images(source: Path) -> dict[str, list[Path]]:
    if not source.is_dir():
        raise UserError(f"--from-pix2pix {source}: not a folder")
    found = {
        split: sorted(p for p in (source / split).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for split in SPLITS
        if (source / split).is_dir()
    }
    if not any(found.values()):
        raise UserError(
            f"--from-pix2pix {source}: no images in train/, val/ or test/ (an A|B 'aligned' dataset is expected)"
        )
    return found


def _check_shapes(files: dict[str, list[Path]]) -> None:
    """Fail before writing anything if an image is not an A|B pair (reads headers only)."""
    for path in (p for paths in files.values() for p in paths):
        _, width, height = probe_image(path)
        if width != 2 * height:
            raise UserError(f"{path}: {width}x{height} is not an A|B pair (width must be twice the height)")


def _resize(half: np.ndarray, size: int, is_map: bool) -> np.ndarray:
    """(3, h, h) uint8 -> (3, size, size) with the filter documented in the module docstring."""
    if half.shape[1] == size:
        return half
    if is_map:
        method = Image.Resampling.BOX if half.shape[1] > size else Image.Resampling.NEAREST
    else:
        method = Image.Resampling.BICUBIC
    resized = Image.fromarray(np.ascontiguousarray(half.transpose(1, 2, 0))).resize((size, size), method)
    return np.asarray(resized).transpose(2, 0, 1)


def _convert(source: Path, destination: Path, config: Pix2PixImportConfig) -> None:
    left, right = split_pair(read_rgb(source), source)
    satellite, map_rgb = (left, right) if config.direction == "AtoB" else (right, left)
    write_pair(
        destination, _resize(satellite, config.tile_size, is_map=False), _resize(map_rgb, config.tile_size, is_map=True)
    )


def import_pix2pix(
    config: Pix2PixImportConfig, out_dir: str | os.PathLike[str], *, progress: bool = True, command: str | None = None
) -> TilingResult:
    """Convert a pix2pix aligned dataset into a tiles dataset at ``out_dir``."""
    started = time.perf_counter()
    if config.direction not in DIRECTIONS:
        raise UserError(f"--direction {config.direction!r}: use AtoB or BtoA")
    check_tile_size(config.tile_size)
    source = Path(config.source)
    files = _source_images(source)
    check_destination(out_dir, config.overwrite)
    _check_shapes(files)
    counts = Counter({s: 0 for s in SPLITS})
    features = []
    with dataset_output(out_dir, config.overwrite) as work:
        total = sum(len(v) for v in files.values())
        with progress_bar(total=total, desc="import pix2pix", unit="image", disable=not progress) as bar, \
                BackgroundWrites() as writes:
            for split, paths in files.items():
                for path in paths:
                    tile_id = f"{split}_{path.stem}"
                    relative = f"{split}/{tile_id}.png"
                    writes.submit(_convert, path, work / relative, config)
                    counts[split] += 1
                    properties = {"id": tile_id, "split": split, "path": relative, "source": str(path.resolve())}
                    features.append({"type": "Feature", "geometry": None, "properties": properties})
                    bar.update()
        dataset = {
            "tile_size": config.tile_size,
            "resolution": None,
            "crs": None,
            "bands": [1, 2, 3],
            "scaling": InputScaling.uint8(3).to_dict(),
            "images": [],
            "counts": dict(counts),
            "skipped": {},
            "command": command,
            "source": {
                "pix2pix": str(source.resolve()),
                "direction": config.direction,
                "resampling": {"image": "bicubic", "map": "area when shrinking, nearest when enlarging"},
            },
        }
        write_manifests(work, dataset, features)
    return TilingResult(Path(out_dir), dict(counts), {}, time.perf_counter() - started)
