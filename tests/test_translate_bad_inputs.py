"""translate refuses bad input with one clear line, a non-zero exit, no traceback and nothing at OUTPUT."""

import os

import numpy as np
import pytest
import rasterio
from affine import Affine

from geo_sat2map.errors import UserError
from geo_sat2map.inference.runner import GeneratorRunner

from .translate_fixtures import read, run_translate, texture, write_raster


@pytest.fixture
def scene(tmp_path):
    return write_raster(tmp_path / "scene.tif", texture(300, 300))


def _assert_clean_failure(result, out, *expected, exit_code=1):
    """One 'Error: ...' line naming the problem; nothing (not even a temp file) beside the output."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists()
    if out.parent.exists():
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_missing_input(tmp_path, weights):
    out = tmp_path / "map.tif"
    _assert_clean_failure(run_translate(tmp_path / "nope.tif", "-o", out, "-w", weights), out, "nope.tif", "not found")


def test_unreadable_input(tmp_path, weights):
    src = tmp_path / "notes.tif"
    src.write_text("not a raster")
    out = tmp_path / "map.tif"
    _assert_clean_failure(run_translate(src, "-o", out, "-w", weights), out, "notes.tif", "not a raster")


def test_a_truncated_geotiff_says_what_gdal_noticed(tmp_path, weights):
    full = write_raster(tmp_path / "full.tif", texture(64, 64), compress="deflate").read_bytes()
    cut = tmp_path / "cut.tif"  # an interrupted download: cut inside the CRS text (GeoASCIIParams), after the IFD
    cut.write_bytes(full[: full.index(b"WGS 84 / UTM zone 33N") + 5])
    out = tmp_path / "map.tif"
    _assert_clean_failure(run_translate(cut, "-o", out, "-w", weights), out, "cut.tif: has no CRS",
                          "(GDAL warned on opening it: ", "GeoASCIIParams")


def test_no_crs_is_refused_unless_allowed(tmp_path, weights):
    src = write_raster(tmp_path / "plain.tif", texture(200, 260), crs=None, transform=Affine.identity())
    out = tmp_path / "map.tif"
    _assert_clean_failure(run_translate(src, "-o", out, "-w", weights), out, "no CRS", "--allow-ungeoreferenced")
    result = run_translate(src, "-o", out, "-w", weights, "--allow-ungeoreferenced")
    assert result.exit_code == 0, result.output
    data, profile, info = read(out)
    assert info["crs"] is None and (profile["width"], profile["height"]) == (260, 200) and (data[3] == 255).all()


def test_no_geotransform_is_refused(tmp_path, weights):
    src = write_raster(tmp_path / "nogt.tif", texture(200, 200), transform=None)
    out = tmp_path / "map.tif"
    _assert_clean_failure(run_translate(src, "-o", out, "-w", weights), out, "no geotransform")


def test_corrupt_block_names_the_window(tmp_path, weights):
    src = write_raster(tmp_path / "corrupt.tif", texture(512, 512), tiled=True, compress="deflate")
    with rasterio.open(src) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
    with open(src, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * 64)
    out = tmp_path / "map.tif"
    result = run_translate(src, "-o", out, "-w", weights)
    _assert_clean_failure(result, out, "corrupt.tif", "could not read window", "corrupt or unreadable block")


def test_fewer_bands_than_requested(tmp_path, weights, scene):
    out = tmp_path / "map.tif"
    _assert_clean_failure(run_translate(scene, "-o", out, "-w", weights, "--bands", "1,2,5"), out,
                          "has 3 band(s)", "5", "--bands")
    two = write_raster(tmp_path / "two.tif", texture(100, 100)[:2])
    _assert_clean_failure(run_translate(two, "-o", out, "-w", weights), out, "has 2 band(s)")


def test_non_numeric_bands(tmp_path, weights, scene):
    out = tmp_path / "map.tif"
    result = run_translate(scene, "-o", out, "-w", weights, "--bands", "red,green,blue")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "not a comma-separated list of band numbers" in result.output and not out.exists()


def test_existing_output_is_left_untouched_without_overwrite(tmp_path, weights, scene):
    out = tmp_path / "map.tif"
    out.write_bytes(b"precious")
    before = out.stat().st_mtime_ns
    result = run_translate(scene, "-o", out, "-w", weights)
    assert result.exit_code == 1 and "already exists" in result.output and "--overwrite" in result.output
    assert out.read_bytes() == b"precious" and out.stat().st_mtime_ns == before
    result = run_translate(scene, "-o", out, "-w", weights, "--overwrite")
    assert result.exit_code == 0, result.output
    assert read(out)[1]["count"] == 4
    assert (out.stat().st_mode & 0o777) == 0o666 & ~_umask()  # a normal file, not mkstemp's owner-only mode


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_output_folder_missing(tmp_path, weights, scene):
    out = tmp_path / "no" / "such" / "map.tif"
    _assert_clean_failure(run_translate(scene, "-o", out, "-w", weights), out, "does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_output_folder_not_writable(tmp_path, weights, scene):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        out = folder / "map.tif"
        _assert_clean_failure(run_translate(scene, "-o", out, "-w", weights), out, "not writable")
    finally:
        folder.chmod(0o755)


def test_weights_that_do_not_load(tmp_path, scene):
    bad = tmp_path / "latest_net_G.pth"
    bad.write_bytes(bytes(range(256)) * 8)  # fixed junk; random bytes are tried, by seed, in test_fuzz_inputs
    out = tmp_path / "map.tif"
    _assert_clean_failure(run_translate(scene, "-o", out, "-w", bad), out, "latest_net_G.pth")
    _assert_clean_failure(run_translate(scene, "-o", out, "-w", tmp_path / "missing.pt"), out, "not found")


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--tile-size", "300", "multiple of 256"),
    ("--tile-size", "0", "multiple of 256"),
    ("--overlap", "256", "smaller than the tile size"),
    ("--overlap", "-5", "0 or more"),
])
def test_bad_tiling_options(tmp_path, weights, scene, option, value, message):
    out = tmp_path / "map.tif"
    _assert_clean_failure(run_translate(scene, "-o", out, "-w", weights, option, value), out, option, message)


def test_reduced_precision_on_cpu_is_refused(tmp_path, weights, scene):
    out = tmp_path / "map.tif"
    result = run_translate(scene, "-o", out, "-w", weights, "--device", "cpu", "--precision", "fp16")
    _assert_clean_failure(result, out, "--precision fp16", "GPU")


def test_ctrl_c_mid_run_leaves_nothing_behind(tmp_path, weights, monkeypatch):
    src = write_raster(tmp_path / "scene.tif", texture(700, 700))
    calls = []
    real_call = GeneratorRunner.__call__

    def interrupted(self, inputs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_call(self, inputs)

    monkeypatch.setattr(GeneratorRunner, "__call__", interrupted)
    out = tmp_path / "map.tif"
    result = run_translate(src, "-o", out, "-w", weights, "--batch-size", "2")
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert "nothing was written" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.pt", "scene.tif"]


@pytest.mark.parametrize("compress", ["deflate", "lzw"])  # the streaming COG writer, and GDAL's path
def test_writer_failure_mid_run_leaves_nothing_behind(tmp_path, weights, monkeypatch, compress):
    from geo_sat2map.errors import UserError
    from geo_sat2map.raster_io.cog import StreamingCOGWriter
    from geo_sat2map.raster_io.output import RGBAStripWriter

    def disk_full(self, *args, **kwargs):
        raise UserError("map.tif: no space left on device")

    monkeypatch.setattr(StreamingCOGWriter, "write_rows", disk_full)
    monkeypatch.setattr(RGBAStripWriter, "write_rows", disk_full)
    src = write_raster(tmp_path / "scene.tif", np.ascontiguousarray(texture(600, 300)))
    out = tmp_path / "map.tif"
    _assert_clean_failure(run_translate(src, "-o", out, "-w", weights, "--compress", compress), out, "no space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.pt", "scene.tif"]


def test_a_creation_option_no_writer_takes_is_refused_with_the_accepted_names(tmp_path, weights, scene):
    out = tmp_path / "map.tif"
    result = run_translate(scene, "-o", out, "-w", weights, "--co", "FOO=BAR", "--co", "LEVEL=6")
    _assert_clean_failure(result, out, "--co FOO:", "COG driver", "accepted: ", "LEVEL", "OVERVIEW_RESAMPLING",
                          "ZSTD_LEVEL")
    assert "--co LEVEL" not in result.output  # ours: accepted
    from geo_sat2map.raster_io.output import OutputOptions, check_creation_options

    check_creation_options(OutputOptions(cog=False, creation_options={"TFW": "YES"}))  # GTiff's (--no-cog)
    with pytest.raises(UserError, match="--co TFW: .* GDAL's COG driver"):
        check_creation_options(OutputOptions(creation_options={"TFW": "YES"}))
