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

from geo_sat2map.errors import UserError
from geo_sat2map.image_io import probe_image, read_rgb, split_pair
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
    scaling: InputScaling | None = None  # None: a plain pix2pix folder, scaling unknown (uint8 assumed)
    resolution: float | None = None
    crs: str | None = None
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
        scaling = manifest.get("scaling")
        resolution = manifest.get("resolution")
        return DatasetInfo(
            root,
            tuple(train),
            tuple(val),
            size,
            bands=tuple(int(b) for b in bands) if bands is not None else None,
            scaling=InputScaling.from_dict(scaling) if scaling is not None else None,
            resolution=float(resolution) if resolution is not None else None,
            crs=manifest.get("crs"),
            palette=(Palette.from_dict(manifest["palette"], f"{root / MANIFEST} palette")
                     if manifest.get("palette") is not None else None),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{root / MANIFEST}: malformed bands/scaling/resolution ({exc}); re-run make-tiles") from None


PALETTE_TILES = 256  # tiles a folder without a learned palette is sampled from (evenly spaced)


def training_palette(info: DatasetInfo, seed: int = 0) -> Palette | None:
    """dataset.json's palette, else one learned from the maps (B halves) of up to ``PALETTE_TILES`` train tiles."""
    if info.palette is not None:
        return info.palette
    step = max(1, len(info.train) // PALETTE_TILES)
    learner = PaletteLearner(seed)
    for path in info.train[::step][:PALETTE_TILES]:
        learner.add(split_pair(read_rgb(path), path)[1])
    return learner.result(source=f"{len(info.train[::step][:PALETTE_TILES])} train tiles")


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
    """sha256 over the manifest and every train/val tile (relative path + bytes): names the exact data."""
    digest = hashlib.sha256()
    manifest = info.root / MANIFEST
    for path in ([manifest] if manifest.is_file() else []) + list(info.train) + list(info.val):
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
    return ``(A, B_uint8)``, centre-cropped to ``crop_size``; B stays 8-bit for the metrics.
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

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment is None:
            a, b = self.centre_crop(int(key))  # type: ignore[arg-type]
            return to_unit(a), b
        epoch, index = key  # type: ignore[misc]
        return self._augmented(epoch, index)

    def centre_crop(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation's view of a tile: the uint8 (A, B) centre ``crop_size`` squares."""
        a, b = self._pair(index)
        top = (a.shape[1] - self.crop_size) // 2
        window = (slice(None), slice(top, top + self.crop_size), slice(top, top + self.crop_size))
        return torch.from_numpy(np.ascontiguousarray(a[window])), torch.from_numpy(np.ascontiguousarray(b[window]))

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
    """DataLoader worker init: Ctrl-C/SIGTERM are the main process's to handle (it finishes the step first)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: Dataset, workers: int, **options: Any) -> DataLoader:
    """A DataLoader as training uses them: ``workers`` processes that leave Ctrl-C/SIGTERM to the main process,
    and its own generator, since a loader without one draws its seed from the global RNG, which on the CPU is
    the dropout stream, so loading would change the training that follows."""
    return DataLoader(
        dataset,
        num_workers=workers,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
        generator=torch.Generator(),
        **options,
    )
