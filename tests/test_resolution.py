"""translate at the model's ground resolution: the processing grid, its mask, both output grids, the guards and the
record of it (``--resolution``, ``--model-resolution``, ``--resampling``, ``--output-grid``), and alpha opacity."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from pyproj import Geod

from geo_sat2map.checkpoint import GeneratorMeta, load_generator
from geo_sat2map.cli import cli
from geo_sat2map.inference import TranslateConfig
from geo_sat2map.inference.identity import run_id
from geo_sat2map.raster_io.core import RasterInfo
from geo_sat2map.raster_io.grid import BLOCK_ROWS, GridRows, ground_resolution, resampled_grid

from .test_translate_scale import torchrun
from .translate_fixtures import read, save_small_generator, texture, write_raster

UTM3 = Affine(3.0, 0.0, 500_001.0, 0.0, -3.0, 4_000_002.0)  # 3 m pixels, corner on the 1 m lattice


def invoke(*args: object) -> CliRunner:
    """``geo-sat2map -v translate ARGS --device cpu --precision fp32``, the log in ``result.output``."""
    return CliRunner().invoke(cli, ["-v", "translate", *map(str, args), "--device", "cpu", "--precision", "fp32"])


def ok(result):
    assert result.exit_code == 0, result.output[-3000:]
    return result


@pytest.fixture
def one_metre(tmp_path):
    """A random-weights generator that says it was trained on 1 m pixels."""
    return save_small_generator(tmp_path / "g1m.pt", resolution=1.0, resolution_m=1.0, crs_kind="projected")


@pytest.fixture
def unknown(tmp_path):
    """The same weights, with no resolution recorded (like the public checkpoints)."""
    return save_small_generator(tmp_path / "g.pt")


@pytest.fixture
def scene3(tmp_path):
    """A 3 m UTM scene with an internal-mask hole in one corner."""
    mask = np.ones((100, 120), bool)
    mask[:30, :40] = False
    path = write_raster(tmp_path / "s3.tif", texture(100, 120, seed=3), transform=UTM3, mask=mask)
    return path, mask


def bounds(info: dict, width: int, height: int) -> tuple[float, float, float, float]:
    t = info["transform"]
    return t.c, t.f + height * t.e, t.c + width * t.a, t.f


def test_auto_translates_at_the_models_resolution_on_the_processing_grid(tmp_path, one_metre, scene3):
    src, mask = scene3
    out = tmp_path / "map.tif"
    result = ok(invoke(src, "-o", out, "-w", one_metre))
    assert "resampled to 1 m" in result.output and "bilinear" in result.output
    data, profile, info = read(out)
    assert info["crs"] == rasterio.crs.CRS.from_epsg(32633)
    assert (info["transform"].a, info["transform"].e) == (1.0, -1.0)
    # The same ground as the input, to within one processing pixel on every side.
    with rasterio.open(src) as ds:
        scene_bounds = tuple(ds.bounds)
    assert np.allclose(bounds(info, profile["width"], profile["height"]), scene_bounds, atol=1.0)
    # The footprint is the input's, resampled: each 3 m pixel became 3x3 processing pixels.
    expected = np.kron(mask, np.ones((3, 3), bool))
    alpha = data[3] > 0
    assert alpha.shape == expected.shape
    assert np.array_equal(alpha, expected)
    assert data[:3, ~alpha].max() == 0 and data[:3, alpha].std() > 5
    tags = info["tags"]
    assert (tags["PROCESSING_RESOLUTION"], tags["RESAMPLING"], tags["OUTPUT_GRID"]) == ("1", "bilinear",
                                                                                     "processing")


def test_output_grid_input_is_the_scenes_exact_grid_and_mask(tmp_path, one_metre, scene3):
    src, mask = scene3
    out = tmp_path / "map.tif"
    ok(invoke(src, "-o", out, "-w", one_metre, "--output-grid", "input"))
    data, profile, info = read(out)
    assert (profile["width"], profile["height"], info["transform"]) == (120, 100, UTM3)
    assert ((data[3] > 0) == mask).all()
    assert data[:3, ~mask].max() == 0
    # Nearest processing pixel: each input pixel takes the colour of the processing pixel at its centre.
    processing = tmp_path / "processing.tif"
    ok(invoke(src, "-o", processing, "-w", one_metre))
    fine = read(processing)[0]
    centre = fine[:3, 1::3, 1::3]
    assert np.array_equal(data[:3, mask], centre[:, mask])
    assert info["tags"]["OUTPUT_GRID"] == "input"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g1m.pt", "map.tif", "processing.tif", "s3.tif"]


def test_native_is_todays_translate_bit_for_bit(tmp_path, one_metre, unknown, scene3):
    src, _ = scene3
    ok(invoke(src, "-o", tmp_path / "native.tif", "-w", one_metre, "--resolution", "native"))
    ok(invoke(src, "-o", tmp_path / "today.tif", "-w", unknown))  # no resolution known: auto is native
    native, today = read(tmp_path / "native.tif"), read(tmp_path / "today.tif")
    assert np.array_equal(native[0], today[0]) and native[2]["transform"] == UTM3
    assert native[2]["tags"]["RESAMPLING"] == "none"


def test_a_scene_within_ten_percent_of_the_model_is_not_resampled(tmp_path, one_metre):
    src = write_raster(tmp_path / "s.tif", texture(64, 64), transform=Affine(1.08, 0, 500_000, 0, -1.08, 4e6))
    result = ok(invoke(src, "-o", tmp_path / "m.tif", "-w", one_metre))
    assert "within 10 %" in result.output
    assert read(tmp_path / "m.tif")[2]["transform"].a == 1.08


def test_shrinking_a_half_metre_scene_averages_and_keeps_a_mostly_valid_mask(tmp_path, one_metre):
    data = texture(200, 160, seed=5)
    data[:, 101:, :] = 0  # nodata below row 101: the 1 m row made of rows 100-101 is half valid
    t = Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000)
    src = write_raster(tmp_path / "s05.tif", data, transform=t, nodata=0)
    out = tmp_path / "map.tif"
    result = ok(invoke(src, "-o", out, "-w", one_metre))
    assert "average resampling" in result.output
    out_data, profile, info = read(out)
    assert (profile["width"], profile["height"], info["transform"].a) == (80, 100, 1.0)
    alpha = out_data[3] > 0
    assert alpha[:50].all() and alpha[50].all() and not alpha[51:].any()  # half valid counts as valid


def test_a_uint16_scene_is_resampled_in_its_own_values(tmp_path, one_metre):
    data = (texture(90, 90, seed=7).astype(np.uint16) * 200)
    src = write_raster(tmp_path / "s16.tif", data, transform=UTM3, nodata=0)
    grid = resampled_grid(_info(src), 1.0)
    rows, valid = GridRows(src, (1, 2, 3), grid).read(0, grid.height)
    assert rows.dtype == np.uint16 and valid.all()
    # Enlarging by exactly 3 with bilinear: the centre of each 3x3 block is its source pixel's value.
    assert np.abs(rows[:, 1::3, 1::3].astype(int) - data).max() <= 1
    ok(invoke(src, "-o", tmp_path / "m.tif", "-w", one_metre))
    assert read(tmp_path / "m.tif")[1]["width"] == 270


def test_a_geographic_scene_gets_metre_pixels_at_its_centre(tmp_path):
    weights = save_small_generator(tmp_path / "g5.pt", resolution_m=5.0, crs_kind="projected")
    t = Affine(0.0001, 0, 12.3, 0, -0.0001, 45.6)
    src = write_raster(tmp_path / "geo.tif", texture(60, 80), crs="EPSG:4326", transform=t)
    out = tmp_path / "m.tif"
    ok(invoke(src, "-o", out, "-w", weights))
    _, profile, info = read(out)
    assert info["crs"] == rasterio.crs.CRS.from_epsg(4326)
    ot = info["transform"]
    lon, lat = ot.c + ot.a * profile["width"] / 2, ot.f + ot.e * profile["height"] / 2
    geod = Geod(ellps="WGS84")
    assert geod.inv(lon, lat, lon + ot.a, lat)[2] == pytest.approx(5.0, rel=0.01)
    assert geod.inv(lon, lat, lon, lat - ot.e)[2] == pytest.approx(5.0, rel=0.01)
    assert np.allclose(bounds(info, profile["width"], profile["height"]),
                       (12.3, 45.6 - 0.006, 12.308, 45.6), atol=max(ot.a, -ot.e))


def test_the_grid_guard_names_both_resolutions_before_any_work(tmp_path, one_metre):
    src = write_raster(tmp_path / "landsat.tif", texture(80, 80), transform=Affine(300, 0, 5e5, 0, -300, 4e6))
    out = tmp_path / "m.tif"
    result = invoke(src, "-o", out, "-w", one_metre)
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error:") and "300 m" in line and "1 m" in line and "--resolution native" in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["g1m.pt", "landsat.tif"]
    ok(invoke(src, "-o", out, "-w", one_metre, "--resolution", "native"))


def test_model_resolution_serves_checkpoints_that_do_not_know_theirs(tmp_path, unknown, scene3):
    src, _ = scene3
    out = tmp_path / "m.tif"
    result = ok(invoke(src, "-o", out, "-w", unknown, "--model-resolution", "1.5"))
    assert "resampled to 1.5 m" in result.output
    assert read(out)[2]["transform"].a == 1.5


def test_older_checkpoints_derive_metres_from_a_projected_crs():
    meta = GeneratorMeta("unet256", 8, "instance", resolution=2.0, provenance={"crs": "EPSG:32618"})
    assert meta.ground_resolution() == 2.0
    feet = replace(meta, provenance={"crs": "EPSG:2263"})  # NY state plane, US feet
    assert feet.ground_resolution() == pytest.approx(0.6096, rel=1e-4)
    assert replace(meta, provenance={"crs": "EPSG:4326"}).ground_resolution() is None
    assert replace(meta, provenance={}).ground_resolution() is None


def test_ungeoreferenced_scenes_stay_native_under_auto_and_refuse_a_number(tmp_path, one_metre):
    src = write_raster(tmp_path / "plain.tif", texture(64, 64), crs=None, transform=None)
    result = ok(invoke(src, "-o", tmp_path / "a.tif", "-w", one_metre, "--allow-ungeoreferenced"))
    assert "pixel size in metres is unknown" in result.output
    refused = invoke(src, "-o", tmp_path / "b.tif", "-w", one_metre, "--allow-ungeoreferenced", "--resolution", "2")
    assert refused.exit_code == 1 and "--resolution native" in refused.output.splitlines()[-1]


def test_a_rotated_scene_is_told_to_warp_first(tmp_path, one_metre):
    rotated = Affine.translation(5e5, 4e6) @ Affine.rotation(20) @ Affine.scale(3, -3)
    src = write_raster(tmp_path / "rot.tif", texture(64, 64), transform=rotated)
    result = invoke(src, "-o", tmp_path / "m.tif", "-w", one_metre, "--resolution", "1")
    assert result.exit_code == 1 and "warp it to a north-up grid first" in result.output.splitlines()[-1]


def test_the_cli_offers_the_grid_modules_choices():
    from geo_sat2map.cli import translate as cli_translate
    from geo_sat2map.inference.config import OUTPUT_GRIDS
    from geo_sat2map.raster_io.grid import RESAMPLING_METHODS

    assert cli_translate.RESAMPLING_CHOICES == RESAMPLING_METHODS
    assert cli_translate.OUTPUT_GRID_CHOICES == OUTPUT_GRIDS


@pytest.mark.parametrize("option, value, message", [
    ("--resolution", "fine", "expected auto, native or a pixel size"),
    ("--resolution", "-1", "must be a positive number"),
    ("--model-resolution", "0", "--model-resolution"),
    ("--alpha-threshold", "1.5", "--alpha-threshold"),
])
def test_bad_resolution_options_are_one_line(tmp_path, one_metre, scene3, option, value, message):
    result = invoke(scene3[0], "-o", tmp_path / "m.tif", "-w", one_metre, option, value)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_blocks_do_not_depend_on_how_rows_are_asked_for(tmp_path):
    data = texture(150, 70, seed=9)
    data[:, 40:60, 10:30] = 0
    src = write_raster(tmp_path / "s.tif", data, transform=UTM3, nodata=0)
    grid = resampled_grid(_info(src), 1.3, "cubic")
    whole = GridRows(src, (1, 2, 3), grid).read(0, grid.height)
    pieces = GridRows(src, (1, 2, 3), grid)
    edges = [0, 5, BLOCK_ROWS - 1, BLOCK_ROWS + 3, 2 * BLOCK_ROWS + 17, grid.height]
    parts = [pieces.read(a, b - a) for a, b in zip(edges, edges[1:])]
    assert np.array_equal(np.concatenate([p[0] for p in parts], axis=1), whole[0])
    assert np.array_equal(np.concatenate([p[1] for p in parts]), whole[1])
    assert not whole[1].all() and whole[1].any()


def test_reader_threads_asking_for_one_block_at_once_warp_it_once(tmp_path, monkeypatch):
    """Neighbouring window rows share the block at their boundary: reader threads that ask for it together wait
    for one warp of it, and every thread gets the same rows."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    src = write_raster(tmp_path / "s.tif", texture(150, 70, seed=9), transform=UTM3)
    grid = resampled_grid(_info(src), 1.3, "cubic")
    rows = GridRows(src, (1, 2, 3), grid)
    warped, lock, real = [], threading.Lock(), GridRows._warp_block

    def slow_warp(self, index):
        with lock:
            warped.append(index)
        time.sleep(0.2)  # long enough for every thread to ask while the first one warps
        return real(self, index)

    monkeypatch.setattr(GridRows, "_warp_block", slow_warp)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: rows.read(BLOCK_ROWS - 5, 10), range(4)))
    assert sorted(warped) == [0, 1]
    assert all(np.array_equal(r[0], results[0][0]) and np.array_equal(r[1], results[0][1]) for r in results)


def test_run_identity_and_tags_follow_the_grid(tmp_path, one_metre, scene3):
    src, _ = scene3
    base = TranslateConfig(input=src, output=tmp_path / "m.tif", weights=one_metre)
    key = run_id(base, "sha", "fp32", "cpu")
    changed = [replace(base, resolution="native"), replace(base, resolution=2.0), replace(base, model_resolution=1.5),
               replace(base, resampling="cubic"), replace(base, output_grid="input"),
               replace(base, alpha_threshold=0.2)]
    assert len({run_id(c, "sha", "fp32", "cpu") for c in changed} | {key}) == len(changed) + 1


def test_two_processes_at_a_resampled_resolution_equal_one(tmp_path, one_metre):
    data = texture(240, 90, seed=21)  # 3 m: a 720 x 270 grid at 1 m, four window rows
    data[:, 100:130, 20:50] = 0
    src = write_raster(tmp_path / "scene.tif", data, transform=UTM3, nodata=0)
    ok(invoke(src, "-o", tmp_path / "one.tif", "-w", one_metre, "--batch-size", "4"))
    for grid in ("processing", "input"):
        out = f"two-{grid}.tif"
        proc = torchrun(tmp_path, src, "-o", out, "-w", one_metre, "--output-grid", grid, "--precision", "fp32")
        assert proc.returncode == 0, proc.stderr[-3000:]
        two = read(tmp_path / out)
        if grid == "processing":
            one = read(tmp_path / "one.tif")
            assert np.array_equal(two[0], one[0]) and two[2]["transform"] == one[2]["transform"]
        else:
            assert two[2]["transform"] == UTM3 and ((two[0][3] > 0) == (data[0] > 0)).all()


def test_alpha_marks_pixels_valid_from_half_opacity(tmp_path, unknown):
    data = texture(64, 64, seed=4)
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :8] = np.arange(1, 33, 4)[None, :]  # a JPEG-like fringe of nearly invisible pixels
    alpha[:, 8:12] = 140  # over half opaque
    src = tmp_path / "alpha.tif"
    with rasterio.open(src, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint8", crs="EPSG:32633",
                       transform=UTM3, photometric="RGB", alpha="YES") as ds:
        ds.write(np.concatenate([data, alpha[None]]))
    ok(invoke(src, "-o", tmp_path / "half.tif", "-w", unknown))
    valid = read(tmp_path / "half.tif")[0][3] > 0
    assert not valid[:, :8].any() and valid[:, 8:].all()
    ok(invoke(src, "-o", tmp_path / "low.tif", "-w", unknown, "--alpha-threshold", "0.1"))
    low = read(tmp_path / "low.tif")[0][3] > 0
    assert np.array_equal(low[0, :8], alpha[0, :8] >= 26) and low[:, 8:].all()


def test_ground_resolution_of_projected_and_geographic_grids():
    assert ground_resolution(rasterio.crs.CRS.from_epsg(32618), UTM3, 10, 10) == 3.0
    feet = ground_resolution(rasterio.crs.CRS.from_epsg(2263), Affine(10, 0, 9e5, 0, -10, 2e5), 10, 10)
    assert feet == pytest.approx(3.048, rel=1e-4)
    at_60 = ground_resolution(rasterio.crs.CRS.from_epsg(4326), Affine(0.001, 0, 10, 0, -0.001, 60.005), 10, 10)
    assert at_60 == pytest.approx(math.sqrt(111_412 * 0.001 * 55_800 * 0.001), rel=0.01)
    assert ground_resolution(None, UTM3, 10, 10) is None


def _info(path) -> RasterInfo:
    from geo_sat2map.raster_io import open_raster, raster_info

    with open_raster(path) as ds:
        return raster_info(ds)


def test_make_tiles_and_train_record_the_resolution_in_metres(tmp_path):
    from geo_sat2map.synthetic import SceneSpec, write_scene

    paths = write_scene(tmp_path / "scene", SceneSpec(seed=3, width=300, height=300, resolution=1.5))
    tiles = tmp_path / "tiles"
    ok(CliRunner().invoke(cli, ["-q", "make-tiles", "--image", str(paths.satellite), "--map", str(paths.map),
                                "-o", str(tiles), "--val-fraction", "0", "--stride", "128"]))
    import json

    dataset = json.loads((tiles / "dataset.json").read_text())
    assert dataset["resolution_m"] == pytest.approx(1.5) and dataset["crs_kind"] == "projected"
    config = tmp_path / "c.toml"
    config.write_text("ngf = 8\nndf = 8\nepochs = 1\nepochs_decay = 0\nworkers = 0\nval_max_tiles = 0\n"
                      "sample_tiles = 1\ndevice = \"cpu\"\nprecision = \"fp32\"\n")
    ok(CliRunner().invoke(cli, ["-q", "train", str(tiles), "-o", str(tmp_path / "run"), "--config", str(config)]))
    meta = load_generator(tmp_path / "run" / "generator.pt").meta
    assert meta.resolution_m == pytest.approx(1.5) and meta.crs_kind == "projected"
    assert meta.ground_resolution() == pytest.approx(1.5)
