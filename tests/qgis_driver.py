"""Drives the installed QGIS plugin in a real headless QGIS; run by tests/test_qgis_plugin.py with QGIS's Python.

Usage: /usr/bin/python3 tests/qgis_driver.py SPEC.json OBSERVED.json. SPEC names the profiles folder (where
`geo-sat2map qgis install` put the plugin) and the files to use; OBSERVED receives what happened, for pytest to
judge. Runs under QGIS's Python: no torch, no geo_sat2map, no pytest.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402 - after the Qt platform is chosen
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsSettings,
    QgsVectorLayer,
)

PLUGIN = "geo_sat2map_qgis"


class CancelOnProgress(QgsProcessingFeedback):
    """Asks for a cancel as soon as the child reports real progress: mid-run."""

    def setProgress(self, progress: float) -> None:  # noqa: N802
        super().setProgress(progress)
        if progress > 0:
            self.cancel()


def main(spec_path: str, observed_path: str) -> None:
    spec = json.loads(open(spec_path, encoding="utf-8").read())
    profile_dir = os.path.join(spec["profiles_path"], "profiles", "default")
    sys.path.insert(0, os.path.join(profile_dir, "python", "plugins"))  # the installed copy, as QGIS finds it
    from geo_sat2map_qgis.headless import start_qgis

    observed: dict = {}
    app = None
    try:
        app = start_qgis(profile_dir)
        run_checks(spec, observed)
    except Exception:
        observed["crash"] = traceback.format_exc()
    with open(observed_path, "w", encoding="utf-8") as fh:
        json.dump(observed, fh, indent=2, default=str)
    if app is not None:
        app.exitQgis()


def run_checks(spec: dict, observed: dict) -> None:
    import processing
    import qgis.utils

    observed["settings_dir"] = QgsApplication.qgisSettingsDirPath()
    observed["available"] = PLUGIN in qgis.utils.available_plugins
    observed["enabled"] = QgsSettings().value(f"PythonPlugins/{PLUGIN}", False, type=bool)
    observed["started"] = PLUGIN in qgis.utils.active_plugins
    provider = QgsApplication.processingRegistry().providerById("geosat2map")
    observed["algorithms"] = sorted(a.id() for a in provider.algorithms()) if provider else []

    translate = {"INPUT": spec["input"], "WEIGHTS": spec["weights"], "BATCH_SIZE": 2, "DEVICE": "cpu",
                 "OUTPUT": spec["output"]}
    processing.runAndLoadResults("geosat2map:translate", translate)
    layers = QgsProject.instance().mapLayersByName("scene map")  # named after the input layer
    layer = layers[0] if layers else QgsRasterLayer(spec["output"], "map")
    renderer = layer.renderer()
    observed["translate"] = {
        "loaded": bool(layers), "valid": layer.isValid(), "crs": layer.crs().authid(), "source": layer.source(),
        "renderer": renderer.type() if renderer else None,
        "rgb_alpha": [renderer.redBand(), renderer.greenBand(), renderer.blueBand(), renderer.alphaBand()]
        if renderer and renderer.type() == "multibandcolor" else None,
    }

    coarse = processing.run("geosat2map:translate", {**translate, "RESOLUTION": "20", "OUTPUT_GRID": 1,
                                                      "RESAMPLING": 0, "OUTPUT": spec["coarse_output"]})
    observed["translate_coarse"] = dict(coarse)
    extent = processing.run("geosat2map:translate", {**translate, "EXTENT": spec["extent"],
                                                      "OUTPUT": spec["extent_output"]})
    observed["translate_extent"] = dict(extent)
    processing.runAndLoadResults("geosat2map:translate", {**translate, "INPUT": spec["palette_input"],
                                                          "PALETTE": spec["palette"], "FORMAT": 1,
                                                          "OUTPUT": spec["paletted_output"]})
    layers = QgsProject.instance().mapLayersByName("palette_scene map")
    renderer = layers[0].renderer() if layers else None
    observed["paletted"] = {
        "loaded": bool(layers), "renderer": renderer.type() if renderer else None,
        "classes": [[c.value, c.label, c.color.name()] for c in renderer.classes()]
        if renderer is not None and renderer.type() == "paletted" else None,
    }

    try:
        processing.run("geosat2map:translate", {**translate, "WEIGHTS": spec["bad_weights"],
                                                "OUTPUT": spec["bad_output"]})
        observed["bad_weights_error"] = None
    except QgsProcessingException as exc:
        observed["bad_weights_error"] = str(exc)

    feedback = CancelOnProgress()
    try:
        processing.run("geosat2map:translate", {**translate, "INPUT": spec["big_input"],
                                                "OUTPUT": spec["cancel_output"]}, feedback=feedback)
        observed["cancel_error"] = None
    except QgsProcessingException as exc:
        observed["cancel_error"] = str(exc)
    observed["cancel_requested"] = feedback.isCanceled()

    scores = processing.run("geosat2map:evaluate", {"PREDICTION": spec["output"], "REFERENCE": spec["reference"]})
    observed["evaluate"] = dict(scores)

    aoi = QgsVectorLayer(f"Polygon?crs={spec['aoi_crs']}", "aoi", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt(spec["aoi_wkt"]))
    aoi.dataProvider().addFeatures([feature])
    tiles = processing.run("geosat2map:maketiles", {
        "IMAGES": [spec["tiles_image"]], "MAPS": [spec["tiles_map"]], "VAL_FRACTION": 0.5, "AOI": aoi,
        "OUTPUT": spec["tiles_output"],
    })
    observed["make_tiles"] = dict(tiles)

    try:  # overlapping tiles on a small scene: refused like the CLI, saying why
        processing.run("geosat2map:maketiles", {
            "IMAGES": [spec["tiles_image"]], "MAPS": [spec["tiles_map"]], "STRIDE": 16, "VAL_FRACTION": 0.1,
            "OUTPUT": spec["unbalanced_output"],
        })
        observed["unbalanced_error"] = None
    except QgsProcessingException as exc:
        observed["unbalanced_error"] = str(exc)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
