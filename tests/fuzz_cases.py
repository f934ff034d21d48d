"""Junk-input cases for every file the CLI reads (issue 13): valid inputs, their damaged variants, the runs.

Each ``Target`` is one file input of one command. Its cases are the valid file damaged in fixed, seeded ways
(random bytes, truncations, bit flips, zeroed runs) plus the valid files of every *other* target (the wrong kind
of file). ``run_case`` runs the command in-process through click's CliRunner and sorts the outcome:

- ``clean``: exit 1, one ``Error: ...`` line naming the file, no traceback, no warning, and nothing new in the
  case folder (no output, no temporary file, no work folder);
- ``loaded``: exit 0 with the output written: the damage did not stop the file from loading;
- anything else is a failure, described in one line.

Used by tests/test_fuzz_inputs.py, which also prints the per-input table (``python -m tests.test_fuzz_inputs``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from click.testing import CliRunner
from PIL import Image

from geo_sat2map.cli import cli
from geo_sat2map.models import build_generator

from .conftest import randomise
from .train_fixtures import make_tiles_folder, synthetic_pair, write_pair
from .translate_fixtures import UTM, save_small_generator, texture, write_raster

SCENE_SIZE = 64
TILE = 32  # make-tiles --tile-size: 4 tiles in the 64 px scene
# A run of train that is as small as train allows: one 256 px tile, width-1 networks, one epoch. The keys that
# only a config file can set come first, so that most truncated copies still keep them.
TRAIN_CONFIG = """\
ndf = 1
load_size = 256
val_max_tiles = 1
sample_tiles = 1
ngf = 1
epochs = 1
epochs_decay = 0
batch_size = 1
crop_size = 256
flip = false
workers = 0
"""
# Given on the command line (which overrides the config file): a damaged config cannot make a case train for long.
TRAIN_LIMITS = ("--epochs", "1", "--epochs-decay", "0", "--workers", "0", "--device", "cpu")
PALETTE_JSON = {"classes": [
    {"name": "water", "color": [160, 204, 228]}, {"name": "land", "color": [242, 239, 233]},
    {"name": "road", "color": [250, 250, 250]}, {"name": "forest", "color": [173, 209, 158]},
]}
# Random junk per target: (length, seeds). 2000 bytes x seeds 0-59 are the 60 random weights files;
# seeds 17, 21 and 58 made torch.load raise IndexError before issue 13 (and 62 a KeyError).
RANDOM_CASES = ((0, (0,)), (1, (0, 1)), (16, (0, 1)), (300, (0, 1, 2)), (2000, tuple(range(6))))
RANDOM_CASES_FEW = ((0, (0,)), (1, (0,)), (300, (0,)), (2000, (0, 1)))  # for the targets whose cases cost most
RANDOM_WEIGHTS_CASES = ((2000, tuple(range(60))), (16, (0, 1)), (0, (0,)))
# Non-UTF-8 configs: the 9 of the 20 junk configs that escaped as UnicodeDecodeError tracebacks.
RANDOM_CONFIG_CASES = ((0, (0,)), (9, tuple(range(9))), (2000, tuple(range(9))))


# --------------------------------------------------------------------------------------------- valid inputs


@dataclass(frozen=True)
class ValidInputs:
    """One valid file of every kind the CLI reads, made once per test module."""

    root: Path
    files: dict[str, Path]  # kind -> file (for the fuzzed bytes and the wrong-kind cases)
    data_dir: Path  # a make-tiles style folder: train/ and val/ with one 256 px A|B tile each, dataset.json
    run_dir: Path  # a finished one-epoch training run (for --resume)


def make_valid_inputs(root: Path) -> ValidInputs:
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["generator"] = save_small_generator(root / "generator.pt")
    pix2pix = root / "latest_net_G.pth"  # the public pix2pix layout, in the legacy (pre-zip) format of its files
    torch.save(randomise(build_generator("unet256", 8), seed=3).state_dict(), pix2pix,
               _use_new_zipfile_serialization=False)
    files["pix2pix"] = pix2pix
    files["scene"] = write_raster(root / "scene.tif", texture(SCENE_SIZE, SCENE_SIZE), compress="deflate")
    files["map"] = _paletted_map(root / "map.tif")
    files["prediction"] = write_raster(root / "pred.tif", texture(SCENE_SIZE, SCENE_SIZE, seed=1))
    files["aoi"] = _write(root / "aoi.geojson", json.dumps({
        "type": "Feature",
        "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
        "geometry": {"type": "Polygon", "coordinates": [[
            [500_040.0, 3_999_960.0], [500_600.0, 3_999_960.0], [500_600.0, 3_999_400.0],
            [500_040.0, 3_999_400.0], [500_040.0, 3_999_960.0],
        ]]},
        "properties": {},
    }))
    files["pairs"] = _write(root / "pairs.csv", f"image,map\n{files['scene']},{files['map']}\n")
    files["config"] = _write(root / "config.toml", TRAIN_CONFIG)
    files["palette"] = _write(root / "palette.json", json.dumps(PALETTE_JSON, indent=1))
    data_dir = make_tiles_folder(root / "data", 1, 1)
    files["manifest"] = data_dir / "dataset.json"
    files["tile"] = data_dir / "train" / "train_000.png"
    mask = np.full((256, 256), 255, np.uint8)
    mask[:40] = 0  # a val tile with nodata along its top: make-tiles' masks/<split>/<id>.png
    (data_dir / "masks" / "val").mkdir(parents=True)
    Image.fromarray(mask).save(data_dir / "masks" / "val" / "val_000.png")
    files["tile_mask"] = data_dir / "masks" / "val" / "val_000.png"
    source = root / "pix2pix_source" / "train"
    source.mkdir(parents=True)
    a, b = synthetic_pair(np.random.default_rng(5), size=64)
    write_pair(source / "1.jpg", a, b)
    files["jpeg"] = source / "1.jpg"
    jpeg_tiles = root / "jpeg_data" / "train"  # a pix2pix-style training folder: JPEG tiles, no dataset.json
    jpeg_tiles.mkdir(parents=True)
    write_pair(jpeg_tiles / "train_000.jpg", *synthetic_pair(np.random.default_rng(6)))
    files["jpeg_tile"] = jpeg_tiles / "train_000.jpg"
    run_dir = root / "run"
    result = invoke(["train", str(data_dir), "-o", str(run_dir), "--config", str(files["config"]), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    files["checkpoint"] = run_dir / "checkpoint.pt"
    return ValidInputs(root, files, data_dir, run_dir)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _paletted_map(path: Path) -> Path:
    """A one-band map with a colour table, on the scene's grid (make-tiles' palette path)."""
    classes = (np.add.outer(np.arange(SCENE_SIZE) // 9, np.arange(SCENE_SIZE) // 13) % 4).astype(np.uint8)
    profile = dict(driver="GTiff", width=SCENE_SIZE, height=SCENE_SIZE, count=1, dtype="uint8", crs="EPSG:32633",
                   transform=UTM, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(classes[None])
        dst.write_colormap(1, {i: (*c["color"], 255) for i, c in enumerate(PALETTE_JSON["classes"])})
    return path


# ------------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One file input of one command: which valid file it takes, where a case puts it, how the command runs."""

    label: str  # the row of the table
    kind: str  # key of ValidInputs.files
    place: Callable[[Path, ValidInputs, bytes], Path]  # (case folder, valid inputs, bytes) -> the fuzzed file
    args: Callable[[Path, Path, ValidInputs], list[str]]  # (fuzzed file, case folder, valid inputs) -> CLI args
    output: str  # what the command writes, relative to the case folder
    truncations: int = 12
    flips: int = 12
    zero_runs: int = 6
    random_cases: tuple[tuple[int, tuple[int, ...]], ...] = RANDOM_CASES
    flip_head: int = 2048  # half the flips land in the first bytes, where the structure is


def _as(name: str) -> Callable[[Path, ValidInputs, bytes], Path]:
    """Put the bytes in the case folder under ``name``."""

    def place(case: Path, valid: ValidInputs, data: bytes) -> Path:
        path = case / name
        path.write_bytes(data)
        return path

    return place


def _in_copy_of(folder_of: Callable[[ValidInputs], Path], relative: str) -> Callable[[Path, ValidInputs, bytes], Path]:
    """Copy a valid folder into the case folder and replace one of its files with the bytes."""

    def place(case: Path, valid: ValidInputs, data: bytes) -> Path:
        source = folder_of(valid)
        copy = case / source.name
        shutil.copytree(source, copy)
        path = copy / relative
        path.write_bytes(data)
        return path

    return place


def _translate(weights: Callable[[Path, ValidInputs], Path], scene: Callable[[Path, ValidInputs], Path]):
    return lambda f, case, v: ["translate", str(scene(f, v)), "-o", str(case / "map.tif"), "-w", str(weights(f, v)),
                               "--device", "cpu"]


def _evaluate_tiles(f: Path, case: Path, v: ValidInputs) -> list[str]:
    """evaluate --weights on the case's copy of the tiles folder (one of whose files is the fuzzed one)."""
    return ["evaluate", "--weights", str(v.files["generator"]), str(case / "data"), "--json",
            str(case / "report.json"), "--device", "cpu"]


def _make_tiles(case: Path, *inputs: str) -> list[str]:
    return ["make-tiles", *inputs, "-o", str(case / "tiles"), "--tile-size", str(TILE), "--val-fraction", "0.25",
            "--split-block", "1", "--min-valid", "0.5"]


def _train(data_dir: Path, case: Path, *options: str) -> list[str]:
    return ["train", str(data_dir), "-o", str(case / "run"), *TRAIN_LIMITS, *options]


TARGETS = (
    Target("translate -w: geo-sat2map generator.pt", "generator", _as("generator.pt"),
           _translate(lambda f, v: f, lambda f, v: v.files["scene"]), "map.tif",
           random_cases=RANDOM_WEIGHTS_CASES, truncations=40, flips=10, zero_runs=6, flip_head=4096),
    Target("translate -w: public pix2pix latest_net_G.pth", "pix2pix", _as("latest_net_G.pth"),
           _translate(lambda f, v: f, lambda f, v: v.files["scene"]), "map.tif",
           truncations=30, flips=10, zero_runs=6, flip_head=4096),
    Target("translate INPUT: GeoTIFF", "scene", _as("scene.tif"),
           _translate(lambda f, v: v.files["generator"], lambda f, v: f), "map.tif",
           random_cases=RANDOM_CASES_FEW, truncations=12, flips=10, zero_runs=4),
    Target("evaluate PRED.tif (scene mode)", "prediction", _as("pred.tif"),
           lambda f, case, v: ["evaluate", str(f), str(v.files["scene"]), "--json", str(case / "report.json")],
           "report.json", truncations=30, flips=20),
    Target("evaluate --palette", "palette", _as("palette.json"),
           lambda f, case, v: ["evaluate", str(v.files["prediction"]), str(v.files["scene"]), "--palette", str(f),
                               "--json", str(case / "report.json")],
           "report.json", truncations=40, flips=40, zero_runs=16),
    Target("palette SOURCE: palette JSON -> QGIS style", "palette", _as("palette.json"),
           lambda f, case, v: ["palette", str(f), "-o", str(case / "map.qml")],
           "map.qml", truncations=40, flips=40, zero_runs=16),
    Target("evaluate --weights DATA_DIR: tile PNG", "tile", _in_copy_of(lambda v: v.data_dir, "val/val_000.png"),
           _evaluate_tiles, "report.json", random_cases=RANDOM_CASES_FEW, truncations=12, flips=10, zero_runs=4),
    Target("evaluate --weights DATA_DIR: tile mask PNG", "tile_mask",
           _in_copy_of(lambda v: v.data_dir, "masks/val/val_000.png"),
           _evaluate_tiles, "report.json", random_cases=RANDOM_CASES_FEW, truncations=12, flips=10, zero_runs=4),
    Target("make-tiles --aoi: GeoJSON", "aoi", _as("aoi.geojson"),
           lambda f, case, v: _make_tiles(case, "-i", str(v.files["scene"]), "-m", str(v.files["map"]),
                                          "--aoi", str(f)),
           "tiles", truncations=30, flips=30, zero_runs=10),
    Target("make-tiles --pairs: CSV", "pairs", _as("pairs.csv"),
           lambda f, case, v: _make_tiles(case, "--pairs", str(f)), "tiles",
           truncations=40, flips=40, zero_runs=16),
    Target("make-tiles -i: satellite GeoTIFF", "scene", _as("scene.tif"),
           lambda f, case, v: _make_tiles(case, "-i", str(f), "-m", str(v.files["map"])), "tiles",
           truncations=16, flips=12),
    Target("make-tiles -m: paletted map GeoTIFF", "map", _as("map.tif"),
           lambda f, case, v: _make_tiles(case, "-i", str(v.files["scene"]), "-m", str(f)), "tiles",
           truncations=24, flips=16),
    Target("make-tiles --from-pix2pix: JPEG A|B image", "jpeg",
           _in_copy_of(lambda v: v.files["jpeg"].parent.parent, "train/1.jpg"),
           lambda f, case, v: ["make-tiles", "--from-pix2pix", str(case / "pix2pix_source"), "-o",
                               str(case / "tiles"), "--tile-size", str(TILE)],
           "tiles", truncations=24, flips=24),
    Target("train --config: TOML", "config", _as("config.toml"),
           lambda f, case, v: _train(v.data_dir, case, "--config", str(f), "--ngf", "1", "--batch-size", "1"), "run",
           random_cases=RANDOM_CONFIG_CASES, truncations=24, flips=30, zero_runs=10),
    Target("train DATA_DIR: dataset.json", "manifest", _in_copy_of(lambda v: v.data_dir, "dataset.json"),
           lambda f, case, v: _train(case / "data", case, "--config", str(v.files["config"])),
           "run", truncations=24, flips=12),
    Target("train DATA_DIR: tile PNG", "tile", _in_copy_of(lambda v: v.data_dir, "train/train_000.png"),
           lambda f, case, v: _train(case / "data", case, "--config", str(v.files["config"])),
           "run", truncations=24, flips=24),
    Target("train DATA_DIR: tile JPEG (pix2pix folder)", "jpeg_tile",
           _in_copy_of(lambda v: v.files["jpeg_tile"].parent.parent, "train/train_000.jpg"),
           lambda f, case, v: _train(case / "jpeg_data", case, "--config", str(v.files["config"])),
           "run", random_cases=RANDOM_CASES_FEW, truncations=16, flips=10, zero_runs=4),
    Target("train --resume: checkpoint.pt", "checkpoint", _in_copy_of(lambda v: v.run_dir, "checkpoint.pt"),
           lambda f, case, v: _train(v.data_dir, case, "--resume"),
           "run", truncations=24, flips=24, flip_head=4096),
)


# --------------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    name: str  # e.g. "flip@1234.5", "random2000#17", "wrong-kind:scene"
    data: bytes


def cases(target: Target, valid: ValidInputs) -> Iterator[Case]:
    """The target's cases, the same on every run (seeded by the target's label), without repeats."""
    seen = {valid.files[target.kind].read_bytes()}  # the intact file is not a case
    for case in _all_cases(target, valid):
        if case.data not in seen:
            seen.add(case.data)
            yield case


def _all_cases(target: Target, valid: ValidInputs) -> Iterator[Case]:
    data = valid.files[target.kind].read_bytes()
    rng = np.random.default_rng(int(hashlib.sha256(target.label.encode()).hexdigest()[:8], 16))
    for length, seeds in target.random_cases:
        for seed in seeds:
            yield Case(f"random{length}#{seed}", np.random.default_rng(seed).bytes(length))
    offsets = np.linspace(0, len(data), target.truncations, endpoint=False).astype(int)
    for offset in sorted({*offsets, len(data) - 1, len(data) // 2}):
        yield Case(f"truncated@{offset}", data[:offset])
    for i in range(target.flips):
        span = min(len(data), target.flip_head) if i % 2 == 0 else len(data)
        position, bit = int(rng.integers(span)), int(rng.integers(8))
        damaged = bytearray(data)
        damaged[position] ^= 1 << bit
        yield Case(f"flip@{position}.{bit}", bytes(damaged))
    for _ in range(target.zero_runs):
        position, length = int(rng.integers(len(data))), int(rng.integers(1, 65))
        damaged = bytearray(data)
        damaged[position : position + length] = bytes(len(damaged[position : position + length]))
        yield Case(f"zeroed@{position}+{length}", bytes(damaged))
    for kind, path in sorted(valid.files.items()):
        if kind != target.kind:
            yield Case(f"wrong-kind:{path.name}", path.read_bytes())


# ----------------------------------------------------------------------------------------------- one case


@dataclass(frozen=True)
class Outcome:
    kind: str  # "clean", "loaded" or "failed"
    detail: str = ""


def invoke(args: list[str]):
    return CliRunner().invoke(cli, ["-q", *args])


class _LastResort(logging.Handler):
    """Stands in for logging.lastResort, which prints a library's WARNING+ records to stderr when no handler
    takes them (as in the real CLI, where only geo_sat2map's logger has one): lines a user would see."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def _library_log_lines() -> Iterator[list[str]]:
    """Route library logging as a plain CLI process does (pytest puts capturing handlers on the root logger)."""
    root, handler = logging.getLogger(), _LastResort()
    saved_handlers, saved_last_resort = root.handlers[:], logging.lastResort
    root.handlers[:], logging.lastResort = [], handler
    try:
        yield handler.lines
    finally:
        root.handlers[:], logging.lastResort = saved_handlers, saved_last_resort


def run_case(target: Target, case: Case, valid: ValidInputs, folder: Path) -> Outcome:
    folder.mkdir(parents=True)
    fuzzed = target.place(folder, valid, case.data)
    before = _snapshot(folder)
    with _library_log_lines() as log_lines, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke(target.args(fuzzed, folder, valid))
    output = folder / target.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    noise = [f"warning: {w.category.__name__}: {w.message}" for w in caught] + log_lines
    if result.exit_code == 0:
        if not output.exists():
            return Outcome("failed", f"exit 0 but no {target.output}")
        return Outcome("loaded", "; ".join(noise))
    problems = []
    if result.exit_code != 1:
        problems.append(f"exit {result.exit_code}")
    if "Traceback" in result.output or (result.exception and not isinstance(result.exception, SystemExit)):
        problems.append(f"{type(result.exception).__name__} escaped")
    if len(lines) != 1 or not lines[0].startswith("Error:"):
        problems.append(f"{len(lines)} output lines")
    elif fuzzed.name not in lines[0]:
        problems.append("message does not name the file")
    if noise:
        problems.append(f"noise: {noise[0]}")
    after = _snapshot(folder)
    new = sorted(set(after) - set(before))
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    if new or changed:
        problems.append(f"left behind: {', '.join(new + changed)}")
    if problems:
        last = lines[-1] if lines else repr(result.exception)
        return Outcome("failed", f"{'; '.join(problems)} | {last[:300]}")
    return Outcome("clean")


def _snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` (hidden ones too) with a digest of its bytes: what a run may not change."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@dataclass
class TargetResult:
    target: Target
    outcomes: list[tuple[Case, Outcome]]

    def count(self, kind: str) -> int:
        return sum(outcome.kind == kind for _, outcome in self.outcomes)

    def failures(self) -> list[str]:
        return [f"{case.name}: {outcome.detail}" for case, outcome in self.outcomes if outcome.kind == "failed"]


def run_target(target: Target, valid: ValidInputs, folder: Path) -> TargetResult:
    """Every case of a target, each in its own case folder (removed afterwards: outputs add up)."""
    outcomes = []
    for number, case in enumerate(cases(target, valid)):
        case_folder = folder / f"{number:04d}"
        outcomes.append((case, run_case(target, case, valid, case_folder)))
        shutil.rmtree(case_folder)
    return TargetResult(target, outcomes)
