"""What identifies a translate run, so finished work can be recognised and reused after a crash.

A map (or a part of one) carries ``RUN_ID``: a digest of everything that decides its pixels and encoding — the
model's SHA-256, the requested settings, the device type and the resolved precision, the output options, the
geo-sat2map version and the source's identity (name, size, modification time). Settings that never change a pixel
(batch size, device index, read threads) are left out, so a rerun on another GPU still recognises the work; a
rerun on another kind of device (CPU and CUDA kernels round differently) does not.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geo_sat2map import __version__
from geo_sat2map.inference.config import TranslateConfig

RUN_ID_TAG = "RUN_ID"


def source_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Name, size and modification time of a source file (just its name for a URL or /vsi path)."""
    name = Path(path).name
    try:
        stat = os.stat(path)
    except OSError:
        return {"name": name}
    return {"name": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def run_id(config: TranslateConfig, model_sha256: str, precision: str, device_type: str) -> str:
    """The digest of a run's identity (see the module docstring); ``precision`` as resolved for the device,
    ``device_type`` its type ("cpu", "cuda", "mps")."""
    options = config.output_options
    identity = {
        "version": __version__,
        "model_sha256": model_sha256,
        "precision": precision,
        "device_type": device_type,
        "source": source_identity(config.input),
        "tile_size": config.tile_size,
        "overlap": config.overlap,
        "blend": config.blend,
        "norm_stats": config.norm_stats,
        "bands": list(config.bands) if config.bands else None,
        "scaling": config.scaling,
        "resolution": config.resolution,
        "model_resolution": config.model_resolution,
        "resampling": config.resampling,
        "output_grid": config.output_grid,
        "alpha_threshold": config.alpha_threshold,
        "bbox": list(config.bbox) if config.bbox else None,
        "bbox_crs": config.bbox_crs,
        "aoi": source_identity(config.aoi) if config.aoi else None,
        "palette": [config.palette, source_identity(config.palette) if config.palette not in ("auto", "none")
                    else None, config.min_region, config.output_format],
        "output": {
            "compress": options.compress, "cog": options.cog, "blocksize": options.blocksize,
            "overview_resampling": options.overview_resampling,
            "creation_options": {k.upper(): str(v) for k, v in options.creation_options.items()},
        },
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def tags_match(found: Mapping[str, str] | None, expected: Mapping[str, str]) -> bool:
    """Whether a finished file's tags (``None``: missing or unreadable) carry every expected tag unchanged."""
    return found is not None and all(found.get(key) == value for key, value in expected.items())
