"""The geo-sat2map Processing provider."""

from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .settings import EXECUTABLE_SETTING, PLUGIN_DIR, processing_config

PROVIDER_ID = "geosat2map"


class GeoSat2MapProvider(QgsProcessingProvider):
    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return "geo-sat2map"

    def longName(self) -> str:  # noqa: N802 - QGIS's names
        return "geo-sat2map: satellite imagery to maps (pix2pix)"

    def icon(self) -> QIcon:
        return QIcon(os.path.join(PLUGIN_DIR, "icon.svg"))

    def load(self) -> bool:
        """Adds the executable override to Settings > Options > Processing > Providers."""
        config = processing_config()
        if config is not None:
            config_class, setting = config
            config_class.settingIcons[self.name()] = self.icon()
            config_class.addSetting(setting(
                self.name(), EXECUTABLE_SETTING,
                "geo-sat2map executable (empty: the one recorded by `geo-sat2map qgis install`)", "",
                valuetype=setting.FILE,
            ))
            config_class.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        config = processing_config()
        if config is not None:
            config[0].removeSetting(EXECUTABLE_SETTING)

    def loadAlgorithms(self) -> None:  # noqa: N802
        from .algorithms import EvaluateAlgorithm, MakeTilesAlgorithm, TranslateAlgorithm

        for algorithm in (TranslateAlgorithm(), MakeTilesAlgorithm(), EvaluateAlgorithm()):
            self.addAlgorithm(algorithm)

    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # noqa: N802
        return ["tif"]
