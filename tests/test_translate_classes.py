"""One-band formats (--format paletted|classes) wherever translate writes: --bbox/--aoi crops, the scene's own grid
after a resampled processing grid, -o map.vrt parts, mosaics of scenes, and torchrun parts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.enums import ColorInterp

from geo_sat2map.raster_io.cog import check_cog_layout

from .inference_oracle import reference_class_overview
from .test_translate_palette import COLOURS, EXACT, NAMES, NODATA, aux_categories
from .translate_fixtures import UTM, run_translate, save_small_generator, texture, write_raster

X0, Y0, PX = UTM.c, UTM.f, UTM.a  # 10 m pixels


def ok(result):
    assert result.exit_code == 0, result.output[-3000:]
    return result


def classes_of(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def check_class_map(path: Path, paletted: bool) -> np.ndarray:
    """The class map's values, after checking what every one-band output carries: a COG with the nodata index,
    category names, the colour table when paletted, and overviews that are 2x2 modes of its pixels."""
    assert not check_cog_layout(path)
    assert aux_categories(path) == list(NAMES)
    with rasterio.open(path) as ds:
        assert ds.count == 1 and ds.nodata == NODATA and ds.tags(1, "IMAGE_STRUCTURE")["NBITS"] == "4"
        if paletted:
            table = ds.colormap(1)
            assert [table[i][:3] for i in range(len(COLOURS))] == list(COLOURS) and table[NODATA][3] == 0
        values = ds.read(1)
        if ds.overviews(1):
            overview = ds.read(1, out_shape=(1, (ds.height + 1) // 2, (ds.width + 1) // 2))
            np.testing.assert_array_equal(overview, reference_class_overview(values, len(COLOURS), NODATA))
    assert set(np.unique(values)) <= set(range(len(COLOURS))) | {NODATA}
    return values


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 10 m scene with a nodata hole (edges on odd pixels) and a diagonal nodata corner, a 10 m checkpoint with
    an exact palette, and its whole-scene paletted map."""
    root = tmp_path_factory.mktemp("classes")
    data = texture(600, 1100, seed=7)
    data[:, 101:181, 201:331] = 0
    rows, cols = np.mgrid[0:600, 0:1100]
    data[:, rows + cols < 150] = 0
    scene = write_raster(root / "scene.tif", data, nodata=0)
    weights = save_small_generator(root / "exact.pt", palette=EXACT)
    full = root / "full.tif"
    ok(run_translate(scene, "-o", full, "-w", weights, "--format", "paletted"))
    return {"root": root, "scene": scene, "weights": weights, "full": check_class_map(full, paletted=True),
            "valid": data.any(axis=0)}


def test_a_bbox_keeps_the_whole_maps_classes(world, tmp_path):
    rows, cols = (60, 300), (150, 420)  # across the hole and the diagonal corner
    out = tmp_path / "bbox.tif"
    box = f"{X0 + cols[0] * PX},{Y0 - rows[1] * PX},{X0 + cols[1] * PX},{Y0 - rows[0] * PX}"
    ok(run_translate(world["scene"], "-o", out, "-w", world["weights"], "--format", "paletted", "--bbox", box))
    got = check_class_map(out, paletted=True)
    np.testing.assert_array_equal(got, world["full"][rows[0]:rows[1], cols[0]:cols[1]])
    assert (got == NODATA).any() and (got != NODATA).any()


def test_an_aoi_writes_the_nodata_index_outside_the_polygon(world, tmp_path):
    """Inside the AOI (where the RGBA map of the same AOI is opaque) the whole map's classes, else nodata."""
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    corners = [(X0 + 1000, Y0 - 5000), (X0 + 4000, Y0 - 5000), (X0 + 1000, Y0 - 1000)]  # over the hole
    ring = [list(to_lonlat.transform(x, y)) for x, y in corners]
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [ring + [ring[0]]]}))
    out, rgba = tmp_path / "aoi.tif", tmp_path / "rgba.tif"
    ok(run_translate(world["scene"], "-o", out, "-w", world["weights"], "--format", "classes", "--aoi", aoi))
    ok(run_translate(world["scene"], "-o", rgba, "-w", world["weights"], "--aoi", aoi))
    got = check_class_map(out, paletted=False)
    with rasterio.open(rgba) as ds:
        opaque = ds.read(4) > 0
        col0, row0 = round((ds.transform.c - X0) / PX), round((Y0 - ds.transform.f) / PX)
    expected = world["full"][row0:row0 + got.shape[0], col0:col0 + got.shape[1]]
    assert 0.3 < opaque.mean() < 0.6 and (expected[~opaque] != NODATA).any()  # the polygon masks valid pixels
    np.testing.assert_array_equal(got[opaque], expected[opaque])
    assert (got[~opaque] == NODATA).all()


def test_the_input_grid_takes_the_class_of_the_nearest_processing_pixel(world, tmp_path):
    """A 20 m checkpoint on the 10 m scene: the processing grid is coarser, so scene pixels at the mask's edge
    may fall in masked processing pixels; they still get a class (kept under the mask), never nodata, and the
    snapped RGBA map on the scene's grid is the same classes drawn in the palette's colours (no black)."""
    weights = save_small_generator(tmp_path / "exact20.pt", palette=EXACT, resolution_m=20.0, crs_kind="projected")
    args = (world["scene"], "-w", weights)
    processing, scene_grid, rgba = tmp_path / "processing.tif", tmp_path / "input.tif", tmp_path / "rgba.tif"
    ok(run_translate(*args, "-o", processing, "--format", "classes"))
    ok(run_translate(*args, "-o", scene_grid, "--format", "classes", "--output-grid", "input"))
    ok(run_translate(*args, "-o", rgba, "--output-grid", "input"))
    coarse, got = check_class_map(processing, paletted=False), check_class_map(scene_grid, paletted=False)
    assert coarse.shape == (300, 550) and got.shape == (600, 1100)
    nearest = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)  # 20 m pixel (r // 2, c // 2) holds each centre
    valid = world["valid"]
    assert (got[~valid] == NODATA).all()
    both = valid & (nearest != NODATA)
    np.testing.assert_array_equal(got[both], nearest[both])
    edge = valid & (nearest == NODATA)  # valid scene pixels whose processing pixel is masked
    assert edge.sum() > 50 and (got[edge] != NODATA).all()
    with rasterio.open(rgba) as ds:
        colour = ds.read()
    assert ((colour[3] > 0) == valid).all()
    np.testing.assert_array_equal(colour[:3, valid].T, np.array(COLOURS, np.uint8)[got[valid]])


def test_a_vrt_of_parts_and_a_mosaic_of_scenes_carry_the_classes(world, tmp_path):
    """-o map.vrt (one process, one part) reads as the single map; a --vrt mosaic of two scenes with a gap
    between them reads the nodata index in the gap. Both VRTs carry nodata, colour table and category names."""
    out = tmp_path / "map.vrt"
    ok(run_translate(world["scene"], "-o", out, "-w", world["weights"], "--format", "paletted"))
    part = tmp_path / "map.parts" / "rows-00000000-00000600.tif"
    assert aux_categories(part) == list(NAMES)
    check_vrt(out, world["full"])
    left = write_raster(tmp_path / "left.tif", texture(300, 300, seed=1))
    right = write_raster(tmp_path / "right.tif", texture(300, 300, seed=2), transform=UTM @ Affine.translation(400, 0))
    mosaic = tmp_path / "maps" / "mosaic.vrt"
    ok(run_translate(left, right, "-o", tmp_path / "maps", "-w", world["weights"], "--format", "paletted", "--vrt",
                     mosaic))
    expected = np.full((300, 700), NODATA, np.uint8)
    expected[:, :300], expected[:, 400:] = classes_of(tmp_path / "maps" / "left.tif"), classes_of(
        tmp_path / "maps" / "right.tif")
    check_vrt(mosaic, expected)


def check_vrt(path: Path, expected: np.ndarray, paletted: bool = True) -> None:
    with rasterio.open(path) as ds:
        assert ds.nodata == NODATA and ds.colorinterp == ((ColorInterp.palette if paletted else ColorInterp.gray),)
        np.testing.assert_array_equal(ds.read(1), expected)
        if paletted:
            table = ds.colormap(1)
            assert [table[i][:3] for i in range(len(COLOURS))] == list(COLOURS) and table[NODATA][3] == 0
    categories = [c.text for c in ElementTree.parse(path).getroot().iter("Category")]
    assert categories == list(NAMES)
    if not Path(SYSTEM_PYTHON).is_file():
        return
    gdal = subprocess.run([SYSTEM_PYTHON, "-c", SYSTEM_GDAL_CATEGORIES, str(path)], capture_output=True, text=True)
    if gdal.returncode != 3:  # the system's GDAL (QGIS's) reads the names too, where it is installed
        assert gdal.returncode == 0 and gdal.stdout.strip() == str(list(NAMES)), gdal.stderr[-2000:]


SYSTEM_PYTHON = "/usr/bin/python3"
SYSTEM_GDAL_CATEGORIES = """import sys
try:
    from osgeo import gdal
except ImportError:
    sys.exit(3)
dataset = gdal.Open(sys.argv[1])
print(dataset.GetRasterBand(1).GetCategoryNames())
"""


@pytest.mark.slow
def test_two_torchrun_processes_write_the_classes_of_one(world, tmp_path):
    """Split runs of one-band maps: assembled with a bbox, as a VRT of parts, and resampled onto the scene's grid
    from parts on a coarser processing grid; each equals the one-process map (same full batches) pixel for pixel."""
    from geo_sat2map.inference import TranslateConfig, translate

    from .test_translate_scale import torchrun

    weights20 = save_small_generator(tmp_path / "exact20.pt", palette=EXACT, resolution_m=20.0,
                                     crs_kind="projected")
    box = (X0 + 150 * PX, Y0 - 500 * PX, X0 + 900 * PX, Y0 - 40 * PX)
    runs = {  # output: (CLI arguments, the same as TranslateConfig fields)
        "bbox.tif": (["-w", world["weights"], "--format", "paletted", "--bbox", ",".join(map(str, box))],
                     dict(weights=world["weights"], output_format="paletted", bbox=box)),
        "parts.vrt": (["-w", world["weights"], "--format", "classes"],
                      dict(weights=world["weights"], output_format="classes")),
        "input.tif": (["-w", weights20, "--format", "classes", "--output-grid", "input"],
                      dict(weights=weights20, output_format="classes", output_grid="input")),
    }
    for name, (args, fields) in runs.items():
        one = tmp_path / f"one-{Path(name).stem}.tif"
        translate(TranslateConfig(input=world["scene"], output=one, device="cpu", precision="fp32", fixed_batch=True,
                                  progress=False, **fields))
        proc = torchrun(tmp_path, world["scene"], "-o", name, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if name.endswith(".vrt"):
            check_vrt(tmp_path / name, classes_of(one), paletted=False)
            assert len(list((tmp_path / "parts.parts").glob("rows-*.tif.aux.xml"))) == 2  # two parts, named
        else:
            np.testing.assert_array_equal(check_class_map(tmp_path / name, paletted=name == "bbox.tif"),
                                          classes_of(one))
