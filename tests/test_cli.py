from click.testing import CliRunner

from geo_sat2map import __version__
from geo_sat2map.cli import cli


def test_help_lists_the_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("translate", "make-tiles", "train", "evaluate"):
        assert name in result.output


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_verbose_and_quiet_are_exclusive():
    result = CliRunner().invoke(cli, ["-v", "-q", "translate", "--help"])
    assert result.exit_code != 0
