"""The train command end to end on small synthetic tiles: outputs, resume exactness, Ctrl-C, divergence, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tomllib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from geo_sat2map import cpu_precision
from geo_sat2map.atomic import file_sha256
from geo_sat2map.checkpoint import load_generator
from geo_sat2map.cli import cli
from geo_sat2map.device import resolve_device
from geo_sat2map.image_io import read_rgb, split_pair
from geo_sat2map.metrics import MetricAccumulator, to_uint8
from geo_sat2map.models import build_generator, prepare_for_inference
from geo_sat2map.scaling import InputScaling
from geo_sat2map.training.config import config_from_mapping
from geo_sat2map.training.data import dataset_hash, scan_dataset
from geo_sat2map.training.distributed import DistContext
from geo_sat2map.training import precision as training_precision
from geo_sat2map.training import train
from geo_sat2map.training.loop import Pix2Pix

from .train_fixtures import PALETTE, make_tiles_folder, one_torch_thread  # noqa: F401 (autouse fixture)

# Tiny but complete: width-8 nets, a 272 -> 256 resize jitter, 4 train and 2 val tiles; on the CPU at fp32 even
# where a GPU is visible (these tests assert CPU results: exact resumes, the step a divergence is seen, metrics),
# and with no precision probe, whose throwaway steps would count as steps of the run (the Ctrl-C tests).
TEST_CONFIG = """
device = "cpu"
precision = "fp32"
ngf = 8
ndf = 8
epochs = 1
epochs_decay = 1
load_size = 272
workers = 0
val_max_tiles = 2
sample_tiles = 2
"""
N_TRAIN = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiles_folder(tmp_path_factory.mktemp("tiles"), N_TRAIN, 2)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(TEST_CONFIG)
    return path


def train_cli(*args):
    return CliRunner().invoke(cli, ["-q", "train", *map(str, args)])


def ok(result):
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def straight_run(data, config_file, tmp_path_factory):
    """Two epochs in one go (constant LR, then the decay epoch): the reference for the resume tests."""
    run = tmp_path_factory.mktemp("straight") / "run"
    ok(train_cli(data, "-o", run, "--config", config_file))
    return run


def _checkpoint(run):
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)


def _assert_same_training_state(run_a, run_b):
    a, b = _checkpoint(run_a), _checkpoint(run_b)
    assert (a["epoch"], a["epoch_samples"], a["global_step"]) == (b["epoch"], b["epoch_samples"], b["global_step"])
    for net in ("G", "D"):
        for key, value in a["model"][net].items():
            assert torch.equal(value, b["model"][net][key]), f"{net}.{key} differs"
    for opt in ("opt_G", "opt_D"):
        for index, moments in a["model"][opt]["state"].items():
            for name, value in moments.items():
                assert torch.equal(value, b["model"][opt]["state"][index][name]), f"{opt} {index} {name} differs"
    gen_a, gen_b = load_generator(run_a / "generator.pt"), load_generator(run_b / "generator.pt")
    for key, value in gen_a.net.state_dict().items():
        assert torch.equal(value, gen_b.net.state_dict()[key])
    assert [r["val_l1"] for r in a["history"]] == [r["val_l1"] for r in b["history"]]


def test_run_outputs_and_generator_metadata(straight_run, data, config_file):
    run = straight_run
    config = config_from_mapping(tomllib.loads(config_file.read_text()), "test")
    assert config_from_mapping(tomllib.loads((run / "config.toml").read_text()), "config.toml") == config

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["lr"] for r in records] == pytest.approx([2e-4, 1e-4])  # epoch 2 is the linear-decay epoch
    assert [r["steps"] for r in records] == [N_TRAIN, 2 * N_TRAIN]
    for r in records:
        assert {"loss_D", "loss_G_GAN", "loss_G_L1", "val_l1", "val_psnr", "val_ssim", "val_acc_5", "val_acc_10"} <= set(r)
        assert all(np.isfinite(v) for v in r.values() if isinstance(v, float))
    best = min(records, key=lambda r: r["val_l1"])
    assert [r["best"] for r in records] == [True, records[1]["val_l1"] < records[0]["val_l1"]]

    loaded = load_generator(run / "generator.pt")
    meta = loaded.meta
    assert (meta.arch, meta.width, meta.norm_mode, meta.tile_size, meta.resolution) == ("unet256", 8, "instance", 256, 2.5)
    assert meta.bands == (3, 2, 1) and meta.band_roles == ("red", "green", "blue")
    assert meta.scaling == InputScaling("percentile", (10.0, 20.0, 30.0), (900.0, 950.0, 1000.0), (2.0, 98.0))
    assert meta.provenance["epochs"] == 2 and meta.provenance["config"]["ngf"] == 8
    # no palette in this dataset.json: train learned the flat map colours from the tiles' B halves
    assert meta.palette.kind == "exact" and set(meta.palette.colours) == {tuple(map(int, c)) for c in PALETTE}
    assert meta.provenance["dataset_hash"] == dataset_hash(scan_dataset(data))
    assert load_generator(run / "generator_best.pt").meta.provenance["epochs"] == best["epoch"]

    # generator.pt holds the checkpoint's generator, and its val metrics are what translate would get
    state = _checkpoint(run)
    assert state["epoch"] == 2 and state["epoch_samples"] == 0 and len(state["processes"]) == 1
    net = build_generator("unet256", 8)
    net.load_state_dict(state["model"]["G"])
    tiles = [split_pair(read_rgb(p), p) for p in sorted((data / "val").iterdir())]
    A = torch.stack([torch.from_numpy(InputScaling.uint8().to_unit(a)) for a, _ in tiles])
    with torch.no_grad():
        predictions = to_uint8(loaded.for_inference()(A))
        assert np.array_equal(predictions, to_uint8(prepare_for_inference(net, "instance")(A)))
    metrics = MetricAccumulator()
    for pred, (_, b) in zip(predictions, tiles):
        metrics.update(pred, b)
    assert metrics.result(per_image=True)["l1"] == pytest.approx(records[-1]["val_l1"], rel=1e-9)
    assert metrics.result(per_image=True)["acc_10"] == pytest.approx(records[-1]["val_acc_10"], rel=1e-9)

    # samples: one row per val tile, input | prediction | target
    grid = read_rgb(run / "samples" / "epoch_002.png")
    assert grid.shape == (3, 2 * 256, 3 * 256)
    for row, (a, b) in enumerate(tiles):
        cells = grid[:, row * 256 : (row + 1) * 256]
        assert np.array_equal(cells[:, :, :256], a) and np.array_equal(cells[:, :, 512:], b)
        assert np.array_equal(cells[:, :, 256:512], predictions[row])
    assert (run / "samples" / "epoch_001.png").is_file()
    with Image.open(run / "curves.png") as curves:
        assert curves.size == (1260, 520) and len(curves.getcolors(maxcolors=1 << 20)) > 3


def test_validation_scores_only_the_valid_pixels_and_the_log_names_the_val_cap(tmp_path):
    """A val tile with a nodata collar (black in both halves, its mask in masks/val/) is scored on its valid
    pixels only, so generator_best.pt is chosen on them; val_max_tiles 1 of 2 val tiles is said in the log."""
    data = make_tiles_folder(tmp_path / "tiles", 2, 2)
    first_val = sorted((data / "val").iterdir())[0]
    pair = np.asarray(Image.open(first_val)).copy()
    pair[:60] = 0  # nodata along the top of both halves, as make-tiles writes it
    Image.fromarray(pair).save(first_val)
    valid = np.ones((256, 256), bool)
    valid[:60] = False
    (data / "masks" / "val").mkdir(parents=True)
    Image.fromarray(np.where(valid, 255, 0).astype(np.uint8)).save(data / "masks" / "val" / first_val.name)
    config = tmp_path / "cfg.toml"
    config.write_text(TEST_CONFIG.replace("val_max_tiles = 2", "val_max_tiles = 1"))
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", str(data), "-o", str(run), "--config", str(config),
                                      "--epochs", "1", "--epochs-decay", "0"])
    assert result.exit_code == 0, result.output
    assert "on 2 train / 1 of 2 val tiles (val_max_tiles 1) of 256 px" in result.output
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    a, b = split_pair(read_rgb(first_val), first_val)
    with torch.no_grad():
        A = torch.from_numpy(InputScaling.uint8().to_unit(a))[None]
        prediction = to_uint8(load_generator(run / "generator.pt").for_inference()(A))[0]
    scored, everything = MetricAccumulator(), MetricAccumulator()
    scored.update(prediction, b, valid)
    everything.update(prediction, b)
    assert record["val_l1"] == pytest.approx(scored.result(per_image=True)["l1"], rel=1e-9)
    assert record["val_ssim"] == pytest.approx(scored.result(per_image=True)["ssim"], rel=1e-9)
    assert record["val_l1"] != pytest.approx(everything.result(per_image=True)["l1"], rel=1e-3)


def test_one_epoch_then_resume_is_bit_identical(straight_run, data, config_file, tmp_path):
    run = tmp_path / "run"
    first = ok(train_cli(data, "-o", run, "--config", config_file, "--epochs-decay", "0"))
    (line,) = first.output.splitlines()  # -q: the result line alone
    assert line.startswith(f"Trained 1 epochs: {run / 'generator.pt'}; best val L1 ")
    assert _checkpoint(run)["epoch"] == 1
    ok(train_cli(data, "-o", run, "--resume", "--epochs-decay", "1"))
    _assert_same_training_state(straight_run, run)


def _train_until_ctrl_c_in_epoch_2(data, config_file, run, monkeypatch):
    real_step = Pix2Pix.step
    calls = []

    def step_then_ctrl_c(self, A, B):
        out = real_step(self, A, B)
        calls.append(1)
        if len(calls) == N_TRAIN + 2:  # during the second step of epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Pix2Pix, "step", step_then_ctrl_c)
    result = ok(train_cli(data, "-o", run, "--config", config_file))
    monkeypatch.undo()
    return result


def test_ctrl_c_mid_epoch_saves_and_resume_is_bit_identical(straight_run, data, config_file, tmp_path, monkeypatch):
    run = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite itself was started in the background
    result = _train_until_ctrl_c_in_epoch_2(data, config_file, run, monkeypatch)
    assert "--resume" in result.output and "Stopped after 1 of 2 epochs" in result.output
    state = _checkpoint(run)
    assert (state["epoch"], state["epoch_samples"], state["global_step"]) == (1, 2, N_TRAIN + 2)
    assert load_generator(run / "generator.pt").meta.provenance["epochs"] == 1
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is restored

    ok(train_cli(data, "-o", run, "--resume"))
    _assert_same_training_state(straight_run, run)


def test_tiles_in_memory_train_bit_identically_and_resume_exactly(straight_run, data, config_file, tmp_path,
                                                                   monkeypatch):
    """device_data = on (the GPU path's data side: tiles decoded once, augmented as tensor ops) feeds the step
    the very batches the DataLoader workers do: interrupted in epoch 2 and resumed, the run ends bit-identical
    to the worker-path reference."""
    config = tmp_path / "in-memory.toml"
    config.write_text(config_file.read_text() + 'device_data = "on"\n')
    run = tmp_path / "run"
    _train_until_ctrl_c_in_epoch_2(data, config, run, monkeypatch)
    assert _checkpoint(run)["epoch_samples"] == 2
    ok(train_cli(data, "-o", run, "--resume"))
    _assert_same_training_state(straight_run, run)


def test_bf16_cpu_run_interrupted_and_resumed_is_bit_identical(straight_run, data, config_file, tmp_path,
                                                               monkeypatch):
    """bf16 autocast on the CPU: Ctrl-C in epoch 2 and --resume end where one uninterrupted bf16 run ends."""
    config = tmp_path / "bf16.toml"
    config.write_text(config_file.read_text().replace('precision = "fp32"', 'precision = "bf16"'))
    straight = tmp_path / "straight"
    ok(train_cli(data, "-o", straight, "--config", config))
    run = tmp_path / "run"
    _train_until_ctrl_c_in_epoch_2(data, config, run, monkeypatch)
    assert _checkpoint(run)["epoch_samples"] == 2
    ok(train_cli(data, "-o", run, "--resume"))
    _assert_same_training_state(straight, run)
    fp32_G, bf16_G = _checkpoint(straight_run)["model"]["G"], _checkpoint(run)["model"]["G"]
    assert not all(torch.equal(fp32_G[key], bf16_G[key]) for key in fp32_G)  # it did train at bf16


def test_auto_precision_on_cpu_is_measured_stored_and_kept_on_resume(data, tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_precision, "native_bf16", lambda: "avx512_bf16")  # whatever this CPU has
    monkeypatch.setenv(cpu_precision.CACHE_ENV, str(tmp_path / "cache"))
    steps_per_s = {torch.float32: 1.0, torch.bfloat16: 2.0}  # a probe where bf16 is twice as fast
    monkeypatch.setattr(training_precision, "measure_steps_per_s", lambda config, device, dtype, *_, **__:
                        steps_per_s[dtype])
    base = {"ngf": 8, "ndf": 8, "epochs": 1, "epochs_decay": 0, "load_size": 256, "workers": 0, "device": "cpu"}
    first = train(data, tmp_path / "run", overrides=base, progress=False)
    assert first.setup["precision"] == "bf16" and first.setup["precision_reason"].startswith("measured on this CPU")
    record = _checkpoint(tmp_path / "run")["auto_precision"]
    assert record["precision"] == "bf16" and record["cpu"] == cpu_precision.cpu_model() and record["batch_size"] == 1
    # Resumed where the probe would now pick fp32 (and nothing is cached): the run keeps bf16, so it continues exactly.
    steps_per_s[torch.bfloat16] = 0.5
    shutil.rmtree(tmp_path / "cache")
    resumed = train(data, tmp_path / "run", overrides={"epochs_decay": 1}, resume=True, progress=False)
    assert resumed.setup["precision"] == "bf16"
    assert resumed.setup["precision_reason"].startswith("kept from the start of this run")
    # A new run of the same shape measures again (the cache is gone) and now keeps fp32.
    fresh = train(data, tmp_path / "fresh", overrides=base, progress=False)
    assert fresh.setup["precision"] == "fp32" and ", 0.50x; bf16 is kept when over" in fresh.setup["precision_reason"]


def test_resume_refuses_another_width_and_leaves_the_run_alone(straight_run, data):
    before = file_sha256(straight_run / "checkpoint.pt")
    result = train_cli(data, "-o", straight_run, "--resume", "--ngf", "16")
    assert result.exit_code == 1
    assert "ngf = 16 (from the command line)" in result.output and "ngf = 8" in result.output
    assert file_sha256(straight_run / "checkpoint.pt") == before


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("drop-history", "damaged training checkpoint ('history' is missing or not a list)"),
        ("rename-a-weight", "damaged training checkpoint, cannot resume from it (RuntimeError: Error(s) in loading"),
        ("short-rng-state", "damaged training checkpoint, cannot resume from it ("),
    ],
)
def test_resume_from_a_checkpoint_that_loads_but_is_damaged(straight_run, data, tmp_path, damage, expected):
    """Loads with torch.load, but its contents do not fit: one line naming checkpoint.pt, the run left as it was."""
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    state = _checkpoint(run)
    if damage == "drop-history":
        del state["history"]
    elif damage == "rename-a-weight":
        weights = state["model"]["G"]
        weights["renamed"] = weights.pop(next(iter(weights)))
    else:
        state["epoch"] = 1  # resume mid-run, so that the RNG state is restored
        state["processes"][0]["rng"]["torch"] = state["processes"][0]["rng"]["torch"][:10]
    torch.save(state, run / "checkpoint.pt")
    before = {p.name: file_sha256(p) for p in run.iterdir() if p.is_file()}
    result = train_cli(data, "-o", run, "--resume")
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {run / 'checkpoint.pt'}: {expected}"), result.output
    assert {p.name: file_sha256(p) for p in run.iterdir() if p.is_file()} == before


def test_divergence_stops_keeps_the_checkpoint_and_overwrite_restarts(data, config_file, tmp_path):
    run = tmp_path / "run"
    ok(train_cli(data, "-o", run, "--config", config_file, "--epochs-decay", "0"))
    checkpoint = file_sha256(run / "checkpoint.pt")
    exploding = tmp_path / "exploding.toml"
    exploding.write_text("lambda_l1 = 1e39\nepochs_decay = 1\n")  # overflows float32: loss_G_L1 = inf

    result = train_cli(data, "-o", run, "--resume", "--config", exploding)
    assert result.exit_code == 1
    assert "training diverged: non-finite loss in epoch 2 by step 1" in result.output
    assert "loss_G_L1=inf" in result.output and "last good checkpoint" in result.output
    assert "Traceback" not in result.output and result.output.strip().splitlines()[-1].startswith("Error: training")
    assert file_sha256(run / "checkpoint.pt") == checkpoint
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1

    result = train_cli(data, "-o", run, "--config", config_file)
    assert result.exit_code == 1 and "already holds a run" in result.output and "--resume" in result.output

    stale = run / "samples" / "epoch_009.png"
    shutil.copy(run / "samples" / "epoch_001.png", stale)
    ok(train_cli(data, "-o", run, "--config", config_file, "--epochs-decay", "0", "--seed", "5", "--overwrite"))
    assert not stale.exists() and file_sha256(run / "checkpoint.pt") != checkpoint
    assert _checkpoint(run)["config"]["seed"] == 5


def _grey_tiles(root):
    (root / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((256, 512), np.uint8)).save(root / "train" / "t.png")
    return root


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing-data", "does not exist"),
        ("grey", "image mode is L, expected 8-bit RGB"),
        ("unknown-key", "unknown config key 'learning_rate'"),
        ("resume-nothing", "holds no run to resume"),
        ("resume-no-checkpoint", "killed before its first checkpoint"),
        ("run-is-file", "is a file"),
        ("resume-and-overwrite", "exclude each other"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, data, case, expected):
    args = [data, "-o", tmp_path / "run"]
    if case == "missing-data":
        args[0] = tmp_path / "nowhere"
    elif case == "grey":
        args[0] = _grey_tiles(tmp_path / "grey")
    elif case == "unknown-key":
        (tmp_path / "bad.toml").write_text("learning_rate = 0.1\n")
        args += ["--config", tmp_path / "bad.toml"]
    elif case == "resume-nothing":
        args.append("--resume")
    elif case == "resume-no-checkpoint":  # a run killed before its first checkpoint
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "config.toml").write_text("ngf = 8\n")
        args.append("--resume")
    elif case == "run-is-file":
        (tmp_path / "run").write_text("")
    elif case == "resume-and-overwrite":
        args += ["--resume", "--overwrite"]
    result = train_cli(*args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and expected in lines[0], result.output


def test_batch_size_zero_is_a_bad_parameter(data, tmp_path):
    result = train_cli(data, "-o", tmp_path / "run", "--batch-size", "0")
    assert result.exit_code == 2 and "Invalid value for '--batch-size'" in result.output
    assert not (tmp_path / "run").exists()


def test_cli_architecture_choices_match_the_models():
    from geo_sat2map.cli.train import ARCH_CHOICES
    from geo_sat2map.models import ARCHITECTURES

    assert ARCH_CHOICES == ARCHITECTURES


def test_the_tiny_config_stays_on_the_cpu_at_fp32_where_a_gpu_is_visible(monkeypatch):
    """The tests above assert CPU results: they must not move to a GPU on a GPU workstation (make test)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = config_from_mapping(tomllib.loads(TEST_CONFIG), "test")
    assert resolve_device(config.device).type == "cpu" and config.precision == "fp32"


def test_resume_across_a_layout_change_lays_each_adam_moment_out_like_its_parameter():
    """A run saved NCHW (channels_last = false, or any CPU run) resumed channels_last (a CUDA run): the loaded
    moments keep the saved strides unless re-laid out, and the fused CUDA Adam refuses moments laid out unlike
    their parameters. channels_last only applies on CUDA, so the resumed nets are converted by hand here."""
    config = config_from_mapping({**tomllib.loads(TEST_CONFIG), "channels_last": False, "device": "cpu"}, "test")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    A, B = (torch.rand(1, 3, 256, 256) * 2 - 1 for _ in range(2))
    saved = Pix2Pix(config, cpu, torch.float32, DistContext())
    saved.step(A, B)
    resumed = Pix2Pix(config, cpu, torch.float32, DistContext())
    for net in (resumed.G, resumed.D):
        net.to(memory_format=torch.channels_last)
    resumed.memory_format = torch.channels_last
    resumed.load_state_dict(saved.state_dict())

    def moments_like_parameters() -> int:
        changed = 0
        for optimizer, saved_optimizer in ((resumed.opt_G, saved.opt_G), (resumed.opt_D, saved.opt_D)):
            for param, saved_param in zip(optimizer.param_groups[0]["params"], saved_optimizer.param_groups[0]["params"]):
                for name in ("exp_avg", "exp_avg_sq"):
                    moment = optimizer.state[param][name]
                    assert moment.stride() == param.stride(), name
                    assert torch.equal(moment, saved_optimizer.state[saved_param][name])
                changed += param.stride() != saved_param.stride()
        return changed

    assert moments_like_parameters() > 10  # the convolution weights did change layout
    losses = resumed.step(resumed.to_device(A), resumed.to_device(B))
    assert torch.isfinite(losses).all()
    assert all(resumed.opt_G.state[p]["exp_avg"].stride() == p.stride() for p in resumed.G.parameters())
