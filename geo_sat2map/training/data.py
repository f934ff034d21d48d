"""Training data: folders of A|B tiles (make-tiles output or pix2pix "aligned"), checks and augmentation.

Augmentation is seeded per sample from ``(seed, epoch, index)``: the sampler hands the dataset
``(epoch, index)`` keys, so a sample's crop and flips do not depend on which worker process loads it, how
many workers there are, or whether the run was resumed part-way through.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from geo_sat2map.checkpoint import band_roles_from
from geo_sat2map.errors import UserError, stop_signals
from geo_sat2map.image_io import check_tile_mask, probe_image, read_rgb, read_tile_valid, split_pair, tile_mask_path
from geo_sat2map.palette import Palette, PaletteLearner
from geo_sat2map.scaling import InputScaling

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MANIFEST = "dataset.json"
MANIFEST_FORMAT = "geo-sat2map-tiles"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class DatasetInfo:
    """A checked training folder: tile lists and what translate needs to know about the imagery."""

    root: Path
    train: tuple[Path, ...]
    val: tuple[Path, ...]
    tile_size: int
    bands: tuple[int, ...] | None = None
    band_roles: tuple[str, ...] | None = None  # colour interpretation of ``bands`` in the training images
    scaling: InputScaling | None = None  # None: a plain pix2pix folder, scaling unknown (uint8 assumed)
    resolution: float | None = None
    crs: str | None = None
    resolution_m: float | None = None  # the pixel size in metres (None: unknown, or an older dataset.json)
    crs_kind: str | None = None
    palette: Palette | None = None  # the maps' palette from dataset.json (make-tiles learns it)


def scan_dataset(data_dir: str | os.PathLike[str]) -> DatasetInfo:
    """List and check DATA_DIR: train/ (required) and val/ tiles, all RGB A|B of one size; read dataset.json."""
    root = Path(data_dir)
    if not root.exists():
        raise UserError(f"DATA_DIR {root} does not exist; give a make-tiles output folder")
    if not root.is_dir():
        raise UserError(f"DATA_DIR {root} is not a folder; give a make-tiles output folder")
    if not (root / "train").is_dir():
        raise UserError(
            f"DATA_DIR {root} has no train/ folder; give a make-tiles output folder or a pix2pix-style folder "
            "with train/ (and val/) holding A|B tiles"
        )
    train = _list_tiles(root / "train")
    if not train:
        raise UserError(f"{root / 'train'} holds no .png/.jpg tiles; run make-tiles first or check the path")
    val = _list_tiles(root / "val") if (root / "val").is_dir() else []
    size = _check_tiles(train + val)
    manifest = _read_manifest(root)
    if manifest is None:
        return DatasetInfo(root, tuple(train), tuple(val), size)
    declared = manifest.get("tile_size")
    if declared is not None and declared != size:
        raise UserError(f"{root / MANIFEST} says tile_size {declared} but the tiles are {size} px; re-run make-tiles")
    try:
        bands = manifest.get("bands")
        roles = manifest.get("band_roles")
        scaling = manifest.get("scaling")
        resolution = manifest.get("resolution")
        return DatasetInfo(
            root,
            tuple(train),
            tuple(val),
            size,
            bands=tuple(int(b) for b in bands) if bands is not None else None,
            band_roles=band_roles_from(roles),
            scaling=InputScaling.from_dict(scaling) if scaling is not None else None,
            resolution=float(resolution) if resolution is not None else None,
            crs=manifest.get("crs"),
            resolution_m=float(manifest["resolution_m"]) if manifest.get("resolution_m") is not None else None,
            crs_kind=str(manifest["crs_kind"]) if manifest.get("crs_kind") is not None else None,
            palette=(Palette.from_dict(manifest["palette"], f"{root / MANIFEST} palette")
                     if manifest.get("palette") is not None else None),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{root / MANIFEST}: malformed bands/band_roles/scaling/resolution ({exc}); re-run make-tiles") from None


PALETTE_TILES = 256  # tiles a folder without a learned palette is sampled from (evenly spaced)


def training_palette(info: DatasetInfo, seed: int = 0) -> Palette | None:
    """dataset.json's palette, else one learned from the maps (B halves) of up to ``PALETTE_TILES`` train tiles."""
    if info.palette is not None:
        return info.palette
    paths = evenly_spaced(info.train, PALETTE_TILES)
    learner = PaletteLearner(seed)
    for path in paths:
        learner.add(split_pair(read_rgb(path), path)[1])
    return learner.result(source=f"{len(paths)} train tiles")


def check_fits(info: DatasetInfo, crop_size: int) -> None:
    if info.tile_size < crop_size:
        raise UserError(
            f"tiles in {info.root} are {info.tile_size} px (e.g. {info.train[0].name}) but crop_size is {crop_size}; "
            "make larger tiles (make-tiles) or lower crop_size/load_size in the config (multiples of 256)"
        )


def _list_tiles(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _check_tiles(paths: Sequence[Path]) -> int:
    """The common tile size (height) of intact RGB A|B tiles; anything else names the first offending file.

    Every tile is verified here, before RUN_DIR is touched: a damaged tile found mid-run would stop the run.
    """
    first: tuple[Path, int, int] | None = None
    for path in paths:
        mode, width, height = probe_image(path, verify=True)
        if mode != "RGB":
            raise UserError(f"{path}: image mode is {mode}, expected 8-bit RGB A|B tiles")
        if width != 2 * height:
            raise UserError(f"{path}: {width}x{height} is not an A|B pair (width must be twice the height)")
        if first is None:
            first = (path, width, height)
        elif (width, height) != first[1:]:
            raise UserError(
                f"tiles of mixed sizes: {first[0]} is {first[1]}x{first[2]} but {path} is {width}x{height}; "
                "all tiles must share one size"
            )
        mask = tile_mask_path(path)
        if mask.is_file():
            check_tile_mask(mask, *probe_image(mask, verify=True), height)
    assert first is not None
    return first[2]


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path}: not a make-tiles manifest (format must be {MANIFEST_FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise UserError(f"{path}: format_version {version!r} is newer than this tool supports; upgrade geo-sat2map")
    return manifest


def worker_error(exc: UserError) -> UserError:
    """``exc``, or, if torch re-raised it from a DataLoader worker process, a UserError with its own message.

    torch re-raises a worker's exception as ``UserError("Caught UserError in DataLoader worker process 0.\n
    Original Traceback ...")``; the original message is the traceback's last line, after the exception's name.
    """
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught "):
        return UserError(lines[-1].split(": ", 1)[-1])
    return exc


def dataset_hash(info: DatasetInfo) -> str:
    """sha256 over the manifest and every train/val tile and tile mask (relative path + bytes): names the exact
    data."""
    digest = hashlib.sha256()
    manifest = info.root / MANIFEST
    tiles = list(info.train) + list(info.val)
    masks = [m for m in map(tile_mask_path, tiles) if m.is_file()]
    for path in ([manifest] if manifest.is_file() else []) + tiles + masks:
        digest.update(path.relative_to(info.root).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def evenly_spaced(items: Sequence[Path], limit: int) -> list[Path]:
    """At most ``limit`` items spread over the whole list (0 = all): a fixed, representative subset."""
    if limit <= 0 or len(items) <= limit:
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


@dataclass(frozen=True)
class Augmentation:
    load_size: int
    crop_size: int
    map_resample: str = "bicubic"
    flip: bool = True
    vflip: bool = False
    rot90: bool = False


@dataclass(frozen=True)
class SampleDraw:
    """One sample's random augmentation: crop corner in the resized tile, flips, quarter turns."""

    x: int
    y: int
    hflip: bool
    vflip: bool
    turns: int

    @property
    def orientation(self) -> int:
        """The 16 (hflip, vflip, turns) combinations as one number (indexes ``orientation_maps``)."""
        return int(self.hflip) + 2 * int(self.vflip) + 4 * self.turns


def draw_sample(augment: Augmentation, seed: int, epoch: int, index: int) -> SampleDraw:
    """The augmentation of tile ``index`` in ``epoch``: a function of ``(seed, epoch, index)`` only, so a sample
    does not depend on the worker that loads it, the number of workers, the data path or a resume."""
    rng = np.random.default_rng((seed, epoch, index))
    x, y = (int(v) for v in rng.integers(0, augment.load_size - augment.crop_size + 1, size=2))
    hflip = augment.flip and bool(rng.random() < 0.5)
    vflip = augment.vflip and bool(rng.random() < 0.5)
    turns = int(rng.integers(4)) if augment.rot90 else 0
    return SampleDraw(x, y, hflip, vflip, turns)


def orient(image: torch.Tensor, hflip: bool, vflip: bool, turns: int) -> torch.Tensor:
    """Flip and rotate the last two dimensions, in the recipe's order (hflip, vflip, then quarter turns)."""
    if hflip:
        image = image.flip(-1)
    if vflip:
        image = image.flip(-2)
    if turns:
        image = torch.rot90(image, turns, dims=(-2, -1))
    return image


def _resize(image: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize uint8 (C, H, W) like PIL does on 8-bit images (rounded, clamped); channels-last is the fast path."""
    if image.shape[-1] == size:
        return image
    batch = image[None].contiguous(memory_format=torch.channels_last)
    if mode == "nearest":
        return F.interpolate(batch, size=(size, size), mode="nearest-exact")[0]
    return F.interpolate(batch, size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]


def to_unit(image: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 [-1, 1], as InputScaling.uint8 (pix2pix's x / 127.5 - 1)."""
    return image.float().div_(127.5).sub_(1.0).contiguous()


class PairDataset(Dataset):
    """A|B tiles as float tensors in [-1, 1].

    Training (``augment`` given): items are keyed ``(epoch, index)`` and return ``(A, B)`` resized,
    randomly cropped and flipped identically. Validation (``augment`` None): items are plain indices and
    return ``(A, B_uint8, valid)``, centre-cropped to ``crop_size``; B stays 8-bit for the metrics, and
    ``valid`` (bool, from the tile's mask) says which pixels they score.
    """

    def __init__(self, paths: Sequence[Path], crop_size: int, augment: Augmentation | None = None, seed: int = 0):
        self.paths = list(paths)
        self.crop_size = crop_size
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.paths[index]
        return split_pair(read_rgb(path), path)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        if self.augment is None:
            a, b, valid = self.centre_crop(int(key))  # type: ignore[arg-type]
            return to_unit(a), b, valid
        epoch, index = key  # type: ignore[misc]
        return self._augmented(epoch, index)

    def centre_crop(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validation's view of a tile: the uint8 (A, B) centre ``crop_size`` squares and their validity."""
        a, b = self._pair(index)
        valid = read_tile_valid(self.paths[index], a.shape[1])
        top = (a.shape[1] - self.crop_size) // 2
        rows = cols = slice(top, top + self.crop_size)
        return (
            torch.from_numpy(np.ascontiguousarray(a[:, rows, cols])),
            torch.from_numpy(np.ascontiguousarray(b[:, rows, cols])),
            torch.from_numpy(np.ascontiguousarray(valid[rows, cols])),
        )

    def resized(self, index: int) -> torch.Tensor:
        """uint8 (6, L, L): A and B resized to ``load_size`` (bicubic, and ``map_resample`` for B), stacked.

        Resizing draws nothing at random, so this is computed once per tile where the tiles are kept in memory.
        """
        aug = self.augment
        assert aug is not None
        a, b = self._pair(index)
        return torch.cat([
            _resize(torch.from_numpy(a), aug.load_size, "bicubic"),
            _resize(torch.from_numpy(b), aug.load_size, aug.map_resample),
        ])

    def _augmented(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Resize, crop and flip on 8-bit data (as pix2pix does with PIL), then scale to [-1, 1]."""
        aug = self.augment
        assert aug is not None
        draw = draw_sample(aug, self.seed, epoch, index)
        crop = self.resized(index)[:, draw.y : draw.y + aug.crop_size, draw.x : draw.x + aug.crop_size]
        pair = orient(crop, draw.hflip, draw.vflip, draw.turns)
        return to_unit(pair[:3]), to_unit(pair[3:])


class EpochKeyedSampler(DistributedSampler):
    """A DistributedSampler (shuffled by ``seed + epoch``) that yields ``(epoch, index)`` keys and can start
    part-way through an epoch (``start`` = samples of this process already trained on)."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return ((epoch, index) for index in itertools.islice(super().__iter__(), self.start, None))

    def __len__(self) -> int:
        return self.num_samples - self.start


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader worker init: Ctrl-C and the stop signals (SIGTERM, SIGHUP) are the main process's to handle (it
    finishes the step first)."""
    import signal

    for number in (signal.SIGINT, *stop_signals()):
        signal.signal(number, signal.SIG_IGN)


def make_loader(dataset: Dataset, workers: int, **options: Any) -> DataLoader:
    """A DataLoader as training uses them: ``workers`` processes that leave Ctrl-C and the stop signals to the main
    process, and its own generator, since a loader without one draws its seed from the global RNG, which on the CPU is
    the dropout stream, so loading would change the training that follows."""
    return DataLoader(
        dataset,
        num_workers=workers,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
        generator=torch.Generator(),
        **options,
    )
