"""translate --palette / --min-region / --format end to end: snapped RGBA, paletted and class GeoTIFFs."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from geo_sat2map.palette import Palette, nodata_index, to_json
from geo_sat2map.raster_io.cog import check_cog_layout

from .inference_oracle import reference_class_overview, reference_snap
from .translate_fixtures import read, run_translate, save_small_generator, texture, write_raster

NAMES = ("dark", "red", "green", "blue", "white", "grey")
COLOURS = ((20, 30, 40), (200, 40, 60), (60, 190, 80), (90, 90, 220), (240, 240, 240), (128, 128, 128))
EXACT = Palette(NAMES, COLOURS, "test maps", "exact", (0.3, 0.2, 0.2, 0.1, 0.1, 0.1))
NODATA = nodata_index(len(COLOURS))  # 15: six classes and the mask fit 4-bit pixels


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("palette")
    data = texture(600, 700, seed=3)
    data[:, 100:180, 200:330] = 0  # a nodata hole
    return {
        "scene": write_raster(root / "scene.tif", data, nodata=0),
        "exact": save_small_generator(root / "exact.pt", palette=EXACT),
        "clustered": save_small_generator(root / "clustered.pt", palette=Palette(NAMES, COLOURS, "x", "clustered")),
        "bare": save_small_generator(root / "bare.pt"),
    }


@pytest.fixture(scope="module")
def raw(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("raw") / "raw.tif"
    result = run_translate(files["scene"], "-o", out, "-w", files["exact"], "--palette", "none")
    assert result.exit_code == 0, result.output
    return read(out)[0]


def aux_categories(path: Path) -> list[str]:
    root = ElementTree.parse(f"{path}.aux.xml").getroot()
    return [c.text for c in root.iter("Category")]


def test_auto_snaps_to_an_exact_checkpoint_palette_with_the_oracles_min_region(files, raw, tmp_path):
    out = tmp_path / "map.tif"
    result = run_translate(files["scene"], "-o", out, "-w", files["exact"])
    assert result.exit_code == 0, result.output
    got, _, info = read(out)
    classes, valid = reference_snap(raw, np.array(COLOURS, np.uint8), radius=2, passes=2)
    expected = np.array(COLOURS, np.uint8)[classes].transpose(2, 0, 1) * valid
    np.testing.assert_array_equal(got[:3], expected)
    np.testing.assert_array_equal(got[3], raw[3])  # the mask is untouched
    assert json.loads(info["tags"]["PALETTE"]) == {"palette": "auto", "min_region": 8, "format": "rgba",
                                                   "snapped": True}
    # min-region 0: plain nearest colour, which differs (the filter removed specks)
    plain = tmp_path / "plain.tif"
    assert run_translate(files["scene"], "-o", plain, "-w", files["exact"], "--min-region", 0).exit_code == 0
    nearest, _ = reference_snap(raw, np.array(COLOURS, np.uint8), radius=0, passes=0)
    np.testing.assert_array_equal(read(plain)[0][:3], np.array(COLOURS, np.uint8)[nearest].transpose(2, 0, 1) * valid)
    assert (nearest != classes)[valid].any()


@pytest.mark.parametrize("weights", ["clustered", "bare"])
def test_auto_leaves_raw_colours_without_an_exact_palette(files, raw, tmp_path, weights):
    out = tmp_path / "map.tif"
    assert run_translate(files["scene"], "-o", out, "-w", files[weights]).exit_code == 0
    np.testing.assert_array_equal(read(out)[0], raw)


@pytest.mark.parametrize("compress", ["deflate", "lzw"])  # the streaming COG writer, and GDAL's
def test_paletted_and_classes_outputs(files, raw, tmp_path, compress):
    paletted, classes_out = tmp_path / "paletted.tif", tmp_path / "classes.tif"
    for out, fmt in ((paletted, "paletted"), (classes_out, "classes")):
        result = run_translate(files["scene"], "-o", out, "-w", files["clustered"], "--format", fmt,
                               "--compress", compress)
        assert result.exit_code == 0, result.output
        assert not check_cog_layout(out)
        assert aux_categories(out) == list(NAMES)
    classes, valid = reference_snap(raw, np.array(COLOURS, np.uint8), radius=2, passes=2)
    expected = np.where(valid, classes, NODATA).astype(np.uint8)
    with rasterio.open(paletted) as ds:
        assert ds.count == 1 and ds.dtypes[0] == "uint8" and ds.nodata == NODATA
        assert ds.tags(1, "IMAGE_STRUCTURE")["NBITS"] == "4"  # packed: 6 classes and the mask fit 4 bits
        assert ds.colorinterp == (ColorInterp.palette,)
        colormap = ds.colormap(1)
        assert [colormap[i][:3] for i in range(len(COLOURS))] == list(COLOURS)
        assert colormap[NODATA][3] == 0  # the mask's index is transparent
        np.testing.assert_array_equal(ds.read(1), expected)
        assert ((ds.read_masks(1) > 0) == valid).all()
        overview = ds.read(1, out_shape=(1, (ds.height + 1) // 2, (ds.width + 1) // 2))
        if compress == "deflate":  # our pyramid: 2x2 modes of the full resolution
            np.testing.assert_array_equal(overview, reference_class_overview(expected, len(COLOURS), NODATA))
        assert set(np.unique(overview)) <= set(range(len(COLOURS))) | {NODATA}  # never averaged
        crs, transform = ds.crs, ds.transform
    with rasterio.open(classes_out) as ds:
        assert ds.colorinterp == (ColorInterp.gray,) and ds.nodata == NODATA
        np.testing.assert_array_equal(ds.read(1), expected)  # the same classes as the paletted map
        assert (ds.crs, ds.transform) == (crs, transform)


def test_class_options_pack_level_and_predictor_follow_the_co(files, tmp_path):
    """--co NBITS=8 / PREDICTOR=YES widen a class map to 8 bits (same values, same nodata); a GDAL-only --co keeps
    the packing and the level through GDAL's COG driver; NBITS too narrow for the classes is one line."""
    expected = None
    for name, co, bits in (("stream", [], "4"), ("nbits8", ["--co", "NBITS=8"], None),
                           ("predictor", ["--co", "PREDICTOR=YES"], None), ("gdal", ["--co", "SPARSE_OK=YES"], "4")):
        out = tmp_path / f"{name}.tif"
        result = run_translate(files["scene"], "-o", out, "-w", files["exact"], "--format", "classes", *co)
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as ds:
            structure = ds.tags(1, "IMAGE_STRUCTURE")
            assert structure.get("NBITS") == bits and ds.nodata == NODATA and not check_cog_layout(out)
            assert ("PREDICTOR" in ds.tags(ns="IMAGE_STRUCTURE")) == (name == "predictor")
            values = ds.read(1)
        expected = values if expected is None else expected
        np.testing.assert_array_equal(values, expected)
    result = run_translate(files["scene"], "-o", tmp_path / "bad.tif", "-w", files["exact"], "--format", "classes",
                           "--co", "NBITS=2")
    assert result.exit_code == 1 and "--co NBITS=2: this class map takes 4, 8 bits a pixel (6 classes and the " \
        "nodata index 15)" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_paletted_map_is_at_most_a_third_of_the_rgba_map_of_the_same_classes(tmp_path):
    """The file-size acceptance on a synthetic-world map (flat classes, roads, buildings): its classes written as
    the default RGBA COG (palette colours, alpha) and as the default paletted COG, with the same tags."""
    import torch

    from geo_sat2map.inference.engine import LevelEmitter
    from geo_sat2map.inference.ops import downsample_classes, downsample_rgba
    from geo_sat2map.metrics import nearest_colour
    from geo_sat2map.palette import load_palette
    from geo_sat2map.raster_io import raster_info
    from geo_sat2map.raster_io.output import ClassBand, OutputOptions, open_map_sink
    from geo_sat2map.synthetic import SceneSpec, write_scene

    scene = write_scene(tmp_path / "world", SceneSpec(seed=12, width=512, height=512))
    palette = load_palette("synthetic")
    colours = palette.colour_array()
    with rasterio.open(scene.map) as ds:
        info, classes = raster_info(ds), nearest_colour(ds.read([1, 2, 3]), colours).astype(np.uint8)
    band = ClassBand(palette.names, palette.colours, paletted=True)
    rgba = np.concatenate([colours[classes], np.full((*classes.shape, 1), 255, np.uint8)], axis=-1)
    tags = {"MODEL_FILE": "generator.pt", "PALETTE": "{}"}

    def write(path: Path, rows: np.ndarray, options: OutputOptions, downsample) -> int:
        sink = open_map_sink(path, info, tags, options)
        levels = LevelEmitter(lambda level, r: sink.write_rows(level, r.numpy()), sink.overview_levels,
                              downsample=downsample)
        for start in range(0, rows.shape[0], 100):
            levels.rows(torch.from_numpy(np.ascontiguousarray(rows[start:start + 100])))
        levels.finish()
        sink.close()
        return path.stat().st_size

    rgba_bytes = write(tmp_path / "rgba.tif", rgba, OutputOptions(), downsample_rgba)
    paletted_bytes = write(tmp_path / "paletted.tif", classes[..., None], OutputOptions(class_band=band),
                           lambda rows, last: downsample_classes(rows, len(colours), band.nodata, last))
    assert paletted_bytes <= rgba_bytes / 3, (paletted_bytes, rgba_bytes)
    with rasterio.open(tmp_path / "paletted.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), classes)


def test_cli_choices_match_the_library():
    from geo_sat2map.cli import palette as palette_cli
    from geo_sat2map.cli import translate as translate_cli
    from geo_sat2map.inference.snap import DEFAULT_MIN_REGION, OUTPUT_FORMATS
    from geo_sat2map.palette import PALETTE_WRITERS

    assert translate_cli.FORMAT_CHOICES == OUTPUT_FORMATS and translate_cli.DEFAULT_MIN_REGION == DEFAULT_MIN_REGION
    assert palette_cli.PALETTE_SUFFIXES == tuple(PALETTE_WRITERS)


def test_palette_file_and_errors_are_one_line(files, raw, tmp_path):
    palette_file = tmp_path / "p.json"
    palette_file.write_text(to_json(Palette(NAMES[:3], COLOURS[:3], "mine")))
    out = tmp_path / "map.tif"
    result = run_translate(files["scene"], "-o", out, "-w", files["bare"], "--palette", palette_file, "--format",
                           "classes", "--min-region", 0)
    assert result.exit_code == 0, result.output
    classes, valid = reference_snap(raw, np.array(COLOURS[:3], np.uint8), radius=0, passes=0)
    np.testing.assert_array_equal(read(out)[0][0], np.where(valid, classes, 3))  # 3 classes + the mask: 2 bits
    with rasterio.open(out) as ds:
        assert ds.nodata == 3 and ds.tags(1, "IMAGE_STRUCTURE")["NBITS"] == "2"
    assert aux_categories(out) == list(NAMES[:3])
    for args, message in (
        (["-w", files["bare"], "--format", "paletted"], "--format paletted needs a palette, but the checkpoint has no "
                                                       "palette"),
        (["-w", files["exact"], "--palette", "none", "--format", "classes"], "--format classes needs a palette"),
        (["-w", files["exact"], "--palette", tmp_path / "missing.json"], "--palette"),
    ):
        result = run_translate(files["scene"], "-o", tmp_path / "bad.tif", *args)
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "bad.tif").exists()


@pytest.mark.slow
def test_two_torchrun_processes_snap_and_filter_the_pixels_of_one(tmp_path):
    """Bands run with the filter's halo: the split map equals the one-process map (tile rows meet mid-scene)."""
    from geo_sat2map.inference import TranslateConfig, translate

    from .test_translate_scale import torchrun

    data = texture(700, 300, seed=21)
    data[:, 400:470, 40:120] = 0
    scene = write_raster(tmp_path / "scene.tif", data, nodata=0)
    weights = save_small_generator(tmp_path / "generator.pt", palette=EXACT)
    translate(TranslateConfig(input=scene, output=tmp_path / "one.tif", weights=weights, device="cpu",
                              fixed_batch=True, progress=False, min_region=12, precision="fp32"))
    proc = torchrun(tmp_path, scene, "-o", "map.tif", "-w", weights, "--min-region", 12, "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected, got = read(tmp_path / "one.tif")[0], read(tmp_path / "map.tif")[0]
    assert set(map(tuple, got[:3].reshape(3, -1).T[got[3].ravel() > 0])) <= set(COLOURS)  # snapped
    np.testing.assert_array_equal(got, expected)  # one-band maps under torchrun: tests/test_translate_classes.py
