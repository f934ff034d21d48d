import json

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


def test_a_bug_is_one_internal_error_line_with_its_own_exit_code(monkeypatch):
    import geo_sat2map.inference
    from geo_sat2map.cli import INTERNAL_ERROR_EXIT

    def buggy(config):
        return {}["missing key"]

    monkeypatch.setattr(geo_sat2map.inference, "translate", buggy)
    args = ["translate", "in.tif", "-o", "out.tif", "-w", "g.pt"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == INTERNAL_ERROR_EXIT == 70
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("Error: internal error: KeyError: 'missing key'") and "rerun with -v" in lines[0]
    verbose = CliRunner().invoke(cli, ["-v", *args])
    assert verbose.exit_code == INTERNAL_ERROR_EXIT and "Traceback" in verbose.output and "in buggy" in verbose.output
    assert verbose.output.strip().splitlines()[-1].startswith("Error: internal error: KeyError")
    events = CliRunner().invoke(cli, ["--progress", "json", *args])  # a program gets it as an error event too
    (error,) = [e for e in map(json.loads, events.stderr.splitlines()[:-1]) if e["event"] == "error"]
    assert error["exit_code"] == 70 and error["message"].startswith("internal error: KeyError: 'missing key'")
    assert events.stderr.splitlines()[-1] == f"Error: {error['message']}"
