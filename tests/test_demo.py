"""The demo pipeline end to end on tiny scenes (--smoke): every real command, chained as a user would."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import rasterio
from PIL import Image

from geo_sat2map.synthetic import PALETTE

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def load_demo():
    spec = importlib.util.spec_from_file_location("geo_sat2map_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_demo_smoke_run_chains_every_command(tmp_path):
    demo = load_demo()
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--smoke"]) == 0

    with rasterio.open(out / "heldout_scene" / "satellite.tif") as sat, rasterio.open(out / "map.tif") as pred:
        assert (pred.crs, pred.transform, pred.shape) == (sat.crs, sat.transform, sat.shape)
        assert pred.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        outside = sat.dataset_mask() == 0
        assert outside.any() and (pred.dataset_mask()[outside] == 0).all()  # the clipped corner stays transparent

    report = json.loads((out / "evaluation.json").read_text())
    assert report["mode"] == "scene" and report["inputs"]["reference_warped"]
    assert list(report["classes"]["classes"]) == list(PALETTE)
    assert 0 <= report["classes"]["overall_accuracy"] <= 1
    with Image.open(out / "preview.png") as preview:
        assert preview.width == 3 * demo.PANEL + 2 * 8 + 2 * 10

    # Re-running starts clean; a folder that is not a demo folder is never deleted.
    (out / "stale.txt").write_text("old")
    demo.start_clean(out)
    assert not (out / "stale.txt").exists() and (out / demo.MARKER).exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit):
        demo.start_clean(foreign)
    assert (foreign / "keep.txt").read_text() == "precious"
