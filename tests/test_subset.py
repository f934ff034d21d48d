"""translate --bbox / --aoi: only the area asked for is translated, with the whole scene's windows, so its pixels
are the whole run's; AOI polygons mask what lies outside them; bad areas are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from affine import Affine
from click.testing import CliRunner
from pyproj import Transformer

from geo_sat2map.cli import cli
from geo_sat2map.windows import WindowGrid

from .test_translate_scale import torchrun
from .translate_fixtures import UTM, read, save_small_generator, texture, write_raster

X0, Y0, PX = UTM.c, UTM.f, UTM.a  # 10 m pixels


def invoke(*args: object):
    return CliRunner().invoke(cli, ["-v", "translate", *map(str, args), "--device", "cpu", "--precision", "fp32"])


def ok(result):
    assert result.exit_code == 0, result.output[-3000:]
    return result


def bbox(rows: tuple[int, int], cols: tuple[int, int]) -> str:
    """The --bbox of scene pixels rows [r0, r1), columns [c0, c1)."""
    return f"{X0 + cols[0] * PX},{Y0 - rows[1] * PX},{X0 + cols[1] * PX},{Y0 - rows[0] * PX}"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 700 x 900 px scene (12 windows of 256 with the default overlap) with a nodata hole, its whole-scene map."""
    folder = tmp_path_factory.mktemp("subset")
    data = texture(700, 900, seed=5)
    data[:, 40:90, 600:700] = 0
    src = write_raster(folder / "scene.tif", data, nodata=0)
    weights = save_small_generator(folder / "g.pt")
    ok(invoke(src, "-o", folder / "full.tif", "-w", weights))
    return src, weights, read(folder / "full.tif")[0]


@pytest.mark.parametrize("rows, cols", [
    ((250, 400), (300, 520)),  # interior
    ((600, 700), (780, 900)),  # the bottom-right corner: reflection padding must be the whole scene's
    ((0, 37), (0, 900)),  # a full-width strip along the top
    ((20, 120), (560, 740)),  # around the nodata hole: the mask is the scene's
])
def test_a_bbox_has_the_pixels_of_the_whole_run(tmp_path, scene, rows, cols):
    src, weights, full = scene
    out = tmp_path / "sub.tif"
    result = ok(invoke(src, "-o", out, "-w", weights, "--bbox", bbox(rows, cols)))
    assert "subset:" in result.output
    data, profile, info = read(out)
    assert (profile["width"], profile["height"]) == (cols[1] - cols[0], rows[1] - rows[0])
    assert info["transform"] == UTM @ Affine.translation(cols[0], rows[0]) and info["crs"].to_epsg() == 32633
    expected = full[:, rows[0]:rows[1], cols[0]:cols[1]]
    assert np.array_equal(data[3], expected[3])
    assert np.array_equal(data, expected)
    assert info["structure"]["LAYOUT"] == "COG" and info["overviews"] in ([], [2]) and not any(
        p.name.endswith(".part") for p in tmp_path.iterdir())


def test_bbox_crs_takes_an_area_in_another_crs(tmp_path, scene):
    src, weights, full = scene
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    west, south = to_lonlat.transform(X0 + 3000, Y0 - 4000)
    east, north = to_lonlat.transform(X0 + 5000, Y0 - 2000)
    out = tmp_path / "sub.tif"
    ok(invoke(src, "-o", out, "-w", weights, "--bbox", f"{west},{south},{east},{north}", "--bbox-crs", "EPSG:4326"))
    _, profile, info = read(out)
    # The lon/lat box, reprojected, covers at least the asked-for UTM square (edges bend a little).
    t = info["transform"]
    assert t.c <= X0 + 3000 and t.f >= Y0 - 2000
    assert t.c + profile["width"] * PX >= X0 + 5000 and t.f - profile["height"] * PX <= Y0 - 4000
    assert profile["width"] <= 210 and profile["height"] <= 210


def test_an_aoi_polygon_masks_what_lies_outside_it(tmp_path, scene):
    src, weights, full = scene
    # A triangle over scene columns 100..400, rows 200..500, in WGS 84 lon/lat GeoJSON.
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    corners = [(X0 + 1000, Y0 - 5000), (X0 + 4000, Y0 - 5000), (X0 + 1000, Y0 - 2000)]
    ring = [list(to_lonlat.transform(x, y)) for x, y in corners]
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [ring + [ring[0]]]}))
    out = tmp_path / "sub.tif"
    ok(invoke(src, "-o", out, "-w", weights, "--aoi", aoi))
    data, profile, info = read(out)
    t = info["transform"]
    col0, row0 = round((t.c - X0) / PX), round((Y0 - t.f) / PX)
    assert abs(col0 - 100) <= 1 and abs(row0 - 200) <= 1 and abs(profile["width"] - 300) <= 2
    expected = full[:, row0:row0 + profile["height"], col0:col0 + profile["width"]]
    inside = data[3] > 0
    assert 0.4 < inside.mean() < 0.6  # about half of the box is the triangle
    assert np.array_equal(data[:, inside], expected[:, inside]) and data[:, ~inside].max() == 0
    assert inside[-3, 3] and not inside[3, -3]  # the right angle is bottom-left


def test_an_area_outside_the_scene_is_a_clear_error_before_any_work(tmp_path, scene):
    src, weights, _ = scene
    out = tmp_path / "sub.tif"
    result = invoke(src, "-o", out, "-w", weights, "--bbox", "0,0,10,10")
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: --bbox 0,0,10,10: does not overlap") and "WGS 84" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--bbox", "1,2,3"], "expected XMIN,YMIN,XMAX,YMAX"),
    (["--bbox", "5,2,3,4"], "XMIN must be below XMAX"),
    (["--bbox", "1,2,3,4", "--aoi", "x.geojson"], "not both"),
    (["--bbox-crs", "EPSG:4326"], "goes with --bbox"),
])
def test_bad_areas_are_usage_errors(tmp_path, scene, args, message):
    src, weights, _ = scene
    result = invoke(src, "-o", tmp_path / "m.tif", "-w", weights, *args)
    assert result.exit_code == 2 and message in result.output


def test_an_unknown_bbox_crs_is_one_line(tmp_path, scene):
    src, weights, _ = scene
    result = invoke(src, "-o", tmp_path / "m.tif", "-w", weights, "--bbox", "1,2,3,4", "--bbox-crs", "EPSG:99999")
    assert result.exit_code == 1 and "--bbox-crs 'EPSG:99999'" in result.output.splitlines()[-1]


def test_a_bbox_at_a_resampled_resolution_and_on_the_input_grid(tmp_path):
    weights = save_small_generator(tmp_path / "g5.pt", resolution_m=5.0, crs_kind="projected")
    data = texture(200, 260, seed=8)
    src = write_raster(tmp_path / "scene.tif", data)
    ok(invoke(src, "-o", tmp_path / "full5.tif", "-w", weights))
    full = read(tmp_path / "full5.tif")[0]  # 5 m: 520 x 400
    rows, cols = (40, 90), (100, 160)  # of the 10 m scene: 10 m bbox edges are 5 m edges too
    ok(invoke(src, "-o", tmp_path / "sub5.tif", "-w", weights, "--bbox", bbox(rows, cols)))
    sub, profile, info = read(tmp_path / "sub5.tif")
    assert (profile["width"], profile["height"], info["transform"].a) == (120, 100, 5.0)
    assert np.array_equal(sub, full[:, 2 * rows[0]:2 * rows[1], 2 * cols[0]:2 * cols[1]])
    ok(invoke(src, "-o", tmp_path / "in.tif", "-w", weights, "--bbox", bbox(rows, cols), "--output-grid", "input"))
    back, profile, info = read(tmp_path / "in.tif")
    assert (profile["width"], profile["height"]) == (60, 50) and info["transform"] == UTM @ Affine.translation(100, 40)
    assert np.array_equal(back[:3], sub[:3, 1::2, 1::2]) and (back[3] == 255).all()


def test_two_processes_translate_a_bbox_as_one(tmp_path, scene):
    src, weights, full = scene
    rows, cols = (150, 650), (200, 480)
    proc = torchrun(tmp_path, src, "-o", "two.tif", "-w", weights, "--bbox", bbox(rows, cols), "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = read(tmp_path / "two.tif")[0]
    assert np.array_equal(data, full[:, rows[0]:rows[1], cols[0]:cols[1]])
    refused = torchrun(tmp_path, src, "-o", "two.vrt", "-w", weights, "--bbox", bbox(rows, cols), processes=1)
    assert refused.returncode == 1 and "need a .tif output" in refused.stderr


@pytest.mark.parametrize("length, box", [(900, (0, 5)), (900, (895, 900)), (900, (400, 401)), (300, (0, 300)),
                                         (1000, (990, 1000))])
def test_a_region_holds_every_window_of_its_box_and_what_their_padding_reflects(length, box):
    grid = WindowGrid.build(length, length, 256, 64, origin=(7, 7))
    region, (offset, _) = grid.region(box, box)
    kept = {s + offset for s in region.col_starts}
    touching = {s for s in grid.col_starts if s < box[1] and s + 256 > box[0]}
    assert touching <= kept and offset >= 0 and offset + region.width <= length
    first, last = min(kept), max(kept) + 256
    if first < 0:  # reflected columns 1..-first must be inside the region
        assert offset == 0 and region.width > -first
    if last > length:  # reflected columns length-1-(last-length) .. length-2
        assert offset <= length - 1 - (last - length) and offset + region.width == length
