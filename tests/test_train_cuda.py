"""The GPU path on a CUDA device (skipped without one): tiles in GPU memory, the step as one CUDA graph, the
measured precision; it learns as the eager worker path does and resumes bit-exactly."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from torch.utils.data import DataLoader

from geo_sat2map.atomic import file_sha256
from geo_sat2map.training import train
from geo_sat2map.training.config import TrainConfig, config_from_mapping
from geo_sat2map.training.data import Augmentation, EpochKeyedSampler, PairDataset, draw_sample, orient, scan_dataset
from geo_sat2map.training.device_data import DeviceFeed, DeviceTiles, WorkerFeed
from geo_sat2map.training.distributed import DistContext
from geo_sat2map.training.loop import Pix2Pix, validate
from geo_sat2map.training.steps import EagerStep, GraphedStep

from .test_train import _assert_same_training_state, _checkpoint, ok, train_cli
from .train_fixtures import make_tiles_folder

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
# 21 tiles at batch 2: ten graphed steps and a last batch of one tile (run eagerly) per epoch.
SMALL = """
ngf = 8
ndf = 8
epochs = 1
epochs_decay = 1
batch_size = 2
load_size = 272
workers = 2
val_max_tiles = 4
sample_tiles = 2
precision = "fp32"
deterministic = true
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiles_folder(tmp_path_factory.mktemp("tiles"), 21, 4, seed=4)


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "small.toml"
    path.write_text(SMALL)
    return path


def test_gpu_batches_are_the_worker_samples_bit_for_bit(data):
    augment = Augmentation(286, 256, flip=True, vflip=True, rot90=True)
    dataset = PairDataset(scan_dataset(data).train, 256, augment, seed=2)
    tiles = DeviceTiles(dataset, CUDA, workers=2)
    feed = DeviceFeed(tiles, EpochKeyedSampler(dataset, seed=2), 4, torch.channels_last)
    keys = [(epoch, index) for epoch in range(2) for index in range(len(dataset))]
    params = tiles.params(keys).to(CUDA)  # the step runner's copy
    crops = tiles.crops(params).cpu()
    A, B = feed.prepare((params,))
    assert A.is_cuda and A.is_contiguous(memory_format=torch.channels_last)
    for n, (epoch, index) in enumerate(keys):
        draw = draw_sample(augment, 2, epoch, index)
        window = dataset.resized(index)[:, draw.y : draw.y + 256, draw.x : draw.x + 256]
        assert torch.equal(crops[n], orient(window, draw.hflip, draw.vflip, draw.turns))
        a, b = dataset[(epoch, index)]
        assert torch.equal(A[n].cpu(), a) and torch.equal(B[n].cpu(), b)


def test_graphed_steps_match_eager_steps():
    """Same networks, same batches (four of 2 tiles, then one of 1): one CUDA graph replayed vs eager calls."""
    config = TrainConfig(ngf=16, ndf=16, batch_size=2, deterministic=True)
    gen = torch.Generator().manual_seed(0)
    batches = [tuple(torch.rand(n, 3, 256, 256, generator=gen) * 2 - 1 for _ in "AB") for n in (2, 2, 2, 2, 1)]

    def run(graphed: bool) -> tuple[Pix2Pix, torch.Tensor, list[torch.Tensor], GraphedStep | EagerStep]:
        model = Pix2Pix(config, CUDA, torch.float32, DistContext(), graphed=True)
        prepare = WorkerFeed((), model.memory_format).prepare
        loss_sum = torch.zeros(3, device=CUDA)
        step = GraphedStep(model, prepare, loss_sum, 2) if graphed else EagerStep(model, prepare, loss_sum)
        losses = [step(batch).clone() for batch in batches]
        torch.cuda.synchronize()
        return model, loss_sum, losses, step

    graphed, graphed_sum, graphed_losses, runner = run(True)
    eager, eager_sum, eager_losses, _ = run(False)
    assert isinstance(runner, GraphedStep) and runner.graph is not None and runner.capture_seconds > 0
    for ours, reference in zip(graphed_losses, eager_losses):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(graphed_sum, eager_sum, rtol=1e-4, atol=1e-5)
    for net in ("G", "D"):
        ours, reference = getattr(graphed, net).state_dict(), getattr(eager, net).state_dict()
        for key, value in ours.items():
            torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=2e-5, msg=f"{net}.{key}")
    moved = [(p - q).abs().max().item() for p, q in zip(graphed.G.parameters(), Pix2Pix(
        config, CUDA, torch.float32, DistContext()).G.parameters())]
    assert max(moved) > 1e-4  # the graph really trained (five Adam steps at lr 2e-4)


def test_gpu_path_learns_like_the_eager_worker_path(tmp_path):
    """Acceptance: 2 epochs with and without the graphed step + tiles in GPU memory reach the same val L1 (10 %)."""
    tiles = make_tiles_folder(tmp_path / "tiles", 24, 6, seed=1)
    base = {"ngf": 16, "ndf": 16, "epochs": 2, "epochs_decay": 0, "load_size": 256, "workers": 2,
            "precision": "fp32", "device": "cuda", "lr": 5e-4, "deterministic": True}
    eager = train(tiles, tmp_path / "eager", overrides={**base, "cuda_graph": False, "device_data": "off"},
                  progress=False)
    graphed = train(tiles, tmp_path / "graphed", overrides=base, progress=False)
    assert (eager.setup["step"], eager.setup["data"]) == ("eager", "DataLoader workers")
    assert (graphed.setup["step"], graphed.setup["data"]) == ("CUDA graph", "in GPU memory")
    assert graphed.setup["capture_seconds"] > 0 and graphed.setup["upload_seconds"] > 0
    assert graphed.setup["gpu_peak_bytes"] > 0
    untrained = Pix2Pix(config_from_mapping(base, "test"), CUDA, torch.float32, DistContext())
    val = PairDataset(scan_dataset(tiles).val, 256)
    start = validate(untrained, untrained.inference_generator("instance"), DataLoader(val, batch_size=8))["val_l1"]
    assert eager.last is not None and graphed.last is not None
    assert eager.last["val_l1"] < 0.8 * start and graphed.last["val_l1"] < 0.8 * start  # both learnt
    assert abs(graphed.last["val_l1"] - eager.last["val_l1"]) <= 0.1 * eager.last["val_l1"]


def test_gpu_ctrl_c_and_resume_are_bit_identical(data, small_config, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    ok(train_cli(data, "-o", straight, "--config", small_config))
    assert _checkpoint(straight)["global_step"] == 22

    real_call = GraphedStep.__call__
    calls = []

    def call_then_ctrl_c(self, raw):
        calls.append(1)
        if len(calls) == 13:  # step 2 of epoch 2; the stop is seen at the next read-back (step 10)
            os.kill(os.getpid(), signal.SIGINT)
        return real_call(self, raw)

    monkeypatch.setattr(GraphedStep, "__call__", call_then_ctrl_c)
    run = tmp_path / "run"
    result = ok(train_cli(data, "-o", run, "--config", small_config))
    monkeypatch.undo()
    assert "Stopped after 1 of 2 epochs" in result.output
    state = _checkpoint(run)
    assert (state["epoch"], state["epoch_samples"], state["global_step"]) == (1, 20, 21)
    ok(train_cli(data, "-o", run, "--resume"))  # one eager step (the last tile) finishes epoch 2
    _assert_same_training_state(straight, run)


def test_gpu_divergence_is_caught_and_the_checkpoint_kept(data, small_config, tmp_path):
    run = tmp_path / "run"
    ok(train_cli(data, "-o", run, "--config", small_config, "--epochs-decay", "0"))
    checkpoint = file_sha256(run / "checkpoint.pt")
    exploding = tmp_path / "exploding.toml"
    exploding.write_text("lambda_l1 = 1e39\nepochs_decay = 1\n")
    result = train_cli(data, "-o", run, "--resume", "--config", exploding)
    # read back every 10 steps on a GPU: by then the weights are NaN too, so the step's losses read nan or inf
    assert result.exit_code == 1 and "training diverged: non-finite loss in epoch 2 by step 10" in result.output
    assert "last good checkpoint" in result.output and "Traceback" not in result.output
    assert file_sha256(run / "checkpoint.pt") == checkpoint


def test_auto_precision_is_measured_then_kept_on_resume(data, tmp_path):
    base = {"ngf": 8, "ndf": 8, "epochs": 1, "epochs_decay": 0, "load_size": 256, "workers": 0, "device": "cuda"}
    first = train(data, tmp_path / "run", overrides=base, progress=False)
    assert first.setup["precision"] in ("fp32 (TF32 convolutions)", "bf16 autocast")
    assert first.setup["precision_reason"].startswith("measured") and first.setup["precision_seconds"] > 0
    record = _checkpoint(tmp_path / "run")["auto_precision"]
    assert record["batch_size"] == 1 and record["gpu"] == torch.cuda.get_device_name()
    resumed = train(data, tmp_path / "run", overrides={"epochs_decay": 1}, resume=True, progress=False)
    assert resumed.setup["precision"] == first.setup["precision"]
    assert resumed.setup["precision_reason"].startswith("kept from the start of this run")
