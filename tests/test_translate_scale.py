"""translate at scale: many scenes into a folder (resume, failures, VRT mosaic), one scene in parts across
torchrun processes (same pixels as one process, assembled COG or VRT of parts, a killed rank and the resume)."""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from click.testing import CliRunner

from geo_sat2map.atomic import owner_tag
from geo_sat2map.cli import cli
from geo_sat2map.inference import TranslateConfig, translate
from geo_sat2map.inference.identity import run_id, tags_match
from geo_sat2map.inference.parts import PART_ROWS_TAG, work_folder
from geo_sat2map.inference.ranks import largest_first
from geo_sat2map.raster_io.output import OutputOptions

from .translate_fixtures import UTM, read, texture, write_raster

REPO = Path(__file__).resolve().parents[1]


def invoke(*args: object, quiet: bool = False):
    """``geo-sat2map translate ARGS --device cpu --precision fp32`` in-process, with the log in ``result.output``."""
    return CliRunner().invoke(cli, [*(["-q"] if quiet else []), "translate", *map(str, args), "--device", "cpu",
                                    "--precision", "fp32"])


def torchrun(tmp_path: Path, *args: object, processes: int = 2, env: dict[str, str] | None = None):
    """``torchrun --nproc-per-node N -m geo_sat2map translate ARGS`` on the CPU at fp32, gloo, one thread a process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "geo_sat2map", "translate", *map(str, args), "--device", "cpu", "--precision", "fp32"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=full_env, cwd=tmp_path)


def one_process(src: Path, out: Path, weights: Path) -> np.ndarray:
    """The reference: one process, the same full batches as the split run."""
    translate(TranslateConfig(input=src, output=out, weights=weights, device="cpu", precision="fp32", fixed_batch=True,
                              progress=False))
    return read(out)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def summary(output: str) -> dict[str, int]:
    """Scene counts of the summary table: {"done": n, "skipped": n, "failed": n}."""
    return {status: int(count) for status, count in re.findall(r"^(done|skipped|failed) +(\d+)", output, re.M)}


# -- one scene, many processes ------------------------------------------------------------------------------------


@pytest.fixture
def tall_scene(tmp_path):
    """Four window rows (two columns) with a nodata hole: two processes get two window rows each."""
    data = texture(700, 300, seed=21)
    data[:, 400:470, 40:120] = 0
    return write_raster(tmp_path / "scene.tif", data, nodata=0)


def test_two_processes_write_the_pixels_of_one_as_an_assembled_cog(tmp_path, weights, tall_scene):
    expected, _, expected_info = one_process(tall_scene, tmp_path / "one.tif", weights)
    proc = torchrun(tmp_path, tall_scene, "-o", "map.tif", "-w", weights)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data, profile, info = read(tmp_path / "map.tif")
    assert np.array_equal(data, expected)  # 0 DN: the same pixels and the same alpha (mask)
    assert (data[3] == 0).any() and (data[3] == 255).any()
    assert info["crs"] == expected_info["crs"] and info["transform"] == expected_info["transform"] == UTM
    assert info["structure"]["LAYOUT"] == "COG" and info["tags"] == expected_info["tags"]
    # Assembled by the sink a single process writes with, overviews made alike: the very same file.
    assert filecmp.cmp(tmp_path / "map.tif", tmp_path / "one.tif", shallow=False)
    assert "assembly" in proc.stderr and "from 2 parts (0 reused)" in proc.stderr
    assert not work_folder(tmp_path / "map.tif").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.pt", "map.tif", "one.tif", "scene.tif"]


def test_two_processes_write_a_vrt_over_cog_parts_with_the_pixels_of_one(tmp_path, weights, tall_scene):
    expected, _, expected_info = one_process(tall_scene, tmp_path / "one.tif", weights)
    proc = torchrun(tmp_path, tall_scene, "-o", "map.vrt", "-w", weights)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with rasterio.open(tmp_path / "map.vrt") as ds:
        assert np.array_equal(ds.read(), expected)
        assert np.array_equal(ds.dataset_mask() > 0, expected[3] == 255)
        assert ds.crs == expected_info["crs"] and ds.transform == expected_info["transform"]
        assert ds.tags()["RUN_ID"] == expected_info["tags"]["RUN_ID"]
    parts = sorted((tmp_path / "map.parts").iterdir())
    assert [p.name for p in parts] == ["rows-00000000-00000320.tif", "rows-00000320-00000700.tif"]
    for part, start in zip(parts, (0, 320)):
        data, _, info = read(part)
        assert info["structure"]["LAYOUT"] == "COG" and info["transform"] == UTM @ Affine.translation(0, start)
        assert info["tags"][PART_ROWS_TAG] == f"{start},{start + data.shape[1]}"
    assert not work_folder(tmp_path / "map.vrt").exists()


KILL_HOOK = """
    import os
    if os.environ.get("RANK") == os.environ.get("KILL_RANK"):
        import glob, signal, time
        from geo_sat2map.inference import stages

        real_submit = stages.RowWriter.submit

        def submit(self, level, rows):
            # Die mid-part, once the other rank's part is finished: deterministic, and the rerun can reuse it.
            real_submit(self, level, rows)
            deadline = time.monotonic() + 120
            while not glob.glob(os.environ["KILL_AFTER"]) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)

        stages.RowWriter.submit = submit
"""


@pytest.mark.slow
def test_a_killed_rank_leaves_no_output_and_the_rerun_reuses_the_finished_part(tmp_path, weights, tall_scene):
    one_process(tall_scene, tmp_path / "one.tif", weights)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(KILL_HOOK))
    work = work_folder(tmp_path / "map.tif")
    env = {"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]), "KILL_RANK": "1",
           "KILL_AFTER": str(work / "rows-00000000-*.tif")}
    killed = torchrun(tmp_path, tall_scene, "-o", "map.tif", "-w", weights, env=env)
    assert killed.returncode != 0
    assert not (tmp_path / "map.tif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".map.tif.") and p != work]
    assert (work / "rows-00000000-00000320.tif").is_file()
    assert not (work / "rows-00000320-00000700.tif").exists()

    rerun = torchrun(tmp_path, tall_scene, "-o", "map.tif", "-w", weights)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "reused finished part rows-00000000-00000320.tif" in rerun.stderr
    assert "rank 1 wrote part rows-00000320-00000700.tif" in rerun.stderr  # the unfinished one is redone
    assert filecmp.cmp(tmp_path / "map.tif", tmp_path / "one.tif", shallow=False)  # equals a clean run
    assert not work.exists()


def test_finished_parts_are_verified_before_reuse_and_leftovers_removed(tmp_path, weights, tall_scene):
    """-o map.vrt in one process: one part; a rerun after a crash reuses it only if its tags match."""
    out = tmp_path / "map.vrt"
    assert invoke(tall_scene, "-o", out, "-w", weights, quiet=True).exit_code == 0
    part = tmp_path / "map.parts" / "rows-00000000-00000700.tif"
    expected = read(part)[0]
    # As after a crash before the VRT was written: the finished part and a half-written file in the work folder.
    work = work_folder(out)
    work.mkdir()
    shutil.copy(part, work / part.name)
    (work / ".rows-00000000-00000700.tif.x1y2.tif.part").write_bytes(b"half")
    out.unlink()
    shutil.rmtree(tmp_path / "map.parts")
    result = invoke(tall_scene, "-o", out, "-w", weights)
    assert result.exit_code == 0, result.output
    assert "reused finished part rows-00000000-00000700.tif" in result.output
    assert sorted(p.name for p in (tmp_path / "map.parts").iterdir()) == ["map.x2.vrt", part.name]  # leftovers gone
    # A part of another run (another model, settings or source: another RUN_ID) is translated again.
    out.unlink()
    shutil.move(tmp_path / "map.parts", work)
    with rasterio.open(work / part.name, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
        ds.update_tags(RUN_ID="0" * 64)
    result = invoke(tall_scene, "-o", out, "-w", weights, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "reused finished part" not in result.output and "not a part of this run" in result.output
    assert np.array_equal(read(tmp_path / "map.parts" / part.name)[0], expected)


@pytest.mark.parametrize(("crs", "transform"), [
    ("EPSG:32633", Affine(10.0, 2.0, 500_000.0, 2.0, -10.0, 4_000_000.0)),  # rotated
    (None, Affine.identity()),  # no georeferencing (--allow-ungeoreferenced)
])
def test_a_vrt_map_keeps_any_grid_of_its_scene(tmp_path, weights, crs, transform):
    src = write_raster(tmp_path / "scene.tif", texture(300, 280, seed=22), crs=crs, transform=transform)
    translate(TranslateConfig(input=src, output=tmp_path / "one.tif", weights=weights, device="cpu", precision="fp32",
                              fixed_batch=True, progress=False, allow_ungeoreferenced=True))
    result = invoke(src, "-o", tmp_path / "map.vrt", "-w", weights, "--allow-ungeoreferenced", quiet=True)
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "map.vrt") as ds, rasterio.open(tmp_path / "one.tif") as one:
        assert np.array_equal(ds.read(), one.read())
        assert ds.transform == one.transform == transform and ds.crs == one.crs


def test_a_vrt_output_refuses_existing_parts_without_overwrite(tmp_path, weights, tall_scene):
    (tmp_path / "map.parts").mkdir()
    result = invoke(tall_scene, "-o", tmp_path / "map.vrt", "-w", weights, quiet=True)
    assert result.exit_code == 1 and error_lines(result.output) == [result.output.strip()]
    assert "map.parts already exists" in result.output and "--overwrite" in result.output
    assert not (tmp_path / "map.vrt").exists()


# -- many scenes ----------------------------------------------------------------------------------------------------


def _sheets(folder: Path) -> dict[str, tuple[Path, int, int]]:
    """Four 260 x 300 sheets of one region in a 2 x 2 layout: name -> (path, row offset, column offset)."""
    folder.mkdir()
    region = texture(520, 600, seed=30)
    sheets = {}
    for name, (row, col) in {"nw": (0, 0), "ne": (0, 300), "sw": (260, 0), "se": (260, 300)}.items():
        path = write_raster(folder / f"{name}.tif", np.ascontiguousarray(region[:, row:row + 260, col:col + 300]),
                            transform=UTM @ Affine.translation(col, row), tiled=True, compress="deflate")
        sheets[name] = (path, row, col)
    return sheets


def _corrupt_a_block(path: Path) -> None:
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * 64)


def test_many_scenes_failure_resume_and_mosaic(tmp_path, weights):
    sheets = _sheets(tmp_path / "sheets")
    good = sheets["se"][0].read_bytes()
    _corrupt_a_block(sheets["se"][0])
    out, mosaic = tmp_path / "maps", tmp_path / "mosaic.vrt"
    inputs = [sheets[name][0] for name in ("nw", "ne", "sw", "se")]

    first = invoke(*inputs, "-o", out, "-w", weights, "--vrt", mosaic)
    assert first.exit_code == 1
    errors = error_lines(first.output)
    assert len(errors) == 1 and "se.tif" in errors[0] and "could not read window" in errors[0], first.output
    assert "Traceback" not in first.output
    assert sorted(p.name for p in out.iterdir()) == ["ne.tif", "nw.tif", "sw.tif"]  # nothing left of se.tif
    assert summary(first.output) == {"done": 3, "skipped": 0, "failed": 1}
    assert not mosaic.exists() and "not written" in first.output
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    # As a run killed while writing se.tif would leave it: tagged with the process that is now gone.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = out / f".se.tif.pid{int(gone.stdout)}-{owner_tag().partition('-')[2]}.k1ll3d.tif.part"
    leftover.write_bytes(b"half a map")
    second = invoke(*inputs, "-o", out, "-w", weights, "--vrt", mosaic)
    assert second.exit_code == 1 and len(error_lines(second.output)) == 1
    assert not leftover.exists()
    for name in ("nw", "ne", "sw"):
        assert f"skipped {sheets[name][0]}" in second.output
    assert summary(second.output) == {"done": 0, "skipped": 3, "failed": 1}
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing redone

    sheets["se"][0].write_bytes(good)  # the scene is fixed: the rerun does it alone and writes the mosaic
    third = invoke(*inputs, "-o", out, "-w", weights, "--vrt", mosaic)
    assert third.exit_code == 0, third.output
    assert summary(third.output) == {"done": 1, "skipped": 3, "failed": 0}
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "se.tif"} == stamps
    with rasterio.open(mosaic) as ds:
        assert (ds.width, ds.height, ds.transform, ds.crs) == (600, 520, UTM, rasterio.crs.CRS.from_epsg(32633))
        mosaic_data = ds.read()
    for name, (_, row, col) in sheets.items():
        np.testing.assert_array_equal(mosaic_data[:, row:row + 260, col:col + 300], read(out / f"{name}.tif")[0])


def test_overwrite_redoes_finished_scenes_and_other_settings_are_not_skipped(tmp_path, weights):
    a = write_raster(tmp_path / "a.tif", texture(200, 230, seed=1))
    b = write_raster(tmp_path / "b.tif", texture(210, 220, seed=2))
    out = tmp_path / "maps"
    assert invoke(a, b, "-o", out, "-w", weights, quiet=True).exit_code == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    other = invoke(a, b, "-o", out, "-w", weights, "--blend", "hann")  # finished maps of other settings
    assert other.exit_code == 1 and len(error_lines(other.output)) == 2
    assert all("already exists" in line and "--overwrite" in line for line in error_lines(other.output))
    redo = invoke(a, b, "-o", out, "-w", weights, "--overwrite")
    assert redo.exit_code == 0 and summary(redo.output) == {"done": 2, "skipped": 0, "failed": 0}
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in out.iterdir())


def test_input_list_and_folder_output(tmp_path, weights):
    a = write_raster(tmp_path / "a.tif", texture(200, 230, seed=1))
    (tmp_path / "list").mkdir()
    listing = tmp_path / "list" / "scenes.txt"
    listing.write_text("# sheets of the programme\n\n../a.tif\n")
    result = invoke("--input-list", listing, "-o", f"{tmp_path / 'out'}/", "-w", weights)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a.tif").is_file() and summary(result.output)["done"] == 1
    expected = tmp_path / "single.tif"
    assert invoke(a, "-o", expected, "-w", weights, quiet=True).exit_code == 0
    assert np.array_equal(read(tmp_path / "out" / "a.tif")[0], read(expected)[0])


@pytest.mark.parametrize(("args", "message"), [
    (["{a}", "-o", "{tmp}/map.tif", "--vrt", "{tmp}/m.vrt"], "--vrt"),
    (["{a}", "{b}", "-o", "{tmp}/maps", "--vrt", "{tmp}/m.tif"], "must end in .vrt"),
    (["-o", "{tmp}/maps"], "Missing argument"),
    (["{a}", "-o", "{tmp}"], "is a directory"),
])
def test_bad_option_combinations_are_one_line(tmp_path, weights, args, message):
    a = write_raster(tmp_path / "a.tif", texture(100, 100))
    b = write_raster(tmp_path / "b.tif", texture(100, 100))
    result = invoke(*[arg.format(a=a, b=b, tmp=tmp_path) for arg in args], "-w", weights)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif", "generator.pt"]


def test_scenes_that_would_share_a_map_or_a_vrt_of_two_crs_are_refused_before_any_work(tmp_path, weights):
    (tmp_path / "x").mkdir()
    a = write_raster(tmp_path / "a.tif", texture(100, 100))
    same_stem = write_raster(tmp_path / "x" / "a.tif", texture(100, 100))
    result = invoke(a, same_stem, "-o", tmp_path / "maps", "-w", weights, quiet=True)
    assert result.exit_code == 1 and error_lines(result.output) == [result.output.strip()]
    assert "would both be written to" in result.output

    b = write_raster(tmp_path / "b.tif", texture(100, 100), crs="EPSG:32634")
    result = invoke(a, b, "-o", tmp_path / "maps", "-w", weights, "--vrt", tmp_path / "m.vrt", quiet=True)
    assert result.exit_code == 1 and error_lines(result.output) == [result.output.strip()]
    assert "different CRS" in result.output and "EPSG:32633" in result.output and "EPSG:32634" in result.output
    assert not (tmp_path / "maps").exists()  # refused before anything was created

    # Landsat's RGB.byte.tif has a CRS no EPSG code matches exactly: its name is printed, never its WKT.
    landsat = write_raster(tmp_path / "landsat.tif", texture(100, 100), crs=LANDSAT_WKT)
    result = invoke(a, landsat, "-o", tmp_path / "maps", "-w", weights, "--vrt", tmp_path / "maps" / "m.vrt",
                    quiet=True)
    assert result.exit_code == 1 and error_lines(result.output) == [result.output.strip()]
    assert "EPSG:32633" in result.output and "landsat.tif: UTM Zone 18, Northern Hemisphere)" in result.output
    assert "PROJCS" not in result.output and not (tmp_path / "maps").exists()


LANDSAT_WKT = (  # the CRS of rasterio's test raster RGB.byte.tif
    'PROJCS["UTM Zone 18, Northern Hemisphere",GEOGCS["Unknown datum based upon the WGS 84 ellipsoid",'
    'DATUM["Not_specified_based_on_WGS_84_spheroid",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],'
    'UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],'
    'PARAMETER["central_meridian",-75],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],'
    'PARAMETER["false_northing",0],UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
)


def test_scenes_are_shared_between_processes_largest_first(tmp_path, weights):
    big = write_raster(tmp_path / "big.tif", texture(300, 520, seed=1))
    small = [write_raster(tmp_path / f"s{i}.tif", texture(180, 200, seed=i)) for i in (2, 3)]
    proc = torchrun(tmp_path, big, *small, "-o", "maps", "-w", weights, "--vrt", "maps.vrt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0: 1 done, 0 skipped, 0 failed; rank 1: 2 done, 0 skipped, 0 failed" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["big.tif", "s2.tif", "s3.tif"]
    assert proc.stdout.count("done ") == 1  # one summary table, from rank 0
    expected = tmp_path / "one.tif"
    assert invoke(small[1], "-o", expected, "-w", weights, quiet=True).exit_code == 0
    assert np.array_equal(read(tmp_path / "maps" / "s3.tif")[0], read(expected)[0])
    with rasterio.open(tmp_path / "maps.vrt") as ds:
        assert ds.count == 4 and (ds.width, ds.height) == (520, 300)


# -- pieces ---------------------------------------------------------------------------------------------------------


def test_largest_first_balances_the_ranks():
    assert largest_first([5, 1, 9, 3, 3], 2) == [[2, 1], [0, 3, 4]]
    assert largest_first([4, 4], 3) == [[0], [1], []]


def test_run_identity_follows_what_changes_the_map(tmp_path, weights):
    src = write_raster(tmp_path / "a.tif", texture(100, 100))
    base = TranslateConfig(input=src, output=tmp_path / "m.tif", weights=weights)
    key = run_id(base, "sha", "fp32", "cuda")
    assert run_id(replace(base, batch_size=7, device="cuda:1", read_threads=3, output=tmp_path / "n.tif"), "sha",
                  "fp32", "cuda") == key
    changed = [replace(base, blend="hann"), replace(base, overlap=0), replace(base, bands=(3, 2, 1)),
               replace(base, output_options=OutputOptions(compress="zstd"))]
    assert all(run_id(config, "sha", "fp32", "cuda") != key for config in changed)
    assert run_id(base, "other", "fp32", "cuda") != key and run_id(base, "sha", "bf16", "cuda") != key
    assert run_id(base, "sha", "fp32", "cpu") != key  # CPU and CUDA kernels round differently
    os.utime(src, ns=(1, 1))  # the source changed
    assert run_id(base, "sha", "fp32", "cuda") != key


def test_a_cpu_made_part_is_not_reused_by_a_run_on_another_device_type(tmp_path, weights, tall_scene):
    """The parts of a CPU run carry the CPU's identity: a GPU rerun of the same command (same precision) would
    look for another RUN_ID and translate them again, since CPU and CUDA kernels do not agree to the bit."""
    out = tmp_path / "map.vrt"
    assert invoke(tall_scene, "-o", out, "-w", weights, quiet=True).exit_code == 0
    tags = read(tmp_path / "map.parts" / "rows-00000000-00000700.tif")[2]["tags"]
    config = TranslateConfig(input=tall_scene, output=out, weights=weights, device="cpu", fixed_batch=True)
    sha = tags["MODEL_SHA256"]
    assert tags["RUN_ID"] == run_id(config, sha, "fp32", "cpu")
    assert not tags_match(tags, {"RUN_ID": run_id(replace(config, device="cuda"), sha, "fp32", "cuda")})


def _rgba_cog(path: Path, data: np.ndarray, transform: Affine) -> Path:
    """An RGBA COG with internal overviews (alpha: band 4)."""
    plain = write_raster(path.with_suffix(".plain.tif"), data[:3], alpha=data[3] > 0, transform=transform)
    rasterio.shutil.copy(plain, path, driver="COG", BLOCKSIZE="256", OVERVIEW_RESAMPLING="AVERAGE")
    return path


def test_a_vrt_of_several_maps_has_overviews_made_of_theirs(tmp_path):
    from geo_sat2map.raster_io.mosaic import write_vrt

    rgba = np.concatenate([texture(700, 600, seed=40), np.full((1, 700, 600), 255, np.uint8)])
    rgba[3, :50] = 0  # a transparent strip along the top of the lower map: it must not hide the upper one
    upper = _rgba_cog(tmp_path / "upper.tif", rgba, UTM)
    lower = _rgba_cog(tmp_path / "lower.tif", rgba, UTM @ Affine.translation(0, 650))
    write_vrt(tmp_path / "m.vrt", [upper, lower], composite=True, overview_dir=tmp_path)
    with rasterio.open(tmp_path / "m.vrt") as ds:
        assert (ds.width, ds.height, ds.transform) == (600, 1350, UTM) and ds.overviews(1) == [2, 4]
        full = ds.read()
        assert np.array_equal(full[:, 650:700], rgba[:, 650:700])  # the overlap shows the upper map
        assert np.array_equal(full[:, 700:], rgba[:, 50:])
        half = ds.read(out_shape=(4, 675, 300)).astype(float)
    coarse = full.astype(float).reshape(4, 675, 2, 300, 2).mean(axis=(2, 4))
    outside_overlap = np.r_[0:325, 350:675]  # read from the maps' overviews, which average 2 x 2 blocks
    assert np.abs(half - coarse)[:, outside_overlap].max() <= 1


def test_a_vrt_needs_one_crs_and_north_up_maps(tmp_path):
    from geo_sat2map.errors import UserError
    from geo_sat2map.raster_io.mosaic import write_vrt

    data = np.concatenate([texture(60, 60), np.full((1, 60, 60), 255, np.uint8)])
    a = write_raster(tmp_path / "a.tif", data)
    b = write_raster(tmp_path / "b.tif", data, crs="EPSG:4326", transform=Affine(0.001, 0, 12, 0, -0.001, 45))
    rotated = write_raster(tmp_path / "r.tif", data, transform=Affine(10, 2, 500_000, 2, -10, 4_000_000))
    with pytest.raises(UserError, match="different CRS"):
        write_vrt(tmp_path / "m.vrt", [a, b], composite=True)
    with pytest.raises(UserError, match="not north-up"):
        write_vrt(tmp_path / "m.vrt", [a, rotated], composite=True)
    assert not (tmp_path / "m.vrt").exists()
