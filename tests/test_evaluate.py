"""evaluate: known answers on rasters made here, reprojected references, masks, tile datasets, bad input."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from affine import Affine
from click.testing import CliRunner
from pyproj import Transformer
from rasterio.enums import ColorInterp

from geo_sat2map.checkpoint import GeneratorMeta, load_generator, save_generator
from geo_sat2map.cli import cli
from geo_sat2map.errors import UserError
from geo_sat2map.evaluate import evaluate_scene, load_palette
from geo_sat2map.image_io import write_png
from geo_sat2map.metrics import PSNR_CAP, to_uint8
from geo_sat2map.raster_io import write_geotiff
from geo_sat2map.synthetic import PALETTE

UTM = "EPSG:32632"
ORIGIN = (500_000.0, 5_300_000.0)
RGB = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
LAND, WATER, BUILDING = (np.array(PALETTE[n], np.uint8) for n in ("land", "water", "building"))


def write_rgb(path, data, crs=UTM, transform=None, **kwargs):
    transform = transform if transform is not None else Affine(1.0, 0, ORIGIN[0], 0, -1.0, ORIGIN[1])
    write_geotiff(path, np.ascontiguousarray(data, dtype=np.uint8), crs, transform, colorinterp=RGB, **kwargs)
    return str(path)


def paint(classes: np.ndarray, colours: list[np.ndarray]) -> np.ndarray:
    return np.stack(colours)[classes].transpose(2, 0, 1)


def block_map(height=200, width=240, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A map of 20 px blocks of land / water / building; returns (classes, rgb)."""
    blocks = np.random.default_rng(seed).integers(0, 3, (height // 20 + 1, width // 20 + 1))
    classes = np.kron(blocks, np.ones((20, 20), int))[:height, :width]
    return classes, paint(classes, [LAND, WATER, BUILDING])


def run(*args):
    return CliRunner().invoke(cli, ["-q", "evaluate", *map(str, args)])


def test_identical_rasters_score_perfectly(tmp_path):
    _, rgb = block_map()
    pred, ref = write_rgb(tmp_path / "p.tif", rgb), write_rgb(tmp_path / "r.tif", rgb)
    report = evaluate_scene(pred, ref, palette=load_palette("synthetic"))
    m = report.metrics
    assert (m["l1"], m["rmse"], m["psnr"]) == (0.0, 0.0, PSNR_CAP)
    assert m["ssim"] == pytest.approx(1.0) and m["acc_5"] == m["acc_10"] == m["acc_20"] == 1.0
    assert m["pixels"] == 200 * 240
    assert report.classes["overall_accuracy"] == 1.0 and report.classes["miou"] == 1.0


def test_known_fraction_of_wrong_pixels(tmp_path):
    classes, rgb = block_map(seed=1)
    wrong = np.zeros(classes.shape, bool)
    wrong[::4, :] = True  # every 4th row ...
    wrong &= classes == 0  # ... of the land pixels is predicted as water
    pred = rgb.copy()
    pred[:, wrong] = WATER[:, None]
    report = evaluate_scene(
        write_rgb(tmp_path / "p.tif", pred), write_rgb(tmp_path / "r.tif", rgb), palette=load_palette("synthetic")
    )

    n, k = classes.size, int(wrong.sum())
    diff = np.abs(LAND.astype(int) - WATER.astype(int))  # per channel, on each wrong pixel
    m = report.metrics
    assert m["l1"] == pytest.approx(k * diff.sum() / (3 * n))
    mse = k * (diff**2).sum() / (3 * n)
    assert m["rmse"] == pytest.approx(math.sqrt(mse))
    assert m["psnr"] == pytest.approx(10 * math.log10(255**2 / mse))
    for delta in (5, 10, 20):  # every wrong pixel is off by max(diff) = 66 levels in red
        assert m[f"acc_{delta}"] == pytest.approx(1 - k / n)

    c = report.classes
    land, water = (classes == 0).sum(), (classes == 1).sum()
    assert c["overall_accuracy"] == pytest.approx(1 - k / n)
    assert c["classes"]["land"]["accuracy"] == pytest.approx(1 - k / land)
    assert c["classes"]["land"]["iou"] == pytest.approx((land - k) / land)
    assert c["classes"]["water"]["accuracy"] == 1.0
    assert c["classes"]["water"]["iou"] == pytest.approx(water / (water + k))
    assert c["miou"] == pytest.approx(((land - k) / land + water / (water + k) + 1.0) / 3)  # 3 classes present
    assert c["classes"]["forest"]["iou"] is None  # absent everywhere: not part of mIoU


def test_content_shifted_by_known_pixels(tmp_path):
    # Vertical stripes of width 10 px; the prediction's content is 3 px to the right on the same grid, so in
    # each 20-px period 2 x 3 columns disagree: 30 % of the compared pixels are wrong.
    width, height, stripe, shift = 200, 64, 10, 3
    columns = (np.arange(width + shift) // stripe) % 2
    ref = paint(np.tile(columns[shift:], (height, 1)), [LAND, WATER])
    pred = paint(np.tile(columns[:width], (height, 1)), [LAND, WATER])
    report = evaluate_scene(
        write_rgb(tmp_path / "p.tif", pred), write_rgb(tmp_path / "r.tif", ref), palette=load_palette("synthetic")
    )
    assert report.classes["overall_accuracy"] == pytest.approx(1 - 2 * shift / (2 * stripe))
    assert report.metrics["acc_20"] == pytest.approx(1 - shift / stripe)


def test_reference_on_another_grid_is_warped_by_its_georeferencing(tmp_path):
    # The prediction's grid starts 7 m east of the reference's: its first 193 columns show the reference's
    # columns 7.., its last 7 lie beyond the reference (garbage there must be masked out by the warp).
    _, rgb = block_map(height=100, width=200, seed=2)
    content = np.concatenate([rgb[:, :, 7:], np.full((3, 100, 7), 9, np.uint8)], axis=2)
    pred = write_rgb(tmp_path / "p.tif", content, transform=Affine(1.0, 0, ORIGIN[0] + 7, 0, -1.0, ORIGIN[1]))
    ref = write_rgb(tmp_path / "r.tif", rgb)
    report = evaluate_scene(pred, ref)
    assert report.inputs["reference_warped"] is True
    assert report.metrics["pixels"] == 193 * 100 and report.metrics["l1"] == 0.0


def ground_checker(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Class of a ground point (UTM metres): 40 m squares of land / water / building."""
    return ((np.floor(x / 40) + 2 * np.floor(y / 40)) % 3).astype(int)


def test_web_mercator_reference_at_another_resolution(tmp_path):
    # Prediction: the ground pattern on a 1 m UTM grid. Reference: the same pattern rendered in EPSG:3857 at
    # 0.6 mercator units (~0.4 m). After the nearest-neighbour warp only pixels on square edges may differ.
    size = 160
    cols, rows = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    pred = paint(ground_checker(ORIGIN[0] + cols, ORIGIN[1] - rows), [LAND, WATER, BUILDING])
    pred_path = write_rgb(tmp_path / "p.tif", pred)

    to_merc = Transformer.from_crs(UTM, "EPSG:3857", always_xy=True)
    to_utm = Transformer.from_crs("EPSG:3857", UTM, always_xy=True)
    west, south, east, north = to_merc.transform_bounds(ORIGIN[0], ORIGIN[1] - size, ORIGIN[0] + size, ORIGIN[1])
    res = 0.6
    w, h = math.ceil((east - west) / res), math.ceil((north - south) / res)
    mx, my = np.meshgrid(west + (np.arange(w) + 0.5) * res, north - (np.arange(h) + 0.5) * res)
    ux, uy = to_utm.transform(mx, my)
    ref = paint(ground_checker(ux, uy), [LAND, WATER, BUILDING])
    ref_path = write_rgb(tmp_path / "r.tif", ref, crs="EPSG:3857", transform=Affine(res, 0, west, 0, -res, north))

    good = evaluate_scene(pred_path, ref_path, palette=load_palette("synthetic"))
    assert good.inputs["reference_warped"] and good.metrics["pixels"] == size * size
    edge_share = 2 * 2 / 40  # at most ~one pixel row and column per 40 m square edge, both axes
    assert good.classes["overall_accuracy"] > 1 - edge_share

    # The same reference georeferenced 20 m off: a checkerboard half a square away disagrees mostly.
    off_transform = Affine(res, 0, west + 20 / 0.67, 0, -res, north)
    off = write_rgb(tmp_path / "off.tif", ref, crs="EPSG:3857", transform=off_transform)
    bad = evaluate_scene(pred_path, off, palette=load_palette("synthetic"))
    assert bad.classes["overall_accuracy"] < 0.6


def test_only_pixels_valid_in_both_are_compared(tmp_path):
    _, rgb = block_map(height=100, width=120)
    pred_mask = np.ones((100, 120), bool)
    pred_mask[:, :60] = False  # internal mask: left half outside the footprint
    garbage = rgb.copy()
    garbage[:, :, :60] = 7  # whatever lies under the mask must not count
    ref = rgb.copy()
    ref[:, :50, :] = 0  # nodata = 0 on the reference's top half
    pred_path = write_rgb(tmp_path / "p.tif", garbage, mask=pred_mask)
    ref_path = write_rgb(tmp_path / "r.tif", ref, nodata=0)
    report = evaluate_scene(pred_path, ref_path)
    assert report.metrics["pixels"] == 60 * 50 and report.metrics["l1"] == 0.0


def test_masks_that_never_meet_are_an_error(tmp_path):
    _, rgb = block_map(height=64, width=64)
    left = np.zeros((64, 64), bool)
    left[:, :32] = True
    pred = write_rgb(tmp_path / "p.tif", rgb, mask=left)
    ref = write_rgb(tmp_path / "r.tif", rgb, mask=~left)
    with pytest.raises(UserError, match="no pixel is valid in both"):
        evaluate_scene(pred, ref)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_ungeoreferenced_rasters(tmp_path):
    import rasterio

    _, rgb = block_map(height=64, width=64)
    plain = []
    for name in ("a.tif", "b.tif"):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as ds:
            ds.write(rgb)
        plain.append(str(tmp_path / name))
    assert evaluate_scene(*plain).metrics["pixels"] == 64 * 64  # both plain, same size: pixel for pixel
    with pytest.raises(UserError, match="has no CRS or geotransform"):
        evaluate_scene(write_rgb(tmp_path / "geo.tif", rgb), plain[0])


def test_single_band_references_paletted_and_grey(tmp_path):
    import rasterio

    classes, rgb = block_map(height=64, width=64, seed=3)
    path = tmp_path / "pal.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8", crs=UTM,
        transform=Affine(1.0, 0, ORIGIN[0], 0, -1.0, ORIGIN[1]),
    ) as ds:
        ds.write(classes.astype(np.uint8), 1)
        ds.write_colormap(1, {0: tuple(LAND), 1: tuple(WATER), 2: tuple(BUILDING)})
    report = evaluate_scene(write_rgb(tmp_path / "p.tif", rgb), str(path))
    assert report.metrics["l1"] == 0.0 and report.metrics["pixels"] == 64 * 64

    grey = tmp_path / "grey.tif"  # a single band without colour table is grey: R = G = B
    with rasterio.open(
        grey, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8", crs=UTM,
        transform=Affine(1.0, 0, ORIGIN[0], 0, -1.0, ORIGIN[1]),
    ) as ds:
        ds.write(rgb[0], 1)
    report = evaluate_scene(write_rgb(tmp_path / "p.tif", rgb), str(grey))
    expected = np.abs(rgb.astype(int) - rgb[0].astype(int)).mean()
    assert report.metrics["l1"] == pytest.approx(expected)


def test_cli_table_and_json(tmp_path):
    classes, rgb = block_map(seed=4)
    pred = rgb.copy()
    pred[:, classes == 2] = LAND[:, None]  # every building predicted as land
    p, r = write_rgb(tmp_path / "p.tif", pred), write_rgb(tmp_path / "r.tif", rgb)
    out = tmp_path / "report.json"
    result = run(p, r, "--palette", "synthetic", "--json", out)
    assert result.exit_code == 0, result.output
    assert "map-class accuracy" in result.output and "building" in result.output
    report = json.loads(out.read_text())
    expected = 1 - (classes == 2).mean()
    assert report["mode"] == "scene"
    assert report["classes"]["overall_accuracy"] == pytest.approx(expected)
    assert report["classes"]["classes"]["building"]["accuracy"] == 0.0
    assert f"{100 * expected:.1f} %" in result.output

    again = run(p, r, "--json", out)  # exists: refused, untouched
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert json.loads(out.read_text()) == report
    assert run(p, r, "--json", out, "--overwrite").exit_code == 0


def test_custom_palette_file_assigns_nearest_colours(tmp_path):
    # Two classes only; the third colour of the map (a darker water) is nearest to "wet".
    classes, _ = block_map(seed=5)
    dark_water = (WATER.astype(int) - 12).astype(np.uint8)
    rgb = paint(classes, [LAND, WATER, dark_water])
    palette = tmp_path / "palette.json"
    entries = [{"name": "dry", "color": LAND.tolist()}, {"name": "wet", "color": WATER.tolist()}]
    palette.write_text(json.dumps({"classes": entries}))
    pred = rgb.copy()
    pred[:, classes == 2] = LAND[:, None]  # dark water predicted as land: reference "wet", predicted "dry"
    out = tmp_path / "r.json"
    p, r = write_rgb(tmp_path / "p.tif", pred), write_rgb(tmp_path / "r.tif", rgb)
    assert run(p, r, "--palette", palette, "--json", out).exit_code == 0
    result = json.loads(out.read_text())["classes"]
    assert list(result["classes"]) == ["dry", "wet"]
    assert result["overall_accuracy"] == pytest.approx(1 - (classes == 2).mean())
    assert result["classes"]["wet"]["reference_share"] == pytest.approx((classes > 0).mean())
    assert result["classes"]["dry"]["accuracy"] == 1.0


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"classes": [{"name": "a", "color": [1, 2, 3]}]}', "at least two classes"),
        ('{"classes": [{"name": "a", "color": [1, 2]}, {"name": "b", "color": [0, 0, 0]}]}', "'color': [r, g, b]"),
        ('{"classes": [{"name": "a", "color": [1, 2, 300]}, {"name": "b", "color": [0, 0, 0]}]}', "0-255"),
        ('{"classes": [{"name": "a", "color": [1, 2, 3]}, {"name": "a", "color": [0, 0, 0]}]}', "unique"),
    ],
)
def test_bad_palette_files(tmp_path, content, message):
    palette = tmp_path / "palette.json"
    palette.write_text(content)
    with pytest.raises(UserError, match=re.escape(message)):
        load_palette(str(palette))


def test_bad_inputs_are_one_line_errors(tmp_path):
    _, rgb = block_map(height=64, width=64)
    p = write_rgb(tmp_path / "p.tif", rgb)
    far = write_rgb(tmp_path / "far.tif", rgb, transform=Affine(1.0, 0, ORIGIN[0] + 10_000, 0, -1.0, ORIGIN[1]))
    palette = tmp_path / "bad.json"
    palette.write_text("[1, 2")
    cases = [
        ((p, tmp_path / "missing.tif"), "missing.tif: file not found"),
        ((p, far), "do not overlap"),
        ((p, p, "--palette", palette), "not valid JSON"),
        ((p, p, "--palette", tmp_path / "none.json"), "no such file"),
        ((p, p, "--json", tmp_path / "no" / "such" / "r.json"), "does not exist"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert run(p).exit_code == 2  # usage: two rasters needed
    assert run("--weights", tmp_path / "g.pt", p, p).exit_code == 2


# ------------------------------------------------------------------------------------------------- datasets


@pytest.fixture
def generator_file(tmp_path, small_unet):
    path = tmp_path / "generator.pt"
    save_generator(path, small_unet, GeneratorMeta("unet256", 8, "instance"))
    return path


def generated(path, a: np.ndarray) -> np.ndarray:
    """What the checkpoint's generator, in translate's inference mode, makes of one uint8 tile."""
    net = load_generator(path).for_inference()
    with torch.no_grad():
        return to_uint8(net(torch.from_numpy(a[None].astype(np.float32) / 127.5 - 1)))[0]


def test_dataset_mode_per_tile_psnr_and_pooled_accuracy(tmp_path, generator_file):
    rng = np.random.default_rng(0)
    val = tmp_path / "tiles" / "val"
    val.mkdir(parents=True)
    (tmp_path / "tiles" / "train").mkdir()
    a1, a2 = (rng.integers(0, 256, (3, 256, 256), dtype=np.uint8) for _ in range(2))
    b1 = generated(generator_file, a1)  # exactly what the generator makes: a perfect tile
    out2 = generated(generator_file, a2).astype(int)
    b2 = np.where(out2 <= 245, out2 + 10, out2 - 10).astype(np.uint8)  # every channel off by exactly 10
    write_png(val / "0001.png", np.concatenate([a1, b1], axis=2))
    write_png(val / "0002.png", np.concatenate([a2, b2], axis=2))

    out = tmp_path / "r.json"
    result = run("--weights", generator_file, tmp_path / "tiles", "--json", out, "--batch-size", 1, "--device", "cpu",
                 "--precision", "fp32")  # what `generated` computes
    assert result.exit_code == 0, result.output
    m = json.loads(out.read_text())["metrics"]
    assert m["l1"] == pytest.approx(5.0)  # pooled: half the pixels off by 10
    assert m["acc_5"] == m["acc_10"] == pytest.approx(0.5) and m["acc_20"] == 1.0
    assert m["psnr"] == pytest.approx((PSNR_CAP + 10 * math.log10(255**2 / 100)) / 2)  # mean of per-tile PSNR

    out_batched = tmp_path / "r2.json"
    assert run("--weights", generator_file, tmp_path / "tiles", "--json", out_batched, "--batch-size", 2,
               "--device", "cpu", "--precision", "fp32").exit_code == 0
    assert json.loads(out_batched.read_text())["metrics"] == pytest.approx(m)  # batch size never changes results

    missing = run("--weights", generator_file, tmp_path / "tiles", "--split", "test")
    assert missing.exit_code == 1 and "has no 'test' split" in missing.output and "train, val" in missing.output


def test_dataset_mode_rejects_tiles_the_generator_cannot_take(tmp_path, generator_file):
    val = tmp_path / "tiles" / "val"
    val.mkdir(parents=True)
    write_png(val / "x.png", np.zeros((3, 100, 200), np.uint8))
    result = run("--weights", generator_file, tmp_path / "tiles", "--device", "cpu")
    assert result.exit_code == 1 and "multiples of 256" in result.output
    bad_weights = tmp_path / "junk.pt"
    bad_weights.write_bytes(b"not a checkpoint")
    assert run("--weights", bad_weights, tmp_path / "tiles").exit_code == 1


def test_dataset_mode_scores_only_the_valid_pixels_of_each_tiles_mask(tmp_path, generator_file):
    """make-tiles blacks out nodata in both halves and stores the tile's mask: none of it may count."""
    rng = np.random.default_rng(3)
    tiles = tmp_path / "tiles"
    (tiles / "val").mkdir(parents=True)
    (tiles / "masks" / "val").mkdir(parents=True)
    a = rng.integers(0, 256, (3, 256, 256), dtype=np.uint8)
    valid = np.ones((256, 256), bool)
    valid[:60] = False  # a nodata collar along the top
    a[:, ~valid] = 0
    b = generated(generator_file, a)  # perfect where valid ...
    b[:, ~valid] = 0  # ... and black fill where not, which the generator does not predict
    write_png(tiles / "val" / "0001.png", np.concatenate([a, b], axis=2))
    out = tmp_path / "r.json"
    args = ("--weights", generator_file, tiles, "--palette", "synthetic", "--device", "cpu", "--precision", "fp32",
            "--json", out)

    unmasked = run(*args)
    assert unmasked.exit_code == 0, unmasked.output
    assert json.loads(out.read_text())["metrics"]["l1"] > 1  # the fill is scored without the mask

    write_png(tiles / "masks" / "val" / "0001.png", np.where(valid, 255, 0).astype(np.uint8))
    masked = run(*args, "--overwrite")
    assert masked.exit_code == 0, masked.output
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert m["l1"] == 0 and m["rmse"] == 0 and m["psnr"] == PSNR_CAP and m["acc_5"] == 1.0
    assert m["pixels"] == valid.sum()
    assert report["classes"]["overall_accuracy"] == 1.0 and report["classes"]["miou"] == 1.0
    assert np.sum(report["classes"]["confusion"]) == valid.sum()
    assert "1 tile(s) with nodata" in masked.output


def test_dataset_mode_says_when_the_split_is_empty(tmp_path, generator_file):
    for split in ("train", "val", "test"):
        (tmp_path / "tiles" / split).mkdir(parents=True)
    result = run("--weights", generator_file, tmp_path / "tiles", "--split", "test")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "the 'test' split is empty" in result.output and "--test-fraction" in result.output
    assert "--split" in result.output
