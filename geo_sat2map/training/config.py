"""The training configuration: one flat dataclass, read from and written back to TOML.

Config files hold a subset of ``TrainConfig``'s fields as top-level ``key = value`` pairs (1:1 with the
field names); anything else is an error naming the key and the file. Defaults are the pix2pix paper's
recipe, so ``configs/pix2pix.toml`` and "no --config" train the same model.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from geo_sat2map.errors import UserError
from geo_sat2map.models import ARCHITECTURES

# Keys whose change would make the stored weights unusable: refused on --resume.
MODEL_KEYS = ("arch", "ngf", "ndf")
CHOICES: dict[str, tuple[str, ...]] = {
    "arch": ARCHITECTURES,
    "device_data": ("auto", "on", "off"),
    "gan_mode": ("vanilla", "lsgan"),
    "map_resample": ("bicubic", "nearest"),
    "norm_mode": ("auto", "instance", "running"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
}
# Both unet256 and seed-unet halve the tile 8 times.
SIZE_MULTIPLE = 256


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting; field names are the config-file keys."""

    # model
    arch: str = "unet256"
    ngf: int = 64  # generator width (pix2pix ngf / seed "features")
    ndf: int = 64  # PatchGAN width
    init_gain: float = 0.02  # weights ~ N(0, gain); BatchNorm weights ~ N(1, gain)
    # schedule: `epochs` at constant LR, then `epochs_decay` more with LR falling linearly to 0
    epochs: int = 100
    epochs_decay: int = 100
    batch_size: int = 1  # per process; the global batch is batch_size x processes
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    # losses
    gan_mode: str = "vanilla"  # "vanilla": BCE with logits; "lsgan": least squares
    lambda_l1: float = 100.0
    # augmentation, applied identically to A and B
    load_size: int = 286  # resize tiles to this size ...
    crop_size: int = 256  # ... then take a random crop of this size (the generator's tile size)
    map_resample: str = "bicubic"  # how B is resized ("nearest" keeps map colours crisp)
    flip: bool = True  # random horizontal flip
    vflip: bool = False  # random vertical flip (overhead imagery has no "up")
    rot90: bool = False  # random multiple of 90 degrees
    # inference normalisation stored in generator.pt; auto = instance at batch 1, running otherwise
    norm_mode: str = "auto"
    # run
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int = 4  # DataLoader worker processes
    compile: bool = False  # torch.compile the networks (CUDA; first epoch pays the compile time)
    # GPU speed (README, train: "Speed"): tiles decoded once into GPU memory and augmented there ("auto": on CUDA
    # when they fit in device_data_share of its memory; "on": on any device; "off": DataLoader workers) ...
    device_data: str = "auto"
    device_data_share: float = 0.25
    cuda_graph: bool = True  # ... the whole step captured once as a CUDA graph (single process, bf16/fp32) ...
    deterministic: bool = False  # ... and deterministic cuDNN kernels: bit-exact --resume on CUDA, a little slower
    channels_last: bool = True  # CUDA: NHWC activations and weights (cuDNN's tensor-core layout)
    val_max_tiles: int = 200  # validate on at most this many val tiles (evenly spaced), 0 = all
    sample_tiles: int = 4  # rows in samples/epoch_NNN.png

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay

    def lr_factor(self, epoch: int) -> float:
        """LR multiplier for 0-based ``epoch``: pix2pix's 'linear' policy (1 for `epochs`, then towards 0)."""
        return 1.0 - max(0, epoch + 1 - self.epochs) / float(self.epochs_decay + 1)

    def inference_norm_mode(self) -> str:
        """Per-process batch 1 trains BatchNorm on one tile's statistics: that is instance norm."""
        if self.norm_mode != "auto":
            return self.norm_mode
        return "instance" if self.batch_size == 1 else "running"

    def validate(self) -> None:
        """Raise UserError naming the first key with an impossible value."""
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"{key} = {getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        positive = ("ngf", "ndf", "batch_size", "load_size", "crop_size", "sample_tiles")
        non_negative = ("epochs", "epochs_decay", "workers", "val_max_tiles", "seed")
        for key in positive:
            if getattr(self, key) < 1:
                raise UserError(f"{key} = {getattr(self, key)}: must be at least 1")
        for key in non_negative:
            if getattr(self, key) < 0:
                raise UserError(f"{key} = {getattr(self, key)}: must not be negative")
        if self.total_epochs < 1:
            raise UserError("epochs + epochs_decay must be at least 1")
        for key in ("lr", "init_gain", "lambda_l1"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0 or (key == "lr" and value == 0):
                raise UserError(f"{key} = {value}: must be a finite number {'> 0' if key == 'lr' else '>= 0'}")
        if not 0 < self.device_data_share <= 1:
            raise UserError(f"device_data_share = {self.device_data_share}: must be in (0, 1]")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise UserError(f"{key} = {getattr(self, key)}: must be in [0, 1)")
        if self.crop_size % SIZE_MULTIPLE:
            raise UserError(
                f"crop_size = {self.crop_size}: the {self.arch} generator needs a multiple of {SIZE_MULTIPLE}"
            )
        if self.load_size < self.crop_size:
            raise UserError(f"load_size = {self.load_size} is smaller than crop_size = {self.crop_size}")


_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(TrainConfig)}


def _check_type(key: str, value: Any, source: str) -> Any:
    expected = _TYPES[key]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not expected:
        raise UserError(f"{source}: {key} = {value!r} should be {expected.__name__}, not {type(value).__name__}")
    return value


def config_from_mapping(values: dict[str, Any], source: str, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the pix2pix recipe) with ``values`` applied; unknown keys and wrong types fail."""
    unknown = [k for k in values if k not in _TYPES]
    if unknown:
        known = ", ".join(_TYPES)
        raise UserError(f"{source}: unknown config key {unknown[0]!r} (known keys: {known})")
    checked = {k: _check_type(k, v, source) for k, v in values.items()}
    config = replace(base or TrainConfig(), **checked)
    try:
        config.validate()
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    return config


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw key/value pairs of a TOML config file (validated later, against TrainConfig)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"--config {path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"--config {path}: is a directory; give a .toml file such as configs/pix2pix.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"--config {path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8: a binary file, or text saved in another encoding
        raise UserError(f"--config {path}: not a UTF-8 TOML text file ({exc.reason} at byte {exc.start})") from None
    tables = [k for k, v in data.items() if isinstance(v, dict)]
    if tables:
        raise UserError(f"{path}: unknown config key {tables[0]!r} (config files are flat: key = value, no tables)")
    return data


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def config_to_toml(config: TrainConfig, header: str = "") -> str:
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key} = {_toml_value(value)}" for key, value in asdict(config).items()]
    return "\n".join(lines) + "\n"


def changed_keys(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    old_values, new_values = asdict(old), asdict(new)
    return {k: (old_values[k], new_values[k]) for k in old_values if old_values[k] != new_values[k]}


def check_resumable(stored: TrainConfig, requested: TrainConfig, run_dir: Path, source: str) -> None:
    """Refuse changes (made by ``source``) that would make the stored weights unusable."""
    changes = changed_keys(stored, requested)
    for key in MODEL_KEYS:
        if key in changes:
            old, new = changes[key]
            raise UserError(
                f"cannot --resume {run_dir} with {key} = {new!r} (from {source}): its weights were trained with "
                f"{key} = {old!r}; drop that change, or start a new run in another RUN_DIR (or --overwrite)"
            )
