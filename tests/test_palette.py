"""Learning map palettes (exact and clustered), storing them (dataset.json, generator.pt) and exporting them."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch.nn.functional as F
import torch

from geo_sat2map.checkpoint import GeneratorMeta, load_generator, save_generator
from geo_sat2map.errors import CheckpointError, UserError
from geo_sat2map.models import build_generator
from geo_sat2map.palette import (
    MAX_CLASSES,
    Palette,
    PaletteLearner,
    learn_palette,
    load_palette,
    rgb_to_lab,
    to_clr,
    to_json,
    to_qml,
)
from geo_sat2map.synthetic import PALETTE as SYNTHETIC

COLOURS = np.array(list(SYNTHETIC.values()), dtype=np.uint8)


def class_map(size: int = 96, seed: int = 0, classes: int = len(COLOURS)) -> np.ndarray:
    """(size, size) class indices: blobs of every class (smooth random fields, argmax)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, classes, 7, 7), dtype=np.float32))
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0].numpy()
    return field.argmax(axis=0)


def flat_map(classes: np.ndarray) -> np.ndarray:
    return COLOURS[classes].transpose(2, 0, 1).copy()


def antialiased_map(classes: np.ndarray) -> np.ndarray:
    """The flat map drawn at 4x and averaged down: every class edge gets blended colours."""
    big = np.repeat(np.repeat(COLOURS[classes].astype(np.float64), 4, axis=0), 4, axis=1)
    small = big.reshape(classes.shape[0], 4, classes.shape[1], 4, 3).mean(axis=(1, 3))
    small = small.reshape(classes.shape[0] // 2, 2, classes.shape[1] // 2, 2, 3).mean(axis=(1, 3))  # and soften
    return np.rint(np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)).astype(np.uint8).transpose(2, 0, 1).copy()


def test_exact_palette_of_flat_maps_with_names_and_frequencies():
    classes = class_map()
    rgb = flat_map(classes)
    valid = np.ones(classes.shape, bool)
    valid[:10] = False  # masked rows do not count
    palette = learn_palette([(rgb, valid)], named=load_palette("synthetic"))
    assert palette.kind == "exact"
    present = np.unique(classes[valid])
    assert sorted(palette.colours) == sorted(tuple(int(v) for v in COLOURS[i]) for i in present)
    names = dict(zip(palette.colours, palette.names))
    for i in present:
        assert names[tuple(int(v) for v in COLOURS[i])] == list(SYNTHETIC)[i]
    expected = np.bincount(classes[valid], minlength=len(COLOURS))[present] / valid.sum()
    by_colour = dict(zip(palette.colours, palette.frequencies))
    got = [by_colour[tuple(int(v) for v in COLOURS[i])] for i in present]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert list(palette.frequencies) == sorted(palette.frequencies, reverse=True)


def test_a_thin_fringe_of_odd_colours_keeps_the_palette_exact_and_unnamed_classes_get_numbers():
    classes = class_map(size=128)
    rgb = flat_map(classes)
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(0, 128, 120), rng.integers(0, 128, 120)  # 0.7 % of pixels, 120 odd colours
    rgb[:, rows, cols] = rng.integers(0, 256, (3, 120))
    palette = learn_palette([(rgb, None)])
    assert palette.kind == "exact"
    assert set(palette.colours) == {tuple(int(v) for v in COLOURS[i]) for i in np.unique(classes)}
    assert set(palette.names) == {f"class {i + 1}" for i in range(len(palette.names))}


def test_clustering_antialiased_maps_finds_the_map_colours_and_is_deterministic():
    classes = class_map(size=160, seed=3)
    rgb = antialiased_map(classes)
    assert len(np.unique(rgb.reshape(3, -1), axis=1).T) > MAX_CLASSES  # really not flat
    first = learn_palette([(rgb, None)], seed=7)
    again = learn_palette([(rgb, None)], seed=7)
    assert first == again
    assert first.kind == "clustered"
    true_lab = rgb_to_lab(COLOURS[np.unique(classes)])
    learned_lab = rgb_to_lab(np.array(first.colours))
    distance = np.linalg.norm(true_lab[:, None] - learned_lab[None], axis=-1)
    assert len(first.colours) == len(true_lab)
    assert distance.min(axis=1).max() < 3.0  # every map colour found to within dE 3


def test_reservoir_sample_is_bounded_and_seeded():
    rgb = flat_map(class_map(size=64))
    learner = PaletteLearner(seed=1, sample_size=1000)
    for _ in range(5):
        learner.add(rgb)
    assert learner.seen == 5 * 64 * 64 and len(learner.sample) == 1000
    other = PaletteLearner(seed=1, sample_size=1000)
    for _ in range(5):
        other.add(rgb)
    np.testing.assert_array_equal(learner.sample, other.sample)


def test_checkpoint_keeps_the_palette(tmp_path):
    palette = learn_palette([(flat_map(class_map()), None)], named=load_palette("synthetic"))
    meta = GeneratorMeta("unet256", 8, "instance", palette=palette)
    save_generator(tmp_path / "g.pt", build_generator("unet256", 8), meta)
    assert load_generator(tmp_path / "g.pt").meta.palette == palette
    # a damaged palette block is the usual one-line checkpoint error
    payload = torch.load(tmp_path / "g.pt", weights_only=True)
    payload["metadata"]["palette"]["classes"][0]["color"] = [1, 2]
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="metadata block is incomplete or malformed"):
        load_generator(tmp_path / "bad.pt")


def test_exports_are_read_back_by_evaluate_and_parse_as_qgis_styles(tmp_path):
    palette = learn_palette([(flat_map(class_map()), None)], named=load_palette("synthetic"))
    (tmp_path / "p.json").write_text(to_json(palette))
    again = load_palette(str(tmp_path / "p.json"))
    assert (again.names, again.colours) == (palette.names, palette.colours)
    assert Palette.from_dict(json.loads(to_json(palette))) == palette
    root = ElementTree.fromstring(to_qml(palette))
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = [(int(e.get("value")), e.get("color"), e.get("label")) for e in renderer.iter("paletteEntry")]
    assert entries == [(i, "#{:02x}{:02x}{:02x}".format(*c), n)
                       for i, (n, c) in enumerate(zip(palette.names, palette.colours))]
    lines = [line.split() for line in to_clr(palette).splitlines() if not line.startswith("#")]
    assert [(int(v), tuple(map(int, (r, g, b))), label) for v, r, g, b, _, label in lines] == [
        (i, c, n) for i, (n, c) in enumerate(zip(palette.names, palette.colours))]


@pytest.mark.parametrize("content, fragment", [
    ('{"classes": [{"name": "a", "color": [1, 2, 3]}]}', "at least two classes"),
    ('{"classes": [{"name": "a", "color": [1, 2, 3]}, {"name": "a", "color": [3, 2, 1]}]}', "unique"),
    ('{"classes": [{"name": "a", "color": [1, 2, 300]}, {"name": "b", "color": [3, 2, 1]}]}', "integers 0-255"),
    ('[1, 2', "not valid JSON"),
])
def test_bad_palette_files_are_one_line(tmp_path: Path, content, fragment):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(UserError, match=fragment):
        load_palette(str(path))


def test_palette_command_prints_and_writes_a_checkpoints_palette(tmp_path):
    from click.testing import CliRunner

    from geo_sat2map.cli import cli

    palette = learn_palette([(flat_map(class_map()), None)], named=load_palette("synthetic"))
    save_generator(tmp_path / "g.pt", build_generator("unet256", 8), GeneratorMeta("unet256", 8, "instance",
                                                                                    palette=palette))
    outputs = [tmp_path / name for name in ("p.json", "p.qml", "p.clr")]
    args = ["palette", str(tmp_path / "g.pt")] + [a for o in outputs for a in ("-o", str(o))]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "8 classes, exact" in result.output and "water" in result.output
    assert load_palette(str(outputs[0])).names == palette.names
    assert (outputs[1].read_text(), outputs[2].read_text()) == (to_qml(palette), to_clr(palette))
    again = CliRunner().invoke(cli, args)  # no --overwrite: refused, one line
    assert again.exit_code == 1 and "already exists" in again.output
    bare = tmp_path / "bare.pt"
    save_generator(bare, build_generator("unet256", 8), GeneratorMeta("unet256", 8, "instance"))
    result = CliRunner().invoke(cli, ["palette", str(bare)])
    assert result.exit_code == 1 and "holds no palette" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["palette", str(tmp_path / "g.pt"), "-o", str(tmp_path / "p.txt")])
    assert result.exit_code == 2 and ".json, .qml, .clr" in result.output
