"""translate, make-tiles and evaluate as Processing algorithms: parameters in, a geo-sat2map child run, outputs out."""

from __future__ import annotations

import os
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsMapLayer,
    QgsMultiBandColorRenderer,
    QgsPalettedRasterRenderer,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBand,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsRasterLayer,
)

from .child import ExecutableNotFound, run_command
from .commands import (
    BLEND_CHOICES,
    CLASS_SCORE_NAMES,
    OUTPUT_GRID_CHOICES,
    FORMAT_CHOICES,
    PRECISION_CHOICES,
    RESAMPLING_CHOICES,
    SCORE_NAMES,
    evaluate_args,
    make_tiles_args,
    scores,
    translate_args,
)
from .settings import executable

SPLITS = ("train", "val", "test")


class _GeoSat2MapAlgorithm(QgsProcessingAlgorithm):
    """Shared pieces: names and help, running the CLI, file paths of layers, optional numbers, advanced parameters."""

    NAME = ""  # the id after "geosat2map:"
    TITLE = ""
    HELP = ""

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:  # noqa: N802 - QGIS's names
        return self.TITLE

    def shortHelpString(self) -> str:  # noqa: N802
        return self.HELP

    def createInstance(self):  # noqa: N802
        return type(self)()

    def run_cli(self, args: list[str], feedback: QgsProcessingFeedback) -> dict[str, Any]:
        """Run geo-sat2map; its one-line error (or the cancel) becomes the algorithm's error."""
        try:
            program = executable()
        except ExecutableNotFound as exc:
            raise QgsProcessingException(str(exc)) from None
        outcome = run_command(program, args, feedback)
        if not outcome.succeeded:
            raise QgsProcessingException(outcome.failure_message())
        return outcome.result or {}

    def raster_layer(self, parameters: dict, name: str, context: QgsProcessingContext) -> QgsRasterLayer:
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, name))
        return layer

    def optional_int(self, parameters: dict, name: str, context: QgsProcessingContext) -> int | None:
        if parameters.get(name) in (None, ""):
            return None
        return self.parameterAsInt(parameters, name, context)

    def optional_float(self, parameters: dict, name: str, context: QgsProcessingContext) -> float | None:
        if parameters.get(name) in (None, ""):
            return None
        return self.parameterAsDouble(parameters, name, context)

    def optional_choice(
        self, parameters: dict, name: str, choices: tuple[str, ...], context: QgsProcessingContext
    ) -> str | None:
        if parameters.get(name) in (None, ""):
            return None
        return choices[self.parameterAsEnum(parameters, name, context)]

    def aoi_file(self, parameters: dict, name: str, context: QgsProcessingContext) -> str | None:
        """The AOI polygons as a file the CLI reads: EWKT in the layer's EPSG CRS, else WKT in WGS 84 lon/lat."""
        source = self.parameterAsSource(parameters, name, context)
        if source is None:
            return None
        geometry = QgsGeometry.unaryUnion([f.geometry() for f in source.getFeatures() if f.hasGeometry()])
        if geometry is None or geometry.isEmpty():
            raise QgsProcessingException("Area of interest: it has no polygon")
        crs = source.sourceCrs()
        authority, _, code = crs.authid().partition(":")
        if authority == "EPSG" and code.isdigit():
            text = f"SRID={code};{geometry.asWkt()}"
        else:
            wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
            geometry.transform(QgsCoordinateTransform(crs, wgs84, context.transformContext()))
            text = geometry.asWkt()
        path = QgsProcessingUtils.generateTempFilename("aoi.wkt")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path

    def extent(self, parameters: dict, name: str, context: QgsProcessingContext) -> dict[str, str]:
        """An optional extent as the CLI's --bbox and --bbox-crs ({} when not given)."""
        if parameters.get(name) in (None, ""):
            return {}
        rect = self.parameterAsExtent(parameters, name, context)
        if rect.isNull() or rect.isEmpty():
            return {}
        crs = self.parameterAsExtentCrs(parameters, name, context)
        bbox = ",".join(repr(v) for v in (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()))
        return {"bbox": bbox, "bbox_crs": (crs.authid() or crs.toWkt()) if crs.isValid() else None}

    def add_advanced(self, parameter: QgsProcessingParameterDefinition) -> None:
        parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(parameter)


class TranslateAlgorithm(_GeoSat2MapAlgorithm):
    NAME = "translate"
    TITLE = "Translate satellite image to map"
    HELP = (
        "Runs a pix2pix generator over a georeferenced satellite raster of any size and writes an RGBA map "
        "GeoTIFF (Cloud-Optimized) over the same ground. The scene is streamed through overlapping "
        "windows that are blended, so no tile grid shows; masked input pixels stay transparent (alpha band).\n\n"
        "Resolution: by default the image is processed at the model's training resolution (resampled on the fly) "
        "when it is known and more than 10 % off the image's; the map is then on that processing grid, or on the "
        "input's own grid with Output grid = input.\n\n"
        "Weights: generator.pt from geo-sat2map train, a pix2pix *_net_G.pth or a seed gen.pth.tar. Empty "
        "options take the checkpoint's or the device's defaults (see `geo-sat2map translate --help`).\n\n"
        "Palette: auto snaps every pixel to the map colours the checkpoint learned (when its training maps were "
        "flat), none keeps the raw colours, or give a palette JSON. Format paletted writes one band with a colour "
        "table and class names (the legend); classes writes the class indices for analysis."
    )

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Satellite image"))
        self.addParameter(QgsProcessingParameterFile(
            "WEIGHTS", "Generator weights", fileFilter="Generator checkpoints (*.pt *.pth *.tar);;All files (*)"
        ))
        self.addParameter(QgsProcessingParameterBand(
            "BANDS", "Bands as R, G, B (empty: the checkpoint's, else the bands tagged red/green/blue)",
            parentLayerParameterName="INPUT", optional=True, allowMultiple=True,
        ))
        self.addParameter(QgsProcessingParameterString(
            "RESOLUTION", "Processing resolution: auto (the model's), native (the image's own pixels) or metres",
            defaultValue="auto",
        ))
        self.addParameter(QgsProcessingParameterEnum(
            "OUTPUT_GRID", "Output grid: the processing grid, or the input image's own", options=list(
                OUTPUT_GRID_CHOICES), defaultValue=0,
        ))
        self.addParameter(QgsProcessingParameterExtent(
            "EXTENT", "Only this extent (empty: the whole image)", optional=True
        ))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "AOI", "Only this area (polygons; outside transparent)", [QgsProcessing.TypeVectorPolygon], optional=True
        ))
        self.add_advanced(QgsProcessingParameterNumber(
            "MODEL_RESOLUTION", "Model's training resolution, metres (empty: what the checkpoint records)",
            type=QgsProcessingParameterNumber.Double, minValue=0.0, optional=True,
        ))
        self.add_advanced(QgsProcessingParameterEnum(
            "RESAMPLING", "Resampling onto the processing grid (empty: average when shrinking, else bilinear)",
            options=list(RESAMPLING_CHOICES), optional=True, allowMultiple=False, defaultValue=None,
        ))
        self.add_advanced(QgsProcessingParameterNumber(
            "TILE_SIZE", "Tile size, a multiple of 256 (empty: the checkpoint's)", minValue=256, optional=True
        ))
        self.add_advanced(QgsProcessingParameterNumber(
            "OVERLAP", "Overlap between tiles, pixels (empty: a quarter of the tile)", minValue=0, optional=True
        ))
        self.add_advanced(QgsProcessingParameterEnum("BLEND", "Blend", options=list(BLEND_CHOICES), defaultValue=0))
        self.add_advanced(QgsProcessingParameterNumber(
            "BATCH_SIZE", "Batch size (empty: 4 on CPU, 64 on CUDA or 16 under 12 GiB; never changes results)", minValue=1, optional=True
        ))
        self.add_advanced(QgsProcessingParameterString("DEVICE", "Device: auto, cpu, cuda, cuda:N or mps",
                                                       defaultValue="auto"))
        self.add_advanced(QgsProcessingParameterEnum(
            "PRECISION", "Precision", options=list(PRECISION_CHOICES), defaultValue=0
        ))
        self.addParameter(QgsProcessingParameterString(
            "PALETTE", "Palette: auto, none or a palette JSON file", defaultValue="auto"
        ))
        self.addParameter(QgsProcessingParameterEnum("FORMAT", "Output format", options=list(FORMAT_CHOICES),
                                                     defaultValue=0))
        self.add_advanced(QgsProcessingParameterNumber(
            "MIN_REGION", "Snapped maps: remove specks smaller than this many pixels (0: off)", minValue=0,
            defaultValue=8,
        ))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Map"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        bands = self.parameterAsInts(parameters, "BANDS", context)
        if bands and len(bands) != 3:
            raise QgsProcessingException(f"Bands: choose exactly three (R, G, B), not {len(bands)}")
        source = self.raster_layer(parameters, "INPUT", context)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        self.run_cli(translate_args(
            file_source(source), output,
            self.parameterAsFile(parameters, "WEIGHTS", context),
            tile_size=self.optional_int(parameters, "TILE_SIZE", context),
            overlap=self.optional_int(parameters, "OVERLAP", context),
            blend=BLEND_CHOICES[self.parameterAsEnum(parameters, "BLEND", context)],
            batch_size=self.optional_int(parameters, "BATCH_SIZE", context),
            device=self.parameterAsString(parameters, "DEVICE", context).strip() or None,
            precision=PRECISION_CHOICES[self.parameterAsEnum(parameters, "PRECISION", context)],
            bands=bands or None,
            resolution=self.parameterAsString(parameters, "RESOLUTION", context).strip() or None,
            model_resolution=self.optional_float(parameters, "MODEL_RESOLUTION", context),
            resampling=self.optional_choice(parameters, "RESAMPLING", RESAMPLING_CHOICES, context),
            output_grid=OUTPUT_GRID_CHOICES[self.parameterAsEnum(parameters, "OUTPUT_GRID", context)],
            aoi=self.aoi_file(parameters, "AOI", context),
            **self.extent(parameters, "EXTENT", context),
            palette=self.parameterAsString(parameters, "PALETTE", context).strip() or None,
            min_region=self.optional_int(parameters, "MIN_REGION", context),
            output_format=FORMAT_CHOICES[self.parameterAsEnum(parameters, "FORMAT", context)],
        ), feedback)
        if context.willLoadLayerOnCompletion(output):
            details = context.layerToLoadOnCompletionDetails(output)
            details.name = f"{source.name()} map"  # in batch mode: one distinct layer per scene
            details.setPostProcessor(MapStyle.create())
        return {"OUTPUT": output}


class MapStyle(QgsProcessingLayerPostProcessorInterface):
    """Shows the loaded map as RGB with band 4 as transparency and no contrast stretch (its colours are final);
    a paletted map keeps only its named classes (a TIFF colour table always has 256 entries)."""

    instance: MapStyle | None = None  # Processing keeps only a pointer: the object must outlive the algorithm

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802
        if not isinstance(layer, QgsRasterLayer):
            return
        if layer.bandCount() >= 4:
            renderer = QgsMultiBandColorRenderer(layer.dataProvider(), 1, 2, 3)
            renderer.setAlphaBand(4)
            layer.setRenderer(renderer)
            layer.triggerRepaint()
        elif layer.renderer() is not None and layer.renderer().type() == "paletted":
            named = [c for c in layer.renderer().classes() if c.label != str(int(c.value))]
            if named:
                layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, named))
                layer.triggerRepaint()

    @staticmethod
    def create() -> MapStyle:
        MapStyle.instance = MapStyle()
        return MapStyle.instance


class MakeTilesAlgorithm(_GeoSat2MapAlgorithm):
    NAME = "maketiles"
    TITLE = "Make training tiles"
    HELP = (
        "Cuts aligned satellite/map raster pairs into A|B training tiles with a spatial train/val/test split. "
        "The n-th satellite image is paired with the n-th map; maps may be in any CRS and resolution (8-bit "
        "RGB, RGBA or paletted) and are resampled onto the satellite grid. Writes the dataset folder for "
        "`geo-sat2map train` and loads the tile footprints, coloured by split.\n\n"
        "An existing output folder is only replaced if it holds a previous make-tiles dataset."
    )

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "IMAGES", "Satellite images (define the pixel grid)", layerType=QgsProcessing.TypeRaster
        ))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "MAPS", "Maps (one per satellite image, in the same order)", layerType=QgsProcessing.TypeRaster
        ))
        self.addParameter(QgsProcessingParameterNumber("TILE_SIZE", "Tile size, pixels", minValue=256,
                                                       defaultValue=256))
        self.addParameter(QgsProcessingParameterNumber(
            "STRIDE", "Stride, pixels (empty: the tile size; smaller = overlapping tiles)", minValue=1, optional=True
        ))
        self.addParameter(QgsProcessingParameterNumber(
            "VAL_FRACTION", "Validation fraction", QgsProcessingParameterNumber.Double, 0.1, minValue=0, maxValue=0.99
        ))
        self.addParameter(QgsProcessingParameterNumber(
            "TEST_FRACTION", "Test fraction", QgsProcessingParameterNumber.Double, 0.0, minValue=0, maxValue=0.99
        ))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "AOI", "Area of interest (polygons)", [QgsProcessing.TypeVectorPolygon], optional=True
        ))
        self.add_advanced(QgsProcessingParameterNumber(
            "MIN_VALID", "Minimum valid share of a tile", QgsProcessingParameterNumber.Double, 0.95,
            minValue=0, maxValue=1,
        ))
        self.add_advanced(QgsProcessingParameterNumber("SEED", "Split seed", defaultValue=0, minValue=0))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Tiles dataset folder"))
        for split in SPLITS:
            self.addOutput(QgsProcessingOutputNumber(f"{split.upper()}_TILES", f"{split} tiles"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        images = self.parameterAsLayerList(parameters, "IMAGES", context)
        maps = self.parameterAsLayerList(parameters, "MAPS", context)
        if len(images) != len(maps):
            raise QgsProcessingException(
                f"{len(images)} satellite image(s) but {len(maps)} map(s): give one map per image, in the same order"
            )
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        result = self.run_cli(make_tiles_args(
            [(file_source(image), file_source(map_layer)) for image, map_layer in zip(images, maps)], output,
            tile_size=self.parameterAsInt(parameters, "TILE_SIZE", context),
            stride=self.optional_int(parameters, "STRIDE", context),
            val_fraction=self.parameterAsDouble(parameters, "VAL_FRACTION", context),
            test_fraction=self.parameterAsDouble(parameters, "TEST_FRACTION", context),
            min_valid=self.parameterAsDouble(parameters, "MIN_VALID", context),
            seed=self.parameterAsInt(parameters, "SEED", context),
            aoi=self.aoi_file(parameters, "AOI", context),
        ), feedback)
        footprints = os.path.join(output, "tiles.geojson")
        if context.project() is not None and os.path.exists(footprints):
            context.addLayerToLoadOnCompletion(
                footprints, QgsProcessingContext.LayerDetails("tile footprints", context.project(), "FOOTPRINTS")
            )
        counts = result.get("counts") or {}
        return {"OUTPUT": output, **{f"{split.upper()}_TILES": counts.get(split, 0) for split in SPLITS}}


class EvaluateAlgorithm(_GeoSat2MapAlgorithm):
    NAME = "evaluate"
    TITLE = "Evaluate map against reference"
    HELP = (
        "Scores a predicted map raster against a reference map over the pixels valid in both (the reference "
        "is warped onto the prediction's grid, nearest neighbour, when the grids differ): L1, RMSE, PSNR, SSIM "
        "and acc(d) = share of pixels whose worst channel is off by less than d levels. With a palette JSON "
        '({"classes": [{"name", "color": [r, g, b]}]}) also map-class accuracy and mIoU. The scores are '
        "written to the log and returned as outputs."
    )

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("PREDICTION", "Predicted map"))
        self.addParameter(QgsProcessingParameterRasterLayer("REFERENCE", "Reference map"))
        self.addParameter(QgsProcessingParameterFile(
            "PALETTE", "Palette for per-class scores", fileFilter="Palette (*.json)", optional=True
        ))
        self.addParameter(QgsProcessingParameterFileDestination(
            "REPORT", "JSON report", fileFilter="JSON (*.json)", optional=True, createByDefault=False
        ))
        for name in (*SCORE_NAMES, *CLASS_SCORE_NAMES):
            self.addOutput(QgsProcessingOutputNumber(name.upper(), name))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        report = self.parameterAsFileOutput(parameters, "REPORT", context) or None
        result = self.run_cli(evaluate_args(
            file_source(self.raster_layer(parameters, "PREDICTION", context)),
            file_source(self.raster_layer(parameters, "REFERENCE", context)),
            palette=self.parameterAsFile(parameters, "PALETTE", context) or None, json_report=report,
        ), feedback)
        found = scores(result)
        feedback.pushInfo("Scores: " + ", ".join(f"{name} {_score_text(value)}" for name, value in found.items()))
        outputs: dict[str, Any] = {name.upper(): value for name, value in found.items()}
        if report:
            outputs["REPORT"] = report
        return outputs


def file_source(layer: QgsMapLayer) -> str:
    """What the CLI opens for a layer: its GDAL source, without QGIS's |option suffixes."""
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"{layer.name()}: geo-sat2map reads rasters with GDAL; save this {layer.providerType()} layer as a "
            "GeoTIFF first"
        )
    source = layer.source()
    if "|" in source:
        source = QgsProviderRegistry.instance().decodeUri("gdal", source).get("path") or source.split("|")[0]
    return source


def _score_text(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"

