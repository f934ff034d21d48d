"""`geo-sat2map qgis install / uninstall`: where the plugin goes, what it records, what it never touches."""

from __future__ import annotations

import pytest

import ast
import configparser
import json
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from geo_sat2map import __version__
from geo_sat2map.cli import cli
from geo_sat2map.qgis_install import PLUGIN_FOLDER, PLUGIN_SOURCE, current_executable, qgis_base_folder, set_ini_value


def qgis(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["qgis", *map(str, args)])


def plugin_dir(profiles_path: Path, profile: str = "default") -> Path:
    return profiles_path / "profiles" / profile / "python" / "plugins" / PLUGIN_FOLDER


def test_install_copies_the_plugin_records_the_executable_and_enables_it(tmp_path):
    result = qgis("install", "--profiles-path", tmp_path)
    assert result.exit_code == 0, result.output
    installed = plugin_dir(tmp_path)
    assert f"Installed the geo-sat2map QGIS plugin in {installed}" in result.stdout
    assert {"__init__.py", "metadata.txt", "icon.svg", "child.py", "algorithms.py", "settings.json"} <= {
        p.name for p in installed.iterdir()
    }
    assert not (installed / "__pycache__").exists()
    settings = json.loads((installed / "settings.json").read_text())
    assert settings["executable"] == str(current_executable())
    assert Path(settings["executable"]).name.startswith("geo-sat2map")
    ini = tmp_path / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    assert f"Enabled in {ini}" in result.stdout
    assert "geo_sat2map_qgis=true" in ini.read_text().splitlines()
    leftovers = [p.name for p in installed.parent.iterdir() if p.name != PLUGIN_FOLDER]
    assert leftovers == []  # no staging folder left behind


def test_reinstall_updates_in_place_and_keeps_the_profiles_other_settings(tmp_path):
    ini = tmp_path / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\nprocessing=true\ngeo_sat2map_qgis=false\n\n[Qgis]\nnewProjectDefault=@Variant(\\0)\n")
    assert qgis("install", "--profiles-path", tmp_path).exit_code == 0
    (plugin_dir(tmp_path) / "stale.py").write_text("")
    other = tmp_path / "elsewhere" / "geo-sat2map"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    result = qgis("install", "--profiles-path", tmp_path, "--executable", other)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Updated")
    assert not (plugin_dir(tmp_path) / "stale.py").exists()
    assert json.loads((plugin_dir(tmp_path) / "settings.json").read_text())["executable"] == str(other)
    assert ini.read_text() == (
        "[PythonPlugins]\ngeo_sat2map_qgis=true\nprocessing=true\n\n[Qgis]\nnewProjectDefault=@Variant(\\0)\n"
    )


def test_uninstall_removes_the_plugin_and_its_flag(tmp_path):
    assert qgis("install", "--profiles-path", tmp_path).exit_code == 0
    result = qgis("uninstall", "--profiles-path", tmp_path)
    assert result.exit_code == 0, result.output
    assert f"Removed the geo-sat2map QGIS plugin from {plugin_dir(tmp_path)}" in result.stdout
    assert not plugin_dir(tmp_path).exists()
    assert "geo_sat2map_qgis" not in (tmp_path / "profiles" / "default" / "QGIS" / "QGIS3.ini").read_text()
    again = qgis("uninstall", "--profiles-path", tmp_path)
    assert again.exit_code == 1 and "is not installed in QGIS profile default" in again.stderr


def test_the_default_profile_is_the_one_qgis_starts_with_and_unknown_profiles_are_refused(tmp_path):
    for name in ("default", "work"):
        (tmp_path / "profiles" / name).mkdir(parents=True)
    (tmp_path / "profiles" / "profiles.ini").write_text("[core]\ndefaultProfile=work\n")
    assert qgis("install", "--profiles-path", tmp_path).exit_code == 0
    assert plugin_dir(tmp_path, "work").is_dir() and not plugin_dir(tmp_path, "default").exists()
    result = qgis("install", "--profiles-path", tmp_path, "--profile", "wrok")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: --profile wrok: no such QGIS profile")
    assert "profiles: default, work" in result.stderr


@pytest.mark.parametrize("metadata", [b"[general]\nname=something else\n", b"\xff\xfe[general]\nname=x\n"])
def test_a_foreign_folder_of_the_same_name_is_never_replaced_or_removed(tmp_path, metadata):
    foreign = plugin_dir(tmp_path)
    foreign.mkdir(parents=True)
    (foreign / "metadata.txt").write_bytes(metadata)  # another plugin's, or not even UTF-8
    for command in ("install", "uninstall"):
        result = qgis(command, "--profiles-path", tmp_path)
        assert result.exit_code == 1 and "is not the geo-sat2map plugin" in result.stderr
        assert "Traceback" not in result.output
    assert (foreign / "metadata.txt").read_bytes() == metadata


def test_qgis_profile_folders_per_platform():
    home = Path("/home/ana")
    assert qgis_base_folder("linux", {}, home) == home / ".local/share/QGIS/QGIS3"
    assert qgis_base_folder("linux", {"XDG_DATA_HOME": "/data"}, home) == Path("/data/QGIS/QGIS3")
    assert qgis_base_folder("darwin", {}, home) == home / "Library/Application Support/QGIS/QGIS3"
    assert qgis_base_folder("win32", {"APPDATA": "C:/Users/ana/AppData/Roaming"}, home) == Path(
        "C:/Users/ana/AppData/Roaming/QGIS/QGIS3"
    )
    assert qgis_base_folder("win32", {"QGIS_CUSTOM_CONFIG_PATH": "/custom"}, home) == Path("/custom")


def test_set_ini_value_adds_a_missing_section_and_removes_keys(tmp_path):
    ini = tmp_path / "QGIS3.ini"
    ini.write_text("[Qgis]\nx=1")
    set_ini_value(ini, "PythonPlugins", "p", "true")
    assert ini.read_text() == "[Qgis]\nx=1\n\n[PythonPlugins]\np=true\n"
    set_ini_value(ini, "PythonPlugins", "p", None)
    assert ini.read_text() == "[Qgis]\nx=1\n\n[PythonPlugins]\n"


def test_plugin_metadata_version_is_the_package_version():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(PLUGIN_SOURCE / "metadata.txt")
    assert parser.get("general", "version") == __version__
    assert parser.get("general", "hasProcessingProvider") == "yes"


def test_the_plugin_imports_only_qgis_and_the_standard_library():
    """It runs in QGIS's Python, which has neither torch nor geo_sat2map: everything else must be relative."""
    allowed = {"qgis", "processing", *sys.stdlib_module_names}
    for source in PLUGIN_SOURCE.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed, f"{source.name}:{node.lineno} imports {roots}"
