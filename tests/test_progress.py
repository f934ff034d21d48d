"""What a command writes on stderr: --progress json (the event stream programs such as the QGIS plugin read),
progress lines instead of a bar off a terminal, -q, and warnings."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import rasterio
from click.testing import CliRunner, Result
from tqdm import tqdm

from geo_sat2map import progress
from geo_sat2map.cli import cli

from .translate_fixtures import save_small_generator, texture, write_raster


def run_json(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["--progress", "json", *map(str, args)])


def events(result: Result) -> list[dict]:
    """Every stderr line that is an event; plain lines (the Error: line) are skipped."""
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def of_kind(stream: list[dict], kind: str) -> list[dict]:
    return [e for e in stream if e["event"] == kind]


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    return write_raster(tmp_path / "scene.tif", texture(300, 400)), save_small_generator(tmp_path / "g.pt")


def test_translate_reports_start_progress_logs_and_its_result(tmp_path, scene):
    source, weights = scene
    result = run_json("translate", source, "-o", tmp_path / "map.tif", "-w", weights, "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("{") for line in lines)  # nothing else on stderr: no tqdm bar
    stream = events(result)
    assert stream[0] == {"event": "start", "command": "translate", "version": stream[0]["version"]}
    steps = of_kind(stream, "progress")
    assert {e["task"] for e in steps} == {"translate"}
    done = [e["done"] for e in steps]
    assert done == sorted(done) and done[0] == 0 and done[-1] == steps[-1]["total"] == 6  # 2 x 3 windows
    assert any("windows: 6" in e["message"] for e in of_kind(stream, "log"))
    (report,) = of_kind(stream, "result")
    assert report["command"] == "translate"
    with rasterio.open(tmp_path / "map.tif") as ds:
        assert (report["result"]["width"], report["result"]["height"]) == (ds.width, ds.height) == (400, 300)
    assert report["result"]["output"] == str(tmp_path / "map.tif")
    assert report["result"]["windows"] == 6
    assert not of_kind(stream, "error")


def test_user_error_arrives_as_error_event_and_as_the_error_line(tmp_path, scene):
    source, _ = scene
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = run_json("translate", source, "-o", tmp_path / "map.tif", "-w", bad)
    assert result.exit_code == 1
    (error,) = of_kind(events(result), "error")
    assert error["exit_code"] == 1 and str(bad) in error["message"]
    assert f"Error: {error['message']}" in result.stderr.splitlines()
    assert not (tmp_path / "map.tif").exists()


def test_usage_error_also_arrives_as_error_event(scene):
    source, weights = scene
    result = run_json("translate", source, "-w", weights)  # no -o
    assert result.exit_code == 2
    (error,) = of_kind(events(result), "error")
    assert "--output" in error["message"] and error["exit_code"] == 2


def test_evaluate_result_event_carries_the_reports_scores(tmp_path):
    prediction = write_raster(tmp_path / "pred.tif", texture(200, 240, seed=1))
    reference = write_raster(tmp_path / "ref.tif", texture(200, 240, seed=2))
    result = run_json("evaluate", prediction, reference, "--json", tmp_path / "report.json")
    assert result.exit_code == 0, result.output
    (event,) = of_kind(events(result), "result")
    written = json.loads((tmp_path / "report.json").read_text())
    assert event["result"] == written
    assert 0 < event["result"]["metrics"]["l1"] < 255


def test_make_tiles_result_event_has_the_split_counts(tmp_path):
    image = write_raster(tmp_path / "sat.tif", texture(512, 512))
    map_raster = write_raster(tmp_path / "map.tif", texture(512, 512, seed=3))
    result = run_json("make-tiles", "-i", image, "-m", map_raster, "-o", tmp_path / "tiles", "--val-fraction", "0.25")
    assert result.exit_code == 0, result.output
    (event,) = of_kind(events(result), "result")
    dataset = json.loads((tmp_path / "tiles" / "dataset.json").read_text())
    assert event["result"]["counts"] == dataset["counts"] and sum(dataset["counts"].values()) == 4
    assert of_kind(events(result), "progress")[-1]["done"] == 4


def test_bar_mode_writes_no_events(tmp_path, scene):
    source, weights = scene
    result = CliRunner().invoke(cli, ["translate", str(source), "-o", str(tmp_path / "m.tif"), "-w", str(weights),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert not any(line.startswith("{") for line in result.stderr.splitlines())
    assert isinstance(progress.progress_bar(total=3, disable=True), tqdm)


def reporter_events(min_interval: float, updates: int, total: int | None = 100) -> list[dict]:
    stream = io.StringIO()
    bar = progress.JsonProgress(progress.EventWriter(stream), total=total, desc="job", unit="x",
                                min_interval=min_interval)
    with bar:
        for _ in range(updates):
            bar.update()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_progress_events_are_throttled_but_the_first_and_last_state_always_arrive():
    throttled = reporter_events(min_interval=3600, updates=100)
    assert [e["done"] for e in throttled] == [0, 100]
    every = reporter_events(min_interval=0, updates=5)
    assert [e["done"] for e in every] == [0, 1, 2, 3, 4, 5]
    assert throttled[-1] == {"event": "progress", "task": "job", "done": 100, "total": 100, "unit": "x"}


def test_iterating_a_json_bar_yields_everything_and_counts_it():
    stream = io.StringIO()
    with progress.json_events(stream):
        items = list(progress.progress_bar(["a", "b", "c"], desc="it"))
    after = progress.progress_bar(total=1, file=io.StringIO())
    assert not isinstance(after, progress.JsonProgress)  # the JSON mode ended with the block
    after.close()
    sent = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert items == ["a", "b", "c"]
    assert sent[0]["total"] == 3 and sent[-1]["done"] == 3


# -- progress off a terminal, -q, warnings --------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_and_progress_lines_elsewhere():
    assert isinstance(progress.progress_bar(total=3, file=_Terminal()), tqdm)
    assert isinstance(progress.progress_bar(total=3, file=io.StringIO()), progress.LineProgress)

    stream = io.StringIO()
    with progress.LineProgress(stream, total=100, desc="job", unit="x", min_interval=3600) as bar:
        for _ in range(100):
            bar.update()
        bar.set_postfix(loss=0.123456)
    assert "\r" not in stream.getvalue()
    (line,) = stream.getvalue().splitlines()  # throttled: only the final state
    assert line.startswith("job: 100% 100/100 [") and line.endswith(", loss=0.123]")

    every = io.StringIO()
    for _ in progress.LineProgress(every, range(3), desc="job", min_interval=0):
        pass
    assert [line.split(" [")[0] for line in every.getvalue().splitlines()] == [
        "job:  33% 1/3", "job:  67% 2/3", "job: 100% 3/3"]

    transient = io.StringIO()  # leave=False (a bar a summary line replaces): no line for a short one
    with progress.progress_bar(total=2, desc="epoch", file=transient, leave=False) as bar:
        bar.update(2)
    assert transient.getvalue() == ""


def test_translate_off_a_terminal_logs_progress_lines_not_a_redrawn_bar(tmp_path, scene):
    source, weights = scene
    result = CliRunner().invoke(cli, ["translate", str(source), "-o", str(tmp_path / "m.tif"), "-w", str(weights)])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("translate:")] == [
        next(line for line in result.stderr.splitlines() if line.startswith("translate: 100% 6/6 ["))]


def test_quiet_keeps_only_the_result_line(tmp_path, scene):
    source, weights = scene
    result = CliRunner().invoke(cli, ["-q", "translate", str(source), "-o", str(tmp_path / "m.tif"), "-w",
                                      str(weights)])
    assert result.exit_code == 0, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Wrote {tmp_path / 'm.tif'}: 6 windows in ")

    image = write_raster(tmp_path / "sat.tif", texture(512, 512))
    map_raster = write_raster(tmp_path / "map.tif", texture(512, 512, seed=3))
    result = CliRunner().invoke(cli, ["-q", "make-tiles", "-i", str(image), "-m", str(map_raster), "-o",
                                      str(tmp_path / "tiles"), "--val-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Wrote 4 tiles to {tmp_path / 'tiles'}")
    assert not [line for line in result.output.splitlines() if "make-tiles" in line or "candidate" in line]


def test_warnings_start_with_warning_and_appear_once_per_run(tmp_path):
    weights = save_small_generator(tmp_path / "g.pt")  # trained on 8-bit imagery; the scenes are 16-bit
    scenes = [write_raster(tmp_path / f"s{i}.tif", texture(200, 200, seed=i, dtype="uint16") * 100)
              for i in (1, 2, 3)]
    result = CliRunner().invoke(cli, ["translate", *map(str, scenes), "-o", str(tmp_path / "maps"), "-w",
                                      str(weights), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "8-bit imagery" in line]
    assert len(warnings) == 1 and warnings[0].startswith("Warning: ")


def test_ranks_other_than_0_show_only_errors_and_their_own_warnings():
    import logging

    def shown(console: progress.ConsoleFilter, level: int, message: str, **extra: object) -> bool:
        record = logging.LogRecord("geo_sat2map", level, __file__, 1, message, None, None)
        record.__dict__.update(extra)
        return console.filter(record)

    rank1 = progress.ConsoleFilter(main=False)
    assert not shown(rank1, logging.INFO, "input: scene.tif")
    assert not shown(rank1, logging.WARNING, "pixel size differs")  # rank 0 says it for the run
    assert shown(rank1, logging.WARNING, "s7.tif: no valid pixel", this_rank=True)
    assert shown(rank1, logging.ERROR, "Error: s8.tif: unreadable")
    rank0 = progress.ConsoleFilter()
    assert shown(rank0, logging.INFO, "input: scene.tif") and shown(rank0, logging.WARNING, "pixel size differs")
    assert not shown(rank0, logging.WARNING, "pixel size differs")  # once per run
