"""Acceptance: the shipped quick-cpu config learns a map that is a known function of the image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from geo_sat2map.cli import cli
from geo_sat2map.image_io import read_rgb, split_pair
from geo_sat2map.metrics import MetricAccumulator
from geo_sat2map.training.config import config_from_mapping, read_config_file
from geo_sat2map.training.data import PairDataset
from geo_sat2map.training.distributed import DistContext
from geo_sat2map.training.loop import Pix2Pix, validate

from .train_fixtures import make_tiles_folder, one_torch_thread  # noqa: F401 (autouse fixture)
from .translate_fixtures import read, run_translate, write_raster

QUICK_CPU = Path(__file__).resolve().parent.parent / "configs" / "quick-cpu.toml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The quick-cpu recipe trained at fp32 (whose numbers the learning test states): (tiles folder, run folder)."""
    tmp_path = tmp_path_factory.mktemp("learn")
    data = make_tiles_folder(tmp_path / "tiles", 24, 6, seed=1)
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["-q", "train", str(data), "-o", str(run), "--config", str(QUICK_CPU),
                                      "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    return data, run


@pytest.mark.slow
def test_quick_cpu_learns_the_synthetic_map(trained):
    # Measured (seed 0, 24 train / 6 val tiles, 10 epochs = 240 steps, ~35 s on one busy CPU core):
    # val L1 82.8 untrained -> 61.6 after epoch 1 -> 5.2 after epoch 10; acc(10) 0.00 -> 0.74, acc(5) 0.32,
    # PSNR 9.1 -> 29.3 dB. The best constant colour (median of the targets) scores L1 26.4 and acc(10) 0.00.
    data, run = trained
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    config = config_from_mapping(read_config_file(QUICK_CPU), "quick-cpu")
    assert len(records) == config.total_epochs

    val_paths = sorted((data / "val").iterdir())
    untrained = Pix2Pix(config, torch.device("cpu"), torch.float32, DistContext())
    start = validate(untrained, untrained.inference_generator("instance"), [
        (A[None], B[None], valid[None]) for A, B, valid in PairDataset(val_paths, 256)
    ])
    targets = [split_pair(read_rgb(p), p)[1] for p in val_paths]
    constant = MetricAccumulator()  # the best one-colour "map": what a model that learnt nothing can reach
    median = np.median(np.concatenate([t.reshape(3, -1) for t in targets], axis=1), axis=1).astype(np.uint8)
    for target in targets:
        constant.update(np.broadcast_to(median[:, None, None], target.shape).copy(), target)
    baseline = constant.result()

    final = records[-1]
    assert start["val_l1"] > 60 and start["val_acc_10"] < 0.05
    assert final["val_l1"] < 8.0 and final["val_l1"] < 0.15 * start["val_l1"]
    assert final["val_l1"] < 0.3 * baseline["l1"]
    assert final["val_acc_10"] > 0.5 and final["val_acc_10"] > baseline["acc_10"] + 0.3
    assert final["val_psnr"] > 26


@pytest.mark.slow
def test_bf16_on_the_cpu_stays_close_to_fp32_with_a_trained_generator(trained, tmp_path):
    """translate --precision bf16 on the CPU against fp32, with the trained generator on a scene of its val
    tiles. Measured on an AMD EPYC with avx512_bf16: max 1 DN, mean 0.14 DN. The tolerance, max 4 DN and mean
    0.5 DN, leaves room for other CPUs' kernels (AMX, another oneDNN) and stays far below a wrong result (an
    untrained or fp16-overflowing network is tens of DN off). bf16 keeps 8 significant bits, so the outputs
    must differ somewhere, but only by rounding."""
    data, run = trained
    tiles = [split_pair(read_rgb(p), p)[0] for p in sorted((data / "val").iterdir())]
    scene = write_raster(tmp_path / "scene.tif", np.concatenate([np.concatenate(tiles[:3], 2),
                                                                 np.concatenate(tiles[3:6], 2)], 1))
    outputs = {}
    for precision in ("fp32", "bf16"):
        result = run_translate(scene, "-o", tmp_path / f"{precision}.tif", "-w", run / "generator.pt",
                               "--precision", precision, "--palette", "none")  # raw colours: no snapping
        assert result.exit_code == 0, result.output
        outputs[precision] = read(tmp_path / f"{precision}.tif")[0].astype(int)
    assert np.array_equal(outputs["fp32"][3], outputs["bf16"][3])
    diff = np.abs(outputs["fp32"][:3] - outputs["bf16"][:3])
    print(f"bf16 vs fp32, trained quick-cpu generator: max {diff.max()} DN, mean {diff.mean():.3f} DN")
    assert 0 < diff.max() <= 4 and diff.mean() <= 0.5
