"""The `translate` command."""

from geo_sat2map.cli.options import not_built

command = not_built("translate", "see the open issue for 'translate'")
