"""The `make-tiles` command."""

from geo_sat2map.cli.options import not_built

command = not_built("make-tiles", "see the open issue for 'make-tiles'")
