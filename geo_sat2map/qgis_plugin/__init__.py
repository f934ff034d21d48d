"""The geo-sat2map QGIS plugin: translate, make-tiles and evaluate as Processing algorithms.

`geo-sat2map qgis install` copies this folder into a QGIS profile. It runs in QGIS's own Python (no torch, no
geo_sat2map): the algorithms run the recorded geo-sat2map executable. Importing this package outside QGIS is safe;
only ``classFactory`` needs qgis.
"""


def classFactory(iface):  # noqa: N802 - the name QGIS looks for
    from .plugin import GeoSat2MapPlugin

    return GeoSat2MapPlugin(iface)
