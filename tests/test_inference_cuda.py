"""translate on a CUDA GPU: the device engine and the whole command against the CPU (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geo_sat2map.models import build_generator, prepare_for_inference
from geo_sat2map.scaling import InputScaling
from geo_sat2map.windows import WindowGrid

from .conftest import randomise
from .inference_oracle import reference_translate
from .test_inference_engine import holes, numpy_generator, run_engine, scene
from .translate_fixtures import read, run_translate, save_small_generator, texture, write_raster

pytestmark = pytest.mark.cuda


@pytest.fixture
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 in this comparison
    yield
    torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def model():
    return prepare_for_inference(randomise(build_generator("unet256", 8), seed=3), "instance")


@pytest.mark.parametrize("overlap,blend", [(64, "feather"), (0, "feather"), (96, "hann")])
def test_engine_on_cuda_matches_the_numpy_reference_at_fp32(model, overlap, blend, no_tf32):
    data, valid = scene(517, 700, seed=7), holes(517, 700, seed=7)
    grid = WindowGrid.build(517, 700, 256, overlap)
    expected = reference_translate(data, valid, grid, blend, InputScaling.uint8(3), numpy_generator(model.cpu()))
    levels, _ = run_engine(data, valid, grid, blend, InputScaling.uint8(3), model, batch_size=4, fixed_batch=True,
                           overview_levels=2, device="cuda")
    got = levels[0].transpose(2, 0, 1)
    assert np.array_equal(got[3], expected[3])
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    cpu_levels, _ = run_engine(data, valid, grid, blend, InputScaling.uint8(3), model.cpu(), batch_size=4,
                               overview_levels=2)
    for level in (1, 2):  # overviews of (nearly) identical rows: the same up to the rounding of one DN
        assert np.abs(levels[level].astype(int) - cpu_levels[level].astype(int)).max() <= 1


@pytest.mark.parametrize("extra", [[], ["--precision", "bf16", "--batch-size", "8"], ["--compile"]])
def test_translate_on_cuda_agrees_with_the_cpu(tmp_path, extra):
    weights = save_small_generator(tmp_path / "generator.pt")
    mask = np.ones((600, 900), bool)
    mask[:200, :300] = False
    src = write_raster(tmp_path / "scene.tif", texture(600, 900, seed=3), mask=mask)
    cpu, gpu = tmp_path / "cpu.tif", tmp_path / "gpu.tif"
    assert run_translate(src, "-o", cpu, "-w", weights, "--device", "cpu").exit_code == 0
    result = run_translate(src, "-o", gpu, "-w", weights, "--device", "cuda", "--precision", "fp32", *extra)
    assert result.exit_code == 0, result.output
    a, profile_a, info_a = read(cpu)
    b, profile_b, info_b = read(gpu)
    assert info_a["crs"] == info_b["crs"] and info_a["transform"] == info_b["transform"]
    assert np.array_equal(a[3], b[3])  # the footprint is exact on any device and precision
    diff = np.abs(a[:3].astype(int) - b[:3].astype(int))
    # bf16 keeps 8 significant bits. Measured on the CPU (bf16 autocast against fp32, AMD EPYC with avx512_bf16):
    # this test's generator and scene max 2 DN, mean 0.13 DN; the demo-trained generator on the demo's held-out
    # scene max 2, mean 0.14 (benchmarks/precision_diff.py); the trained quick-cpu generator
    # max 1, mean 0.14 (tests/test_train_learning.py). The limits are twice that: cuDNN's bf16 kernels round as
    # many bits, in another order.
    max_dn, mean_dn = (4, 0.3) if "bf16" in extra else (1, 0.01)
    assert diff.max() <= max_dn and diff.mean() < mean_dn
    assert info_b["overviews"] == info_a["overviews"]


@pytest.mark.parametrize("fixed_batch", [True, False])
def test_split_runs_choose_convolutions_deterministically(tmp_path, monkeypatch, fixed_batch):
    """Fixed-batch (split) runs must not let cuDNN time its kernels: each process could pick another one. Other
    runs keep the timing. The process-wide flags are restored afterwards."""
    from geo_sat2map.inference import TranslateConfig, translate
    from geo_sat2map.inference.runner import GeneratorRunner

    cudnn = torch.backends.cudnn
    before = cudnn.benchmark, cudnn.deterministic
    seen = set()
    real_call = GeneratorRunner.__call__

    def spy(self, inputs):
        seen.add((cudnn.benchmark, cudnn.deterministic))
        return real_call(self, inputs)

    monkeypatch.setattr(GeneratorRunner, "__call__", spy)
    weights = save_small_generator(tmp_path / "generator.pt")
    src = write_raster(tmp_path / "scene.tif", texture(300, 400, seed=4))
    translate(TranslateConfig(input=src, output=tmp_path / "map.tif", weights=weights, device="cuda",
                              fixed_batch=fixed_batch, progress=False))
    assert seen == {(not fixed_batch, fixed_batch)}
    assert (cudnn.benchmark, cudnn.deterministic) == before


def test_the_generator_is_replayed_from_a_cuda_graph_equal_to_the_uncaptured_forward(model):
    """On CUDA the forward pass is captured once and replayed. Every replay equals the uncaptured forward (same
    kernels), an earlier result survives the next replay (it is copied out of the graph's output buffer), and a
    batch of another shape runs uncaptured."""
    from geo_sat2map.inference.runner import GeneratorRunner, StageClock

    device = torch.device("cuda")
    graphed = GeneratorRunner(model, device, torch.float32, StageClock(device), deterministic=True)
    plain = GeneratorRunner(model, device, torch.float32, StageClock(device), deterministic=True, graph=False)
    batches = [torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(s)).to(device) * 2 - 1
               for s in range(3)]
    with graphed.active():
        outputs = [graphed(batch) for batch in batches]
        assert graphed._graph is not None and graphed.capture_seconds > 0
        expected = [plain(batch) for batch in batches]
        odd = graphed(batches[0][:3])
        odd_expected = plain(batches[0][:3])
    for got, want in zip(outputs, expected):
        assert torch.equal(got, want)
    assert not torch.equal(outputs[0], outputs[1])
    assert torch.equal(odd, odd_expected)
