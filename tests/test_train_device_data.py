"""The device-resident data path and the step runners, on the CPU: the tensor augmentation reproduces the worker
path bit for bit, batches follow the sampler (resume offsets, a smaller last batch), the capture's warm-up is
undone exactly, and the plans for data, step and precision say why."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from geo_sat2map.training.config import TrainConfig
from geo_sat2map.training.data import Augmentation, EpochKeyedSampler, PairDataset, scan_dataset
from geo_sat2map.training.device_data import GIB, DeviceFeed, DeviceTiles, DeviceValSet, WorkerFeed, plan_device_data
from geo_sat2map.training.distributed import DistContext
from geo_sat2map.training.loop import Pix2Pix
from geo_sat2map import cpu_precision
from geo_sat2map.training import precision as training_precision
from geo_sat2map.training.precision import choose_precision, measure_steps_per_s
from geo_sat2map.training.steps import EagerStep, _TrainingState, plan_graph

from .train_fixtures import make_tiles_folder, one_torch_thread  # noqa: F401 (autouse fixture)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only described, never used: plans are pure decisions


@pytest.fixture(scope="module")
def tiles_dir(tmp_path_factory):
    return make_tiles_folder(tmp_path_factory.mktemp("tiles"), 5, 3, seed=2)


@pytest.mark.parametrize(
    "augment",
    [
        Augmentation(286, 256),  # the recipe: bicubic resize up, random crop, horizontal flip
        Augmentation(272, 256, map_resample="nearest", flip=True, vflip=True, rot90=True),
        Augmentation(256, 256, flip=False, rot90=True),
    ],
    ids=["recipe", "nearest-dihedral", "no-resize"],
)
def test_device_batches_are_the_worker_samples_bit_for_bit(tiles_dir, augment):
    dataset = PairDataset(scan_dataset(tiles_dir).train, 256, augment, seed=11)
    tiles = DeviceTiles(dataset, CPU, workers=0)
    assert tiles.data.shape == (5, 6, augment.load_size, augment.load_size) and tiles.data.dtype == torch.uint8
    feed = DeviceFeed(tiles, EpochKeyedSampler(dataset, seed=11), batch_size=4, memory_format=torch.contiguous_format)
    keys = [(epoch, index) for epoch in range(4) for index in range(5)]
    A, B = feed.prepare((tiles.params(keys),))  # one batch of all 20 keys
    for n, key in enumerate(keys):
        a, b = dataset[key]
        assert torch.equal(A[n], a) and torch.equal(B[n], b), key
    if augment.rot90:  # the draws really vary: several orientations among the keys
        assert len({int(code) for code in tiles.params(keys)[:, 2]}) > 2


def test_device_feed_follows_the_sampler_resume_offset_and_last_small_batch(tiles_dir):
    dataset = PairDataset(scan_dataset(tiles_dir).train, 256, Augmentation(272, 256), seed=3)
    tiles = DeviceTiles(dataset, CPU, workers=0)
    sampler = EpochKeyedSampler(dataset, seed=3)
    device_feed = DeviceFeed(tiles, sampler, batch_size=2, memory_format=torch.contiguous_format)
    worker_feed = WorkerFeed(DataLoader(dataset, batch_size=2, sampler=sampler), torch.contiguous_format)
    for epoch, start in ((0, 0), (1, 0), (1, 3)):
        sampler.set_epoch(epoch)
        sampler.start = start
        ours = [device_feed.prepare(raw) for raw in device_feed]
        theirs = [worker_feed.prepare(raw) for raw in worker_feed]
        assert [len(a) for a, _ in ours] == [len(a) for a, _ in theirs] == ([2, 2, 1] if start == 0 else [2])
        for (a, b), (a_ref, b_ref) in zip(ours, theirs):
            assert torch.equal(a, a_ref) and torch.equal(b, b_ref)


def test_device_validation_set_matches_the_loader(tiles_dir):
    val = PairDataset(scan_dataset(tiles_dir).val, 256)
    on_device = list(DeviceValSet(val, CPU, workers=0).batches())
    loaded = list(DataLoader(val, batch_size=8))
    assert len(on_device) == len(loaded) == 1
    assert torch.equal(on_device[0][0], loaded[0][0]) and torch.equal(on_device[0][1], loaded[0][1])
    assert on_device[0][1].dtype == torch.uint8


def test_data_plan_keeps_tiles_on_the_gpu_only_when_they_fit():
    # 1,096 maps tiles at load_size 286 and 200 val crops: 0.50 GiB + 0.04 GiB
    needed = 1096 * 6 * 286**2 + 200 * 3 * 256**2
    fits = plan_device_data("auto", CUDA, 1096, 286, 200, 256, 0.25, device_memory=80 * GIB)
    assert fits.on_device and fits.bytes_needed == needed and "0.25 of 80 GiB" in fits.reason
    small_gpu = plan_device_data("auto", CUDA, 1096, 286, 200, 256, 0.25, device_memory=2 * GIB)
    assert not small_gpu.on_device and "more than device_data_share 0.25" in small_gpu.reason
    assert plan_device_data("auto", CUDA, 1096, 286, 200, 256, 0.5, device_memory=2 * GIB).on_device
    assert not plan_device_data("auto", CPU, 4, 286, 0, 256, 0.25).on_device  # CPU runs keep the workers
    assert plan_device_data("on", CPU, 4, 286, 0, 256, 0.25).on_device
    assert not plan_device_data("off", CUDA, 4, 286, 0, 256, 0.25, device_memory=80 * GIB).on_device


@pytest.mark.parametrize(
    "change, dtype, ctx, graphed, reason",
    [
        ({}, torch.float32, DistContext(), True, "one graph per step"),
        ({}, torch.bfloat16, DistContext(), True, "one graph per step"),
        ({"cuda_graph": False}, torch.float32, DistContext(), False, "cuda_graph = false"),
        ({}, torch.float16, DistContext(), False, "gradient scaler"),
        ({"compile": True}, torch.float32, DistContext(), False, "torch.compile"),
        ({}, torch.float32, DistContext(0, 2, 0), False, "2 processes"),
    ],
)
def test_graph_plan(change, dtype, ctx, graphed, reason):
    assert plan_graph(replace(TrainConfig(), **change), CUDA, dtype, ctx)[0] == graphed
    assert reason in plan_graph(replace(TrainConfig(), **change), CUDA, dtype, ctx)[1]
    cpu_plan = plan_graph(TrainConfig(), CPU, torch.float32, DistContext())
    assert cpu_plan == (False, "cpu: CUDA graphs need a CUDA GPU")


def _tiny_model() -> Pix2Pix:
    return Pix2Pix(TrainConfig(ngf=8, ndf=8), CPU, torch.float32, DistContext())


def _state(model: Pix2Pix) -> list[torch.Tensor]:
    tensors = [t.clone() for net in (model.G, model.D) for t in net.state_dict().values()]
    for optimizer in (model.opt_G, model.opt_D):
        tensors += [v.clone() for s in optimizer.state.values() for v in s.values()]
    return tensors


def test_capture_warm_up_is_undone_exactly():
    """What GraphedStep does around its warm-up steps, checked on the CPU: after restore, training continues as
    if the warm-up never ran (fresh optimisers included, whose state the warm-up creates)."""
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(1, 3, 256, 256, generator=gen) * 2 - 1,) * 2 for _ in range(3)]

    def run(warm_up_at: set[int]) -> list[torch.Tensor]:
        model = _tiny_model()
        step = EagerStep(model, WorkerFeed((), model.memory_format).prepare, torch.zeros(3))
        for n, batch in enumerate(batches):
            if n in warm_up_at:
                saved = _TrainingState(model)
                for _ in range(2):
                    model.step(*batches[-1])  # as GraphedStep warms up: losses not accumulated
                saved.restore()
            step(batch)
        return _state(model) + [step.loss_sum]

    plain = run(set())
    for warm_up_at in ({0}, {1}):  # before the first step (no Adam state yet), and mid-run
        for ours, reference in zip(run(warm_up_at), plain, strict=True):
            assert torch.equal(ours, reference)


def test_auto_precision_on_cpu_and_measuring_leaves_the_random_streams_alone(monkeypatch):
    monkeypatch.setattr(cpu_precision, "native_bf16", lambda: None)  # a CPU without native bf16: fp32, unmeasured
    monkeypatch.setattr(training_precision, "measure_steps_per_s", None)
    choice = choose_precision(TrainConfig(), CPU, DistContext())
    assert choice.dtype == torch.float32 and "no native bf16" in choice.reason
    assert choice.record is not None and choice.record["precision"] == "fp32"  # kept on resume, like a measured one
    monkeypatch.undo()
    assert choose_precision(TrainConfig(precision="fp32"), CPU, DistContext()).reason == "precision = fp32"
    torch.manual_seed(5)
    np.random.seed(5)
    before = torch.get_rng_state(), np.random.get_state()[1].copy()
    rate = measure_steps_per_s(TrainConfig(ngf=8, ndf=8), CPU, torch.float32, graphed=False, steps=1)
    assert rate > 0
    assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
