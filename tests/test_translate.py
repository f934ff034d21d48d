"""translate end to end on real GeoTIFFs: georeferencing, footprints, exactness, seams, scaling, output layout."""

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio.enums import ColorInterp

from geo_sat2map.cli import cli

from geo_sat2map.cli import translate as translate_cli
from geo_sat2map.models import NORM_MODES
from geo_sat2map.raster_io.output import COMPRESSIONS
from geo_sat2map.scaling import InputScaling
from geo_sat2map.inference.translate import SCALING_MODES
from geo_sat2map.windows import BLEND_MODES

from .translate_fixtures import (
    GEOGRAPHIC,
    UTM,
    generator_output,
    read,
    run_translate,
    save_small_generator,
    source_mask,
    texture,
    uint8_unit,
    write_raster,
)

RGBA = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]


def _footprint(height, width):
    """A rotated-scene-like footprint: a diamond with a hole, as a boolean mask."""
    yy, xx = np.mgrid[0:height, 0:width]
    diamond = np.abs(yy - height / 2) / height + np.abs(xx - width / 2) / width < 0.45
    hole = (yy - height * 0.55) ** 2 + (xx - width * 0.4) ** 2 < (min(height, width) * 0.08) ** 2
    return diamond & ~hole


@pytest.mark.parametrize(("crs", "transform"), [("EPSG:32633", UTM), ("EPSG:4326", GEOGRAPHIC)])
def test_output_is_on_exactly_the_input_grid_as_an_rgba_cog(tmp_path, weights, crs, transform):
    src = write_raster(tmp_path / "scene.tif", texture(300, 410), crs=crs, transform=transform)
    out = tmp_path / "map.tif"
    result = run_translate(src, "-o", out, "-w", weights)
    assert result.exit_code == 0, result.output
    data, profile, info = read(out)
    assert (profile["width"], profile["height"], profile["count"], profile["dtype"]) == (410, 300, 4, "uint8")
    assert info["crs"] == rasterio.crs.CRS.from_user_input(crs)
    assert info["transform"] == transform
    assert list(info["colorinterp"]) == RGBA
    assert info["structure"]["LAYOUT"] == "COG"
    assert profile.get("nodata") is None  # the footprint is the alpha band, never a nodata value
    assert (data[3] == 255).all()  # the whole scene is valid
    tags = info["tags"]
    assert tags["TILE_SIZE"] == "256" and tags["OVERLAP"] == "64" and tags["BLEND"] == "feather"
    assert tags["NORM_MODE"] == "instance" and tags["GEO_SAT2MAP_VERSION"]
    assert tags["TIFFTAG_SOFTWARE"].startswith("geo-sat2map")
    from geo_sat2map.atomic import file_sha256

    assert tags["MODEL_SHA256"] == file_sha256(weights)
    assert InputScaling.from_dict(json.loads(tags["INPUT_SCALING"])).kind == "uint8"
    assert data[:3].std() > 5  # a real image, not a constant
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.pt", "map.tif", "scene.tif"]


def test_one_tile_scene_without_overlap_is_the_generators_own_output(tmp_path, weights):
    scene = texture(256, 256, seed=3)
    src = write_raster(tmp_path / "tile.tif", scene)
    out = tmp_path / "map.tif"
    assert run_translate(src, "-o", out, "-w", weights, "--overlap", "0").exit_code == 0
    expected = generator_output(weights, uint8_unit(scene))
    got = read(out)[0][:3]
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert (got == expected).mean() > 0.99


def test_small_scene_is_reflection_padded_not_zero_padded(tmp_path, weights):
    scene = texture(100, 120, seed=4)
    src = write_raster(tmp_path / "small.tif", scene)
    out = tmp_path / "map.tif"
    assert run_translate(src, "-o", out, "-w", weights, "--overlap", "0").exit_code == 0
    top, left = (256 - 100) // 2, (256 - 120) // 2
    padded = np.pad(uint8_unit(scene), ((0, 0), (top, 256 - 100 - top), (left, 256 - 120 - left)), mode="reflect")
    expected = generator_output(weights, padded)[:, top:top + 100, left:left + 120]
    got = read(out)[0][:3].astype(int)
    assert np.abs(got - expected).max() <= 1
    zero_padded = np.pad(uint8_unit(scene), ((0, 0), (top, 256 - 100 - top), (left, 256 - 120 - left)),
                         constant_values=-1.0)
    assert np.abs(got - generator_output(weights, zero_padded)[:, top:top + 100, left:left + 120]).mean() > 2


@pytest.mark.slow
def test_batch_size_never_changes_results(tmp_path, weights):
    src = write_raster(tmp_path / "scene.tif", texture(400, 500, seed=5))
    outputs = []
    for batch in ("1", "5"):
        out = tmp_path / f"map{batch}.tif"
        assert run_translate(src, "-o", out, "-w", weights, "--batch-size", batch).exit_code == 0
        outputs.append(read(out)[0].astype(int))
    assert np.abs(outputs[0] - outputs[1]).max() <= 1
    assert (outputs[0] == outputs[1]).mean() > 0.999


def _shift_disagreement(tmp_path, weights, overlap):
    """Mean |difference| on the common area between a scene and the same scene shifted by 100 px."""
    scene, shift = texture(700, 700, seed=6), 100
    a = write_raster(tmp_path / "a.tif", scene)
    b = write_raster(tmp_path / "b.tif", scene[:, shift:, shift:], transform=UTM @ Affine.translation(shift, shift))
    outputs = []
    for src in (a, b):
        out = tmp_path / f"{src.stem}-{overlap}.tif"
        args = [src, "-o", out, "-w", weights] + (["--overlap", overlap] if overlap is not None else [])
        assert run_translate(*args).exit_code == 0
        outputs.append(read(out)[0][:3].astype(float))
    return np.abs(outputs[0][:, shift:, shift:] - outputs[1]).mean()


@pytest.mark.slow
def test_shifted_scene_agrees_far_better_with_default_blending_than_with_plain_tiles(tmp_path, weights):
    plain = _shift_disagreement(tmp_path, weights, "0")
    blended = _shift_disagreement(tmp_path, weights, None)
    assert blended < plain / 2.5, (blended, plain)


FOOTPRINT_KINDS = ["nodata", "alpha", "internal-mask"]


def _scene_with_footprint(path, kind, garbage_seed):
    """The same valid pixels under three kinds of GDAL mask; what lies under the mask depends on the seed."""
    scene, valid = texture(300, 340, seed=7), _footprint(300, 340)
    under = np.random.default_rng(garbage_seed).integers(1, 256, scene.shape).astype(np.uint8)
    if kind == "nodata":
        return write_raster(path, np.where(valid, scene, 0).astype(np.uint8), nodata=0), valid
    data = np.where(valid, scene, under).astype(np.uint8)
    if kind == "alpha":
        return write_raster(path, data, alpha=valid), valid
    return write_raster(path, data, mask=valid), valid


@pytest.mark.parametrize("kind", FOOTPRINT_KINDS)
def test_footprint_propagates_as_alpha_and_masked_pixels_do_not_leak(tmp_path, weights, kind):
    outputs = []
    for seed in (0, 1) if kind != "nodata" else (0,):
        src, valid = _scene_with_footprint(tmp_path / f"{kind}{seed}.tif", kind, seed)
        assert (source_mask(src) == valid).all()
        out = tmp_path / f"map{seed}.tif"
        result = run_translate(src, "-o", out, "-w", weights)
        assert result.exit_code == 0, result.output
        data = read(out)[0]
        assert ((data[3] == 255) == valid).all() and set(np.unique(data[3])) == {0, 255}
        assert (data[:3, ~valid] == 0).all()
        outputs.append(data)
    if kind != "nodata":  # different garbage under the mask, identical map: holes are filled from valid pixels
        assert np.array_equal(outputs[0], outputs[1])


def test_uint16_scene_uses_one_scene_wide_stretch(tmp_path, weights):
    scene = texture(300, 300, seed=8, dtype="uint16") * 40 + 1000
    src = write_raster(tmp_path / "scene16.tif", scene)
    out = tmp_path / "map.tif"
    result = CliRunnerWithLog().invoke(src, out, weights)
    assert result.exit_code == 0, result.output
    data, _, info = read(out)
    scaling = InputScaling.from_dict(json.loads(info["tags"]["INPUT_SCALING"]))
    assert scaling.kind == "percentile"
    np.testing.assert_allclose(scaling.low, np.percentile(scene.reshape(3, -1), 2, axis=1), rtol=0.02)
    np.testing.assert_allclose(scaling.high, np.percentile(scene.reshape(3, -1), 98, axis=1), rtol=0.02)
    assert "per-band stretch" in result.output and "computed once for this scene" in result.output
    assert (data[3] == 255).all() and data[:3].std() > 5


def test_uint16_scene_with_checkpoint_stretch_matches_the_equivalent_8bit_scene(tmp_path):
    scene8 = texture(256, 300, seed=9)
    scene16 = scene8.astype("uint16") * 100  # exactly the 8-bit scene under the stored stretch
    stretch = InputScaling("percentile", (0.0,) * 3, (25500.0,) * 3, (2.0, 98.0))
    weights = save_small_generator(tmp_path / "generator.pt", scaling=stretch)
    outputs = []
    for name, data in (("s8.tif", scene8), ("s16.tif", scene16)):
        out = tmp_path / f"map-{name}"
        assert run_translate(write_raster(tmp_path / name, data), "-o", out, "-w", weights).exit_code == 0
        outputs.append(read(out))
    assert np.abs(outputs[0][0].astype(int) - outputs[1][0]).max() <= 1
    used = InputScaling.from_dict(json.loads(outputs[1][2]["tags"]["INPUT_SCALING"]))
    assert used == stretch


def test_float_scene_with_nan_holes_masks_them(tmp_path, weights):
    scene = texture(260, 300, seed=12).astype("float32") / 255
    holes = np.zeros((260, 300), bool)
    holes[100:140, 50:120] = True
    scene[1][holes] = np.nan  # one band is enough to make a pixel unusable
    src = write_raster(tmp_path / "float.tif", scene)
    out = tmp_path / "map.tif"
    result = run_translate(src, "-o", out, "-w", weights)
    assert result.exit_code == 0, result.output
    data = read(out)[0]
    assert ((data[3] == 0) == holes).all()
    assert data[:3, ~holes].std() > 5  # NaN did not spread through the windows


def test_checkpoint_bands_are_the_default_and_a_resolution_mismatch_is_reported(tmp_path):
    weights = save_small_generator(tmp_path / "generator.pt", bands=(3, 2, 1), resolution=0.5)
    scene = texture(256, 256, seed=13)
    opaque = np.full_like(scene[:1], 255)  # GDAL takes a 4th uint8 band for alpha
    src = write_raster(tmp_path / "scene.tif", np.concatenate([scene, opaque]))  # 4 bands, 10 m pixels
    out = tmp_path / "map.tif"
    result = CliRunnerWithLog().invoke(src, out, weights, "--overlap", "0")
    assert result.exit_code == 0, result.output
    assert "bands 3,2,1" in result.output and "training resolution" in result.output
    data, _, info = read(out)
    assert info["tags"]["INPUT_BANDS"] == "3,2,1"
    expected = generator_output(weights, uint8_unit(scene[::-1]))
    assert np.abs(data[:3].astype(int) - expected).max() <= 1


def write_tagged(path, rgb: np.ndarray, interp):
    """``rgb`` stored in the band order that ``interp`` (one ColorInterp per band) tags."""
    order = {ColorInterp.red: 0, ColorInterp.green: 1, ColorInterp.blue: 2}
    data = np.stack([rgb[order[c]] if c in order else rgb[i] for i, c in enumerate(interp)])
    write_raster(path, data)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = list(interp)
    return path


def test_bands_are_matched_by_colour_interpretation_when_the_scene_tags_them(tmp_path):
    """A checkpoint trained on an RGB-tagged image gets the red band as red from a BGR-tagged scene."""
    weights = save_small_generator(tmp_path / "generator.pt", bands=(1, 2, 3), band_roles=("red", "green", "blue"))
    rgb = texture(256, 256, seed=14)
    rgb_scene = write_tagged(tmp_path / "rgb.tif", rgb, [ColorInterp.red, ColorInterp.green, ColorInterp.blue])
    bgr_scene = write_tagged(tmp_path / "bgr.tif", rgb, [ColorInterp.blue, ColorInterp.green, ColorInterp.red])
    expected = generator_output(weights, uint8_unit(rgb))
    outputs = {}
    for name, scene, extra in (("rgb", rgb_scene, ()), ("bgr", bgr_scene, ()), ("forced", bgr_scene, ("--bands", "1,2,3"))):
        out = tmp_path / f"map-{name}.tif"
        result = CliRunnerWithLog().invoke(scene, out, weights, "--overlap", "0", *extra)
        assert result.exit_code == 0, result.output
        outputs[name] = (read(out), result.output)
    (data, _, info), log = outputs["bgr"]
    assert info["tags"]["INPUT_BANDS"] == "3,2,1"
    assert "bgr.tif: bands 3,2,1 by the scene's colour interpretation (red, green, blue)" in log
    assert np.abs(data[:3].astype(int) - expected).max() <= 1
    assert np.array_equal(data, outputs["rgb"][0][0])  # the same map as from the RGB-tagged scene
    (forced, _, forced_info), forced_log = outputs["forced"]  # --bands still overrides
    assert forced_info["tags"]["INPUT_BANDS"] == "1,2,3" and "bands 1,2,3 from --bands" in forced_log
    assert not np.array_equal(forced, data)


def test_untagged_scenes_and_checkpoints_without_colour_roles_go_by_index(tmp_path):
    rgb = texture(256, 256, seed=15)
    bgr_scene = write_tagged(tmp_path / "bgr.tif", rgb, [ColorInterp.blue, ColorInterp.green, ColorInterp.red])
    grey_scene = write_tagged(tmp_path / "grey.tif", rgb[::-1], [ColorInterp.gray, ColorInterp.undefined,
                                                                  ColorInterp.undefined])
    with_roles = save_small_generator(tmp_path / "roles.pt", bands=(1, 2, 3), band_roles=("red", "green", "blue"))
    older = save_small_generator(tmp_path / "older.pt", bands=(1, 2, 3))  # written before colour roles
    cases = [(grey_scene, with_roles, "by index: the scene does not tag bands red, green, blue"),
             (bgr_scene, older, "by index (the checkpoint records no colour roles)")]
    for scene, weights, said in cases:
        out = tmp_path / f"{scene.stem}-{weights.stem}.tif"
        result = CliRunnerWithLog().invoke(scene, out, weights, "--overlap", "0")
        assert result.exit_code == 0, result.output
        assert f"bands 1,2,3 {said}" in result.output
        data, _, info = read(out)
        assert info["tags"]["INPUT_BANDS"] == "1,2,3"
        assert np.abs(data[:3].astype(int) - generator_output(weights, uint8_unit(rgb[::-1]))).max() <= 1


def test_a_16_bit_scene_for_an_8_bit_model_warns_once_about_the_stretch(tmp_path, weights):
    scene = texture(300, 300, seed=8, dtype="uint16") * 40 + 1000
    src = write_raster(tmp_path / "scene16.tif", scene)
    result = CliRunnerWithLog().invoke(src, tmp_path / "map.tif", weights)
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "trained on 8-bit imagery" in line]
    assert len(warned) == 1 and "the input is uint16" in warned[0] and "2-98 % stretch" in warned[0]
    quiet = CliRunner().invoke(cli, ["-q", "translate", str(src), "-o", str(tmp_path / "q.tif"), "-w", str(weights)])
    assert quiet.exit_code == 0 and "trained on 8-bit imagery" in quiet.output  # a warning: -q keeps it
    asked = CliRunnerWithLog().invoke(src, tmp_path / "scene.tif", weights, "--scaling", "scene")
    assert asked.exit_code == 0 and "trained on 8-bit imagery" not in asked.output


def test_all_nodata_scene_gives_a_fully_transparent_output(tmp_path, weights):
    src = write_raster(tmp_path / "empty.tif", np.zeros((3, 200, 300), np.uint8), nodata=0)
    out = tmp_path / "map.tif"
    result = CliRunnerWithLog().invoke(src, out, weights)
    assert result.exit_code == 0, result.output
    data = read(out)[0]
    assert (data == 0).all()
    assert "fully transparent" in result.output


@pytest.mark.parametrize("compress", ["zstd", "lzw"])  # the streaming COG writer; GDAL's COG driver
def test_cog_has_internal_overviews_and_the_requested_compression(tmp_path, weights, compress):
    from geo_sat2map.raster_io.cog import check_cog_layout

    src = write_raster(tmp_path / "big.tif", texture(1024, 1100, seed=10), tiled=True)
    out = tmp_path / "map.tif"
    result = run_translate(src, "-o", out, "-w", weights, "--overlap", "0", "--compress", compress,
                           "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert check_cog_layout(out) == []
    _, profile, info = read(out)
    assert info["structure"]["LAYOUT"] == "COG" and info["structure"]["COMPRESSION"] == compress.upper()
    assert info["structure"]["PREDICTOR"] == "2"
    assert info["overviews"] == [2, 4] and profile["blockxsize"] == 512 and profile["tiled"]
    with rasterio.open(out) as ds:
        assert ds.overviews(4) == [2, 4]
        low = ds.read(out_shape=(4, ds.height // 4, ds.width // 4))
        full = ds.read()
    assert (low[3] == 255).all()
    # overviews are 4x4 means of the full-resolution map (GDAL's average or our in-stream pyramid)
    means = full[:3, :1024, :1100].reshape(3, 256, 4, 275, 4).mean(axis=(2, 4))
    assert np.abs(low[:3].astype(float) - means).mean() < 1.0


def test_no_cog_writes_a_tiled_geotiff_with_internal_overviews(tmp_path, weights):
    src = write_raster(tmp_path / "big.tif", texture(1024, 600, seed=11))
    out = tmp_path / "map.tif"
    result = run_translate(src, "-o", out, "-w", weights, "--overlap", "0", "--no-cog", "--co", "ZLEVEL=9")
    assert result.exit_code == 0, result.output
    _, profile, info = read(out)
    assert info["structure"].get("LAYOUT") != "COG"
    assert profile["tiled"] and profile["compress"] == "deflate" and info["overviews"] == [2]
    assert list(info["colorinterp"]) == RGBA and info["transform"] == UTM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "generator.pt", "map.tif"]


def test_a_creation_option_only_gdal_takes_says_once_that_it_takes_the_slower_path(tmp_path, weights):
    scenes = [write_raster(tmp_path / f"s{i}.tif", texture(200, 200, seed=i)) for i in (1, 2)]
    result = CliRunnerWithLog().invoke(scenes[0], tmp_path / "maps", weights, scenes[1], "--device", "cpu", "--co",
                                       "OVERVIEW_RESAMPLING=NEAREST")
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if "OVERVIEW_RESAMPLING" in line] == [
        "Warning: --co OVERVIEW_RESAMPLING: only GDAL's COG driver takes it, so the map takes the slower path "
        "(through GDAL, encoded twice)"]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["s1.tif", "s2.tif"]


def test_cli_choices_match_the_library():
    assert translate_cli.BLEND_CHOICES == BLEND_MODES
    assert translate_cli.COMPRESS_CHOICES == COMPRESSIONS
    assert translate_cli.NORM_CHOICES == NORM_MODES
    assert translate_cli.SCALING_CHOICES == SCALING_MODES


class CliRunnerWithLog:
    """Runs translate without -q, so the log lines (scaling, warnings) are in the output (on the CPU at fp32,
    which the expectations are)."""

    def invoke(self, src, out, weights, *extra):
        from click.testing import CliRunner

        from geo_sat2map.cli import cli

        return CliRunner().invoke(cli, ["translate", str(src), "-o", str(out), "-w", str(weights), "--device", "cpu",
                                        "--precision", "fp32", *map(str, extra)])
