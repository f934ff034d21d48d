"""make-tiles end to end on synthetic raster pairs: alignment, masks, AOI, scaling, split, output handling, bad input.

The map is a known function of UTM ground coordinates (colour classes of ~37 m x 53 m cells), rendered in
EPSG:3857 at another resolution; every tile's map half must match that function at the satellite pixel centres.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pyproj
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from PIL import Image
from rasterio.enums import ColorInterp

from geo_sat2map.cli import cli
from geo_sat2map.tiling import writer

UTM = "EPSG:32618"
MERCATOR = "EPSG:3857"
ORIGIN = (300_000.0, 4_200_000.0)  # UTM 18N, ~37.9 N 77.3 W
SAT_PIXEL = 2.0
SAT_SIZE = 256
CELL = (37.3, 53.7)  # map cells in UTM metres; not multiples of the 2 m grid, so centres never sit on edges
PALETTE = np.array([[230, 30, 30], [30, 200, 60], [40, 60, 220], [250, 220, 40], [240, 240, 240]], dtype=np.uint8)


def map_colour(easting: np.ndarray, northing: np.ndarray) -> np.ndarray:
    """The map content as a function of ground coordinates: (..., 3) uint8."""
    cls = (np.floor(easting / CELL[0]).astype(np.int64) + 2 * np.floor(northing / CELL[1]).astype(np.int64)) % 5
    return PALETTE[cls]


def apply(t: Affine, cols, rows) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (col, row) -> CRS (x, y), written out (affine's operators differ between versions)."""
    cols, rows = np.asarray(cols, dtype=np.float64), np.asarray(rows, dtype=np.float64)
    return t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f


def window_transform(t: Affine, col: int, row: int) -> Affine:
    x, y = apply(t, col, row)
    return Affine(t.a, t.b, float(x), t.d, t.e, float(y))


def expected_map(transform: Affine, col: int, row: int, size: int) -> np.ndarray:
    """map_colour at the pixel centres of a window of a UTM grid, as (3, size, size)."""
    cols, rows = np.meshgrid(np.arange(col, col + size) + 0.5, np.arange(row, row + size) + 0.5)
    return map_colour(*apply(transform, cols, rows)).transpose(2, 0, 1)


def sat_transform(pixel: float = SAT_PIXEL) -> Affine:
    return Affine(pixel, 0.0, ORIGIN[0], 0.0, -pixel, ORIGIN[1])


def write_satellite(path: Path, *, dtype: str = "uint8", mask: np.ndarray | None = None, nodata: float | None = None,
                    crs: str | None = UTM, size: int = SAT_SIZE, transform: Affine | None = None,
                    seed: int = 0) -> np.ndarray:
    """A textured RGB satellite raster; returns its data. ``mask`` (True = valid) goes in as an internal mask."""
    rng = np.random.default_rng(seed)
    high = 255 if dtype == "uint8" else 4000
    low = 1 if dtype == "uint8" else 500
    data = rng.integers(low, high, size=(3, size, size)).astype(dtype)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype=dtype, crs=crs,
                   transform=transform or sat_transform(), nodata=nodata, tiled=True, blockxsize=64, blockysize=64)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
            if mask is not None:
                dst.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    return data


def write_mercator_map(path: Path, *, pixel: float = 1.2, margin: float = 60.0, alpha: np.ndarray | None = None,
                       paletted: bool = False, shift: tuple[float, float] = (0.0, 0.0)) -> None:
    """The map rendered in EPSG:3857 over the satellite's ground (plus a margin), each pixel coloured by
    map_colour at its centre's UTM coordinates. ``alpha`` (callable on UTM E, N -> bool valid) adds an alpha band."""
    to_merc = pyproj.Transformer.from_crs(UTM, MERCATOR, always_xy=True)
    to_utm = pyproj.Transformer.from_crs(MERCATOR, UTM, always_xy=True)
    extent = SAT_PIXEL * SAT_SIZE
    e0, n0 = ORIGIN[0] + shift[0], ORIGIN[1] + shift[1]
    xs, ys = to_merc.transform([e0 - margin, e0 + extent + margin], [n0 - extent - margin, n0 + margin])
    left, right, bottom, top = min(xs), max(xs), min(ys), max(ys)
    width, height = int(np.ceil((right - left) / pixel)), int(np.ceil((top - bottom) / pixel))
    transform = Affine(pixel, 0.0, left, 0.0, -pixel, top)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    mx, my = apply(transform, cols, rows)
    easting, northing = to_utm.transform(mx, my)
    easting, northing = np.asarray(easting) - shift[0], np.asarray(northing) - shift[1]
    rgb = map_colour(easting, northing).transpose(2, 0, 1)
    profile = dict(driver="GTiff", width=width, height=height, crs=MERCATOR, transform=transform, dtype="uint8")
    with rasterio.open(path, "w", count=1 if paletted else (4 if alpha is not None else 3), **profile,
                       **({"photometric": "RGB", "alpha": "YES"} if alpha is not None else {})) as dst:
        if paletted:
            cls = np.argmax((rgb[:, None] == PALETTE.T[:, :, None, None]).all(axis=0), axis=0).astype(np.uint8)
            dst.write(cls[None])
            dst.write_colormap(1, {i: (*map(int, c), 255) for i, c in enumerate(PALETTE)})
        elif alpha is not None:
            dst.write(np.concatenate([rgb, np.where(alpha(easting, northing), 255, 0).astype(np.uint8)[None]]))
        else:
            dst.write(rgb)


def invoke(*args: str) -> object:
    return CliRunner().invoke(cli, ["make-tiles", *map(str, args)])


def load(out: Path) -> tuple[dict, list[dict]]:
    dataset = json.loads((out / "dataset.json").read_text())
    features = json.loads((out / "tiles.geojson").read_text())["features"]
    return dataset, features


def make(sat: Path, map_path: Path, out: Path, *options: object) -> tuple[dict, list[dict]]:
    """Run make-tiles on one pair, require success, return (dataset.json, tiles.geojson features)."""
    result = invoke("-i", sat, "-m", map_path, "-o", out, *options)
    assert result.exit_code == 0, result.output
    return load(out)


def pair_halves(out: Path, feature: dict) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(out / feature["properties"]["path"])).transpose(2, 0, 1)
    size = image.shape[1]
    assert image.shape == (3, size, 2 * size)
    return image[:, :, :size], image[:, :, size:]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    sat, map_path = tmp_path / "sat.tif", tmp_path / "map.tif"
    data = write_satellite(sat)
    write_mercator_map(map_path)
    return sat, map_path, data


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# --- alignment --------------------------------------------------------------------------------------------------


def test_map_half_matches_the_ground_function_on_the_satellite_grid(pair, tmp_path):
    sat, map_path, data = pair
    out = tmp_path / "tiles"
    result = invoke("--image", sat, "--map", map_path, "-o", out, "--tile-size", 64, "--val-fraction", 0.25)
    assert result.exit_code == 0, result.output
    dataset, features = load(out)
    assert dataset["format"] == "geo-sat2map-tiles" and dataset["format_version"] == 1
    assert dataset["tile_size"] == 64 and dataset["crs"] == UTM and dataset["resolution"] == pytest.approx(SAT_PIXEL)
    assert dataset["bands"] == [1, 2, 3] and dataset["scaling"]["kind"] == "uint8"
    assert len(features) == 16 == sum(dataset["counts"].values())
    assert "Wrote 16 tiles" in result.output
    style = ElementTree.parse(out / "tiles.qml").getroot().find("renderer-v2")
    assert style.get("attr") == "split"
    assert [c.get("value") for c in style.iter("category")] == ["train", "val", "test"]
    assert dataset["counts"]["val"] > 0 and dataset["counts"]["train"] > 0
    for feature in features:
        props = feature["properties"]
        col, row, width, height = props["window"]
        assert (width, height) == (64, 64)
        assert Affine(*props["transform"]) == window_transform(sat_transform(), col, row)
        assert props["crs"] == UTM and props["split"] in props["path"]
        satellite, map_half = pair_halves(out, feature)
        np.testing.assert_array_equal(satellite, data[:, row:row + 64, col:col + 64])
        agreement = (map_half == expected_map(sat_transform(), col, row, 64)).all(axis=0).mean()
        assert agreement >= 0.97, (props["id"], agreement)


def test_resolution_rebuilds_the_grid_from_the_satellite_affine(pair, tmp_path):
    sat, map_path, _ = pair
    out = tmp_path / "tiles"
    dataset, features = make(sat, map_path, out, "--tile-size", 32, "--resolution", 5, "--val-fraction", 0,
                             "--min-valid", 0.9)
    coarse = sat_transform(5.0)
    assert dataset["resolution"] == pytest.approx(5.0)
    assert dataset["images"][0]["grid"] == {"transform": list(coarse)[:6], "width": 103, "height": 103}
    assert len(features) == 9  # 103 px // 32
    for feature in features:
        col, row, _, _ = feature["properties"]["window"]
        assert Affine(*feature["properties"]["transform"]) == window_transform(coarse, col, row)
        _, map_half = pair_halves(out, feature)
        assert (map_half == expected_map(coarse, col, row, 32)).all(axis=0).mean() >= 0.97


def test_paletted_map_and_tile_footprints_in_wgs84(tmp_path):
    sat, map_path = tmp_path / "sat.tif", tmp_path / "map.tif"
    write_satellite(sat)
    write_mercator_map(map_path, paletted=True, pixel=1.5)
    out = tmp_path / "tiles"
    palette_file = tmp_path / "names.json"
    palette_file.write_text(json.dumps({"classes": [{"name": f"c{i}", "color": c.tolist()} for i, c in enumerate(PALETTE)]}))
    dataset, features = make(sat, map_path, out, "--tile-size", 128, "--val-fraction", 0, "--palette", palette_file)
    # the map palette, learned once into dataset.json: exact, named from --palette, frequencies summing to 1
    learned = dataset["palette"]
    assert learned["kind"] == "exact"
    assert {tuple(c["color"]): c["name"] for c in learned["classes"]} == {
        tuple(int(v) for v in c): f"c{i}" for i, c in enumerate(PALETTE)}
    assert sum(c["frequency"] for c in learned["classes"]) == pytest.approx(1.0, abs=1e-5)
    to_lonlat = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    for feature in features:
        col, row, size, _ = feature["properties"]["window"]
        _, map_half = pair_halves(out, feature)
        assert (map_half == expected_map(sat_transform(), col, row, size)).all(axis=0).mean() >= 0.97
        ring = np.array(feature["geometry"]["coordinates"][0])
        corner = to_lonlat.transform(*apply(sat_transform(), col, row))
        assert np.abs(ring - corner).sum(axis=1).min() < 1e-7  # the tile's top-left corner is a vertex
        x, y = ring[:-1, 0], ring[:-1, 1]
        assert np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0  # RFC 7946: counter-clockwise exterior


# --- masks, AOI, scaling --------------------------------------------------------------------------------------------


def test_masks_come_from_gdal_not_from_zero_values(tmp_path):
    sat, map_path = tmp_path / "sat.tif", tmp_path / "map.tif"
    mask = np.ones((SAT_SIZE, SAT_SIZE), bool)
    mask[:, :64] = False  # masked by the internal mask band, data left non-zero
    data = write_satellite(sat, mask=mask)
    with rasterio.open(sat, "r+") as dst:  # valid pixels that happen to be black
        data[:, 200:, 200:] = 0
        dst.write(data)
    east_limit = ORIGIN[0] + 192 * SAT_PIXEL  # the map is transparent east of satellite column 192
    write_mercator_map(map_path, alpha=lambda e, n: e < east_limit)
    dataset, features = make(sat, map_path, tmp_path / "tiles", "--tile-size", 64, "--val-fraction", 0)
    windows = {tuple(f["properties"]["window"][:2]) for f in features}
    assert windows == {(c, r) for c in (64, 128) for r in (0, 64, 128, 192)}
    assert dataset["skipped"]["image_nodata"] == 4 and dataset["skipped"]["map_nodata"] == 4
    assert all(f["properties"]["valid_fraction"] == 1.0 for f in features)
    assert not (tmp_path / "tiles" / "masks").exists()  # whole tiles need no mask


def test_partly_valid_tiles_follow_min_valid_and_black_out_invalid_pixels(tmp_path):
    sat, map_path = tmp_path / "sat.tif", tmp_path / "map.tif"
    mask = np.ones((SAT_SIZE, SAT_SIZE), bool)
    mask[:, :8] = False  # an eighth of the first tile column is invalid
    data = write_satellite(sat, mask=mask)
    write_mercator_map(map_path)
    for min_valid, columns in ((0.95, {64, 128, 192}), (0.8, {0, 64, 128, 192})):
        out = tmp_path / f"tiles{min_valid}"
        _, features = make(sat, map_path, out, "--tile-size", 64, "--val-fraction", 0, "--min-valid", min_valid)
        assert {f["properties"]["window"][0] for f in features} == columns
    edge = next(f for f in features if f["properties"]["window"][:2] == [0, 0])
    assert edge["properties"]["valid_fraction"] == pytest.approx(56 / 64)
    satellite, map_half = pair_halves(out, edge)
    assert not satellite[:, :, :8].any() and not map_half[:, :, :8].any()
    np.testing.assert_array_equal(satellite[:, :, 8:], data[:, :64, 8:64])
    # the tile's mask is stored with it (validation and evaluate score only its valid pixels); whole tiles have none
    split = edge["properties"]["split"]
    assert edge["properties"]["mask"] == f"masks/{split}/{edge['properties']['id']}.png"
    stored = np.asarray(Image.open(out / edge["properties"]["mask"]))
    assert stored.shape == (64, 64) and not stored[:, :8].any() and (stored[:, 8:] == 255).all()
    whole = [f for f in features if f["properties"]["valid_fraction"] == 1.0]
    assert whole and all(f["properties"]["mask"] is None for f in whole)
    edge_masks = sorted(f["properties"]["mask"] for f in features if f["properties"]["window"][0] == 0)
    assert len(edge_masks) == 4 and sorted(p.relative_to(out).as_posix() for p in (out / "masks").rglob("*")
                                           if p.is_file()) == edge_masks


def test_bands_follow_the_colour_interpretation_and_their_roles_are_recorded(pair, tmp_path):
    """A BGR-tagged copy of the scene gives the same tiles; dataset.json records the bands' colour roles, which
    train copies into generator.pt for translate to match."""
    sat, map_path, data = pair
    bgr = tmp_path / "bgr.tif"
    write_satellite(bgr)
    with rasterio.open(bgr, "r+") as dst:
        dst.write(data[::-1])
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    out = tmp_path / "tiles"
    result = invoke("-i", bgr, "-m", map_path, "-o", out, "--tile-size", 128, "--val-fraction", 0)
    assert result.exit_code == 0, result.output
    assert "bands 3,2,1 by the scene's colour interpretation (red, green, blue)" in result.output
    dataset, features = load(out)
    assert dataset["bands"] == [3, 2, 1] and dataset["band_roles"] == ["red", "green", "blue"]
    assert dataset["images"][0]["band_roles"] == ["red", "green", "blue"]
    for feature in features:
        col, row, size, _ = feature["properties"]["window"]
        np.testing.assert_array_equal(pair_halves(out, feature)[0], data[:, row:row + size, col:col + size])
    untagged = tmp_path / "untagged.tif"
    write_satellite(untagged)
    with rasterio.open(untagged, "r+") as dst:
        dst.colorinterp = [ColorInterp.gray, ColorInterp.undefined, ColorInterp.undefined]
    result = invoke("-i", untagged, "-m", map_path, "-o", tmp_path / "plain", "--tile-size", 128, "--val-fraction", 0)
    assert result.exit_code == 0 and "bands 1,2,3 by index" in result.output
    assert load(tmp_path / "plain")[0]["band_roles"] is None


def test_aoi_in_another_crs_clips_the_tiles(pair, tmp_path):
    sat, map_path, _ = pair
    to_merc = pyproj.Transformer.from_crs(UTM, MERCATOR, always_xy=True)
    # the western half of the satellite scene (+ a little), given in Web Mercator
    corners = [(0, 0), (140, 0), (140, SAT_SIZE), (0, SAT_SIZE), (0, 0)]
    ring = [list(to_merc.transform(*apply(sat_transform(), *c))) for c in corners]
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({
        "type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}],
    }))
    dataset, features = make(sat, map_path, tmp_path / "tiles", "--tile-size", 64, "--aoi", aoi, "--val-fraction", 0)
    assert {f["properties"]["window"][0] for f in features} == {0, 64}
    assert dataset["skipped"]["outside_aoi"] == 8 and len(features) == 8
    # the same AOI as EWKT in UTM gives the same tiles
    wkt = tmp_path / "aoi.wkt"
    utm = [apply(sat_transform(), *c) for c in corners]
    wkt.write_text("SRID=32618;POLYGON((" + ", ".join(f"{x} {y}" for x, y in utm) + "))")
    _, same = make(sat, map_path, tmp_path / "tiles2", "--tile-size", 64, "--aoi", wkt, "--val-fraction", 0)
    assert sorted(f["properties"]["window"] for f in same) == sorted(f["properties"]["window"] for f in features)


def test_uint16_imagery_uses_one_percentile_stretch_per_image(tmp_path):
    sat, map_path = tmp_path / "sat.tif", tmp_path / "map.tif"
    mask = np.ones((SAT_SIZE, SAT_SIZE), bool)
    mask[:32] = False
    data = write_satellite(sat, dtype="uint16", mask=mask)
    write_mercator_map(map_path)
    out = tmp_path / "tiles"
    dataset, features = make(sat, map_path, out, "--tile-size", 64, "--val-fraction", 0)
    scaling = dataset["images"][0]["scaling"]
    valid = data[:, mask]
    assert scaling["kind"] == "percentile" and scaling["percentiles"] == [2.0, 98.0]
    np.testing.assert_allclose(scaling["low"], np.percentile(valid, 2, axis=1))
    np.testing.assert_allclose(scaling["high"], np.percentile(valid, 98, axis=1))
    assert dataset["scaling"] == scaling  # one image: the dataset scaling is its scaling
    low, high = np.array(scaling["low"])[:, None, None], np.array(scaling["high"])[:, None, None]
    for feature in features:
        col, row, size, _ = feature["properties"]["window"]
        satellite, _ = pair_halves(out, feature)
        raw = data[:, row:row + size, col:col + size].astype(np.float64)
        expected = np.rint(np.clip((raw - low) / (high - low), 0, 1) * 255)
        assert np.abs(satellite.astype(int) - expected).max() <= 1


# --- split -------------------------------------------------------------------------------------------------------


def _windows_by_split(features: list[dict]) -> dict[str, list[tuple[int, int, int, int]]]:
    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for f in features:
        out[f["properties"]["split"]].append(tuple(f["properties"]["window"]))
    return out


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_overlapping_strides_never_put_val_or_test_on_train_pixels(pair, tmp_path):
    sat, map_path, _ = pair
    args = ["-i", sat, "-m", map_path, "--tile-size", 32, "--stride", 16, "--val-fraction", 0.2,
            "--test-fraction", 0.15, "--split-block", 2, "--seed", 7]
    out = tmp_path / "tiles"
    assert invoke(*args, "-o", out).exit_code == 0
    dataset, features = load(out)
    by_split = _windows_by_split(features)
    assert all(by_split[s] for s in ("train", "val", "test"))
    assert dataset["skipped"]["split_buffer"] > 0  # the buffer did drop straddling windows
    held_out = by_split["val"] + by_split["test"]
    for w in held_out:
        assert not any(_overlap(w, t) for t in by_split["train"])
    for v in by_split["val"]:
        assert not any(_overlap(v, t) for t in by_split["test"])
    assert sum(dataset["counts"].values()) + dataset["skipped"]["split_buffer"] == len(range(0, 256 - 32 + 1, 16)) ** 2
    assert sorted(p.name for p in (out / "val").iterdir()) == sorted(f"{f['properties']['id']}.png" for f in features
                                                                     if f["properties"]["split"] == "val")
    # deterministic for a seed; another seed gives another split
    out_again, out_other = tmp_path / "again", tmp_path / "other"
    assert invoke(*args, "-o", out_again).exit_code == 0
    assert _windows_by_split(load(out_again)[1]) == by_split
    assert invoke(*args[:-1], "8", "-o", out_other).exit_code == 0
    assert _windows_by_split(load(out_other)[1]) != by_split


def collar_scene(tmp_path: Path) -> tuple[Path, Path]:
    """A pair whose satellite has a nodata collar around a diamond of valid pixels (like a rotated Landsat scene
    on its north-up grid)."""
    sat, map_path = tmp_path / "sat.tif", tmp_path / "map.tif"
    rows, cols = np.mgrid[0:SAT_SIZE, 0:SAT_SIZE]
    write_satellite(sat, mask=np.abs(cols - SAT_SIZE / 2) + np.abs(rows - SAT_SIZE / 2) < 0.62 * SAT_SIZE)
    write_mercator_map(map_path)
    return sat, map_path


def test_a_split_the_buffer_would_unbalance_is_refused_saying_why(tmp_path):
    """Heavily overlapping tiles on a small scene: whatever the blocks, the buffer between splits takes train."""
    sat, map_path = collar_scene(tmp_path)
    out = tmp_path / "tiles"
    result = CliRunner().invoke(cli, ["-q", "make-tiles", "-i", str(sat), "-m", str(map_path), "-o", str(out),
                                      "--tile-size", "128", "--stride", "8", "--min-valid", "0.8", "--val-fraction", "0.1"])
    assert_one_line_error(result, "cannot stay near the asked fractions", "% for 10 %)", "split buffer",
                          "too small for that buffer", "--stride 128")
    assert_nothing_written(out)


def test_overlapping_tiles_keep_every_split_near_its_fraction(tmp_path):
    """Filled as asked with one-tile blocks, the buffer would leave val 38 % for 20 % (what main wrote)."""
    sat, map_path = collar_scene(tmp_path)
    fractions = {"train": 0.7, "val": 0.2, "test": 0.1}
    dataset, features = make(sat, map_path, tmp_path / "tiles", "--tile-size", 16, "--stride", 8, "--min-valid", 0.8,
                             "--val-fraction", 0.2, "--test-fraction", 0.1, "--split-block", 1)
    counts, kept = dataset["counts"], len(features)
    for split, fraction in fractions.items():
        assert abs(counts[split] / kept - fraction) <= 0.5 * fraction, (split, counts)
    assert dataset["skipped"]["split_buffer"] > 0
    by_split = _windows_by_split(features)
    for w in by_split["val"] + by_split["test"]:
        assert not any(_overlap(w, t) for t in by_split["train"])


def test_too_few_tiles_names_what_dropped_the_others_and_the_option(tmp_path):
    sat, map_path = tmp_path / "sat.tif", tmp_path / "map.tif"
    mask = np.zeros((SAT_SIZE, SAT_SIZE), bool)
    mask[:150, :150] = True  # only the top-left 128 px tile is whole
    write_satellite(sat, mask=mask)
    write_mercator_map(map_path)
    out = tmp_path / "tiles"
    result = CliRunner().invoke(cli, ["-q", "make-tiles", "-i", str(sat), "-m", str(map_path), "-o", str(out),
                                      "--tile-size", "128"])
    assert_one_line_error(result, "only 1 of 4 candidate tiles kept, too few to split", "3 as image nodata",
                          "lower --min-valid (now 0.95)", "--stride")
    assert_nothing_written(out)
    dataset, _ = make(sat, map_path, out, "--tile-size", 128, "--val-fraction", 0)
    assert dataset["skipped"]["image_nodata"] == 3


def test_several_pairs_and_a_pairs_csv(tmp_path):
    sat_a, sat_b, map_path = tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "map.tif"
    write_satellite(sat_a, seed=1)
    write_satellite(sat_b, dtype="uint16", seed=2)
    write_mercator_map(map_path)
    (tmp_path / "pairs.csv").write_text("image,map\nb.tif,map.tif\n")
    out = tmp_path / "tiles"
    result = invoke("-i", sat_a, "-m", map_path, "--pairs", tmp_path / "pairs.csv", "-o", out, "--tile-size", 64)
    assert result.exit_code == 0, result.output
    dataset, features = load(out)
    assert [e["image"] for e in dataset["images"]] == [str(sat_a), str(sat_b)]
    assert [e["tiles"] for e in dataset["images"]] == [16, 16] and len(features) == 32
    uint16 = dataset["images"][1]["scaling"]
    assert dataset["images"][0]["scaling"]["kind"] == "uint8" and uint16["kind"] == "percentile"
    assert dataset["scaling"]["low"] == pytest.approx([(0 + lo) / 2 for lo in uint16["low"]])
    assert dataset["scaling"]["high"] == pytest.approx([(255 + hi) / 2 for hi in uint16["high"]])
    assert {f["properties"]["pair"] for f in features} == {0, 1}
    assert len({f["properties"]["id"] for f in features}) == 32


# --- output folder handling ------------------------------------------------------------------------------------


def test_existing_output_needs_overwrite_and_only_datasets_are_replaced(pair, tmp_path):
    sat, map_path, _ = pair
    out = tmp_path / "tiles"
    base = ["-i", sat, "-m", map_path, "-o", out, "--tile-size", 128, "--val-fraction", 0]
    assert invoke(*base).exit_code == 0
    before = load(out)[0]["created"]
    refused = invoke(*base)
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    quiet = CliRunner().invoke(cli, ["-q", "make-tiles", *map(str, base), "--overwrite", "--tile-size", "64"])
    assert quiet.exit_code == 0, quiet.output  # -q: no progress, no log; only the result line
    (line,) = quiet.output.splitlines()
    assert line.startswith(f"Wrote 16 tiles to {out}")
    assert load(out)[0]["tile_size"] == 64 and len(list((out / "train").iterdir())) == 16 and before
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    result = invoke("-i", sat, "-m", map_path, "-o", other, "--tile-size", 64, "--overwrite")
    assert result.exit_code == 1 and "not a make-tiles dataset" in result.output
    assert (other / "notes.txt").read_text() == "keep me"


def test_interrupted_run_leaves_nothing_and_stale_work_is_rebuilt(pair, tmp_path, monkeypatch):
    sat, map_path, _ = pair
    out = tmp_path / "tiles"
    args = ["-i", sat, "-m", map_path, "-o", out, "--tile-size", 64, "--val-fraction", 0]
    real_write = writer.write_pair
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_write(*a, **k)

    monkeypatch.setattr(sys.modules["geo_sat2map.tiling.make_tiles"], "write_pair", interrupted)
    result = invoke(*args)
    assert result.exit_code == 130
    assert_nothing_written(out)
    monkeypatch.undo()

    # a run killed outright leaves its work folder; the next run removes it and rebuilds
    stale = tmp_path / ".tiles.make-tiles-partial"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "junk.png").write_bytes(b"junk")
    (stale / ".owner.json").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert not stale.exists() and "interrupted run" in result.output
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(
        f"{f['properties']['id']}.png" for f in load(out)[1])

    # ... but a work folder whose owner is alive is left alone
    stale.mkdir()
    (stale / ".owner.json").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 1 and "another make-tiles run" in result.output and stale.exists()


# --- bad input ----------------------------------------------------------------------------------------------------


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_pairs_that_do_not_overlap(tmp_path):
    sat, map_path = tmp_path / "sat.tif", tmp_path / "map.tif"
    write_satellite(sat)
    write_mercator_map(map_path, shift=(5_000.0, 0.0), margin=10.0)
    out = tmp_path / "tiles"
    result = invoke("-i", sat, "-m", map_path, "-o", out)
    assert_one_line_error(result, "do not overlap", "image footprint [-77.", "map footprint [-77.")
    assert_nothing_written(out)


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("no_crs", ("has no CRS",)),
        ("unequal", ("2 --image and 1 --map",)),
        ("aoi_elsewhere", ("does not intersect",)),
        ("aoi_garbage", ("aoi.geojson", "not valid GeoJSON")),
        ("aoi_missing", ("nope.geojson", "not found")),
        ("aoi_points", ("Point", "Polygon")),
        ("tile_too_big", ("smaller than --tile-size 1024",)),
        ("val_negative", ("--val-fraction -0.1",)),
        ("test_one", ("--test-fraction 1",)),
        ("sum_one", ("sum must be below 1",)),
        ("min_valid", ("--min-valid 1.5",)),
        ("map_uint16", ("8-bit map",)),
        ("too_few_tiles", ("too few to split",)),
        ("aoi_too_small", ("AOI", "aoi.geojson: ", "only 1 of 16 candidate tiles kept, too few", "15 as outside the AOI")),
        ("pairs_binary", ("--pairs", "pairs.csv: not a UTF-8 CSV file of image,map rows",)),
        ("pairs_missing_raster", ("--pairs", "pairs.csv row 2: ", "sat.tiff: file not found")),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(pair, tmp_path, case, fragments):
    sat, map_path, _ = pair
    out = tmp_path / "tiles"
    args: list = ["-i", sat, "-m", map_path, "-o", out, "--tile-size", 64]
    aoi = tmp_path / "aoi.geojson"
    if case == "no_crs":
        bare = tmp_path / "bare.tif"
        write_satellite(bare, crs=None)
        args[1] = bare
    elif case == "unequal":
        args += ["-i", sat]
    elif case == "aoi_elsewhere":
        aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [[[10, 50], [11, 50], [11, 51], [10, 50]]]}))
        args += ["--aoi", aoi]
    elif case == "aoi_garbage":
        aoi.write_text("{not json")
        args += ["--aoi", aoi]
    elif case == "aoi_missing":
        args += ["--aoi", tmp_path / "nope.geojson"]
    elif case == "aoi_points":
        aoi.write_text(json.dumps({"type": "Point", "coordinates": [-77.3, 37.9]}))
        args += ["--aoi", aoi]
    elif case == "tile_too_big":
        args[-1] = 1024
    elif case == "val_negative":
        args += ["--val-fraction", -0.1]
    elif case == "test_one":
        args += ["--test-fraction", 1]
    elif case == "sum_one":
        args += ["--val-fraction", 0.5, "--test-fraction", 0.5]
    elif case == "min_valid":
        args += ["--min-valid", 1.5]
    elif case == "map_uint16":
        bad_map = tmp_path / "map16.tif"
        write_satellite(bad_map, dtype="uint16")
        args[3] = bad_map
    elif case == "too_few_tiles":
        args[-1] = 256
    elif case == "aoi_too_small":  # inside the scene, but only one 64 px tile fits in it
        aoi.write_text(f"SRID=32618;POLYGON(({ORIGIN[0]} {ORIGIN[1]}, {ORIGIN[0] + 200} {ORIGIN[1]}, "
                       f"{ORIGIN[0] + 200} {ORIGIN[1] - 200}, {ORIGIN[0]} {ORIGIN[1] - 200}, {ORIGIN[0]} {ORIGIN[1]}))")
        args += ["--aoi", aoi]
    elif case in ("pairs_binary", "pairs_missing_raster"):
        pairs = tmp_path / "pairs.csv"
        pairs.write_bytes(bytes(range(256)) if case == "pairs_binary" else f"{sat},{map_path}\n{sat}f,{map_path}\n".encode())
        args = ["--pairs", pairs, "-o", out, "--tile-size", 64]
    assert_one_line_error(invoke(*args), *fragments)
    assert_nothing_written(out)


def test_a_rotated_satellite_grid_is_followed_exactly(tmp_path):
    angle = np.radians(12.0)
    c, s = np.cos(angle) * SAT_PIXEL, np.sin(angle) * SAT_PIXEL
    rotated = Affine(c, -s, ORIGIN[0] + 60, s, c * -1, ORIGIN[1] - 40)  # rows run down-left, columns up-right
    sat, map_path = tmp_path / "sat.tif", tmp_path / "map.tif"
    write_satellite(sat, transform=rotated)
    write_mercator_map(map_path, margin=200.0)
    out = tmp_path / "tiles"
    _, features = make(sat, map_path, out, "--tile-size", 64, "--val-fraction", 0)
    assert len(features) == 16
    for feature in features:
        col, row, size, _ = feature["properties"]["window"]
        assert Affine(*feature["properties"]["transform"]) == window_transform(rotated, col, row)
        _, map_half = pair_halves(out, feature)
        assert (map_half == expected_map(rotated, col, row, size)).all(axis=0).mean() >= 0.97
