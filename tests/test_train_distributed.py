"""Data-parallel training: two CPU processes (gloo) launched by torchrun end with identical weights."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from geo_sat2map.models import PatchGAN, build_generator
from geo_sat2map.training.distributed import weights_digest

from .train_fixtures import make_tiles_folder


@pytest.mark.slow
def test_two_gloo_processes_hold_identical_weights(tmp_path):
    data = make_tiles_folder(tmp_path / "tiles", 4, 1)
    config = tmp_path / "tiny.toml"
    config.write_text("ngf = 8\nndf = 8\nepochs = 1\nepochs_decay = 0\nload_size = 256\nworkers = 0\ndevice = \"cpu\"\n")
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "geo_sat2map", "train", str(data), "-o", str(run), "--config", str(config),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    found = re.search(r"replica weights sha256: rank 0 ([0-9a-f]{64}), rank 1 ([0-9a-f]{64})", proc.stderr)
    assert found, proc.stderr[-3000:]
    assert found.group(1) == found.group(2)

    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2  # 4 tiles split over 2 processes at batch 1
    assert len(state["processes"]) == 2
    assert not torch.equal(state["processes"][0]["rng"]["torch"], state["processes"][1]["rng"]["torch"])
    G, D = build_generator("unet256", 8), PatchGAN(ndf=8)
    G.load_state_dict(state["model"]["G"])
    D.load_state_dict(state["model"]["D"])
    assert weights_digest([G, D]) == found.group(1)  # what rank 0 saved is what both processes hold
    assert (run / "generator.pt").is_file() and (run / "samples" / "epoch_001.png").is_file()
