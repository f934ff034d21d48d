"""Stop signals in real processes: SIGTERM and SIGHUP end translate, make-tiles, batch runs and torchrun ranks the
way Ctrl-C does (one line, nothing at the output, no temporary file), train saves a checkpoint, and a rerun removes
what a SIGKILLed run left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geo_sat2map.atomic import owner_tag, remove_leftovers
from geo_sat2map.cli import cli

from .train_fixtures import make_tiles_folder
from .translate_fixtures import texture, write_raster

# Loaded by every Python process started with PYTHONPATH=<hook folder>: progress update number STALL_AFTER (made in
# the main thread by every command), counted from when the file STALL_ONCE exists if that is set, creates the file
# READY and then waits for the test to delete it, so the signal arrives at a known point: mid-run, with the
# temporary files open.
STALL_HOOK = """
    import os, time
    from pathlib import Path
    from geo_sat2map import progress

    ready = Path(os.environ["READY"])
    real_update = progress._Reporter.update  # progress lines and JSON progress alike
    updates = [0]

    def update(self, n=1):
        real_update(self, n)
        if "STALL_ONCE" in os.environ and not Path(os.environ["STALL_ONCE"]).exists():
            return
        updates[0] += 1
        if updates[0] == int(os.environ.get("STALL_AFTER", "1")):
            ready.write_text(str(os.getpid()))
            deadline = time.monotonic() + 120
            while ready.exists() and time.monotonic() < deadline:
                time.sleep(0.02)

    progress._Reporter.update = update
"""


def start(tmp_path: Path, command: list[str], launcher: list[str] | None = None, **env: str) -> subprocess.Popen:
    """``geo-sat2map COMMAND`` (or ``LAUNCHER ... COMMAND``) in a new process with the stall hook, output to pipes
    (not a terminal: progress comes as lines)."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(textwrap.dedent(STALL_HOOK))
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
                "READY": str(tmp_path / "ready"), "OMP_NUM_THREADS": "1", **env}
    prefix = launcher or [sys.executable, "-m", "geo_sat2map"]
    return subprocess.Popen([*prefix, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=tmp_path)


def stop_when_ready(proc: subprocess.Popen, ready: Path, sig: int, pid: int | None = None) -> tuple[str, str]:
    """Wait for the hook's READY file, send ``sig`` (to ``pid``, default the process), release the hook, and
    return (stdout, stderr) once the process has ended."""
    deadline = time.monotonic() + 180
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (or stalled) before the hook was reached:\n{err[-3000:]}")
        time.sleep(0.05)
    os.kill(pid or proc.pid, sig)
    time.sleep(0.2)
    ready.unlink(missing_ok=True)
    return proc.communicate(timeout=180)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture
def scene(tmp_path):
    return write_raster(tmp_path / "scene.tif", texture(700, 700))


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_translate_stopped_by_a_signal_leaves_nothing_and_says_so_on_one_line(tmp_path, weights, scene, sig, code):
    out = tmp_path / "maps" / "map.tif"
    out.parent.mkdir()
    proc = start(tmp_path, ["translate", str(scene), "-o", str(out), "-w", str(weights), "--device", "cpu"])
    _, err = stop_when_ready(proc, tmp_path / "ready", sig)
    name = signal.Signals(sig).name
    assert proc.returncode == code, err[-3000:]
    assert last_line(err) == f"Interrupted by {name}: nothing was written at the output path."
    assert err.count("Interrupted") == 1 and "Traceback" not in err
    assert list(out.parent.iterdir()) == []  # no map, no .map.tif.*.part, no ..map.tif.*.level*.tiles


def test_json_mode_reports_a_signal_as_an_error_event(tmp_path, weights, scene):
    proc = start(tmp_path, ["--progress", "json", "translate", str(scene), "-o", str(tmp_path / "m.tif"), "-w",
                            str(weights), "--device", "cpu"], STALL_AFTER="1")
    _, err = stop_when_ready(proc, tmp_path / "ready", signal.SIGTERM)
    assert proc.returncode == 143, err[-3000:]
    errors = [json.loads(line) for line in err.splitlines() if line.startswith('{"event": "error"')]
    assert errors == [{"event": "error", "message": "interrupted by SIGTERM", "exit_code": 143}]
    assert not (tmp_path / "m.tif").exists() and hidden(tmp_path) == []


def test_make_tiles_stopped_by_sigterm_leaves_no_dataset_and_no_work_folder(tmp_path):
    from geo_sat2map.synthetic import SceneSpec, write_scene

    pair = write_scene(tmp_path / "pair", SceneSpec(seed=3, width=768, height=768, origin=(500_000.0, 5_300_000.0)))
    proc = start(tmp_path, ["make-tiles", "--image", str(pair.satellite), "--map", str(pair.map), "-o",
                            str(tmp_path / "tiles"), "--stride", "128"])
    _, err = stop_when_ready(proc, tmp_path / "ready", signal.SIGTERM)
    assert proc.returncode == 143, err[-3000:]
    assert last_line(err) == "Interrupted by SIGTERM: nothing was written at the output path."
    assert not (tmp_path / "tiles").exists() and hidden(tmp_path) == []


def test_train_stopped_by_sigterm_saves_a_checkpoint_and_prints_the_resume_command(tmp_path):
    import torch

    data = make_tiles_folder(tmp_path / "tiles", 4, 1)
    config = tmp_path / "tiny.toml"
    config.write_text("ngf = 8\nndf = 8\nepochs = 1\nepochs_decay = 0\nload_size = 256\nworkers = 0\n")
    run = tmp_path / "run"
    proc = start(tmp_path, ["train", str(data), "-o", str(run), "--config", str(config), "--device", "cpu"],
                 STALL_AFTER="2")
    _, err = stop_when_ready(proc, tmp_path / "ready", signal.SIGTERM)
    assert proc.returncode == 0, err[-3000:]  # as after Ctrl-C: a clean, resumable stop
    assert "Warning: SIGTERM: stopping after this step and saving a checkpoint" in err
    assert "Stopped after 0 of 1 epochs; checkpoint saved" in err
    assert last_line(err).endswith("--resume") and "Traceback" not in err
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["epoch_samples"]) == (0, 2)  # mid-epoch, after the step in progress
    assert hidden(run) == []


def test_a_batch_run_stopped_by_sigterm_keeps_finished_maps(tmp_path, weights):
    scenes = [write_raster(tmp_path / f"s{i}.tif", texture(300, 300, seed=i)) for i in (1, 2)]
    out = tmp_path / "maps"
    proc = start(tmp_path, ["translate", *map(str, scenes), "-o", str(out), "-w", str(weights), "--device", "cpu"],
                 STALL_ONCE=str(out / "s1.tif"))  # in the second scene
    _, err = stop_when_ready(proc, tmp_path / "ready", signal.SIGTERM)
    assert proc.returncode == 143, err[-3000:]
    assert last_line(err) == ("Interrupted by SIGTERM: finished maps are kept (a rerun skips them); the scene in "
                              "progress left nothing.")
    assert sorted(p.name for p in out.iterdir()) == ["s1.tif"]


@pytest.mark.slow
def test_torchrun_ranks_stopped_by_sigterm_leave_no_temporary_files_and_one_line(tmp_path, weights):
    tall = write_raster(tmp_path / "scene.tif", texture(1400, 300, seed=5))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                "geo_sat2map"]
    proc = start(tmp_path, ["translate", str(tall), "-o", "map.tif", "-w", str(weights), "--device", "cpu"],
                 launcher=launcher)
    # What a scheduler does: SIGTERM to every process of the job (torchrun passes its own on to the ranks too).
    ready = tmp_path / "ready"
    deadline = time.monotonic() + 180
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    rank0 = int(ready.read_text())
    ranks = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                text=True).stdout.split()]
    assert rank0 in ranks and len(ranks) == 2
    for pid in ranks:
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.2)
    ready.unlink()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert err.count("Interrupted by SIGTERM: nothing was written at the output path.") == 1, err[-3000:]
    assert not (tmp_path / "map.tif").exists()
    work = tmp_path / ".map.tif.work"  # finished parts stay for the rerun; nothing half-written does
    assert [p for p in hidden(tmp_path) if p != work.name] == []
    assert all(not p.name.startswith(".") for p in work.iterdir()) if work.exists() else True


def test_a_rerun_removes_what_a_sigkilled_run_left(tmp_path, weights, scene):
    out = tmp_path / "map.tif"
    proc = start(tmp_path, ["translate", str(scene), "-o", str(out), "-w", str(weights), "--device", "cpu"])
    stop_when_ready(proc, tmp_path / "ready", signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    left = hidden(tmp_path)
    assert any(name.startswith(f".map.tif.pid{proc.pid}-") and name.endswith(".tif.part") for name in left), left
    assert any(name.startswith(f"..map.tif.pid{proc.pid}-") and ".level0.tiles" in name for name in left), left

    live = tmp_path / f".map.tif.{owner_tag()}.abcd.tif.part"  # a live run's (ours): never touched
    live.write_bytes(b"in progress")
    result = CliRunner().invoke(cli, ["translate", str(scene), "-o", str(out), "-w", str(weights), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "left by an interrupted run" in result.output
    assert hidden(tmp_path) == [live.name]
    with rasterio.open(out) as ds:
        assert ds.count == 4 and (ds.width, ds.height) == (700, 700)


def test_leftovers_of_another_machine_or_another_output_are_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    host = owner_tag().partition("-")[2]
    mine = tmp_path / f".map.tif.pid{pid}-{host}.x1.tif.part"
    spill = tmp_path / f"..map.tif.pid{pid}-{host}.x1.tif.part.y2.level0.tiles"
    other_host = tmp_path / f".map.tif.pid{pid}-elsewhere{host}.x1.tif.part"
    other_output = tmp_path / f".map.tif.old.pid{pid}-{host}.x1.tif.part"
    untagged = tmp_path / ".map.tif.k1ll3d.tif.part"
    for path in (mine, spill, other_host, other_output, untagged):
        path.write_bytes(b"x")
    assert sorted(remove_leftovers(tmp_path / "map.tif")) == sorted([mine, spill])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (other_host, other_output, untagged))
    assert np.all([p.exists() for p in (other_host, other_output, untagged)])
