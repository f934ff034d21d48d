"""Helpers for the translate tests: real GeoTIFFs written with rasterio, small generators saved to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner, Result

from geo_sat2map.checkpoint import GeneratorMeta, save_generator
from geo_sat2map.cli import cli
from geo_sat2map.metrics import to_uint8
from geo_sat2map.models import build_generator, prepare_for_inference
from geo_sat2map.scaling import InputScaling

from .conftest import randomise

UTM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)
GEOGRAPHIC = Affine(0.0001, 0.0, 12.3, 0.0, -0.0001, 45.6)


def texture(height: int, width: int, seed: int = 0, dtype: str = "uint8") -> np.ndarray:
    """A smooth, varied RGB scene (periodic structure plus noise), 1..255 so 0 is free for nodata."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    bands = np.stack([np.sin(xx / 7.0) + np.cos(yy / 11.0), np.sin((xx + yy) / 13.0),
                      np.cos(xx / 5.0) * np.sin(yy / 9.0)])
    bands += 0.3 * rng.normal(size=bands.shape)
    unit = (bands - bands.min()) / (bands.max() - bands.min())
    return (1 + unit * 254).astype(dtype)


def write_raster(
    path: Path, data: np.ndarray, *, crs: str | None = "EPSG:32633", transform: Affine | None = UTM,
    nodata: float | None = None, mask: np.ndarray | None = None, alpha: np.ndarray | None = None,
    tiled: bool = False, **extra: object,
) -> Path:
    """GeoTIFF with an optional nodata value, internal mask or alpha band (mask/alpha: True = valid)."""
    bands = data if alpha is None else np.concatenate([data, np.where(alpha, 255, 0).astype(data.dtype)[None]])
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=bands.shape[0],
                   dtype=data.dtype, crs=crs, transform=transform, nodata=nodata, **extra)
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if alpha is not None:
        profile.update(photometric="RGB", alpha="YES")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(bands)
            if mask is not None:
                dst.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    return path


def save_small_generator(path: Path, arch: str = "unet256", seed: int = 1, **meta: object) -> Path:
    net = randomise(build_generator(arch, 8), seed=seed)
    norm = meta.pop("norm_mode", "instance")
    save_generator(path, net, GeneratorMeta(arch, 8, norm, **meta))  # type: ignore[arg-type]
    return path


def generator_output(weights: Path, rgb_unit: np.ndarray, norm_mode: str = "instance") -> np.ndarray:
    """What the generator itself gives for one (3, T, T) window in [-1, 1], as uint8."""
    from geo_sat2map.checkpoint import load_generator

    model = prepare_for_inference(load_generator(weights).net, norm_mode)
    with torch.inference_mode():
        return to_uint8(model(torch.from_numpy(rgb_unit[None].astype(np.float32))))[0]


def uint8_unit(data: np.ndarray) -> np.ndarray:
    return InputScaling.uint8(3).to_unit(data)


def run_translate(*args: str | Path) -> Result:
    """``geo-sat2map -q translate ARGS`` in-process, on the CPU at fp32 unless ARGS name a device or precision
    (the expectations of these tests are fp32 CPU results; tests/test_inference_cuda.py covers the GPU)."""
    given = set(map(str, args))
    device = [] if "--device" in given else ["--device", "cpu"]
    precision = [] if "--precision" in given else ["--precision", "fp32"]
    return CliRunner().invoke(cli, ["-q", "translate", *map(str, args), *device, *precision])


def read(path: Path) -> tuple[np.ndarray, rasterio.profiles.Profile, dict]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile, {"colorinterp": ds.colorinterp, "tags": ds.tags(),
                                       "structure": ds.tags(ns="IMAGE_STRUCTURE"), "overviews": ds.overviews(1),
                                       "crs": ds.crs, "transform": ds.transform}


def source_mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.dataset_mask() > 0
