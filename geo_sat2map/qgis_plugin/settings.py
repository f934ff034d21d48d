"""Where the plugin finds the geo-sat2map executable: the Processing setting, the one recorded at install, PATH.

Its own module so that the provider (which registers the setting) and the algorithms (which run the executable)
both depend on it, and not on each other."""

from __future__ import annotations

import os

from .child import find_executable

EXECUTABLE_SETTING = "GEOSAT2MAP_EXECUTABLE"
PLUGIN_DIR = os.path.dirname(__file__)


def executable() -> str:
    """The Processing setting if set, else the executable recorded at install, else geo-sat2map on PATH."""
    config = processing_config()
    configured = config[0].getSetting(EXECUTABLE_SETTING) if config is not None else None
    return find_executable(configured or None, PLUGIN_DIR)


def processing_config():
    """Processing's settings classes; absent where the Processing plugin is not loaded."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig, Setting
    except ImportError:
        return None
    return ProcessingConfig, Setting
