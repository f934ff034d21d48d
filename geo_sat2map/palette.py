"""Map palettes: named classes and their colours, read from JSON or learned from training maps (pure numpy).

A pixel belongs to the class of its nearest colour (Euclidean RGB, as ``metrics.nearest_colour``). Learning
(``PaletteLearner``) keeps a bounded, seeded reservoir sample of the valid map pixels it is shown:

- ``exact``: the sample holds at most ``MAX_CLASSES`` distinct colours, or the colours that each hold at least
  ``EXACT_MIN_SHARE`` of it are at most ``MAX_CLASSES`` and together cover ``EXACT_COVERAGE`` (a flat map with a
  thin fringe of antialiased edge pixels). Those colours are the palette.
- ``clustered``: otherwise k-means in CIELAB of the sampled pixels inside regions (each channel within
  ``FLAT_TOLERANCE`` of its 4 neighbours: antialiased edges, which blend two classes, are left out; all pixels
  when too few are flat). k is found by this rule: start from ``MAX_CLASSES`` centres (k-means++ seeding from
  the seed), then repeatedly merge the two nearest centres while they are closer than ``MERGE_DELTA_E`` (CIE76)
  and drop the smallest cluster while it holds under ``MIN_CLUSTER_SHARE`` of the clustered pixels, re-running
  Lloyd's iterations after each change. Frequencies count every sampled pixel's nearest class.

Class names come from a named palette (``load_palette``) whose colour is within ``MERGE_DELTA_E`` of a learned
one (the nearest), else ``class N``. Classes are ordered by decreasing frequency (share of the sample).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geo_sat2map.errors import UserError

MAX_CLASSES = 32
EXACT_COVERAGE = 0.99
EXACT_MIN_SHARE = 0.001
SAMPLE_SIZE = 1 << 17  # reservoir of map pixels the palette is learned from
MIN_CLUSTER_SHARE = 0.005
MERGE_DELTA_E = 10.0
FLAT_TOLERANCE = 12  # RGB levels: a pixel this close to its 4 neighbours is inside a region, not on an edge
KMEANS_ITERATIONS = 25
PALETTE_KINDS = ("exact", "clustered", "file")
_HINT = 'expected {"classes": [{"name": "water", "color": [160, 204, 228]}, ...]}'


@dataclass(frozen=True)
class Palette:
    """Map classes and their colours; a pixel belongs to the class of its nearest colour.

    ``kind``: ``exact`` or ``clustered`` when learned from maps, ``file`` when read from a JSON palette;
    ``frequencies``: each class's share of the map pixels it was learned from (None for a file)."""

    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]
    source: str
    kind: str = "file"
    frequencies: tuple[float, ...] | None = None

    def colour_array(self) -> np.ndarray:
        return np.array(self.colours, dtype=np.uint8).reshape(-1, 3)

    def accumulator(self):  # -> metrics.ClassAccumulator (imported lazily: metrics imports torch)
        from geo_sat2map.metrics import ClassAccumulator

        return ClassAccumulator(self.names, self.colour_array())

    def to_dict(self) -> dict[str, Any]:
        """The stored form (checkpoint metadata, dataset.json); also a palette JSON ``load_palette`` reads."""
        classes = []
        for i, (name, colour) in enumerate(zip(self.names, self.colours)):
            entry: dict[str, Any] = {"name": name, "color": list(colour)}
            if self.frequencies is not None:
                entry["frequency"] = float(self.frequencies[i])
            classes.append(entry)
        return {"kind": self.kind, "source": self.source, "classes": classes}

    @classmethod
    def from_dict(cls, data: Any, where: str = "palette") -> Palette:
        """Inverse of ``to_dict``; any malformed content is one UserError line naming ``where``."""
        names, colours = _parse_classes(data, where)
        kind = data.get("kind", "file")
        if kind not in PALETTE_KINDS:
            raise UserError(f"{where}: unknown palette kind {kind!r} (expected one of {', '.join(PALETTE_KINDS)})")
        frequencies = [entry.get("frequency") for entry in data["classes"]]
        if all(isinstance(f, int | float) and not isinstance(f, bool) for f in frequencies):
            freq: tuple[float, ...] | None = tuple(float(f) for f in frequencies)
        else:
            freq = None
        return cls(names, colours, str(data.get("source") or where), kind, freq)

    def describe(self) -> str:
        """A small table: index, name, colour, share."""
        lines = [f"palette: {len(self.names)} classes, {self.kind} (from {self.source})"]
        for i, (name, colour) in enumerate(zip(self.names, self.colours)):
            share = f"{100 * self.frequencies[i]:6.2f} %" if self.frequencies is not None else ""
            lines.append(f"  {i:>2}  {name:<20} {_hex(colour)}  {str(list(colour)):<16}{share}")
        return "\n".join(lines)


def _parse_classes(data: Any, where: str) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    classes = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(classes, list) or len(classes) < 2:
        raise UserError(f"{where}: needs a 'classes' list with at least two classes; {_HINT}")
    if len(classes) > 255:
        raise UserError(f"{where}: {len(classes)} classes; at most 255 fit a one-band map")
    names, colours = [], []
    for i, entry in enumerate(classes):
        name = entry.get("name") if isinstance(entry, dict) else None
        colour = entry.get("color") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise UserError(f"{where}: class #{i + 1} has no 'name'; {_HINT}")
        if (
            not isinstance(colour, list)
            or len(colour) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)
        ):
            raise UserError(f"{where}: class {name!r} needs 'color': [r, g, b] with integers 0-255")
        names.append(name)
        colours.append(tuple(colour))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"{where}: class names must be unique ({', '.join(duplicates)} repeated)")
    return tuple(names), tuple(colours)  # type: ignore[return-value]


def load_palette(spec: str, option: str = "--palette") -> Palette:
    """``synthetic`` (the built-in synthetic world's palette) or a JSON file {"classes": [{"name", "color"}]}."""
    if spec == "synthetic":
        from geo_sat2map.synthetic import PALETTE

        return Palette(tuple(PALETTE), tuple(PALETTE.values()), "synthetic")
    path = Path(spec)
    where = f"{option} {spec}"
    if not path.is_file():
        raise UserError(f"{where}: no such file (give a palette JSON file or 'synthetic')")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{where}: not valid JSON ({exc}); {_HINT}") from None
    names, colours = _parse_classes(data, where)
    return Palette(names, colours, str(path))


# --- colour science -------------------------------------------------------------------------------------------

_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB 0-255 -> (..., 3) CIELAB (D65), float64."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _WHITE_D65
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_lab``, rounded and clipped to uint8."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * _WHITE_D65
    linear = np.clip(xyz @ np.linalg.inv(_SRGB_TO_XYZ).T, 0.0, 1.0)
    c = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8)


# --- learning -------------------------------------------------------------------------------------------------


class PaletteLearner:
    """Feed map pixels (``add``), then ``result()``: the palette as the module docstring describes.

    Keeps a uniform reservoir sample of at most ``sample_size`` pixels of everything added, so memory is bounded
    and the result is the same for the same pixels in the same order and seed."""

    def __init__(self, seed: int = 0, sample_size: int = SAMPLE_SIZE) -> None:
        self.seed, self.sample_size = seed, sample_size
        self._rng = np.random.default_rng(seed)
        self._sample = np.empty((sample_size, 4), dtype=np.uint8)  # R, G, B and 1 where the pixel is flat
        self.seen = 0  # pixels added so far

    def add(self, rgb: np.ndarray, valid: np.ndarray | None = None) -> None:
        """(3, H, W) uint8 map pixels; ``valid`` (H, W) True where the map has data."""
        with_flat = np.concatenate([rgb, flat_pixels(rgb)[None].astype(np.uint8)])
        pixels = with_flat.reshape(4, -1).T if valid is None else with_flat[:, valid].T
        fill = min(max(self.sample_size - self.seen, 0), len(pixels))
        self._sample[self.seen:self.seen + fill] = pixels[:fill]
        rest = pixels[fill:]
        if len(rest):  # reservoir sampling (algorithm R), vectorised: pixel i replaces slot j < size w.p. size/(i+1)
            index = np.arange(self.seen + fill, self.seen + len(pixels), dtype=np.float64)
            slots = np.floor(self._rng.random(len(rest)) * (index + 1)).astype(np.int64)
            keep = slots < self.sample_size
            self._sample[slots[keep]] = rest[keep]
        self.seen += len(pixels)

    @property
    def sample(self) -> np.ndarray:
        """(N, 3) uint8 sampled pixels."""
        return self._sample[:min(self.seen, self.sample_size), :3]

    @property
    def flat_sample(self) -> np.ndarray:
        """The sampled pixels inside regions (see the module docstring); all of them when few are."""
        sample = self._sample[:min(self.seen, self.sample_size)]
        flat = sample[sample[:, 3] == 1, :3]
        return flat if len(flat) >= max(MAX_CLASSES, len(sample) // 10) else sample[:, :3]

    def result(self, named: Palette | None = None, source: str = "training maps") -> Palette | None:
        """The learned palette, or None when fewer than two colours were seen."""
        sample = self.sample
        if len(sample) == 0:
            return None
        colours, counts = np.unique(sample, axis=0, return_counts=True)
        shares = counts / counts.sum()
        exact = exact_colours(colours, shares)
        if exact is not None:
            kind, centres = "exact", exact
        else:
            kind, centres = "clustered", cluster_colours(self.flat_sample, self.seed)
        if len(centres) < 2:
            return None
        labels = nearest_index(sample, centres)
        frequencies = np.bincount(labels, minlength=len(centres)) / len(sample)
        order = sorted(range(len(centres)), key=lambda i: (-frequencies[i], tuple(centres[i])))
        centres, frequencies = centres[order], frequencies[order]
        names = class_names(centres, named)
        return Palette(names, tuple(tuple(int(v) for v in c) for c in centres), source, kind,
                       tuple(round(float(f), 6) for f in frequencies))


def flat_pixels(rgb: np.ndarray) -> np.ndarray:
    """(H, W) True where every channel is within ``FLAT_TOLERANCE`` of the pixel's 4 neighbours (edges: of those
    it has)."""
    values = rgb.astype(np.int16)
    steep = np.zeros(rgb.shape[1:], dtype=bool)
    for axis in (1, 2):
        jump = (np.abs(np.diff(values, axis=axis)) > FLAT_TOLERANCE).any(axis=0)
        before = [slice(None)] * 2
        after = [slice(None)] * 2
        before[axis - 1], after[axis - 1] = slice(None, -1), slice(1, None)
        steep[tuple(before)] |= jump
        steep[tuple(after)] |= jump
    return ~steep


def exact_colours(colours: np.ndarray, shares: np.ndarray) -> np.ndarray | None:
    """The exact palette of a flat map (see the module docstring), or None."""
    if len(colours) <= MAX_CLASSES:
        return colours
    main = shares >= EXACT_MIN_SHARE
    if main.sum() <= MAX_CLASSES and shares[main].sum() >= EXACT_COVERAGE:
        return colours[main]
    return None


def nearest_index(pixels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(N, 3) pixels -> index of the nearest of (K, 3) colours (Euclidean RGB, as the class assignment)."""
    from geo_sat2map.metrics import nearest_colour

    return nearest_colour(np.ascontiguousarray(pixels.T), colours)


def cluster_colours(sample: np.ndarray, seed: int = 0) -> np.ndarray:
    """(K, 3) uint8 cluster centres of (N, 3) uint8 pixels: k-means in CIELAB with the module's rule for k."""
    lab = rgb_to_lab(sample)
    rng = np.random.default_rng(seed)
    centres = _kmeans_pp(lab, min(MAX_CLASSES, len(np.unique(sample, axis=0))), rng)
    centres, labels = _lloyd(lab, centres)
    while True:
        counts = np.bincount(labels, minlength=len(centres))
        distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(centres)) * 1e9
        a, b = np.unravel_index(distance.argmin(), distance.shape)
        if len(centres) > 2 and distance[a, b] < MERGE_DELTA_E:
            merged = (centres[a] * counts[a] + centres[b] * counts[b]) / max(counts[a] + counts[b], 1)
            centres = np.delete(centres, b, axis=0)
            centres[a if a < b else a - 1] = merged
        elif len(centres) > 2 and counts.min() < MIN_CLUSTER_SHARE * len(lab):
            centres = np.delete(centres, counts.argmin(), axis=0)
        else:
            break
        centres, labels = _lloyd(lab, centres)
    rgb = lab_to_rgb(centres)
    distinct = np.unique(rgb, axis=0)
    return distinct if len(distinct) < len(rgb) else rgb


def _kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [points[rng.integers(len(points))]]
    nearest = ((points - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:
            break
        centres.append(points[rng.choice(len(points), p=nearest / total)])
        nearest = np.minimum(nearest, ((points - centres[-1]) ** 2).sum(axis=1))
    return np.array(centres)


def _assign(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    distance = (centres**2).sum(axis=1)[None] - 2 * points @ centres.T
    return distance.argmin(axis=1)


def _lloyd(points: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = _assign(points, centres)
    for _ in range(KMEANS_ITERATIONS):
        counts = np.bincount(labels, minlength=len(centres))
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, points)
        moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
        new_labels = _assign(points, moved)
        centres = moved
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return centres, labels


def class_names(colours: np.ndarray, named: Palette | None) -> tuple[str, ...]:
    """Each colour's name in ``named`` (its nearest named colour within ``MERGE_DELTA_E``), else ``class N``;
    a name is given once (to the closest colour)."""
    names = [f"class {i + 1}" for i in range(len(colours))]
    if named is None:
        return tuple(names)
    lab, named_lab = rgb_to_lab(colours), rgb_to_lab(named.colour_array())
    distance = np.linalg.norm(lab[:, None] - named_lab[None], axis=-1)
    named_done: set[int] = set()
    colour_done: set[int] = set()
    for flat in np.argsort(distance, axis=None, kind="stable"):
        i, j = (int(v) for v in np.unravel_index(flat, distance.shape))
        if distance[i, j] >= MERGE_DELTA_E:
            break
        if i not in colour_done and j not in named_done:
            names[i] = named.names[j]
            colour_done.add(i)
            named_done.add(j)
    return tuple(names)


def learn_palette(maps: Iterable[tuple[np.ndarray, np.ndarray | None]], seed: int = 0, named: Palette | None = None,
                  source: str = "training maps") -> Palette | None:
    """``PaletteLearner`` over (rgb, valid) map pieces."""
    learner = PaletteLearner(seed)
    for rgb, valid in maps:
        learner.add(rgb, valid)
    return learner.result(named, source)


# --- exports --------------------------------------------------------------------------------------------------

NODATA_INDEX = 255  # the mask's value in a class map of more than 15 classes (see nodata_index)
PACKED_BITS = (1, 2, 4, 8)  # bits a pixel of a one-band class map can be stored in (TIFF BitsPerSample)


def class_bits(count: int) -> int:
    """Bits a pixel of a class map of ``count`` classes is stored in: the fewest of ``PACKED_BITS`` that hold
    the classes and the nodata index (a 4-bit map is about half the size of an 8-bit one at fast DEFLATE levels)."""
    return next(bits for bits in PACKED_BITS if count + 1 <= 1 << bits)


def nodata_index(count: int) -> int:
    """The mask's value in a class map of ``count`` classes: the last value its bits hold (15 for 4-15 classes,
    255 beyond), so it never collides with a class and a packed map can store it."""
    return (1 << class_bits(count)) - 1


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def to_qml(palette: Palette) -> str:
    """A QGIS layer style: paletted renderer of band 1, value = class index, labelled with the class names."""
    from xml.sax.saxutils import quoteattr

    entries = "\n".join(
        f'        <paletteEntry value="{i}" color="{_hex(c)}" alpha="255" label={quoteattr(n)}/>'
        for i, (n, c) in enumerate(zip(palette.names, palette.colours))
    )
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.0" styleCategories="Symbology">\n'
        "  <pipe>\n"
        '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">\n'
        "      <rasterTransparency/>\n"
        "      <colorPalette>\n" + entries + "\n      </colorPalette>\n"
        "    </rasterrenderer>\n"
        "  </pipe>\n"
        "</qgis>\n"
    )


def to_clr(palette: Palette) -> str:
    """A colour map text file (``value R G B A label`` per line) that QGIS's paletted renderer loads."""
    lines = [f"# geo-sat2map palette ({palette.kind}, from {palette.source})"]
    lines += [f"{i} {c[0]} {c[1]} {c[2]} 255 {n}" for i, (n, c) in enumerate(zip(palette.names, palette.colours))]
    return "\n".join(lines) + "\n"


def to_json(palette: Palette) -> str:
    """The palette JSON ``evaluate --palette`` and ``translate --palette`` read (with kind and frequencies)."""
    return json.dumps(palette.to_dict(), indent=2) + "\n"


PALETTE_WRITERS = {".json": to_json, ".qml": to_qml, ".clr": to_clr}


def write_palette(palette: Palette, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``palette`` as ``.json``, ``.qml`` or ``.clr`` (by the suffix), atomically."""
    from geo_sat2map.atomic import atomic_output

    path = Path(path)
    writer = PALETTE_WRITERS.get(path.suffix.lower())
    if writer is None:
        raise UserError(f"{path}: unknown palette format; end the name in {', '.join(PALETTE_WRITERS)}")
    with atomic_output(path, overwrite=overwrite, what="palette") as tmp:
        Path(tmp).write_text(writer(palette), encoding="utf-8")
    return path


def checkpoint_palette(path: str | Path) -> Palette:
    """The palette stored in a generator checkpoint; a checkpoint without one is a UserError saying what to do."""
    from geo_sat2map.checkpoint import load_generator

    palette = load_generator(path, hash_file=False).meta.palette
    if palette is None:
        raise UserError(f"{path}: this checkpoint holds no palette (a public pix2pix file, or trained before "
                        "palettes were learned); give a palette JSON instead (translate --palette FILE)")
    return palette
