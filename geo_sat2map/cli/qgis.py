"""The `qgis` commands: install the QGIS Processing plugin into a QGIS profile, or remove it."""

from __future__ import annotations

import click

from geo_sat2map import progress
from geo_sat2map.qgis_install import install_plugin, uninstall_plugin

profile_opt = click.option(
    "--profile", metavar="NAME", default=None,
    help="QGIS user profile [default: the one QGIS starts with, usually 'default'].",
)
profiles_path_opt = click.option(
    "--profiles-path", type=click.Path(file_okay=False), default=None,
    help="The folder holding QGIS's profiles/ folder, as given to `qgis --profiles-path` [default: "
         "$QGIS_CUSTOM_CONFIG_PATH, else ~/.local/share/QGIS/QGIS3 on Linux, ~/Library/Application Support/QGIS/QGIS3 "
         "on macOS, %APPDATA%\\QGIS\\QGIS3 on Windows].",
)


@click.group("qgis")
def command() -> None:
    """Use geo-sat2map from QGIS: translate, make-tiles and evaluate as Processing algorithms."""


@command.command("install")
@profile_opt
@profiles_path_opt
@click.option("--executable", type=click.Path(dir_okay=False), default=None,
              help="The geo-sat2map program QGIS should run [default: the one of this environment].")
def install(profile: str | None, profiles_path: str | None, executable: str | None) -> None:
    """Copy the plugin into a QGIS profile, enabled, and record which geo-sat2map it runs.

    QGIS's own Python has no PyTorch, so the plugin runs this environment's geo-sat2map as a separate process.
    Run it again after moving the environment, or to update the plugin. Restart QGIS afterwards.
    """
    report = install_plugin(profile, profiles_path, executable)
    where = report.location
    action = "Updated" if report.replaced else "Installed"
    click.echo(f"{action} the geo-sat2map QGIS plugin in {where.plugin_dir} (profile {where.profile})")
    click.echo(f"It runs {report.executable}")
    click.echo(f"Enabled in {where.settings_ini}")
    click.echo("Restart QGIS: the algorithms are under geo-sat2map in the Processing Toolbox.")
    progress.emit("result", command="qgis install", result=report)


@command.command("uninstall")
@profile_opt
@profiles_path_opt
def uninstall(profile: str | None, profiles_path: str | None) -> None:
    """Remove the plugin from a QGIS profile."""
    where = uninstall_plugin(profile, profiles_path)
    click.echo(f"Removed the geo-sat2map QGIS plugin from {where.plugin_dir} (profile {where.profile})")
    click.echo(f"Disabled in {where.settings_ini}")
    progress.emit("result", command="qgis uninstall", result=where)
