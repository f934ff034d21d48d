"""The README's "paletted in QGIS" picture: a `translate --format paletted` map as QGIS itself draws it.

QGIS picks its paletted renderer from the GDAL colour table and labels the classes with the category names;
like the plugin, only the named classes are kept (a TIFF colour table has 256 entries). Renders a square crop
(pixel column, row, size) with the legend beside it. Run with QGIS's Python:

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 examples/qgis_paletted.py MAP.tif OUT.png COL ROW SIZE
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402 - after the Qt platform is chosen
    QgsApplication,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsPalettedRasterRenderer,
    QgsRasterLayer,
    QgsRectangle,
)
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter  # noqa: E402

SIDE = 512  # rendered map, pixels
LEGEND = 200


def main(path: str, out: str, col: int, row: int, size: int) -> int:
    app = QgsApplication([], False)
    app.initQgis()
    layer = QgsRasterLayer(path, "map")
    renderer = layer.renderer()
    if renderer is None or renderer.type() != "paletted":
        sys.exit(f"{path}: QGIS did not load it as a paletted layer ({renderer.type() if renderer else None})")
    named = [c for c in renderer.classes() if c.label != str(int(c.value))]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, named))
    t = layer.extent()
    px, py = layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
    extent = QgsRectangle(t.xMinimum() + col * px, t.yMaximum() - (row + size) * py,
                          t.xMinimum() + (col + size) * px, t.yMaximum() - row * py)
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(SIDE, SIDE))
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    image = QImage(SIDE + LEGEND, SIDE, QImage.Format_ARGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.drawImage(0, 0, job.renderedImage())
    painter.setFont(QFont("DejaVu Sans", 11))
    for i, item in enumerate(named):
        top = 14 + 26 * i
        painter.fillRect(SIDE + 14, top, 18, 18, item.color)
        painter.drawRect(SIDE + 14, top, 18, 18)
        painter.drawText(SIDE + 40, top + 14, item.label)
    painter.end()
    if not image.save(out):
        sys.exit(f"{out}: could not write the picture")
    sys.stdout.flush()
    os._exit(0)  # QGIS 3.22 headless may abort while tearing down (exitQgis): the picture is written


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])))
