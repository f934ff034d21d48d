"""Plain (non-georeferenced) image files: the PNG tiles of training datasets, previews and samples.

Arrays are bands-first uint8 (C, H, W), the same convention as rasterio.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from geo_sat2map.errors import UserError


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """An RGB image as uint8 (3, H, W); anything that is not 8-bit RGB is a UserError naming the file."""
    try:
        with Image.open(path) as img:
            if img.mode != "RGB":
                raise UserError(f"{path}: image mode is {img.mode}, expected 8-bit RGB")
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read image ({exc})") from exc


def probe_image(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """(mode, width, height) from the file header, without decoding pixels: cheap checks of whole folders."""
    try:
        with Image.open(path) as img:
            return img.mode, img.width, img.height
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read image ({exc})") from exc


def split_pair(pair: np.ndarray, path: str | os.PathLike[str] = "") -> tuple[np.ndarray, np.ndarray]:
    """Split a pix2pix 'aligned' A|B image (width = 2 x height) into its left and right halves."""
    _, height, width = pair.shape
    if width != 2 * height:
        raise UserError(f"{path}: {width}x{height} is not an A|B pair (width must be twice the height)")
    return pair[:, :, :height], pair[:, :, height:]


def write_png(path: str | os.PathLike[str], image: np.ndarray, compress_level: int = 6) -> None:
    """Write uint8 (3, H, W) or (H, W) as PNG; ``compress_level`` 1 is ~3x faster for ~15 % larger files."""
    array = image.transpose(1, 2, 0) if image.ndim == 3 else image
    Image.fromarray(np.ascontiguousarray(array.astype(np.uint8))).save(
        Path(path), format="PNG", compress_level=compress_level
    )
