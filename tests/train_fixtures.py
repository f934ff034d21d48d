"""Small synthetic training folders for the train tests: the map is a known function of the image.

Each satellite tile A is made of smooth regions of four land-cover colours plus per-pixel noise; the map
B gives every pixel the palette colour of the land-cover base colour *nearest to A's pixel*, so B is a
deterministic per-pixel function of A that a generator can learn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

SATELLITE = np.array([[35, 70, 110], [45, 100, 45], [125, 115, 105], [200, 175, 125]], dtype=np.float32)
PALETTE = np.array([[170, 211, 223], [200, 235, 180], [235, 235, 235], [250, 205, 120]], dtype=np.uint8)


def synthetic_pair(rng: np.random.Generator, size: int = 256, noise: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) uint8 (3, size, size): A = regions of SATELLITE colours + noise; B = PALETTE[nearest colour]."""
    coarse = torch.from_numpy(rng.random((1, len(SATELLITE), 6, 6), dtype=np.float32))
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0].numpy()
    classes = field.argmax(axis=0)
    a = SATELLITE[classes] + rng.normal(0.0, noise, (size, size, 3)).astype(np.float32)
    a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    distance = ((a[:, :, None, :].astype(np.float32) - SATELLITE[None, None]) ** 2).sum(axis=-1)
    b = PALETTE[distance.argmin(axis=-1)]
    return a.transpose(2, 0, 1), b.transpose(2, 0, 1)


def write_pair(path: Path, a: np.ndarray, b: np.ndarray) -> None:
    Image.fromarray(np.concatenate([a, b], axis=2).transpose(1, 2, 0)).save(path)


def make_tiles_folder(
    root: Path, n_train: int, n_val: int, *, size: int = 256, seed: int = 0, manifest: bool = True
) -> Path:
    """A make-tiles-style folder (train/, val/, dataset.json) of synthetic A|B tiles."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write_pair(root / split / f"{split}_{i:03d}.png", *synthetic_pair(rng, size))
    if manifest:
        (root / "dataset.json").write_text(json.dumps({
            "format": "geo-sat2map-tiles",
            "format_version": 1,
            "tile_size": size,
            "resolution": 2.5,
            "crs": "EPSG:32618",
            "bands": [3, 2, 1],
            "band_roles": ["red", "green", "blue"],
            "scaling": {"kind": "percentile", "low": [10.0, 20.0, 30.0], "high": [900.0, 950.0, 1000.0],
                        "percentiles": [2.0, 98.0]},
            "images": [],
            "counts": {"train": n_train, "val": n_val, "test": 0},
            "skipped": {},
            "command": "test fixture",
        }))
    return root


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Train with one intra-op thread: on a machine shared with other jobs, OpenMP threads that wait for a
    descheduled sibling make small CPU models several times slower. What the tests check is unchanged."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
