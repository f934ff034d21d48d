"""Streaming COG writer: GDAL reads every level back pixel-exact, with GDAL's own georeferencing and layout."""

from __future__ import annotations

import errno
import functools
import http.server
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import ColorInterp, Resampling

from geo_sat2map.errors import UserError
from geo_sat2map.raster_io import cog
from geo_sat2map.raster_io import tiff_format as tf
from geo_sat2map.raster_io.cog import FAST_CODECS, StreamingCOGWriter, check_cog_layout
from geo_sat2map.raster_io.cog import overview_factors

from .translate_fixtures import GEOGRAPHIC, UTM

RGBA = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
ROTATED = Affine(7.0, 1.5, 300_000.0, 2.0, -7.0, 5_000_000.0)


def map_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 4) uint8 like a predicted map: flat colour regions with slight noise, a transparent corner."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (6, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    regions = ((xx // 23 + yy // 17 + (xx * yy) // 997) % len(palette)).astype(np.intp)
    rgb = palette[regions].astype(np.int16) + rng.integers(-2, 3, (height, width, 3))
    valid = xx + yy > min(height, width) // 3
    out = np.zeros((height, width, 4), np.uint8)
    out[..., :3] = np.where(valid[..., None], np.clip(rgb, 0, 255), 0)
    out[..., 3] = np.where(valid, 255, 0)
    return out


def level_image(image: np.ndarray, level: int) -> np.ndarray:
    """Stand-in for the caller's overview rows: every 2**level-th pixel (exactly ceil(size / 2**level) of them)."""
    step = 2**level
    return np.ascontiguousarray(image[::step, ::step])


def write_map(path: Path, image: np.ndarray, crs="EPSG:32633", transform: Affine = UTM,
              tags: dict[str, str] | None = None, band: int = 37, **options) -> StreamingCOGWriter:
    """Stream ``image`` and its levels in bands of ``band`` rows, levels interleaved as a pipeline would."""
    height, width = image.shape[:2]
    with StreamingCOGWriter(path, width, height, crs, transform, tags or {}, **options) as writer:
        levels = [level_image(image, k) for k in range(len(writer.levels))]
        next_row = [0] * len(levels)
        while any(r < lvl.shape[0] for r, lvl in zip(next_row, levels)):
            for k, lvl in enumerate(levels):
                rows = max(1, band >> k)
                if next_row[k] < lvl.shape[0]:
                    writer.write_rows(k, lvl[next_row[k]:next_row[k] + rows], row_off=next_row[k])
                    next_row[k] += min(rows, lvl.shape[0] - next_row[k])
    return writer


def read_level(path: Path, level: int) -> np.ndarray:
    """Level 0 = full resolution; level k = the k-th overview, read as stored (GDAL's OVERVIEW_LEVEL)."""
    options = {} if level == 0 else {"overview_level": level - 1}
    with rasterio.open(path, **options) as ds:
        return ds.read().transpose(1, 2, 0)


def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------ reading back


@pytest.mark.parametrize(
    ("height", "width", "blocksize"),
    [
        (1300, 1100, 512),  # odd sizes, several tiles per level at the default block size
        (170, 300, 64),  # four levels, none a multiple of the block size
        (3, 1000, 16),  # levels down to one row
        (700, 1, 16),  # one column at every level
        (512, 513, 256),  # just over one block: overviews 257x256 and 129x128
        (30, 40, 64),  # smaller than one block: no overviews
    ],
)
def test_every_level_reads_back_pixel_exact_with_its_georeferencing(tmp_path, height, width, blocksize):
    image = map_like(height, width)
    path = tmp_path / "map.tif"
    writer = write_map(path, image, tags={"MODEL": "unit-test", "SOURCE": "scene.tif"}, blocksize=blocksize,
                       threads=2)
    factors = overview_factors(width, height, blocksize)
    assert writer.levels == [(width, height)] + [(-(-width // f), -(-height // f)) for f in factors]
    assert writer.overview_levels == len(factors)  # what translate's MapSink protocol reads
    stages = dict(writer.stats.items())  # wall-clock stages, as GDALMapSink.stats
    assert set(stages) == {"encode", "assemble"} and all(seconds > 0 for seconds in stages.values())
    with rasterio.open(path) as ds:
        assert (ds.width, ds.height, ds.count, ds.dtypes[0]) == (width, height, 4, "uint8")
        assert ds.crs == rasterio.crs.CRS.from_epsg(32633) and ds.transform == UTM
        assert ds.tags()["MODEL"] == "unit-test" and ds.tags()["SOURCE"] == "scene.tif"
        assert list(ds.colorinterp) == RGBA
        assert ds.block_shapes[0] == (blocksize, blocksize)
        assert len(ds.overviews(1)) == len(factors)
        structure = ds.tags(ns="IMAGE_STRUCTURE")
        assert structure["LAYOUT"] == "COG" and structure["COMPRESSION"] == "DEFLATE"
        assert structure["PREDICTOR"] == "2" and structure["INTERLEAVE"] == "PIXEL"
    for level in range(len(writer.levels)):
        np.testing.assert_array_equal(read_level(path, level), level_image(image, level))
    assert check_cog_layout(path) == []
    assert folder_listing(tmp_path) == ["map.tif"]  # spill files are gone


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize(("crs", "transform"), [("EPSG:32633", UTM), ("EPSG:4326", GEOGRAPHIC),
                                                 ("EPSG:3857", ROTATED), (None, Affine.identity())])
def test_georeferencing_and_metadata_are_exactly_what_gdal_writes(tmp_path, crs, transform):
    """Same GeoTIFF tags, byte for byte, as GDAL's COG driver writes for the same grid and metadata."""
    image = map_like(200, 260)
    ours = tmp_path / "ours.tif"
    write_map(ours, image, crs=crs, transform=transform, tags={"A": "1", "B": "x<y&z"}, blocksize=64)
    source, gdal_cog = tmp_path / "source.tif", tmp_path / "gdal.tif"
    with rasterio.open(source, "w", driver="GTiff", width=260, height=200, count=4, dtype="uint8", crs=crs,
                       transform=transform, photometric="RGB", alpha="YES") as dst:
        dst.write(image.transpose(2, 0, 1))
        dst.update_tags(A="1", B="x<y&z")
    rasterio.shutil.copy(source, gdal_cog, driver="COG", BLOCKSIZE="64", COMPRESS="DEFLATE", PREDICTOR="2")

    ours_tags, gdal_tags = tf.read_structure(ours).ifds[0].tags, tf.read_structure(gdal_cog).ifds[0].tags
    for code in tf.GEOREFERENCING_TAGS:
        assert ours_tags.get(code) == gdal_tags.get(code), f"tag {code} differs from GDAL's"
    with rasterio.open(ours) as a, rasterio.open(gdal_cog) as b:
        assert a.crs == b.crs and a.transform == b.transform and a.tags() == b.tags()
        assert list(a.colorinterp) == list(b.colorinterp) == RGBA
        assert a.overviews(1) == b.overviews(1)
        assert a.tags(ns="IMAGE_STRUCTURE") == b.tags(ns="IMAGE_STRUCTURE")
        np.testing.assert_array_equal(a.read(), b.read())


@pytest.mark.parametrize(
    ("options", "compression", "isal"),
    [
        ({"compress": "deflate"}, "DEFLATE", True),  # ISA-L where installed
        ({"compress": "deflate", "level": 2}, "DEFLATE", False),  # zlib forced
        ({"compress": "deflate", "level": 6}, "DEFLATE", True),  # zlib: beyond ISA-L's levels
        ({"compress": "deflate", "predictor": False}, "DEFLATE", True),
        ({"compress": "none"}, None, True),
        ({"compress": "zstd", "level": 3}, "ZSTD", True),
    ],
)
def test_codecs_read_back_exact(tmp_path, monkeypatch, options, compression, isal):
    if options["compress"] not in FAST_CODECS:
        pytest.skip(f"{options['compress']} needs an optional package that is not installed")
    monkeypatch.setattr(cog, "ISAL_DEFLATE", isal and cog.isal_zlib is not None)
    image = map_like(150, 130, seed=3)
    path = tmp_path / "map.tif"
    writer = write_map(path, image, blocksize=32, threads=3, **options)
    with rasterio.open(path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION") == compression
        assert ("PREDICTOR" in ds.tags(ns="IMAGE_STRUCTURE")) == (compression is not None
                                                                  and options.get("predictor", True))
    for level in range(len(writer.levels)):
        np.testing.assert_array_equal(read_level(path, level), level_image(image, level))
    assert check_cog_layout(path) == []


def test_deflate_engine_choice(monkeypatch):
    monkeypatch.setattr(cog, "ISAL_DEFLATE", True)
    assert cog.deflate_engine(1) == ("isa-l" if cog.isal_zlib is not None else "zlib")
    assert cog.deflate_engine(6) == "zlib"
    monkeypatch.setattr(cog, "ISAL_DEFLATE", False)
    assert cog.deflate_engine(1) == "zlib"


def test_compressed_sizes_follow_the_codec_and_level(tmp_path):
    """Level 6 is smaller than level 1, and both smaller than no compression, on noisy map-like content."""
    image = map_like(256, 256, seed=4)
    sizes = {}
    for name, options in {"none": {"compress": "none"}, "1": {"level": 1}, "6": {"level": 6}}.items():
        writer = write_map(tmp_path / f"{name}.tif", image, blocksize=64, **options)
        sizes[name] = writer.stats.compressed_bytes
        assert writer.stats.file_bytes == (tmp_path / f"{name}.tif").stat().st_size
        assert writer.stats.tiles == sum(-(-w // 64) * -(-h // 64) for w, h in writer.levels)
    assert sizes["6"] < sizes["1"] < 0.7 * sizes["none"]
    assert sizes["none"] == writer.stats.raw_bytes


def test_plain_tiled_geotiff_without_cog(tmp_path):
    image = map_like(300, 200, seed=5)
    path = tmp_path / "map.tif"
    writer = write_map(path, image, blocksize=64, cog=False)
    with rasterio.open(path) as ds:
        assert "LAYOUT" not in ds.tags(ns="IMAGE_STRUCTURE")
        assert ds.overviews(1) == [2, 4, 8]
    for level in range(len(writer.levels)):
        np.testing.assert_array_equal(read_level(path, level), level_image(image, level))
    assert any("ghost area" in p for p in check_cog_layout(path))


@pytest.mark.parametrize(("bits", "compress"), [(1, "deflate"), (2, "deflate"), (4, "deflate"), (4, "none"),
                                               (8, "deflate")])
def test_packed_class_maps_read_back_exact_with_their_colour_table_and_nodata(tmp_path, bits, compress):
    """One band at 1, 2 or 4 bits a pixel (GDAL's NBITS): every level, the colour table sized for the bits, the
    last index as a transparent nodata; odd widths end a tile row mid-byte."""
    rng = np.random.default_rng(bits)
    nodata = (1 << bits) - 1
    image = rng.integers(0, nodata + 1, (150, 101, 1), dtype=np.uint8)
    colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(nodata)]
    path = tmp_path / "classes.tif"
    writer = write_map(path, image, blocksize=32, samples=1, colormap=colours, nodata=nodata, bits=bits,
                       predictor=False, compress=compress)
    with rasterio.open(path) as ds:
        assert ds.tags(1, "IMAGE_STRUCTURE").get("NBITS") == (None if bits == 8 else str(bits))
        assert ds.nodata == nodata and ds.colorinterp == (ColorInterp.palette,)
        table = ds.colormap(1)
        assert len(table) == 1 << bits and [table[i][:3] for i in range(nodata)] == colours
        assert table[nodata][3] == 0
    for level in range(len(writer.levels)):
        np.testing.assert_array_equal(read_level(path, level), level_image(image, level))
    assert check_cog_layout(path) == []
    if bits < 8:
        assert writer.stats.raw_bytes == writer.stats.tiles * 32 * 32 * bits // 8


def test_packing_is_refused_where_it_cannot_hold_the_values(tmp_path):
    with pytest.raises(ValueError, match="bits=4"):  # libtiff predicts 8-bit samples only
        StreamingCOGWriter(tmp_path / "m.tif", 10, 10, None, Affine.identity(), {}, samples=1, bits=4)
    with pytest.raises(ValueError, match="bits=4"):
        StreamingCOGWriter(tmp_path / "m.tif", 10, 10, None, Affine.identity(), {}, bits=4, predictor=False)
    with pytest.raises(ValueError, match="5 entries does not fit 2-bit"):
        StreamingCOGWriter(tmp_path / "m.tif", 10, 10, None, Affine.identity(), {}, samples=1, bits=2,
                           predictor=False, colormap=[(0, 0, 0)] * 5)
    with StreamingCOGWriter(tmp_path / "m.tif", 10, 10, None, Affine.identity(), {}, samples=1, bits=2,
                            predictor=False) as writer:
        with pytest.raises(ValueError, match="value 4 does not fit 2-bit"):
            writer.write_rows(0, np.full((10, 10, 1), 4, np.uint8))
        writer.abort()
    assert folder_listing(tmp_path) == []


@pytest.mark.parametrize("bigtiff", [True, False, None])
def test_bigtiff_on_request_or_only_when_needed(tmp_path, bigtiff):
    image = map_like(100, 90, seed=6)
    path = tmp_path / "map.tif"
    write_map(path, image, blocksize=32, bigtiff=bigtiff)
    assert path.read_bytes()[2] == (43 if bigtiff else 42)  # small files stay classic TIFF by default
    np.testing.assert_array_equal(read_level(path, 0), image)
    np.testing.assert_array_equal(read_level(path, 2), level_image(image, 2))
    assert check_cog_layout(path) == []


def test_rows_in_any_band_sizes_give_the_same_file(tmp_path):
    image = map_like(140, 100, seed=7)
    write_map(tmp_path / "a.tif", image, blocksize=32, band=1, threads=1)
    write_map(tmp_path / "b.tif", image, blocksize=32, band=500, threads=4)
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()


def test_non_contiguous_rows_are_accepted(tmp_path):
    image = map_like(64, 48, seed=8)
    path = tmp_path / "map.tif"
    with StreamingCOGWriter(path, 48, 64, "EPSG:32633", UTM, {}, blocksize=64) as writer:
        writer.write_rows(0, np.asfortranarray(image))
    np.testing.assert_array_equal(read_level(path, 0), image)


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (what cloud storage offers and GDAL's /vsicurl/ relies on)."""

    served: list[int]

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def do_GET(self) -> None:
        self._respond(body=True)

    def _respond(self, body: bool) -> None:
        data = Path(self.translate_path(self.path)).read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start, end = (int(match[1]), min(len(data), int(match[2] or len(data) - 1) + 1)) if match else (0, len(data))
        self.send_response(206 if match else 200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start if body else len(data)))
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start:end])
            self.served.append(end - start)


def test_gdal_reads_it_over_http_as_a_cog_fetching_only_what_it_needs(tmp_path, monkeypatch):
    """GDAL's cloud reader (/vsicurl/ with range requests) sees a COG and reads an overview from a few KB."""
    image = map_like(1300, 1100, seed=12)
    path = tmp_path / "map.tif"
    write_map(path, image)
    served: list[int] = []
    handler = functools.partial(type("Handler", (_RangeHandler,), {"served": served}), directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1")
    try:
        url = f"/vsicurl/http://127.0.0.1:{server.server_address[1]}/map.tif"
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_HTTP_MULTIRANGE="NO"):
            with rasterio.open(url) as ds:
                assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.overviews(1) == [2, 4]
            with rasterio.open(url, overview_level=1) as ds:
                np.testing.assert_array_equal(ds.read().transpose(1, 2, 0), level_image(image, 2))
    finally:
        server.shutdown()
        thread.join()
    assert 0 < sum(served) < path.stat().st_size / 4


# ----------------------------------------------------------------------------------------- COG checker


def _gdal_source(path: Path, image: np.ndarray, **profile) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=image.shape[1], height=image.shape[0], count=4,
                       dtype="uint8", crs="EPSG:32633", transform=UTM, photometric="RGB", alpha="YES",
                       **profile) as dst:
        dst.write(image.transpose(2, 0, 1))
    return path


def test_checker_accepts_gdal_cog_driver_files(tmp_path):
    image = map_like(700, 600, seed=9)
    source = _gdal_source(tmp_path / "src.tif", image)
    rasterio.shutil.copy(source, tmp_path / "rgba.tif", driver="COG", BLOCKSIZE="256", COMPRESS="DEFLATE")
    assert check_cog_layout(tmp_path / "rgba.tif") == []
    # RGB with an internal mask: GDAL interleaves mask tiles with the imagery.
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(tmp_path / "masked.tif", "w", driver="GTiff", width=600, height=700, count=3,
                           dtype="uint8", crs="EPSG:32633", transform=UTM) as dst:
            dst.write(image[..., :3].transpose(2, 0, 1))
            dst.write_mask(image[..., 3])
    rasterio.shutil.copy(tmp_path / "masked.tif", tmp_path / "masked_cog.tif", driver="COG", BLOCKSIZE="256",
                         BIGTIFF="YES")
    assert check_cog_layout(tmp_path / "masked_cog.tif") == []


def test_checker_flags_a_tiled_geotiff_with_overviews_added_afterwards(tmp_path):
    image = map_like(700, 600, seed=10)
    path = _gdal_source(tmp_path / "plain.tif", image, tiled=True, blockxsize=256, blockysize=256,
                        compress="deflate")
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.average)
    problems = check_cog_layout(path)
    assert any("ghost area" in p for p in problems)
    assert any("not all before the data" in p for p in problems)
    assert any("not all before that of" in p for p in problems)  # full resolution data comes first


def test_checker_flags_a_broken_trailer_and_an_edited_file(tmp_path):
    image = map_like(200, 200, seed=11)
    path = tmp_path / "map.tif"
    write_map(path, image, blocksize=64)
    structure = tf.read_structure(path)
    offset, count = structure.ifds[0].ints(tf.TILE_OFFSETS)[3], structure.ifds[0].ints(tf.TILE_BYTE_COUNTS)[3]
    raw = bytearray(path.read_bytes())
    raw[offset + count] ^= 0xFF  # first trailer byte of tile 3 of the full-resolution level
    path.write_bytes(bytes(raw))
    assert check_cog_layout(path) == ["IFD 0 (200x200): 1 tile(s) with a wrong block leader or trailer"]
    # What GDAL does to the ghost area when it edits a COG in place.
    path.write_bytes(bytes(raw).replace(b"KNOWN_INCOMPATIBLE_EDITION=NO\n ", b"KNOWN_INCOMPATIBLE_EDITION=YES\n"))
    assert "the file was modified after it was written (KNOWN_INCOMPATIBLE_EDITION=YES)" in check_cog_layout(path)


def test_checker_reports_a_file_that_is_not_a_tiff(tmp_path):
    path = tmp_path / "x.tif"
    path.write_bytes(b"PK\x03\x04 not a tiff")
    assert check_cog_layout(path)[0].startswith("cannot read the TIFF structure")


# ------------------------------------------------------------------------------------ misuse and cleanup


@pytest.fixture
def writer(tmp_path):
    with StreamingCOGWriter(tmp_path / "map.tif", 100, 70, "EPSG:32633", UTM, {}, blocksize=32) as w:
        yield w
        w.abort()


@pytest.mark.parametrize(
    ("level", "rows", "match"),
    [
        (0, np.zeros((4, 100, 4), np.float32), "uint8"),
        (0, np.zeros((4, 100, 3), np.uint8), r"shape \(rows, 100, 4\)"),
        (0, np.zeros((4, 99, 4), np.uint8), r"shape \(rows, 100, 4\)"),
        (0, np.zeros((100, 4), np.uint8), "shape"),
        (1, np.zeros((4, 100, 4), np.uint8), r"shape \(rows, 50, 4\)"),
        (0, np.zeros((71, 100, 4), np.uint8), "71 rows written, but it has 70"),
        (3, np.zeros((4, 13, 4), np.uint8), "level 3 does not exist"),
    ],
)
def test_wrong_rows_are_a_value_error(writer, level, rows, match):
    with pytest.raises(ValueError, match=match):
        writer.write_rows(level, rows)


def test_rows_out_of_order_are_a_value_error(writer):
    writer.write_rows(0, np.zeros((10, 100, 4), np.uint8), row_off=0)
    with pytest.raises(ValueError, match="expected row 10, got 20"):
        writer.write_rows(0, np.zeros((10, 100, 4), np.uint8), row_off=20)


def test_unsupported_options_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="lzw.*GDAL"):
        StreamingCOGWriter(tmp_path / "m.tif", 10, 10, None, Affine.identity(), {}, compress="lzw")
    assert "lzw" not in FAST_CODECS and {"deflate", "none"} <= set(FAST_CODECS)
    with pytest.raises(ValueError, match="level 12"):
        StreamingCOGWriter(tmp_path / "m.tif", 10, 10, None, Affine.identity(), {}, level=12)
    with pytest.raises(ValueError, match="multiple of 16"):
        StreamingCOGWriter(tmp_path / "m.tif", 10, 10, None, Affine.identity(), {}, blocksize=100)
    assert folder_listing(tmp_path) == []


def test_close_before_all_rows_leaves_nothing(tmp_path):
    path = tmp_path / "map.tif"
    w = StreamingCOGWriter(path, 100, 70, "EPSG:32633", UTM, {}, blocksize=32)
    w.write_rows(0, np.zeros((70, 100, 4), np.uint8))
    w.write_rows(1, np.zeros((20, 50, 4), np.uint8))
    with pytest.raises(ValueError, match="level 1: 20 of 35 rows; level 2: 0 of 18 rows"):
        w.close()
    assert folder_listing(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_exception_mid_stream_leaves_nothing(tmp_path, error):
    (tmp_path / "other.txt").write_text("keep me")
    image = map_like(200, 200)
    with pytest.raises(error):
        with StreamingCOGWriter(tmp_path / "map.tif", 200, 200, "EPSG:32633", UTM, {}, blocksize=32) as w:
            w.write_rows(0, image[:150])
            assert len(folder_listing(tmp_path)) == 1 + len(w.levels)  # one hidden spill file per level
            raise error()
    assert folder_listing(tmp_path) == ["other.txt"]


def test_an_encoding_failure_surfaces_and_leaves_nothing(tmp_path, monkeypatch):
    w = StreamingCOGWriter(tmp_path / "map.tif", 64, 64, "EPSG:32633", UTM, {}, blocksize=16, threads=2)

    def broken(data):
        raise MemoryError("simulated")

    monkeypatch.setattr(w, "_compress", broken)
    with pytest.raises(MemoryError, match="simulated"):
        with w:
            w.write_rows(0, map_like(64, 64))
            w.write_rows(1, level_image(map_like(64, 64), 1))
            w.write_rows(2, level_image(map_like(64, 64), 2))
    assert folder_listing(tmp_path) == []


def test_compressed_tiles_are_spilled_to_disk_while_streaming(tmp_path):
    """Finished tiles leave RAM for the level's spill file before close(); at most 2 per thread are pending."""
    image = map_like(512, 512)
    with StreamingCOGWriter(tmp_path / "map.tif", 512, 512, "EPSG:32633", UTM, {}, blocksize=32,
                            threads=1) as w:
        w.write_rows(0, image)
        stored_bytes = w.stats.compressed_bytes
        assert w.stats.tiles >= 256 - 2
        spill = next(p for p in tmp_path.iterdir() if p.name.endswith(".level0.tiles"))
        assert spill.name.startswith(".map.tif.")  # hidden, beside the output
        assert spill.stat().st_size >= stored_bytes + 8 * 254 > 0
        for k in range(1, len(w.levels)):
            w.write_rows(k, level_image(image, k))
    assert folder_listing(tmp_path) == ["map.tif"]


def test_write_rows_blocks_while_the_pool_is_behind(tmp_path, monkeypatch):
    """Backpressure: with one thread, a block row of 4 tiles cannot be queued while 2 are still encoding."""
    release = threading.Event()
    w = StreamingCOGWriter(tmp_path / "map.tif", 64, 16, "EPSG:32633", UTM, {}, blocksize=16, threads=1)
    compress = w._compress
    monkeypatch.setattr(w, "_compress", lambda data: (release.wait(), compress(data))[1])
    producer = threading.Thread(target=w.write_rows, args=(0, map_like(16, 64)))
    producer.start()
    producer.join(timeout=0.3)
    assert producer.is_alive()  # waiting for a free slot
    release.set()
    producer.join(timeout=10)
    assert not producer.is_alive()
    w.abort()
    assert folder_listing(tmp_path) == []


def test_write_errors_are_user_errors_and_leave_nothing(tmp_path, monkeypatch):
    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "copy_file_range", disk_full)
    with pytest.raises(UserError, match="No space left on device"):
        write_map(tmp_path / "map.tif", map_like(40, 40), blocksize=16)
    assert folder_listing(tmp_path) == []


def test_a_full_disk_while_streaming_is_a_user_error_and_leaves_nothing(tmp_path, monkeypatch):
    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", disk_full)
    with pytest.raises(UserError, match="map.tif: could not write the map .No space left on device"):
        write_map(tmp_path / "map.tif", map_like(40, 40), blocksize=16)
    assert folder_listing(tmp_path) == []


def test_byte_copies_fall_back_when_the_kernel_cannot_copy(tmp_path, monkeypatch):
    def cross_device(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    image = map_like(90, 80)
    write_map(tmp_path / "fast.tif", image, blocksize=32)
    monkeypatch.setattr(os, "copy_file_range", cross_device)
    write_map(tmp_path / "slow.tif", image, blocksize=32)
    assert (tmp_path / "fast.tif").read_bytes() == (tmp_path / "slow.tif").read_bytes()
