"""Streaming RGBA map output: a tiled GeoTIFF written in row bands, then a Cloud-Optimized GeoTIFF.

The footprint is an alpha band (RGBA, colour interpretation red/green/blue/alpha): QGIS, GDAL, web viewers
and COG tilers all treat it as transparency without configuration, and overviews built by GDAL carry it.
Masked pixels are 0 in every band; there is never a nodata *value* on the RGB bands.

Class maps (``OutputOptions.class_band``) have one uint8 band of class indices instead, with the palette's
``nodata_index`` as the nodata value for the mask: ``paletted`` with a GDAL colour table (PHOTOMETRIC=palette;
GDAL makes the nodata entry transparent), ``classes`` without. Both get the class names as GDAL category names
in a ``.aux.xml`` sidecar (GeoTIFF has no tag for them), which QGIS shows as the legend. They are packed to
``class_bits`` a pixel (GDAL's NBITS), without a predictor and at a higher compression level than RGBA
(``CLASS_MAP_LEVELS``): runs of one class compress best that way, and a one-band tile is cheap to encode.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import glob
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geo_sat2map.atomic import atomic_output, temp_file_beside
from geo_sat2map.errors import UserError
from geo_sat2map.palette import class_bits, nodata_index
from geo_sat2map.raster_io.cog import FAST_CODECS, StreamingCOGWriter, overview_factors
from geo_sat2map.raster_io.core import RasterInfo


log = logging.getLogger("geo_sat2map")

COMPRESSIONS = ("deflate", "zstd", "lzw", "none")
RGBA_INTERP = (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha)
# GDAL's block cache defaults to 5 % of RAM and would keep every block read or written until full, so a
# streaming run would grow with the scene. It only needs the blocks of the current strips.
MIN_CACHE_BYTES = 16 * 2**20
INTERMEDIATE_COMPRESSION = "zstd"  # the streamed file GDAL turns into a COG: fast to write and to read back
# Default level of a class map (module docstring). 4-bit class tiles, CPU per Mpx: DEFLATE 6/7/8/9 ~14/20/52/114 ms
# (RGBA at ISA-L level 1: 3 ms) for 1.10/1.06/1.01/1 x the size of level 9; ZSTD 9: 11 ms, about DEFLATE 9's size.
CLASS_MAP_LEVELS = {"deflate": 8, "zstd": 9}


@dataclass(frozen=True)
class ClassBand:
    """A one-band class map: value i is class ``names[i]``, drawn in ``colours[i]`` when ``paletted``."""

    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]
    paletted: bool

    @property
    def nodata(self) -> int:
        return nodata_index(len(self.names))

    @property
    def bits(self) -> int:
        return class_bits(len(self.names))

    @property
    def colormap(self) -> list[tuple[int, int, int]] | None:
        return list(self.colours) if self.paletted else None


@dataclass(frozen=True)
class OutputOptions:
    """How the final map file is encoded."""

    compress: str = "deflate"
    cog: bool = True
    blocksize: int = 512
    overview_resampling: str = "average"
    creation_options: Mapping[str, str] = field(default_factory=dict)  # extra GDAL options, e.g. {"LEVEL": "9"}
    class_band: ClassBand | None = None  # a one-band class map instead of RGBA

    @property
    def samples(self) -> int:
        return 1 if self.class_band is not None else 4

    @property
    def extra(self) -> dict[str, str]:
        """The creation options, names in upper case."""
        return {k.upper(): str(v) for k, v in self.creation_options.items()}

    @property
    def predictor(self) -> bool | None:
        """The horizontal predictor: on for RGBA, off for class maps (runs of a class compress better as they are)
        unless ``PREDICTOR`` says otherwise; None for GDAL's floating-point predictor."""
        value = self.extra.get("PREDICTOR")
        if value is None:
            return self.class_band is None and self.compress != "none"
        return {"YES": True, "2": True, "STANDARD": True, "NO": False, "1": False, "NONE": False}.get(value.upper())

    @property
    def bits(self) -> int:
        """Bits a pixel of each band: a class map's packed width (``NBITS`` may widen it), 8 with a predictor
        (libtiff predicts 8-bit samples or wider)."""
        if self.class_band is None:
            return 8
        if "NBITS" in self.extra:
            return int(self.extra["NBITS"])
        return 8 if self.predictor else self.class_band.bits

    @property
    def level(self) -> int | None:
        """The compression level asked for (``LEVEL``, ``ZLEVEL``, ``ZSTD_LEVEL``), else a class map's default."""
        extra = self.extra
        value = extra.get("LEVEL", extra.get("ZLEVEL", extra.get("ZSTD_LEVEL")))
        if value is not None:
            return int(value)
        return CLASS_MAP_LEVELS.get(self.compress) if self.class_band is not None else None

    @property
    def _level_given(self) -> bool:
        return bool({"LEVEL", "ZLEVEL", "ZSTD_LEVEL"} & set(self.extra))

    def gdal_options(self, driver: str = "COG") -> dict[str, str]:
        """Creation options for GDAL's ``driver`` (COG or GTiff), the --co given winning."""
        options = {"COMPRESS": self.compress.upper(), "BIGTIFF": "IF_SAFER"}
        if self.predictor:
            options["PREDICTOR"] = "2"
        if self.bits < 8:
            options["NBITS"] = str(self.bits)
        if self.class_band is not None and self.compress in CLASS_MAP_LEVELS and not self._level_given:
            name = "LEVEL" if driver == "COG" else {"deflate": "ZLEVEL", "zstd": "ZSTD_LEVEL"}[self.compress]
            options[name] = str(CLASS_MAP_LEVELS[self.compress])
        options.update(self.extra)
        return options


def streaming_cache_bytes(width: int, strip_rows: int, blocksize: int = 512) -> int:
    """GDAL cache for streaming ``width``-pixel-wide strips: the input blocks of two strips (re-read where
    strips overlap) plus one output block row, at 4 bytes a pixel; at least ``MIN_CACHE_BYTES``."""
    return max(MIN_CACHE_BYTES, width * (2 * strip_rows + blocksize) * 4)


@contextlib.contextmanager
def streaming_gdal_env(cache_bytes: int, threads: int | str = "ALL_CPUS") -> Iterator[None]:
    """GDAL settings for a streaming run, set from the calling thread for the whole process (rasterio applies an
    Env of the main thread globally): a capped block cache, and multi-threaded (de)compression of the blocks of
    one read or write."""
    with rasterio.Env(GDAL_CACHEMAX=cache_bytes, GDAL_NUM_THREADS=str(threads)):
        yield


class RGBAStripWriter:
    """Writes an RGBA (or one-band class) uint8 raster as consecutive full-width row bands, buffered to whole
    block rows.

    Rows must arrive in order. Writes happen one block row at a time, so a compressed tiled GeoTIFF never has
    a half-written block flushed and rewritten. Use from one thread at a time; ``close`` flushes the rest.
    Run inside ``streaming_gdal_env`` so dirty blocks do not pile up in GDAL's cache.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        crs: rasterio.crs.CRS | None,
        transform: Affine,
        tags: Mapping[str, str],
        compress: str,
        blocksize: int = 512,
        extra_options: Mapping[str, str] | None = None,
        class_band: ClassBand | None = None,
    ) -> None:
        self.width, self.height, self.blocksize = width, height, blocksize
        count = 4 if class_band is None else 1
        options = {"COMPRESS": compress.upper(), "BIGTIFF": "IF_SAFER"}
        if class_band is None:
            options.update(PHOTOMETRIC="RGB", ALPHA="YES")
        elif class_band.paletted:
            options["PHOTOMETRIC"] = "PALETTE"
        if compress != "none" and class_band is None:
            options["PREDICTOR"] = "2"
        options.update(extra_options or {})
        try:
            self._ds = rasterio.open(
                path, "w", driver="GTiff", width=width, height=height, count=count, dtype="uint8",
                crs=crs, transform=transform, tiled=True, blockxsize=blocksize, blockysize=blocksize,
                nodata=class_band.nodata if class_band is not None else None, **options,
            )
            if class_band is None:
                self._ds.colorinterp = list(RGBA_INTERP)
            elif class_band.paletted:
                self._ds.write_colormap(1, {i: (*c, 255) for i, c in enumerate(class_band.colours)})
            self._ds.update_tags(**tags)
        except RasterioError as exc:
            raise UserError(f"{path}: cannot create the output GeoTIFF ({exc})") from exc
        self._block = np.empty((count, min(blocksize, height), width), np.uint8)  # one block row, filled in turn
        self._pending_rows = 0  # rows of _block filled
        self._written = 0  # first row not yet written to the file

    def write_rows(self, row_off: int, rgba: np.ndarray) -> None:
        """Queue rows [row_off, row_off + n) as (bands, n, width) uint8; writes every complete block row."""
        if row_off != self._written + self._pending_rows:
            raise ValueError(f"rows must arrive in order: expected row {self._written + self._pending_rows}, "
                             f"got {row_off}")
        done = 0
        while done < rgba.shape[1]:
            take = min(rgba.shape[1] - done, self._block.shape[1] - self._pending_rows)
            self._block[:, self._pending_rows:self._pending_rows + take] = rgba[:, done:done + take]
            self._pending_rows += take
            done += take
            if self._pending_rows == self._block.shape[1] or self._written + self._pending_rows == self.height:
                self._flush()

    def _flush(self) -> None:
        rows = self._pending_rows
        self._ds.write(self._block[:, :rows], window=Window(0, self._written, self.width, rows))
        self._written += rows
        self._pending_rows = 0

    def close(self, flush: bool = True) -> None:
        """Write the remaining rows (unless abandoning a failed run) and close the file."""
        try:
            if flush and self._pending_rows:
                self._flush()
        finally:
            self._ds.close()


def finish_output(
    tiled_path: str | os.PathLike[str], final_path: str | os.PathLike[str], options: OutputOptions
) -> None:
    """Turn the streamed tiled GeoTIFF into the final file: a COG copy, or internal overviews added in place.

    With ``options.cog`` the COG is written to ``final_path`` (internal overviews, compression + predictor,
    BIGTIFF if needed); otherwise ``tiled_path`` must already be ``final_path`` and gets overviews.
    """
    resampling = options.overview_resampling.upper() if options.class_band is None else "MODE"  # never average classes
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        try:
            if options.cog:
                cog_options = {"BLOCKSIZE": str(options.blocksize), "OVERVIEWS": "AUTO",
                               "OVERVIEW_RESAMPLING": resampling, "NUM_THREADS": "ALL_CPUS"}
                cog_options.update(options.gdal_options())  # a --co of the same name wins
                rasterio.shutil.copy(str(tiled_path), str(final_path), driver="COG", **cog_options)
            else:
                with rasterio.open(final_path, "r+") as ds:
                    factors = overview_factors(ds.width, ds.height, options.blocksize)
                    if factors:
                        ds.build_overviews(factors, Resampling[resampling.lower()])
        except RasterioError as exc:
            raise UserError(f"{final_path}: could not write the output ({exc})") from exc


def category_sidecar(class_band: ClassBand) -> str:
    """The ``.aux.xml`` (GDAL PAM) text giving band 1 its category names: value i is ``names[i]``."""
    from xml.sax.saxutils import escape

    names = "".join(f"      <Category>{escape(name)}</Category>\n" for name in class_band.names)
    return (f'<PAMDataset>\n  <PAMRasterBand band="1">\n    <CategoryNames>\n{names}    </CategoryNames>\n'
            "  </PAMRasterBand>\n</PAMDataset>\n")


def read_category_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Band 1's category names from the ``.aux.xml`` beside ``path`` (as ``category_sidecar`` writes it); none
    when there is no sidecar or it has none."""
    try:
        root = ElementTree.parse(f"{os.fspath(path)}.aux.xml").getroot()
    except (OSError, ElementTree.ParseError):
        return ()
    for band in root.iter("PAMRasterBand"):
        if band.get("band", "1") == "1":
            return tuple(category.text or "" for category in band.iter("Category"))
    return ()


def write_category_sidecar(output: str | os.PathLike[str], class_band: ClassBand) -> None:
    """``OUTPUT.aux.xml`` beside a finished class map (replaced: it belongs to the map just written)."""
    with atomic_output(f"{os.fspath(output)}.aux.xml", overwrite=True, what="category names") as tmp:
        tmp.write_text(category_sidecar(class_band), encoding="utf-8")


class GDALMapSink:
    """Finished rows into GDAL: a streamed tiled GeoTIFF, then (``options.cog``) GDAL's COG copy or internal
    overviews built in place. The fallback for codecs and creation options the streaming COG writer lacks; it
    encodes the full resolution twice for a COG."""

    overview_levels = 0  # GDAL builds the overviews itself

    def __init__(
        self, path: str | os.PathLike[str], info: RasterInfo, tags: Mapping[str, str], options: OutputOptions,
        overviews: bool = True,
    ) -> None:
        """``overviews=False`` (with ``options.cog`` off): a plain tiled GeoTIFF, e.g. an intermediate map."""
        self.path, self.options, self.overviews = path, options, overviews
        self.stream_path: str | None = None
        target = str(path)
        if options.cog:
            folder = os.path.dirname(os.fspath(path)) or "."
            # named after the (owner-tagged) temporary output, so a rerun finds it if this run is killed
            fd, self.stream_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".stream.tif.part",
                                                    dir=folder)
            os.close(fd)
            target = self.stream_path
        self.stats = {"encode": 0.0, "assemble": 0.0}
        self._rows = 0
        try:
            self._writer = RGBAStripWriter(
                target, info.width, info.height, info.crs, info.transform, tags,
                compress=INTERMEDIATE_COMPRESSION if options.cog else options.compress, blocksize=options.blocksize,
                extra_options=None if options.cog else options.gdal_options("GTiff"), class_band=options.class_band,
            )
        except BaseException:
            self._remove_stream()
            raise

    def write_rows(self, level: int, rows: np.ndarray) -> None:
        if level != 0:
            raise ValueError("GDALMapSink builds its own overviews; it takes full-resolution rows only")
        started = time.perf_counter()
        self._writer.write_rows(self._rows, rows.transpose(2, 0, 1))
        self._rows += rows.shape[0]
        self.stats["encode"] += time.perf_counter() - started

    def close(self) -> None:
        started = time.perf_counter()
        try:
            self._writer.close(flush=True)
            if self.overviews or self.options.cog:
                finish_output(self.stream_path or self.path, self.path, self.options)
        finally:
            self._remove_stream()
        self.stats["assemble"] += time.perf_counter() - started

    def abort(self) -> None:
        try:
            self._writer.close(flush=False)
        finally:
            self._remove_stream()

    def _remove_stream(self) -> None:
        if self.stream_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.stream_path)


@contextlib.contextmanager
def scratch_path(output: str | os.PathLike[str], suffix: str) -> Iterator[Path]:
    """A hidden temporary file beside ``output`` for an intermediate product, removed when the block ends (named
    with the owner tag, so a rerun removes it if this run is killed)."""
    path = temp_file_beside(Path(output).absolute(), suffix)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def open_scratch_sink(path: str | os.PathLike[str], info: RasterInfo, class_band: ClassBand | None = None
                      ) -> GDALMapSink:
    """A sink for an intermediate map (RGBA, or one band of ``class_band``'s classes) that is read back once:
    fast compression, no overviews."""
    options = OutputOptions(compress=INTERMEDIATE_COMPRESSION, cog=False, class_band=class_band)
    return GDALMapSink(path, info, {}, options, overviews=False)


# GDAL creation options the streaming COG writer honours itself; any other sends the run through GDAL.
_STREAMING_OPTIONS = {"LEVEL", "ZLEVEL", "ZSTD_LEVEL", "PREDICTOR", "BLOCKSIZE", "NUM_THREADS", "BIGTIFF"}


def check_creation_options(options: OutputOptions) -> None:
    """Refuse a ``--co`` name that neither the streaming COG writer nor GDAL's driver for this output (COG, or
    GTiff with ``--no-cog``) accepts, with the list of accepted names. Without access to GDAL's driver metadata
    nothing is refused (GDAL then warns about what it ignores)."""
    unknown = {key.upper() for key in options.creation_options} - _STREAMING_OPTIONS
    driver = _gdal_driver(options)
    gdal = gdal_creation_options(driver) if unknown else None
    if gdal is None:
        return
    refused = sorted(unknown - gdal)
    if refused:
        raise UserError(
            f"--co {', '.join(refused)}: not a creation option of geo-sat2map's COG writer or of GDAL's {driver} "
            f"driver; accepted: {', '.join(sorted(_STREAMING_OPTIONS | gdal))}"
        )


def check_class_bits(options: OutputOptions) -> None:
    """A ``--co NBITS`` a class map's values and nodata index fit in (GDAL would clip the others silently)."""
    band, nbits = options.class_band, options.extra.get("NBITS")
    if band is not None and nbits is not None and (nbits not in ("1", "2", "4", "8") or int(nbits) < band.bits):
        fits = ", ".join(str(bits) for bits in (1, 2, 4, 8) if bits >= band.bits)
        raise UserError(f"--co NBITS={nbits}: this class map takes {fits} bits a pixel ({len(band.names)} classes "
                        f"and the nodata index {band.nodata})")


def _gdal_driver(options: OutputOptions) -> str:
    return "COG" if options.cog else "GTiff"


@functools.cache
def gdal_creation_options(driver: str) -> frozenset[str] | None:
    """The creation option names GDAL's ``driver`` declares (its ``DMD_CREATIONOPTIONLIST``), read from the GDAL
    library rasterio runs on (rasterio has no call for it); None where that library cannot be found."""
    library = _gdal_library()
    if library is None:
        return None
    try:
        gdal = ctypes.CDLL(library)
        gdal.GDALGetDriverByName.restype = ctypes.c_void_p
        gdal.GDALGetDriverByName.argtypes = [ctypes.c_char_p]
        gdal.GDALGetMetadataItem.restype = ctypes.c_char_p
        gdal.GDALGetMetadataItem.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        with rasterio.Env():  # registers the drivers
            handle = gdal.GDALGetDriverByName(driver.encode())
            listing = gdal.GDALGetMetadataItem(handle, b"DMD_CREATIONOPTIONLIST", None) if handle else None
        if not listing:
            return None
        return frozenset(option.get("name", "").upper() for option in ElementTree.fromstring(listing).iter("Option"))
    except (OSError, AttributeError, ElementTree.ParseError) as exc:
        log.debug("cannot read GDAL's %s creation options: %s", driver, exc)
        return None


def _gdal_library() -> str | None:
    """The GDAL shared library rasterio loaded: from this process's memory map (Linux), else beside rasterio (its
    wheels' bundled copy), else the system's."""
    with contextlib.suppress(OSError):
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "libgdal" in os.path.basename(path):
                    return path
    package = os.path.dirname(os.path.dirname(rasterio.__file__))
    for folder in ("rasterio.libs", os.path.join("rasterio", ".dylibs")):
        found = sorted(glob.glob(os.path.join(package, folder, "*gdal*")))
        if found:
            return found[0]
    return ctypes.util.find_library("gdal")


def open_map_sink(
    path: str | os.PathLike[str], info: RasterInfo, tags: Mapping[str, str], options: OutputOptions
) -> StreamingCOGWriter | GDALMapSink:
    """The sink for a translate run's rows at ``path`` (a temporary path; the caller renames it).

    The streaming COG writer (one encode, overviews from the stream) whenever it can honour the codec and the
    creation options; otherwise GDAL (e.g. LZW, JPEG-style options), which encodes the full resolution twice.
    """
    check_class_bits(options)
    extra = options.extra
    gdal_only = sorted(set(extra) - _STREAMING_OPTIONS - ({"NBITS"} if options.class_band else set()))
    if options.compress not in FAST_CODECS:
        log.info("output through GDAL (--compress %s is not one the streaming writer encodes): the map is encoded "
                 "twice", options.compress)
        return GDALMapSink(path, info, tags, options)
    if gdal_only or options.predictor is None:
        names = ", ".join(gdal_only) or f"PREDICTOR={extra['PREDICTOR']}"
        log.warning("--co %s: only GDAL's %s driver takes it, so the map takes the slower path (through GDAL, "
                    "encoded twice)", names, _gdal_driver(options))
        return GDALMapSink(path, info, tags, options)
    band = options.class_band
    try:
        return StreamingCOGWriter(
            path, info.width, info.height, info.crs, info.transform, tags, compress=options.compress,
            level=options.level, predictor=bool(options.predictor),
            blocksize=int(extra.get("BLOCKSIZE", options.blocksize)), threads=_threads(extra.get("NUM_THREADS")),
            cog=options.cog, bigtiff={"YES": True, "NO": False}.get(extra.get("BIGTIFF", "").upper()),
            samples=options.samples, colormap=band.colormap if band else None, nodata=band.nodata if band else None,
            bits=options.bits,
        )
    except ValueError as exc:
        raise UserError(f"--co {' '.join(f'{k}={v}' for k, v in extra.items())}: {exc}") from None


def _threads(value: str | None) -> int | None:
    if value is None or value.upper() == "ALL_CPUS":
        return None
    try:
        return max(1, int(value))
    except ValueError:
        raise UserError(f"--co NUM_THREADS={value}: expected a number or ALL_CPUS") from None
