"""Install the QGIS plugin (``geo_sat2map/qgis_plugin``) into a QGIS user profile, enabled, and remove it again.

QGIS keeps profiles in ``BASE/profiles/NAME``; BASE is ``$QGIS_CUSTOM_CONFIG_PATH`` (or ``qgis --profiles-path``)
when set, else the platform's application-data folder. A profile's Python plugins live in ``python/plugins/`` and
are enabled by ``[PythonPlugins] NAME=true`` in its ``QGIS/QGIS3.ini``. The plugin gets a ``settings.json`` with
the path of this environment's ``geo-sat2map`` executable, which it runs (QGIS's Python has no torch).
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from geo_sat2map import __version__
from geo_sat2map.atomic import atomic_output, swap_folder
from geo_sat2map.errors import UserError
from geo_sat2map.qgis_plugin.child import EXECUTABLE_NAME, SETTINGS_FILE

PLUGIN_FOLDER = "geo_sat2map_qgis"  # the plugin's package name inside QGIS
PLUGIN_SOURCE = Path(__file__).with_name("qgis_plugin")
PLUGIN_DISPLAY_NAME = "geo-sat2map"  # metadata.txt's name: how an existing folder is recognised as ours
DEFAULT_PROFILE = "default"
ENABLED_SECTION = "PythonPlugins"


@dataclass(frozen=True)
class PluginLocation:
    profiles: Path  # BASE/profiles
    profile: str
    plugin_dir: Path

    @property
    def settings_ini(self) -> Path:
        return self.profiles / self.profile / "QGIS" / "QGIS3.ini"


@dataclass(frozen=True)
class InstallReport:
    location: PluginLocation
    executable: Path
    replaced: bool  # an earlier copy of the plugin was updated


def qgis_base_folder(platform: str = sys.platform, environ: Mapping[str, str] | None = None,
                     home: Path | None = None) -> Path:
    """The folder that holds QGIS's ``profiles/`` (QGIS's own rule: the custom config path, else app data)."""
    environ = os.environ if environ is None else environ
    if environ.get("QGIS_CUSTOM_CONFIG_PATH"):
        return Path(environ["QGIS_CUSTOM_CONFIG_PATH"])
    home = Path.home() if home is None else home
    if platform == "win32":
        data = Path(environ.get("APPDATA") or home / "AppData" / "Roaming")
    elif platform == "darwin":
        data = home / "Library" / "Application Support"
    else:
        data = Path(environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return data / "QGIS" / "QGIS3"


def locate(profile: str | None = None, profiles_path: str | os.PathLike[str] | None = None) -> PluginLocation:
    """Where the plugin goes; ``profile`` defaults to the profile QGIS starts with."""
    profiles = Path(profiles_path) / "profiles" if profiles_path else qgis_base_folder() / "profiles"
    name = profile or _default_profile(profiles)
    if not name or Path(name).name != name or name in (".", ".."):
        raise UserError(f"--profile {name!r}: give a profile name, not a path")
    existing = sorted(p.name for p in profiles.iterdir() if p.is_dir()) if profiles.is_dir() else []
    if existing and name not in existing:
        raise UserError(
            f"--profile {name}: no such QGIS profile in {profiles} (profiles: {', '.join(existing)}); "
            "pick one, or create it in QGIS (Settings > User Profiles > New Profile)"
        )
    return PluginLocation(profiles, name, profiles / name / "python" / "plugins" / PLUGIN_FOLDER)


def current_executable() -> Path:
    """This environment's geo-sat2map console script: the one running now, else the one beside this Python."""
    running = Path(sys.argv[0])
    if running.stem == EXECUTABLE_NAME and running.is_file():
        return running.absolute()
    folders = [sysconfig.get_path("scripts"), sysconfig.get_path("scripts", f"{os.name}_user")]
    for folder in folders:
        for name in (EXECUTABLE_NAME, EXECUTABLE_NAME + ".exe"):
            candidate = Path(folder) / name
            if candidate.is_file():
                return candidate
    raise UserError(
        f"cannot find the {EXECUTABLE_NAME} executable of this Python ({sys.executable}); "
        "pass --executable PATH"
    )


def install_plugin(
    profile: str | None = None, profiles_path: str | os.PathLike[str] | None = None,
    executable: str | os.PathLike[str] | None = None,
) -> InstallReport:
    """Copy the plugin into the profile (replacing an earlier copy of it), record the executable, enable it."""
    location = locate(profile, profiles_path)
    program = Path(executable).absolute() if executable else current_executable()
    if not program.is_file():
        raise UserError(f"--executable {program}: no such file")
    _refuse_foreign(location.plugin_dir)
    plugins = location.plugin_dir.parent
    plugins.mkdir(parents=True, exist_ok=True)
    # Built beside the destination under a hidden name (QGIS ignores it), then renamed into place.
    staging = Path(tempfile.mkdtemp(prefix=f".{PLUGIN_FOLDER}.", suffix=".partial", dir=plugins))
    try:
        shutil.copytree(PLUGIN_SOURCE, staging, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", SETTINGS_FILE))
        settings = {"executable": str(program), "geo_sat2map_version": __version__}
        (staging / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        aside = plugins / f".{PLUGIN_FOLDER}.old"  # hidden from QGIS like the staging folder
        shutil.rmtree(aside, ignore_errors=True)  # left by an install that was killed
        replaced = swap_folder(staging, location.plugin_dir, aside)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    set_ini_value(location.settings_ini, ENABLED_SECTION, PLUGIN_FOLDER, "true")
    return InstallReport(location, program, replaced)


def uninstall_plugin(
    profile: str | None = None, profiles_path: str | os.PathLike[str] | None = None
) -> PluginLocation:
    """Remove the plugin folder and its enabled flag."""
    location = locate(profile, profiles_path)
    if not location.plugin_dir.exists():
        raise UserError(
            f"the geo-sat2map plugin is not installed in QGIS profile {location.profile} ({location.plugin_dir})"
        )
    _refuse_foreign(location.plugin_dir)
    shutil.rmtree(location.plugin_dir)
    if location.settings_ini.is_file():
        set_ini_value(location.settings_ini, ENABLED_SECTION, PLUGIN_FOLDER, None)
    return location


def set_ini_value(path: Path, section: str, key: str, value: str | None) -> None:
    """Set (or with None remove) one key of a QSettings INI file, leaving every other line as it is.

    Line-based on purpose: a parse-and-rewrite would reformat QGIS's own entries (escapes, @Variant values).
    """
    text = path.read_text(encoding="utf-8", errors="surrogateescape") if path.is_file() else ""
    lines = text.splitlines()
    header = f"[{section}]"
    start = next((i for i, line in enumerate(lines) if line.strip() == header), None)
    if start is None:
        if value is None:
            return
        lines += ([""] if lines and lines[-1].strip() else []) + [header, f"{key}={value}"]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        body = [line for line in lines[start + 1:end] if line.split("=", 1)[0].strip() != key]
        if value is not None:
            body.insert(0, f"{key}={value}")
        lines[start + 1:end] = body
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, overwrite=True, what="QGIS settings") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")


def _read_ini(path: Path) -> tuple[configparser.ConfigParser, bool]:
    """An INI file read leniently: (what could be parsed, whether all of it could). Damaged files (bad syntax,
    not UTF-8) are not errors of ours to report."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return parser, False
    return parser, True


def _default_profile(profiles: Path) -> str:
    """The profile QGIS opens by default: profiles.ini's [core] defaultProfile, else 'default'."""
    parser, complete = _read_ini(profiles / "profiles.ini")
    if not complete:
        return DEFAULT_PROFILE
    return parser.get("core", "defaultprofile", fallback="").strip() or DEFAULT_PROFILE


def _refuse_foreign(plugin_dir: Path) -> None:
    """Never replace or delete a folder that is not a copy of this plugin."""
    if not plugin_dir.exists():
        return
    parser, _ = _read_ini(plugin_dir / "metadata.txt")
    if parser.get("general", "name", fallback=None) != PLUGIN_DISPLAY_NAME:
        raise UserError(f"{plugin_dir} exists and is not the geo-sat2map plugin; remove or rename it first")
