"""bf16 on the CPU: native-bf16 detection, --precision bf16 for translate and evaluate, and ``auto`` chosen by a
probe of the run's own generator whose choice is cached (the probe is mocked where a test needs a given
outcome; a real one runs wherever the suite translates at the default precision)."""

from __future__ import annotations

import json

import numpy as np
import torch
import pytest
from click.testing import CliRunner

from geo_sat2map import cpu_precision, device
from geo_sat2map.cli import cli
from geo_sat2map.inference import precision as inference_precision
from geo_sat2map.inference.identity import RUN_ID_TAG

from .train_fixtures import make_tiles_folder
from .translate_fixtures import read, texture, write_raster


@pytest.fixture
def scene(tmp_path):
    return write_raster(tmp_path / "scene.tif", texture(300, 400, seed=5))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(cpu_precision.CACHE_ENV, str(folder))
    return folder / cpu_precision.CACHE_FILE


@pytest.fixture
def native(monkeypatch):
    """A CPU with native bf16, whatever this one has."""
    monkeypatch.setattr(cpu_precision, "native_bf16", lambda: "avx512_bf16")


def mock_probe(monkeypatch, fp32: float, bf16: float) -> list[tuple[int, int]]:
    """The probe reports these seconds per window; returns the (tile, batch) of each probe run."""
    calls: list[tuple[int, int]] = []

    def timed(model, tile, batch):
        calls.append((tile, batch))
        return fp32, bf16

    monkeypatch.setattr(inference_precision, "time_generator", timed)
    return calls


def translate(scene, out, weights, *extra):
    """translate on the CPU with its log in ``result.output`` (no -q)."""
    return CliRunner().invoke(cli, ["translate", str(scene), "-o", str(out), "-w", str(weights), "--device", "cpu",
                                    *map(str, extra)])


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def test_native_bf16_comes_from_the_cpu_flags_on_x86_only(monkeypatch):
    def detected(machine, flags):
        monkeypatch.setattr(cpu_precision.platform, "machine", lambda: machine)
        monkeypatch.setattr(cpu_precision, "cpu_flags", lambda: frozenset(flags))
        cpu_precision.native_bf16.cache_clear()
        return cpu_precision.native_bf16()

    try:
        assert detected("x86_64", {"avx2", "avx512f", "avx512_bf16"}) == "avx512_bf16"
        assert detected("x86_64", {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}) == "amx_bf16"
        assert detected("x86_64", {"avx2", "avx512f", "avx512bw"}) is None  # AVX-512 alone emulates bf16
        assert detected("aarch64", {"bf16", "avx512_bf16"}) is None
    finally:
        cpu_precision.native_bf16.cache_clear()


def test_cache_folder_follows_the_variable_then_the_platform_default(monkeypatch, tmp_path):
    monkeypatch.setenv(cpu_precision.CACHE_ENV, str(tmp_path / "mine"))
    assert cpu_precision.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(cpu_precision.CACHE_ENV)
    monkeypatch.setattr(cpu_precision.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cpu_precision.cache_dir() == tmp_path / "xdg" / "geo-sat2map"


def test_auto_keeps_fp32_when_bf16_is_not_clearly_faster_and_caches_the_choice(
        tmp_path, weights, scene, cache, native, monkeypatch):
    calls = mock_probe(monkeypatch, fp32=0.100, bf16=0.095)  # bf16 only 1.05x faster: under the margin
    result = ok(translate(scene, tmp_path / "a.tif", weights, "--batch-size", "3"))
    assert calls == [(256, 2)]  # the run's tile, 2 windows a batch
    assert "precision: fp32 (auto: measured on this CPU (avx512_bf16): 95 ms per window at bf16 against 100 ms" in result.output
    assert f"1.05x; bf16 is kept when over {cpu_precision.BF16_MARGIN:g}x faster" in result.output
    _, _, info = read(tmp_path / "a.tif")
    assert info["tags"]["PRECISION"] == "fp32"
    stored = json.loads(cache.read_text())
    assert [entry["precision"] for entry in stored["choices"].values()] == ["fp32"]
    (key,) = stored["choices"]
    assert "unet256" in key and "width 8" in key and "tile 256" in key and cpu_precision.cpu_model() in key

    result = ok(translate(scene, tmp_path / "b.tif", weights))  # a later call, another batch size: no probe
    assert calls == [(256, 2)] and f"cached in {cache}" in result.output
    fp32 = ok(translate(scene, tmp_path / "fp32.tif", weights, "--precision", "fp32"))
    assert "precision: fp32 (--precision fp32)" in fp32.output
    assert np.array_equal(read(tmp_path / "b.tif")[0], read(tmp_path / "fp32.tif")[0])
    # The same choice with a different network shape is measured anew.
    ok(translate(scene, tmp_path / "c.tif", weights, "--tile-size", "512"))
    assert calls == [(256, 2), (512, 2)]


def test_auto_picks_bf16_when_clearly_faster_and_the_run_identity_says_so(
        tmp_path, weights, scene, cache, native, monkeypatch):
    mock_probe(monkeypatch, fp32=0.200, bf16=0.100)
    result = ok(translate(scene, tmp_path / "auto.tif", weights))
    assert "precision: bf16 (auto: measured on this CPU" in result.output and ", 2.00x;" in result.output
    ok(translate(scene, tmp_path / "bf16.tif", weights, "--precision", "bf16"))
    ok(translate(scene, tmp_path / "fp32.tif", weights, "--precision", "fp32"))
    (auto, _, auto_info), (bf16, _, bf16_info), (fp32, _, fp32_info) = (
        read(tmp_path / name) for name in ("auto.tif", "bf16.tif", "fp32.tif"))
    assert auto_info["tags"]["PRECISION"] == "bf16" and fp32_info["tags"]["PRECISION"] == "fp32"
    assert auto_info["tags"][RUN_ID_TAG] == bf16_info["tags"][RUN_ID_TAG] != fp32_info["tags"][RUN_ID_TAG]
    assert np.array_equal(auto, bf16)
    assert not np.array_equal(auto[:3], fp32[:3]) and np.array_equal(auto[3], fp32[3])


@pytest.mark.parametrize("content", [b"\x00{not json", b'["a list"]', b'{"version": 1, "choices": 7}'])
def test_a_corrupt_cache_file_is_ignored_and_rewritten(tmp_path, weights, scene, cache, native, monkeypatch, content):
    calls = mock_probe(monkeypatch, fp32=0.200, bf16=0.100)
    cache.parent.mkdir(parents=True)
    cache.write_bytes(content)
    result = ok(translate(scene, tmp_path / "map.tif", weights))
    assert len(calls) == 1 and "precision: bf16 (auto: measured on this CPU" in result.output
    stored = json.loads(cache.read_text())
    assert stored["version"] == cpu_precision.CACHE_VERSION
    assert [entry["precision"] for entry in stored["choices"].values()] == ["bf16"]


def test_without_native_bf16_auto_stays_fp32_unmeasured_and_bf16_warns(
        tmp_path, weights, scene, cache, monkeypatch):
    monkeypatch.setattr(cpu_precision, "native_bf16", lambda: None)
    calls = mock_probe(monkeypatch, fp32=1.0, bf16=0.1)
    result = ok(translate(scene, tmp_path / "auto.tif", weights))
    assert calls == [] and not cache.exists()
    assert "precision: fp32 (auto: this CPU has no native bf16 (avx512_bf16 or AMX)" in result.output
    device._warn_emulated_bf16.cache_clear()  # once per process: this test's run must say it
    result = ok(translate(scene, tmp_path / "bf16.tif", weights, "--precision", "bf16"))
    warnings = [line for line in result.output.splitlines() if "bf16 is emulated" in line]
    assert len(warnings) == 1 and "--precision auto or fp32" in warnings[0]
    assert read(tmp_path / "bf16.tif")[2]["tags"]["PRECISION"] == "bf16"  # slower, but what was asked for


def test_fp16_on_cpu_is_refused_with_what_to_use(tmp_path, weights, scene):
    result = translate(scene, tmp_path / "map.tif", weights, "--precision", "fp16")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: --precision fp16: half precision is only supported on a GPU; use bf16 or fp32 on CPU" in result.output
    assert not (tmp_path / "map.tif").exists()


def test_evaluate_runs_at_bf16_on_the_cpu_and_reports_it(tmp_path, weights):
    data = make_tiles_folder(tmp_path / "tiles", 1, 3, seed=4)
    reports = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.json"
        result = CliRunner().invoke(cli, ["evaluate", "--weights", str(weights), str(data), "--device", "cpu",
                                          "--precision", precision, "--json", str(out)])
        assert result.exit_code == 0, result.output
        assert f"precision: {precision} (--precision {precision})" in result.output
        reports[precision] = json.loads(out.read_text())
    assert [reports[p]["inputs"]["precision"] for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    fp32, bf16 = reports["fp32"]["metrics"], reports["bf16"]["metrics"]
    assert fp32["l1"] != bf16["l1"] and fp32["l1"] == pytest.approx(bf16["l1"], abs=1.0)  # DN


def test_evaluate_auto_on_the_cpu_measures_the_tiles_shape(tmp_path, weights, cache, native, monkeypatch):
    calls = mock_probe(monkeypatch, fp32=0.200, bf16=0.100)
    data = make_tiles_folder(tmp_path / "tiles", 1, 3, seed=4)
    result = CliRunner().invoke(cli, ["evaluate", "--weights", str(weights), str(data), "--device", "cpu",
                                      "--batch-size", "1", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert calls == [(256, 2)] and "precision: bf16 (auto: measured on this CPU" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["inputs"]["precision"] == "bf16"


@pytest.mark.slow
def test_compile_on_a_cpu_without_a_compiler_falls_back_to_eager_with_one_line(
        tmp_path, weights, scene, monkeypatch):
    """inductor's C++ backend needs the system compiler; without one translate --compile says so once and runs
    eager (~15 s of tracing first). A real compile is too slow for the suite (100 s at ngf 8 on 2 busy cores):
    benchmarks/translate_bench.py --device cpu --compile times it."""
    import torch._inductor.config as inductor

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # no kernel compiled earlier
    monkeypatch.setattr(inductor.cpp, "cxx", (str(tmp_path / "no-such-c++"),))
    monkeypatch.setattr(inductor, "fx_graph_cache", False)
    result = ok(translate(scene, tmp_path / "compiled.tif", weights, "--precision", "bf16", "--compile"))
    warnings = [line for line in result.output.splitlines() if "--compile" in line]
    assert len(warnings) == 1 and "torch.compile failed" in warnings[0] and "running eager" in warnings[0]
    ok(translate(scene, tmp_path / "eager.tif", weights, "--precision", "bf16"))
    assert np.array_equal(read(tmp_path / "compiled.tif")[0], read(tmp_path / "eager.tif")[0])


def test_the_probe_runs_on_one_thread_and_restores_the_thread_count(cache, native):
    """CPU time of one thread is what the probe compares (robust on a shared machine); the run's threads return."""
    seen = []

    def measure():
        seen.append(torch.get_num_threads())
        return 0.2, 0.1

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        choice = cpu_precision.choose_on_cpu("test", {"width": 1}, measure, "unit")
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert choice.precision == "bf16" and choice.seconds > 0 and "200 ms at fp32" in choice.reason
