"""Training config: TOML files map 1:1 onto TrainConfig; schedule and norm-mode rules."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from geo_sat2map.errors import UserError
from geo_sat2map.training.config import TrainConfig, config_from_mapping, config_to_toml, read_config_file

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_pix2pix_config_is_the_default_recipe():
    config = config_from_mapping(read_config_file(CONFIGS / "pix2pix.toml"), "pix2pix.toml")
    assert config == TrainConfig()
    assert (config.arch, config.ngf, config.ndf, config.batch_size) == ("unet256", 64, 64, 1)
    assert (config.lr, config.beta1, config.beta2, config.lambda_l1) == (2e-4, 0.5, 0.999, 100.0)
    assert (config.load_size, config.crop_size, config.flip, config.vflip, config.rot90) == (286, 256, True, False, False)
    assert (config.epochs, config.epochs_decay, config.gan_mode) == (100, 100, "vanilla")


def test_quick_cpu_config_loads_and_is_small():
    config = config_from_mapping(read_config_file(CONFIGS / "quick-cpu.toml"), "quick-cpu.toml")
    assert config.ngf <= 32 and config.total_epochs <= 20 and config.load_size == config.crop_size == 256


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    config_from_mapping(read_config_file(path), str(path)).validate()


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("ngf = 32\nlearning_rate = 0.1\n")
    with pytest.raises(UserError, match=r"bad\.toml.*'learning_rate'"):
        config_from_mapping(read_config_file(path), str(path))


@pytest.mark.parametrize(
    "text, match",
    [
        ("ngf = 'wide'", "ngf = 'wide' should be int"),
        ("flip = 1", "flip = 1 should be bool"),
        ("arch = 'resnet'", "arch = 'resnet': expected one of unet256, seed-unet"),
        ("crop_size = 300", "crop_size = 300: .*multiple of 256"),
        ("batch_size = 0", "batch_size = 0: must be at least 1"),
        ("load_size = 200", "load_size = 200 is smaller than crop_size"),
        ("[model]\nngf = 3", "unknown config key 'model'"),
        ("ngf = ", "not valid TOML"),
    ],
)
def test_bad_values_are_user_errors(tmp_path, text, match):
    path = tmp_path / "c.toml"
    path.write_text(text + "\n")
    with pytest.raises(UserError, match=match):
        config_from_mapping(read_config_file(path), str(path))


@pytest.mark.parametrize("data", ["# café\nngf = 32\n".encode("latin-1"), bytes(range(256))])
def test_a_file_that_is_not_utf8_is_a_user_error(tmp_path, data):
    path = tmp_path / "c.toml"
    path.write_bytes(data)
    with pytest.raises(UserError, match=r"--config .*c\.toml: not a UTF-8 TOML text file \(invalid .* at byte \d+\)"):
        read_config_file(path)


def test_ints_are_accepted_for_floats_and_toml_round_trips(tmp_path):
    config = config_from_mapping({"lr": 1, "lambda_l1": 10, "device": 'cu"da', "rot90": True}, "test")
    assert config.lr == 1.0 and isinstance(config.lr, float)
    odd = replace(config, lr=1e-5, init_gain=0.125)
    path = tmp_path / "round.toml"
    path.write_text(config_to_toml(odd, header="a header\nsecond line"))
    assert config_from_mapping(tomllib.loads(path.read_text()), str(path)) == odd
    assert path.read_text().startswith("# a header\n# second line\n")
    assert set(tomllib.loads(path.read_text())) == set(asdict(odd))


def test_linear_schedule_matches_pix2pix():
    config = TrainConfig(epochs=100, epochs_decay=100)
    factors = [config.lr_factor(e) for e in range(200)]
    assert factors[:100] == [1.0] * 100
    assert factors[100] == pytest.approx(1 - 1 / 101) and factors[199] == pytest.approx(1 / 101)
    assert all(a > b for a, b in zip(factors[99:], factors[100:]))
    assert TrainConfig(epochs=3, epochs_decay=0).lr_factor(2) == 1.0


def test_inference_norm_mode_follows_batch_size():
    assert TrainConfig(batch_size=1).inference_norm_mode() == "instance"
    assert TrainConfig(batch_size=4).inference_norm_mode() == "running"
    assert TrainConfig(batch_size=4, norm_mode="instance").inference_norm_mode() == "instance"
