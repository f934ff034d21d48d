"""The plugin object QGIS creates: it only registers the Processing provider."""

from __future__ import annotations

from qgis.core import QgsApplication

from .provider import GeoSat2MapProvider


class GeoSat2MapPlugin:
    def __init__(self, iface) -> None:
        self.iface = iface  # None under qgis_process and headless scripts
        self.provider: GeoSat2MapProvider | None = None

    def initProcessing(self) -> None:  # noqa: N802 - QGIS's names
        self.provider = GeoSat2MapProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        self.initProcessing()

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
