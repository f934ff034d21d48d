"""The README's QGIS screenshot, from a real headless QGIS run of the plugin.

Installs the plugin into a throw-away QGIS profile (`geo-sat2map qgis install`), runs the Processing algorithm
geosat2map:translate on IMAGE, loads its output as Processing does (styled RGB + alpha) and renders the map over
its input with QGIS's map renderer: satellite image on the left, translated map on the right of a swipe line, on
the same extent. Run with QGIS's Python, e.g. after `make demo`:

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 examples/qgis_screenshot.py --image demo/heldout_scene/satellite.tif \\
        --weights demo/run/generator.pt --geo-sat2map .venv/bin/geo-sat2map --out examples/qgis_translate.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402 - after the Qt platform is chosen
    QgsMapLayer,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsProject,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QLineF, QPointF, QSize, Qt  # noqa: E402
from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter, QPen  # noqa: E402

WIDTH = 720  # pixels of the screenshot; the height follows the scene's aspect


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="georeferenced satellite raster")
    parser.add_argument("--weights", required=True, help="generator checkpoint")
    parser.add_argument("--geo-sat2map", default=shutil.which("geo-sat2map"), help="the geo-sat2map executable")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    if not args.geo_sat2map:
        parser.error("geo-sat2map not on PATH; pass --geo-sat2map PATH")

    with tempfile.TemporaryDirectory(prefix="geo-sat2map-qgis-") as tmp:
        config = Path(tmp) / "qgis-config"
        subprocess.run([args.geo_sat2map, "qgis", "install", "--profiles-path", str(config)], check=True)
        profile = config / "profiles" / "default"
        sys.path.insert(0, str(profile / "python" / "plugins"))
        from geo_sat2map_qgis.headless import start_qgis

        app = start_qgis(str(profile))
        import processing

        output = Path(tmp) / "map.tif"
        processing.runAndLoadResults("geosat2map:translate", {
            "INPUT": os.path.abspath(args.image), "WEIGHTS": os.path.abspath(args.weights), "OUTPUT": str(output),
        })
        (map_layer,) = QgsProject.instance().mapLayers().values()  # the translated map Processing loaded
        satellite = QgsRasterLayer(os.path.abspath(args.image), "satellite")
        image = swipe_image(satellite, map_layer)
        # 256 colours: a third of the size, for the repository; the render itself is QGIS's.
        image.convertToFormat(QImage.Format_Indexed8, Qt.AvoidDither).save(args.out)
        del map_layer, satellite
        QgsProject.instance().clear()
        app.exitQgis()
    print(f"wrote {args.out}")
    return 0


def render(layer: QgsMapLayer, reference: QgsRasterLayer, size: QSize) -> QImage:
    """One layer over a white background, on the reference layer's full extent and CRS."""
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(reference.crs())
    settings.setExtent(reference.extent())
    settings.setOutputSize(size)
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def swipe_image(satellite: QgsRasterLayer, map_layer: QgsMapLayer) -> QImage:
    """Satellite left of the middle, the translated map right of it, with a swipe line and labels."""
    extent = satellite.extent()
    size = QSize(WIDTH, round(WIDTH * extent.height() / extent.width()))
    image = render(satellite, satellite, size)
    translated = render(map_layer, satellite, size)
    middle = size.width() // 2
    painter = QPainter(image)
    painter.drawImage(QPointF(middle, 0), translated.copy(middle, 0, size.width() - middle, size.height()))
    painter.setPen(QPen(QColor("white"), 3))
    painter.drawLine(QLineF(middle, 0, middle, size.height()))
    painter.setFont(QFont("DejaVu Sans", 11, QFont.Bold))
    for text, x, align in (("satellite image", middle - 12, Qt.AlignRight),
                           ("map: geosat2map:translate", middle + 12, Qt.AlignLeft)):
        box = painter.boundingRect(0, 0, 0, 0, align, text)
        left = x - box.width() if align == Qt.AlignRight else x
        painter.fillRect(left - 6, 10, box.width() + 12, box.height() + 6, QColor(0, 0, 0, 150))
        painter.setPen(QColor("white"))
        painter.drawText(left, 13 + painter.fontMetrics().ascent(), text)
    painter.end()
    return image


if __name__ == "__main__":
    sys.exit(main())
