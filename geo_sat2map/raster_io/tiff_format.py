"""TIFF container primitives: tag ids, IFD encoding, and a reader of a file's structure (never its pixels).

Only what the streaming COG writer and the COG layout checker need: little-endian classic TIFF and BigTIFF,
one IFD chain, tag values kept as raw bytes so that they can be copied between files without being decoded.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

# Tag ids (TIFF 6.0, GeoTIFF 1.1, GDAL's private tags).
NEW_SUBFILE_TYPE = 254
IMAGE_WIDTH = 256
IMAGE_LENGTH = 257
BITS_PER_SAMPLE = 258
COMPRESSION = 259
PHOTOMETRIC = 262
SAMPLES_PER_PIXEL = 277
PLANAR_CONFIG = 284
PREDICTOR = 317
TILE_WIDTH = 322
TILE_LENGTH = 323
TILE_OFFSETS = 324
TILE_BYTE_COUNTS = 325
COLORMAP = 320
EXTRA_SAMPLES = 338
SAMPLE_FORMAT = 339
MODEL_PIXEL_SCALE = 33550
MODEL_TIEPOINT = 33922
MODEL_TRANSFORMATION = 34264
GEO_KEY_DIRECTORY = 34735
GEO_DOUBLE_PARAMS = 34736
GEO_ASCII_PARAMS = 34737
GDAL_METADATA = 42112
GDAL_NODATA = 42113
# Baseline TIFF text tags GDAL fills from TIFFTAG_* metadata items (DocumentName, ImageDescription, Software,
# DateTime, Artist, HostComputer, Copyright).
TEXT_TAGS = (269, 270, 305, 306, 315, 316, 33432)
# What GDAL writes for a CRS, a geotransform and dataset metadata: copied verbatim from a template file.
GEOREFERENCING_TAGS = (MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION, GEO_KEY_DIRECTORY,
                       GEO_DOUBLE_PARAMS, GEO_ASCII_PARAMS, GDAL_METADATA, GDAL_NODATA, *TEXT_TAGS)

SUBFILE_REDUCED = 1  # NewSubfileType bits
SUBFILE_MASK = 4

# Field types: id -> (struct code of one value, bytes per value).
ASCII, SHORT, LONG, DOUBLE, LONG8 = 2, 3, 4, 12, 16
FIELD_TYPES: dict[int, tuple[str, int]] = {
    1: ("B", 1), ASCII: ("s", 1), SHORT: ("H", 2), LONG: ("I", 4), 5: ("II", 8), 6: ("b", 1), 7: ("B", 1),
    8: ("h", 2), 9: ("i", 4), 10: ("ii", 8), 11: ("f", 4), DOUBLE: ("d", 8), 13: ("I", 4), LONG8: ("Q", 8),
    17: ("q", 8), 18: ("Q", 8),
}

# GDAL's COG "ghost area": structural metadata right after the TIFF header. GDAL reads it to report
# LAYOUT=COG and to trust the block leaders (tile size before each tile) and trailers (its last 4 bytes again).
GHOST_SIZE_PREFIX = "GDAL_STRUCTURAL_METADATA_SIZE="
GHOST_BODY = (
    "LAYOUT=IFDS_BEFORE_DATA\n"
    "BLOCK_ORDER=ROW_MAJOR\n"
    "BLOCK_LEADER=SIZE_AS_UINT4\n"
    "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\n"
    "KNOWN_INCOMPATIBLE_EDITION=NO\n"
    " "  # GDAL ends with a space so that an in-place edit can turn "NO\n " into "YES\n"
)


def ghost_area() -> bytes:
    """The ghost area exactly as GDAL's COG driver writes it (for a file without a mask)."""
    return f"{GHOST_SIZE_PREFIX}{len(GHOST_BODY):06d} bytes\n{GHOST_BODY}".encode("ascii")


def header_bytes(bigtiff: bool) -> int:
    return 16 if bigtiff else 8


def tiff_header(bigtiff: bool, first_ifd: int) -> bytes:
    if bigtiff:
        return b"II" + struct.pack("<HHHQ", 43, 8, 0, first_ifd)
    return b"II" + struct.pack("<HI", 42, first_ifd)


@dataclass(frozen=True)
class Tag:
    """One IFD entry; ``data`` is the value in little-endian byte order, exactly as stored in the file."""

    code: int
    type: int
    count: int
    data: bytes

    @classmethod
    def of(cls, code: int, type_: int, values: Iterable[int | float]) -> Tag:
        values = list(values)
        return cls(code, type_, len(values), struct.pack(f"<{len(values)}{FIELD_TYPES[type_][0]}", *values))

    def values(self) -> tuple:
        if self.type == ASCII:
            return (self.data.rstrip(b"\0").decode("latin-1"),)
        fmt, size = FIELD_TYPES[self.type]
        return struct.unpack(f"<{len(self.data) // size * len(fmt)}{fmt[0]}", self.data)

    def inline(self, bigtiff: bool) -> bool:
        """Whether the value fits in the entry itself (else it is stored elsewhere and the entry points to it)."""
        return len(self.data) <= (8 if bigtiff else 4)


def short_or_long(code: int, value: int) -> Tag:
    """A dimension as libtiff writes it: SHORT when it fits, else LONG."""
    return Tag.of(code, SHORT if value <= 0xFFFF else LONG, [value])


def ifd_byte_size(tags: Iterable[Tag], bigtiff: bool, far: Iterable[int] = ()) -> int:
    """Bytes of an IFD plus the out-of-line values stored right after it (all but those in ``far``)."""
    tags, far = list(tags), set(far)
    size = (8 + 20 * len(tags) + 8) if bigtiff else (2 + 12 * len(tags) + 4)
    return size + sum(word_aligned(len(t.data)) for t in tags if not t.inline(bigtiff) and t.code not in far)


def encode_ifd(
    tags: Iterable[Tag], offset: int, bigtiff: bool, next_ifd: int, far: Mapping[int, int] | None = None
) -> bytes:
    """An IFD to be written at ``offset``, followed by its out-of-line values (entries sorted by tag id).

    ``far`` maps tag ids to where the caller writes their (out-of-line) values instead, e.g. tile offset
    arrays gathered after all the IFDs so that a reader gets every IFD in one small read.
    """
    tags, far = sorted(tags, key=lambda t: t.code), dict(far or {})
    entry_fmt, count_fmt, pointer_fmt = ("<HHQ", "<Q", "<Q") if bigtiff else ("<HHI", "<H", "<I")
    out = bytearray(struct.pack(count_fmt, len(tags)))
    values = bytearray()
    values_at = offset + ifd_byte_size(tags, bigtiff, far=[t.code for t in tags])  # just past the entries
    for tag in tags:
        out += struct.pack(entry_fmt, tag.code, tag.type, tag.count)
        if tag.inline(bigtiff):
            out += tag.data.ljust(8 if bigtiff else 4, b"\0")
        elif tag.code in far:
            out += struct.pack(pointer_fmt, far[tag.code])
        else:
            out += struct.pack(pointer_fmt, values_at + len(values))
            values += tag.data.ljust(word_aligned(len(tag.data)), b"\0")
    out += struct.pack(pointer_fmt, next_ifd)
    return bytes(out + values)


@dataclass
class Ifd:
    """An IFD read from a file: its offset, its tags, and where its values end."""

    offset: int
    tags: dict[int, Tag]
    end: int = 0  # one past its last byte, counting the out-of-line values it points to
    next_offset: int = 0

    def value(self, code: int, default: int = 0) -> int:
        tag = self.tags.get(code)
        return default if tag is None else int(tag.values()[0])

    def ints(self, code: int) -> tuple[int, ...]:
        tag = self.tags.get(code)
        return () if tag is None else tuple(int(v) for v in tag.values())


@dataclass
class TiffStructure:
    bigtiff: bool
    first_ifd: int
    ifds: list[Ifd] = field(default_factory=list)
    ghost: str | None = None  # GDAL's structural metadata after the header, if any
    ghost_end: int = 0


def read_structure(source: str | os.PathLike[str] | bytes) -> TiffStructure:
    """Parse the header, GDAL ghost area and IFD chain of a little-endian TIFF file (or bytes).

    Raises ValueError for anything else, or for a broken IFD chain. Pixel data is never read.
    """
    if isinstance(source, bytes):
        return _read_structure(io.BytesIO(source), len(source), "<bytes>")
    with open(source, "rb") as fh:
        return _read_structure(fh, os.fstat(fh.fileno()).st_size, str(source))


def _read_structure(fh: BinaryIO, size: int, name: str) -> TiffStructure:
    head = fh.read(16)
    if len(head) < 8 or head[:2] != b"II":
        raise ValueError(f"{name}: not a little-endian TIFF")
    magic = struct.unpack_from("<H", head, 2)[0]
    if magic == 42:
        structure = TiffStructure(False, struct.unpack_from("<I", head, 4)[0])
    elif magic == 43 and len(head) == 16:
        structure = TiffStructure(True, struct.unpack_from("<Q", head, 8)[0])
    else:
        raise ValueError(f"{name}: not a TIFF (version {magic})")
    _read_ghost(fh, structure)
    offset, seen = structure.first_ifd, set()
    while offset:
        if offset in seen or offset >= size:
            raise ValueError(f"{name}: the IFD chain points to byte {offset} (a loop, or past the end)")
        seen.add(offset)
        structure.ifds.append(_read_ifd(fh, offset, structure.bigtiff, name))
        offset = structure.ifds[-1].next_offset
    return structure


def _read_ghost(fh: BinaryIO, structure: TiffStructure) -> None:
    start = header_bytes(structure.bigtiff)
    fh.seek(start)
    line = fh.read(len(GHOST_SIZE_PREFIX) + len("000000 bytes\n")).decode("latin-1")
    if not line.startswith(GHOST_SIZE_PREFIX) or not line[len(GHOST_SIZE_PREFIX):][:6].isdigit():
        return
    size = int(line[len(GHOST_SIZE_PREFIX):][:6])
    structure.ghost = fh.read(size).decode("latin-1")
    structure.ghost_end = start + len(line) + size


def _read_ifd(fh: BinaryIO, offset: int, bigtiff: bool, name: str) -> Ifd:
    count_fmt, entry_fmt, pointer_fmt = ("<Q", "<HHQ", "<Q") if bigtiff else ("<H", "<HHI", "<I")
    entry_size, pointer_size = (20, 8) if bigtiff else (12, 4)
    fh.seek(offset)
    head = fh.read(struct.calcsize(count_fmt))
    if len(head) < struct.calcsize(count_fmt):
        raise ValueError(f"{name}: IFD at byte {offset} runs past the end of the file")
    (count,) = struct.unpack(count_fmt, head)
    raw = fh.read(entry_size * count + pointer_size)
    if len(raw) < entry_size * count + pointer_size:
        raise ValueError(f"{name}: IFD at byte {offset} runs past the end of the file")
    ifd = Ifd(offset, {}, end=offset + len(head) + len(raw))
    (ifd.next_offset,) = struct.unpack_from(pointer_fmt, raw, entry_size * count)
    for i in range(count):
        code, type_, n = struct.unpack_from(entry_fmt, raw, i * entry_size)
        if type_ not in FIELD_TYPES:
            continue  # an unknown field type has no known size; no tag we look at uses one
        nbytes = n * FIELD_TYPES[type_][1]
        at = i * entry_size + struct.calcsize(entry_fmt)
        if nbytes <= pointer_size:
            data = raw[at:at + nbytes]
        else:
            (where,) = struct.unpack_from(pointer_fmt, raw, at)
            fh.seek(where)
            data = fh.read(nbytes)
            if len(data) < nbytes:
                raise ValueError(f"{name}: the value of tag {code} (IFD at byte {offset}) runs past the end")
            ifd.end = max(ifd.end, where + nbytes)
        ifd.tags[code] = Tag(code, type_, n, data)
    return ifd


def word_aligned(n: int) -> int:
    """Bytes a value of ``n`` bytes takes: TIFF word-aligns values, so an odd length gets one pad byte."""
    return n + (n & 1)
