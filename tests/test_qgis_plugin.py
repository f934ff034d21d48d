"""The QGIS plugin in a real headless QGIS: installed with `geo-sat2map qgis install`, driven through processing.run.

One QGIS session (tests/qgis_driver.py under QGIS's own Python) does everything and reports what it saw; the tests
below judge it against the CLI. Skipped where QGIS's Python bindings are missing (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geo_sat2map.cli import cli
from geo_sat2map.evaluate import evaluate_scene

from geo_sat2map.palette import Palette, to_json

from .translate_fixtures import UTM, save_small_generator, texture, write_raster

PALETTE = Palette(("water", "park", "road", "building"), ((160, 204, 228), (205, 240, 185), (255, 255, 255),
                                                          (204, 186, 170)), "test")

QGIS_PYTHON = os.environ.get("GEO_SAT2MAP_QGIS_PYTHON", "/usr/bin/python3")
DRIVER = Path(__file__).with_name("qgis_driver.py")
DRIVER_TIMEOUT = 600  # seconds; the whole session takes ~20 s on an idle 2-core machine
# QGIS's command-line Processing runner; Debian's qgis_process wrapper adds an option the binary rejects (3.22).
QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")


def qgis_environment(home: Path) -> dict[str, str]:
    """QGIS's Python must not see this virtualenv; HOME and the runtime folder are the test's own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    runtime = home / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update(QT_QPA_PLATFORM="offscreen", HOME=str(home), XDG_RUNTIME_DIR=str(runtime))
    return env


def _qgis_missing() -> str | None:
    if not Path(QGIS_PYTHON).is_file():
        return f"QGIS's Python {QGIS_PYTHON} not found (set GEO_SAT2MAP_QGIS_PYTHON)"
    probe = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True,
                           env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    if probe.returncode:
        return (f"QGIS is not installed ({QGIS_PYTHON} cannot import qgis.core); on Debian/Ubuntu: apt-get install "
                "qgis python3-qgis qgis-providers")
    return None


SKIP_REASON = _qgis_missing()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")]

# The make-tiles AOI: the western half of a 512 x 512 px scene at 10 m (so 2 of its 4 tiles).
AOI_WKT = "POLYGON((500000 3994880,502560 3994880,502560 4000000,500000 4000000,500000 3994880))"


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Install the plugin into a fresh profile, run the QGIS session once; returns the spec and what it saw."""
    root = tmp_path_factory.mktemp("qgis")
    for folder in ("inputs", "outputs", "cancel", "home"):
        (root / folder).mkdir()
    inputs, outputs = root / "inputs", root / "outputs"
    spec = {
        "profiles_path": str(root / "qgis-config"),
        "input": str(write_raster(inputs / "scene.tif", texture(300, 400))),
        "big_input": str(write_raster(inputs / "big.tif", texture(2048, 2048))),
        "reference": str(write_raster(inputs / "reference.tif", texture(300, 400, seed=5))),
        "weights": str(save_small_generator(inputs / "generator.pt")),
        "bad_weights": str(inputs / "bad.pt"),
        "output": str(outputs / "map.tif"),
        "bad_output": str(outputs / "bad.tif"),
        "coarse_output": str(outputs / "coarse.tif"),
        "extent": "501000,502500,3997500,3998800 [EPSG:32633]",  # xmin,xmax,ymin,ymax: 150 x 130 px
        "extent_output": str(outputs / "extent.tif"),
        "cancel_output": str(root / "cancel" / "map.tif"),
        "tiles_image": str(write_raster(inputs / "sat512.tif", texture(512, 512))),
        "tiles_map": str(write_raster(inputs / "map512.tif", texture(512, 512, seed=3))),
        "tiles_output": str(outputs / "tiles"),
        "unbalanced_output": str(outputs / "unbalanced_tiles"),
        "aoi_wkt": AOI_WKT,
        "aoi_crs": "EPSG:32633",
        "palette_input": str(write_raster(inputs / "palette_scene.tif", texture(300, 400, seed=8))),
        "palette": str(inputs / "palette.json"),
        "paletted_output": str(outputs / "paletted.tif"),
    }
    Path(spec["palette"]).write_text(to_json(PALETTE))
    Path(spec["bad_weights"]).write_bytes(b"\x00not a checkpoint")
    installed = CliRunner().invoke(cli, ["qgis", "install", "--profiles-path", spec["profiles_path"]])
    assert installed.exit_code == 0, installed.output
    (root / "spec.json").write_text(json.dumps(spec))
    run = subprocess.run(
        [QGIS_PYTHON, str(DRIVER), str(root / "spec.json"), str(root / "observed.json")],
        capture_output=True, text=True, timeout=DRIVER_TIMEOUT, env=qgis_environment(root / "home"),
    )
    assert run.returncode == 0 and (root / "observed.json").is_file(), run.stderr[-3000:]
    observed = json.loads((root / "observed.json").read_text())
    assert "crash" not in observed, observed.get("crash")
    return {"spec": spec, "observed": observed}


def test_installed_plugin_registers_the_provider_and_its_three_algorithms(session):
    observed = session["observed"]
    assert observed["settings_dir"].rstrip("/") == str(Path(session["spec"]["profiles_path"]) / "profiles/default")
    assert observed["available"] and observed["enabled"] and observed["started"]
    assert observed["algorithms"] == ["geosat2map:evaluate", "geosat2map:maketiles", "geosat2map:translate"]


def test_translate_gives_the_cli_pixels_as_a_valid_rgba_styled_layer(session, tmp_path):
    spec, layer = session["spec"], session["observed"]["translate"]
    expected = tmp_path / "cli.tif"
    result = CliRunner().invoke(cli, ["-q", "translate", spec["input"], "-o", str(expected), "-w", spec["weights"],
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with rasterio.open(spec["output"]) as got, rasterio.open(expected) as want:
        assert got.count == 4 and np.array_equal(got.read(), want.read())
        assert got.crs == want.crs and got.transform == want.transform == UTM
    assert layer["loaded"] and layer["valid"] and layer["crs"] == "EPSG:32633" and layer["source"] == spec["output"]
    assert layer["renderer"] == "multibandcolor" and layer["rgb_alpha"] == [1, 2, 3, 4]


def test_translate_takes_the_processing_resolution_and_output_grid(session, tmp_path):
    spec = session["spec"]
    assert session["observed"]["translate_coarse"]["OUTPUT"] == spec["coarse_output"]
    expected = tmp_path / "cli.tif"
    result = CliRunner().invoke(cli, ["-q", "translate", spec["input"], "-o", str(expected), "-w", spec["weights"],
                                      "--device", "cpu", "--resolution", "20", "--output-grid", "input",
                                      "--resampling", "average"])
    assert result.exit_code == 0, result.output
    with rasterio.open(spec["coarse_output"]) as got, rasterio.open(expected) as want:
        assert np.array_equal(got.read(), want.read()) and got.transform == want.transform == UTM
        assert got.tags()["PROCESSING_RESOLUTION"] == "20" and got.tags()["OUTPUT_GRID"] == "input"


def test_translate_takes_an_extent_as_the_clis_bbox(session, tmp_path):
    spec = session["spec"]
    expected = tmp_path / "cli.tif"
    result = CliRunner().invoke(cli, ["-q", "translate", spec["input"], "-o", str(expected), "-w", spec["weights"],
                                      "--device", "cpu", "--bbox", "501000,3997500,502500,3998800"])
    assert result.exit_code == 0, result.output
    with rasterio.open(spec["extent_output"]) as got, rasterio.open(expected) as want:
        assert (got.width, got.height) == (150, 130) and got.transform == want.transform
        assert np.array_equal(got.read(), want.read())


def test_a_paletted_map_loads_with_the_palettes_colours_and_class_names(session):
    """QGIS picks its paletted renderer from the GDAL colour table and labels the classes with the category names."""
    observed = session["observed"]["paletted"]
    assert observed["loaded"] and observed["renderer"] == "paletted"
    expected = [[i, name, "#{:02x}{:02x}{:02x}".format(*colour)]
                for i, (name, colour) in enumerate(zip(PALETTE.names, PALETTE.colours))]
    assert observed["classes"] == expected  # only the named classes, not the colour table's 256 entries
    with rasterio.open(session["spec"]["paletted_output"]) as ds:
        assert ds.count == 1 and ds.nodata == 15 and set(np.unique(ds.read(1))) <= set(range(len(expected)))
        assert ds.tags(1, "IMAGE_STRUCTURE")["NBITS"] == "4"  # four classes and the mask: 4-bit pixels


def test_bad_weights_give_the_clis_one_line_error(session):
    spec = session["spec"]
    cli_run = CliRunner().invoke(cli, ["translate", spec["input"], "-o", spec["bad_output"], "-w", spec["bad_weights"]])
    error_line = cli_run.stderr.strip().splitlines()[-1]
    assert error_line.startswith("Error: ")
    assert session["observed"]["bad_weights_error"] == error_line.removeprefix("Error: ")
    assert not Path(spec["bad_output"]).exists()


def test_cancel_mid_run_leaves_nothing_at_the_output(session):
    observed = session["observed"]
    assert observed["cancel_requested"]
    assert observed["cancel_error"].startswith("Cancelled")
    assert list(Path(session["spec"]["cancel_output"]).parent.iterdir()) == []  # no map, no partial file


def test_evaluate_returns_the_clis_scores(session):
    spec = session["spec"]
    want = evaluate_scene(spec["output"], spec["reference"]).metrics
    got = session["observed"]["evaluate"]
    for name in ("l1", "rmse", "psnr", "ssim", "acc_5", "acc_10", "acc_20"):
        assert got[name.upper()] == pytest.approx(want[name], rel=1e-12), name
    assert got["L1"] > 0


def test_make_tiles_cuts_the_pairs_within_the_aoi_layer(session):
    spec, tiles = session["spec"], session["observed"]["make_tiles"]
    assert tiles["OUTPUT"] == spec["tiles_output"]
    assert (tiles["TRAIN_TILES"], tiles["VAL_TILES"], tiles["TEST_TILES"]) == (1, 1, 0)
    dataset = json.loads((Path(spec["tiles_output"]) / "dataset.json").read_text())
    assert dataset["skipped"]["outside_aoi"] == 2


def test_make_tiles_refuses_a_split_the_buffer_would_unbalance_with_the_clis_line(session):
    spec = session["spec"]
    cli_run = CliRunner().invoke(cli, ["-q", "make-tiles", "-i", spec["tiles_image"], "-m", spec["tiles_map"],
                                       "-o", spec["unbalanced_output"], "--stride", "16", "--val-fraction", "0.1"])
    error_line = cli_run.output.strip().splitlines()[-1]
    assert cli_run.exit_code == 1 and "cannot stay near the asked fractions" in error_line
    assert session["observed"]["unbalanced_error"] == error_line.removeprefix("Error: ")
    assert not Path(spec["unbalanced_output"]).exists()


@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process not found")
def test_qgis_itself_loads_the_installed_plugin_from_the_profile(tmp_path):
    """QGIS's own start-up (qgis_process, on the profiles folder it is given) finds the plugin enabled."""
    installed = CliRunner().invoke(cli, ["qgis", "install", "--profiles-path", str(tmp_path / "config")])
    assert installed.exit_code == 0, installed.output
    env = {**qgis_environment(tmp_path), "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "config")}
    listed = subprocess.run([QGIS_PROCESS, "list"], capture_output=True, text=True, timeout=300, env=env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    lines = [line.strip() for line in listed.stdout.splitlines()]
    provider = lines.index("geo-sat2map")
    assert [line.split()[0] for line in lines[provider + 1:provider + 4]] == [
        "geosat2map:evaluate", "geosat2map:maketiles", "geosat2map:translate"
    ]
