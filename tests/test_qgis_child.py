"""The QGIS plugin's QGIS-free half: running geo-sat2map as a child, following its events, cancelling it, and the
command lines it builds. Runs the real executable of this environment; QGIS itself is not needed."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from geo_sat2map.cli import cli
from geo_sat2map.cli.translate import BLEND_CHOICES, FORMAT_CHOICES
from geo_sat2map.errors import UserError
from geo_sat2map.evaluate import evaluate_scene
from geo_sat2map.qgis_install import current_executable
from geo_sat2map.qgis_plugin import child, commands

from .translate_fixtures import save_small_generator, texture, write_raster


def _recorder(kind: str):
    def record(self: RecordingFeedback, text: str, *_: object) -> None:
        self.messages.append((kind, text))

    return record


class RecordingFeedback:
    """Receives what QgsProcessingFeedback would; asks for a cancel once real progress is reported, if told to."""

    def __init__(self, cancel_on_progress: bool = False) -> None:
        self.cancel_on_progress = cancel_on_progress
        self.cancelled = False
        self.progress: list[float] = []
        self.messages: list[tuple[str, str]] = []

    def isCanceled(self) -> bool:  # noqa: N802 - QGIS's names
        return self.cancelled

    def setProgress(self, progress: float) -> None:  # noqa: N802
        self.progress.append(progress)
        if self.cancel_on_progress and progress > 0:
            self.cancelled = True

    setProgressText = _recorder("task")  # noqa: N815
    pushInfo = _recorder("info")  # noqa: N815
    pushWarning = _recorder("warning")  # noqa: N815
    pushDebugInfo = _recorder("debug")  # noqa: N815
    pushConsoleInfo = _recorder("console")  # noqa: N815
    pushCommandInfo = _recorder("command")  # noqa: N815
    reportError = _recorder("error")  # noqa: N815


@pytest.fixture(scope="module")
def executable(tmp_path_factory: pytest.TempPathFactory) -> str:
    """This environment's console script; where the package is not installed (a checkout on PYTHONPATH, as on
    the GPU check machine), a script that runs this Python on the same import path (the child drops
    PYTHONPATH from its environment, so the script sets it)."""
    try:
        return str(current_executable())
    except UserError:
        script = tmp_path_factory.mktemp("bin") / "geo-sat2map"
        path = shlex.quote(os.pathsep.join(entry for entry in sys.path if entry))
        script.write_text(f'#!/bin/sh\nPYTHONPATH={path} exec {shlex.quote(sys.executable)} -m geo_sat2map "$@"\n')
        script.chmod(0o755)
        return str(script)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return save_small_generator(tmp_path / "g.pt")


def test_translate_in_a_child_reports_progress_logs_and_the_result(tmp_path, weights, executable):
    source = write_raster(tmp_path / "scene.tif", texture(300, 400))
    output = tmp_path / "map.tif"
    feedback = RecordingFeedback()
    outcome = child.run_command(executable, commands.translate_args(
        str(source), str(output), str(weights), batch_size=2, device="cpu", blend="hann"), feedback)
    assert outcome.succeeded and outcome.exit_code == 0 and outcome.error is None
    assert outcome.result["output"] == str(output) and outcome.result["blend"] == "hann" and output.is_file()
    assert feedback.progress[-1] == 100.0 and feedback.progress == sorted(feedback.progress)
    assert ("task", "translate") in feedback.messages
    assert any(kind == "info" and text.startswith("windows: 6") for kind, text in feedback.messages)
    (command,) = [text for kind, text in feedback.messages if kind == "command"]
    assert command.startswith(f"{executable} --progress json translate ")


def test_cancel_interrupts_the_child_like_ctrl_c_and_leaves_nothing(tmp_path, weights, executable):
    source = write_raster(tmp_path / "big.tif", texture(2048, 2048))
    output = tmp_path / "map.tif"
    feedback = RecordingFeedback(cancel_on_progress=True)
    outcome = child.run_command(executable, commands.translate_args(str(source), str(output), str(weights),
                                                                    device="cpu"), feedback)
    assert feedback.cancelled and 0 < feedback.progress[-1] < 100  # cancelled mid-run
    assert outcome.cancelled and outcome.exit_code == 130 and not outcome.succeeded
    assert outcome.error == "interrupted"  # the CLI's own error event for Ctrl-C
    assert outcome.failure_message().startswith("Cancelled")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "g.pt"]  # no output, no partial file


def test_the_childs_one_line_error_is_the_outcomes_error(tmp_path, executable):
    source = write_raster(tmp_path / "scene.tif", texture(64, 64))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    args = commands.translate_args(str(source), str(tmp_path / "map.tif"), str(bad))
    outcome = child.run_command(executable, args, RecordingFeedback())
    cli_error = CliRunner().invoke(cli, args).stderr.strip().splitlines()[-1]
    assert outcome.exit_code == 1 and not outcome.succeeded
    assert f"Error: {outcome.failure_message()}" == cli_error


def test_a_failure_without_error_event_is_explained_by_the_last_output_line():
    crashed = child.ChildOutcome(exit_code=1, text_tail=["Traceback (most recent call last):", "ValueError: boom", ""])
    assert crashed.failure_message() == "geo-sat2map failed with exit status 1: ValueError: boom"
    assert not child.ChildOutcome(exit_code=0).succeeded  # exit 0 without a result is not a success


def test_only_json_object_lines_with_an_event_are_events():
    assert child.parse_event('{"event": "log", "level": "info", "message": "x"}')["message"] == "x"
    for line in ("Error: no", '{"no_event": 1}', "{broken", '["event"]', ""):
        assert child.parse_event(line) is None


def test_child_environment_drops_qgis_interpreter_and_library_settings():
    env = child.child_environment({"PATH": "/bin", "PYTHONHOME": "/qgis", "PYTHONPATH": "/qgis/python",
                                   "PROJ_LIB": "/qgis/proj", "GDAL_DATA": "/qgis/gdal", "HOME": "/home/u"})
    assert env["PATH"] == "/bin" and env["HOME"] == "/home/u"
    assert not {"PYTHONHOME", "PYTHONPATH", "PROJ_LIB", "GDAL_DATA"} & set(env)


def test_executable_comes_from_the_setting_then_the_install_record_then_path(tmp_path, monkeypatch):
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    recorded, configured = tmp_path / "recorded", tmp_path / "configured"
    for program in (recorded, configured):
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    (plugin_dir / child.SETTINGS_FILE).write_text(f'{{"executable": "{recorded}"}}')
    assert child.find_executable(str(configured), plugin_dir) == str(configured)
    assert child.find_executable(None, plugin_dir) == str(recorded)
    recorded.unlink()
    with pytest.raises(child.ExecutableNotFound, match="geo-sat2map qgis install"):
        child.find_executable(None, plugin_dir)
    (plugin_dir / child.SETTINGS_FILE).unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    (tmp_path / "bin").mkdir()
    with pytest.raises(child.ExecutableNotFound):
        child.find_executable(None, plugin_dir)
    configured.rename(tmp_path / "bin" / "geo-sat2map")
    assert child.find_executable(None, plugin_dir) == str(tmp_path / "bin" / "geo-sat2map")


def test_plugin_choices_and_scores_match_the_cli(tmp_path):
    assert commands.BLEND_CHOICES == BLEND_CHOICES
    assert commands.FORMAT_CHOICES == FORMAT_CHOICES
    precision = next(p for p in cli.commands["translate"].params if p.name == "precision")
    assert commands.PRECISION_CHOICES == tuple(precision.type.choices)
    options = {p.name: p for p in cli.commands["translate"].params}
    assert commands.OUTPUT_GRID_CHOICES == tuple(options["output_grid"].type.choices)
    assert commands.RESAMPLING_CHOICES == tuple(options["resampling"].type.choices)
    raster = write_raster(tmp_path / "a.tif", texture(64, 64))
    metrics = evaluate_scene(raster, raster).metrics
    assert set(commands.SCORE_NAMES) <= set(metrics)


def test_make_tiles_and_evaluate_command_lines_run(tmp_path):
    image = write_raster(tmp_path / "sat.tif", texture(512, 512))
    map_raster = write_raster(tmp_path / "map.tif", texture(512, 512, seed=3))
    aoi = tmp_path / "aoi.wkt"
    aoi.write_text("SRID=32633;POLYGON((500000 3994880,505120 3994880,505120 4000000,500000 4000000,500000 3994880))")
    tiles = tmp_path / "tiles"
    args = commands.make_tiles_args([(str(image), str(map_raster))], str(tiles), tile_size=256, val_fraction=0.25,
                                    test_fraction=0.0, min_valid=0.9, seed=3, aoi=str(aoi))
    for _ in range(2):  # the second run replaces the dataset, as Processing expects
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    assert len(list((tiles / "train").iterdir())) + len(list((tiles / "val").iterdir())) == 4
    report = tmp_path / "report.json"
    args = commands.evaluate_args(str(image), str(map_raster), palette="synthetic", json_report=str(report))
    result = CliRunner().invoke(cli, ["--progress", "json", *args])
    assert result.exit_code == 0, result.output
    event = next(line for line in result.stderr.splitlines() if '"event": "result"' in line)
    scores = commands.scores(child.parse_event(event)["result"])
    assert set(scores) == {*commands.SCORE_NAMES, *commands.CLASS_SCORE_NAMES}
    assert all(isinstance(value, float) for value in scores.values()) and report.is_file()
    assert os.path.getsize(report) > 0
