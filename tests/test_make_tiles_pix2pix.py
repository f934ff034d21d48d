"""make-tiles --from-pix2pix: importing an aligned A|B dataset (like the 1200x600 maps set) into our layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from geo_sat2map.cli import cli


def write_aligned(folder: Path, split: str, name: str, height: int, seed: int, suffix: str = ".png") -> np.ndarray:
    """An A|B image: textured 'aerial' left, flat-colour blocks 'map' right (like the maps dataset)."""
    rng = np.random.default_rng(seed)
    aerial = rng.integers(0, 256, size=(height, height, 3), dtype=np.uint8)
    map_half = np.zeros((height, height, 3), np.uint8)
    map_half[: height // 2] = (240, 240, 230)
    map_half[height // 2 :] = (170, 210, 160)
    map_half[:, height // 3 : height // 3 + 6] = (255, 255, 255)  # a thin road
    (folder / split).mkdir(parents=True, exist_ok=True)
    pair = np.concatenate([aerial, map_half], axis=1)
    Image.fromarray(pair).save(folder / split / f"{name}{suffix}")
    return pair


def invoke(*args) -> object:
    return CliRunner().invoke(cli, ["make-tiles", *map(str, args)])


@pytest.fixture
def pix2pix(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    source = tmp_path / "maps"
    pairs = {
        "train/1": write_aligned(source, "train", "1", 60, 1),
        "train/2": write_aligned(source, "train", "2", 60, 2),
        "val/1": write_aligned(source, "val", "1", 60, 3),
    }
    (source / "train" / "notes.txt").write_text("not an image")
    return source, pairs


def test_import_keeps_splits_and_resizes_each_half(pix2pix, tmp_path):
    source, pairs = pix2pix
    out = tmp_path / "tiles"
    result = invoke("--from-pix2pix", source, "-o", out, "--tile-size", 32)
    assert result.exit_code == 0, result.output
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["format"] == "geo-sat2map-tiles" and dataset["tile_size"] == 32
    assert dataset["scaling"]["kind"] == "uint8" and dataset["crs"] is None and dataset["resolution"] is None
    assert dataset["counts"] == {"train": 2, "val": 1, "test": 0}
    assert sorted(p.name for p in (out / "train").iterdir()) == ["train_1.png", "train_2.png"]
    features = json.loads((out / "tiles.geojson").read_text())["features"]
    assert {f["properties"]["path"] for f in features} == {"train/train_1.png", "train/train_2.png", "val/val_1.png"}
    assert all(f["geometry"] is None for f in features)

    pair = pairs["val/1"]
    tile = np.asarray(Image.open(out / "val" / "val_1.png"))
    assert tile.shape == (32, 64, 3)
    aerial = np.asarray(Image.fromarray(pair[:, :60]).resize((32, 32), Image.Resampling.BICUBIC))
    area = np.asarray(Image.fromarray(pair[:, 60:]).resize((32, 32), Image.Resampling.BOX))
    np.testing.assert_array_equal(tile[:, :32], aerial)
    np.testing.assert_array_equal(tile[:, 32:], area)
    # area averaging keeps the 6-px road (1.2 output px wide) visible as a lighter column
    assert tile[:, 32 + 10 : 32 + 12].mean() > tile[:, 32 + 20 :].mean()


def test_btoa_swaps_the_halves_and_enlarging_maps_uses_nearest(pix2pix, tmp_path):
    source, pairs = pix2pix
    out = tmp_path / "tiles"
    assert invoke("--from-pix2pix", source, "-o", out, "--tile-size", 120, "--direction", "BtoA").exit_code == 0
    tile = np.asarray(Image.open(out / "train" / "train_2.png"))
    pair = pairs["train/2"]
    # BtoA: the right half of the source is the satellite image; the left half is the map (enlarged: nearest)
    np.testing.assert_array_equal(tile[:, 120:], pair[:, :60].repeat(2, axis=0).repeat(2, axis=1))
    assert tile[:, :120].shape == (120, 120, 3)


def test_bad_pix2pix_input_is_one_line_and_writes_nothing(pix2pix, tmp_path):
    source, _ = pix2pix
    Image.fromarray(np.zeros((60, 100, 3), np.uint8)).save(source / "train" / "3.jpg")
    out = tmp_path / "tiles"
    result = invoke("--from-pix2pix", source, "-o", out)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "3.jpg" in lines[0] and "not an A|B pair" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".tiles.*"))

    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("--from-pix2pix", empty, "-o", out)
    assert result.exit_code == 1 and "no images in train/" in result.output and not out.exists()
