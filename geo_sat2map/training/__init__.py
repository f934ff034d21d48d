"""Training pix2pix on A|B tiles: config, data, the recipe's loop, multi-process runs and run outputs."""

from geo_sat2map.training.config import TrainConfig, config_from_mapping, config_to_toml, read_config_file
from geo_sat2map.training.run import TrainSummary, resume_hint, train

__all__ = [
    "TrainConfig",
    "TrainSummary",
    "config_from_mapping",
    "config_to_toml",
    "read_config_file",
    "resume_hint",
    "train",
]
