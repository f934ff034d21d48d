"""The `train` command."""

from geo_sat2map.cli.options import not_built

command = not_built("train", "see the open issue for 'train'")
