"""The `evaluate` command."""

from geo_sat2map.cli.options import not_built

command = not_built("evaluate", "see the open issue for 'evaluate'")
