"""Use the plugin from a standalone PyQGIS script (no QGIS window), e.g. batch jobs, tests and screenshots.

    import sys
    sys.path.insert(0, "<profile>/python/plugins")
    from geo_sat2map_qgis.headless import start_qgis
    app = start_qgis("<profile>")
    import processing
    processing.run("geosat2map:translate", {...})

Run it with QGIS's Python (and ``QT_QPA_PLATFORM=offscreen`` without a display).
"""

from __future__ import annotations

import os
import sys

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QCoreApplication, QSettings

PLUGIN = __package__ or "geo_sat2map_qgis"


def start_qgis(profile_dir: str) -> QgsApplication:
    """A QGIS application on ``profile_dir`` set up as the desktop's start-up does, with Processing and this plugin.

    Settings come from the profile's ``QGIS/QGIS3.ini`` and plugins from its ``python/plugins``, as in the desktop.
    Keep the returned application referenced; call ``exitQgis()`` on it at the end.
    """
    QCoreApplication.setOrganizationName("QGIS")
    QCoreApplication.setApplicationName("QGIS3")
    QSettings.setDefaultFormat(QSettings.IniFormat)
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, profile_dir)
    app = QgsApplication([], False, profile_dir)
    app.initQgis()
    sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))  # Processing itself
    from processing.core.Processing import Processing

    Processing.initialize()
    import qgis.utils

    qgis.utils.plugin_paths = [os.path.join(QgsApplication.qgisSettingsDirPath(), "python", "plugins")]
    sys.path[:0] = [p for p in qgis.utils.plugin_paths if p not in sys.path]
    qgis.utils.updateAvailablePlugins()
    if not (qgis.utils.loadPlugin(PLUGIN) and qgis.utils.startProcessingPlugin(PLUGIN)):
        raise RuntimeError(f"QGIS could not start the {PLUGIN} plugin from {qgis.utils.plugin_paths}")
    return app
