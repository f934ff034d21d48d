"""What a translate run is asked to do (``TranslateConfig``): read by the orchestration and by the run identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from geo_sat2map.inference.snap import DEFAULT_MIN_REGION
from geo_sat2map.raster_io.core import DEFAULT_ALPHA_THRESHOLD
from geo_sat2map.raster_io.output import OutputOptions
from geo_sat2map.windows import DEFAULT_BLEND

RESOLUTION_MODES = ("auto", "native")
OUTPUT_GRIDS = ("processing", "input")


@dataclass(frozen=True)
class TranslateConfig:
    """One translate run. ``None`` means "decide from the checkpoint / device" (see ``translate``)."""

    input: Path
    output: Path
    weights: Path
    tile_size: int | None = None  # default: the checkpoint's training tile size, else 256
    overlap: int | None = None  # default: tile_size // 4
    blend: str = DEFAULT_BLEND
    batch_size: int | None = None  # default: 4 on CPU, 64 on CUDA (16 under 12 GiB), 8 on MPS
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False  # torch.compile the generator (fixed batch shape; pays off on large scenes)
    norm_stats: str | None = None  # default: the checkpoint's norm mode
    bands: tuple[int, int, int] | None = None  # default: the checkpoint's bands, else the RGB-tagged bands
    scaling: str = "auto"  # "auto": checkpoint stretch for non-8-bit input if it has one; "scene": always per scene
    # Ground size (metres) of the pixels the generator sees: "auto" = the model's resolution when known and more
    # than 10 % off the scene's, "native" = the scene's own pixels, or a number of metres.
    resolution: str | float = "auto"
    model_resolution: float | None = None  # metres; overrides (or supplies) the checkpoint's
    resampling: str | None = None  # GDAL method for the processing grid; default average/bilinear (shrink/enlarge)
    output_grid: str = "processing"  # "processing": the map on the processing grid; "input": on the scene's grid
    alpha_threshold: float = DEFAULT_ALPHA_THRESHOLD  # opacity from which an alpha band marks a pixel valid
    bbox: tuple[float, float, float, float] | None = None  # only this area: xmin, ymin, xmax, ymax
    bbox_crs: str | None = None  # the CRS of ``bbox`` (default: the scene's)
    aoi: Path | None = None  # only this polygon file's bounds, pixels outside it transparent
    output_options: OutputOptions = field(default_factory=OutputOptions)
    overwrite: bool = False
    allow_ungeoreferenced: bool = False
    progress: bool = True
    read_threads: int | None = None  # default: 1 on CPU, 4-8 on CUDA (half the CPUs)
    palette: str = "auto"  # "auto" (the checkpoint's palette if exact), "none" or a palette JSON file
    min_region: int = DEFAULT_MIN_REGION  # speckle removal of snapped maps (pixels; 0 = off)
    output_format: str = "rgba"  # "rgba", "paletted" or "classes"
    # Every generator call gets a full batch (the last one padded), as on CUDA: on the CPU a batch of another
    # size can move results by float ulps, so runs that must agree to the bit (split across processes) use it.
    fixed_batch: bool = False
