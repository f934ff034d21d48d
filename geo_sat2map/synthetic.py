"""A synthetic world: one set of vector features rendered as satellite-like imagery and as a web-style map.

The features (shapely, in a UTM CRS, metres) are a road network with major and minor roads, blocks given a land
use (residential, commercial, park, forest, open land), building footprints with heights, lakes and a river, and
trees. They are rendered twice:

- ``render_satellite``: uint8 RGB in the UTM CRS at ~1 m, textured like an orthophoto (field stripes, lawn and
  canopy texture, roof colours per building with a sunny and a shaded pitch, water glint, shadows cast away from
  the sun by buildings and trees, sensor noise and a slight blur);
- ``render_map``: flat ``PALETTE`` colours in EPSG:3857 at a different resolution, like a web map tile (roads with
  a casing, buildings, water, parks, forest on a land background). Every map pixel is exactly one palette colour,
  so per-class scores against it are exact.

Everything is deterministic for a given ``SceneSpec`` (seed, size, origin, resolutions). A 2048 x 2048 pair
renders in a few seconds: shapes are burnt with GDAL's rasteriser and all texturing is vectorised numpy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.enums import ColorInterp
from shapely.geometry import LineString, Polygon, box

from geo_sat2map.atomic import atomic_output
from geo_sat2map.errors import UserError
from geo_sat2map.raster_io import write_geotiff
from geo_sat2map.raster_io.rasterize import rasterize_shapes

# Web-map palette (class name -> RGB), in drawing order. In the style of OpenStreetMap's standard layer, with
# each colour >= 30 levels away from every other in some channel, so that the nearest-colour class of a
# slightly soft prediction is still the intended one.
PALETTE: dict[str, tuple[int, int, int]] = {
    "land": (232, 228, 218),
    "forest": (157, 202, 138),
    "park": (205, 240, 185),
    "water": (160, 204, 228),
    "road_casing": (160, 150, 142),
    "minor_road": (255, 255, 255),
    "major_road": (248, 196, 128),
    "building": (204, 186, 170),
}
CLASS_INDEX = {name: i for i, name in enumerate(PALETTE)}

MAP_CRS = "EPSG:3857"
DEFAULT_CRS = "EPSG:32632"  # UTM 32N; the default origin lies on its central meridian at ~47.8 deg N
DEFAULT_ORIGIN = (500_000.0, 5_300_000.0)
MARGIN_M = 80.0  # features are made beyond the scene so that nothing stops at its edge

# Land-use codes of the blocks between roads.
OPEN, RESIDENTIAL, COMMERCIAL, PARK, FOREST = range(5)
# Road geometry (ground metres): carriageway width and the sidewalk/verge on each side (the map's casing).
ROAD_WIDTH = {"major": 13.0, "minor": 7.0}
SIDEWALK = {"major": 2.5, "minor": 2.0}


@dataclass(frozen=True)
class SceneSpec:
    """What defines a scene; the same spec always gives the same rasters.

    The seed and the size choose the layout (streets, blocks, buildings, water); ``origin`` only places it.
    """

    seed: int = 0
    width: int = 1024  # satellite pixels
    height: int = 1024
    resolution: float = 1.0  # satellite pixel size, metres
    crs: str = DEFAULT_CRS
    origin: tuple[float, float] = DEFAULT_ORIGIN  # upper-left corner (easting, northing) in ``crs``
    map_resolution: float = 1.0  # map pixel size in EPSG:3857 units (~0.67 m on the ground at 47.8 deg N)
    clip_corner: bool = False  # mark a triangle of the satellite as nodata (internal mask), like a scene edge

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16:
            raise UserError(f"synthetic scene size {self.width}x{self.height}: both sides must be >= 16 px")
        if self.resolution <= 0 or self.map_resolution <= 0:
            raise UserError("synthetic scene resolutions must be positive")

    @property
    def transform(self) -> Affine:
        return Affine(self.resolution, 0.0, self.origin[0], 0.0, -self.resolution, self.origin[1])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        x0, y1 = self.origin
        return (x0, y1 - self.height * self.resolution, x0 + self.width * self.resolution, y1)


@dataclass
class World:
    """The vector features of a scene, in ``spec.crs`` (metres)."""

    spec: SceneSpec
    angle: float  # street-grid orientation, radians
    sun_azimuth: float  # radians clockwise from north
    sun_elevation: float  # radians
    roads: dict[str, list[LineString]]  # "major"/"minor" centre lines
    blocks: list[Polygon]
    block_use: np.ndarray  # land-use code per block
    water: list[Polygon]
    buildings: np.ndarray  # shapely polygons
    building_height: np.ndarray
    building_roof: np.ndarray  # (n, 3) float roof colour
    building_pitched: np.ndarray  # bool: pitched (two-tone) roof
    trees: np.ndarray  # (n, 2) centres
    tree_radius: np.ndarray
    mask: Polygon | None = None  # valid footprint of the satellite when spec.clip_corner

    def polygons(self, use: int) -> list[Polygon]:
        return [b for b, u in zip(self.blocks, self.block_use) if u == use]


@dataclass(frozen=True)
class Rendered:
    """A rendered raster: uint8 (3, H, W) bands-first, its grid, and an optional validity mask."""

    data: np.ndarray
    crs: str
    transform: Affine
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class ScenePaths:
    satellite: Path
    map: Path


# --------------------------------------------------------------------------------------------------- world


def make_world(spec: SceneSpec) -> World:
    """Build the vector features of ``spec``'s scene (plus a margin) from its seed."""
    rng = np.random.default_rng([spec.seed, spec.width, spec.height])
    xmin, ymin, xmax, ymax = spec.bounds
    extent = box(xmin - MARGIN_M, ymin - MARGIN_M, xmax + MARGIN_M, ymax + MARGIN_M)
    centre = np.array([(xmin + xmax) / 2, (ymin + ymax) / 2])
    radius = math.hypot(xmax - xmin, ymax - ymin) / 2 + 2 * MARGIN_M
    angle = float(rng.uniform(-0.35, 0.35))
    frame = _Frame(centre, angle)

    water = _water(rng, frame, radius, extent)
    water_union = shapely.union_all(water) if water else Polygon()
    roads = _road_network(rng, frame, radius, extent, water_union)

    casings = [
        shapely.buffer(line, ROAD_WIDTH[kind] / 2 + SIDEWALK[kind] + 0.5) for kind in roads for line in roads[kind]
    ]
    free = extent.difference(shapely.union_all(casings + ([water_union] if water else [])))
    blocks = [p for p in shapely.get_parts(free) if p.area > 40.0]
    block_use = _land_use(rng, blocks, centre, radius)

    buildings, heights, roofs, pitched = _buildings(rng, frame, blocks, block_use)
    trees, tree_radius = _trees(rng, blocks, block_use, buildings)

    mask = None
    if spec.clip_corner:  # a diagonal cut through the lower-left corner, like the edge of a satellite pass
        cut = 0.35 * min(xmax - xmin, ymax - ymin)
        corner = Polygon([(xmin, ymin), (xmin + cut * 1.6, ymin), (xmin, ymin + cut)])
        mask = box(xmin, ymin, xmax, ymax).difference(corner)

    return World(
        spec=spec,
        angle=angle,
        sun_azimuth=float(rng.uniform(math.radians(140), math.radians(220))),
        sun_elevation=float(rng.uniform(math.radians(40), math.radians(60))),
        roads=roads,
        blocks=blocks,
        block_use=block_use,
        water=water,
        buildings=buildings,
        building_height=heights,
        building_roof=roofs,
        building_pitched=pitched,
        trees=trees,
        tree_radius=tree_radius,
        mask=mask,
    )


@dataclass(frozen=True)
class _Frame:
    """The street grid's rotated frame: (u, v) = rotation of (x, y) - centre by -angle."""

    centre: np.ndarray
    angle: float

    def to_world(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.centre[0] + u * c - v * s, self.centre[1] + u * s + v * c

    def to_frame(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = x - self.centre[0], y - self.centre[1]
        return dx * c + dy * s, -dx * s + dy * c

    def line(self, u: np.ndarray, v: np.ndarray) -> LineString:
        return LineString(np.column_stack(self.to_world(np.asarray(u, float), np.asarray(v, float))))


def _meander(
    rng: np.random.Generator, radius: float, amplitude: float, step: float = 8.0
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth wandering curve across the frame: (offset, along) samples."""
    along = np.arange(-radius, radius + step, step)
    offset = np.zeros_like(along)
    for _ in range(3):
        wavelength = rng.uniform(250, 900)
        offset += amplitude * rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * along / wavelength + rng.uniform(0, 2 * np.pi))
    return offset + rng.uniform(-0.4, 0.4) * radius, along


def _water(rng: np.random.Generator, frame: _Frame, radius: float, extent: Polygon) -> list[Polygon]:
    water: list[Polygon] = []
    if rng.random() < 0.6:  # a river running roughly across the grid
        offset, along = _meander(rng, radius, amplitude=60.0)
        river = frame.line(along, offset) if rng.random() < 0.5 else frame.line(offset, along)
        water.append(shapely.buffer(river, rng.uniform(12, 22)))
    for _ in range(rng.integers(1, 3)):  # lakes: radially wobbling blobs
        cx, cy = frame.to_world(*rng.uniform(-0.8 * radius, 0.8 * radius, 2))
        theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        wobble = sum(rng.uniform(-0.18, 0.18) * np.sin(k * theta + rng.uniform(0, 6)) for k in (2, 3, 5))
        r = rng.uniform(50, 140) * (1 + wobble)
        water.append(Polygon(np.column_stack([cx + r * np.cos(theta), cy + r * np.sin(theta)])))
    water = [w.intersection(extent) for w in water]
    return [p for w in water for p in shapely.get_parts(w) if p.area > 100]


def _road_network(
    rng: np.random.Generator, frame: _Frame, radius: float, extent: Polygon, water: Polygon
) -> dict[str, list[LineString]]:
    """A rotated grid of major roads, minor streets subdividing each major cell, and one winding major road."""
    spacing = rng.uniform(320, 460)
    u_major = np.arange(-radius + rng.uniform(0, spacing), radius, spacing)
    v_major = np.arange(-radius + rng.uniform(0, spacing), radius, spacing)
    major = [frame.line([u, u], [-radius, radius]) for u in u_major]
    major += [frame.line([-radius, radius], [v, v]) for v in v_major]
    if rng.random() < 0.7:
        offset, along = _meander(rng, radius, amplitude=90.0)
        major.append(frame.line(offset, along) if rng.random() < 0.5 else frame.line(along, offset))

    minor: list[LineString] = []
    u_edges = np.concatenate([[-radius], u_major, [radius]])
    v_edges = np.concatenate([[-radius], v_major, [radius]])
    for u0, u1 in zip(u_edges[:-1], u_edges[1:]):
        for v0, v1 in zip(v_edges[:-1], v_edges[1:]):
            row_step, col_step = rng.uniform(70, 120), rng.uniform(130, 230)
            for v in np.arange(v0 + row_step, v1 - row_step / 2, row_step):
                if rng.random() < 0.88:
                    minor.append(frame.line([u0, u1], [v, v]))
            for u in np.arange(u0 + col_step, u1 - col_step / 2, col_step):
                if rng.random() < 0.75:
                    minor.append(frame.line([u, u], [v0, v1]))

    lakes = shapely.union_all([p for p in shapely.get_parts(water) if p.area < 80_000]) if not water.is_empty else water
    def clip(lines: list[LineString], avoid: Polygon) -> list[LineString]:
        out = []
        for line in lines:
            part = line.intersection(extent)
            if not avoid.is_empty:
                part = part.difference(avoid.buffer(6.0))
            out += [p for p in shapely.get_parts(part) if p.length > 30]
        return out

    # Major roads bridge rivers but not lakes; minor streets stop at any water.
    return {"major": clip(major, lakes), "minor": clip(minor, water)}


def _land_use(rng: np.random.Generator, blocks: list[Polygon], centre: np.ndarray, radius: float) -> np.ndarray:
    """Dense (commercial, residential) near a few town centres, green or open land far from them."""
    towns = centre + rng.uniform(-0.6, 0.6, (int(rng.integers(1, 4)), 2)) * radius
    sigma = rng.uniform(0.45, 0.7) * radius
    cents = np.array([[p.centroid.x, p.centroid.y] for p in blocks]).reshape(-1, 2)
    d2 = ((cents[:, None, :] - towns[None]) ** 2).sum(-1)
    density = np.exp(-d2 / (2 * sigma**2)).max(axis=1) + rng.normal(0, 0.12, len(blocks))
    draw = rng.random(len(blocks))
    use = np.full(len(blocks), OPEN)
    use[density > 0.28] = RESIDENTIAL
    use[(density > 0.72) & (draw < 0.45)] = COMMERCIAL
    green = (density <= 0.28) & (draw < 0.45)
    use[green] = FOREST
    use[(density > 0.2) & (draw > 0.9)] = PARK
    areas = np.array([p.area for p in blocks])
    use[(areas < 400) & (use != FOREST)] = OPEN  # slivers between curved and straight roads
    return use


def _rectangles(frame: _Frame, cu: np.ndarray, cv: np.ndarray, wu: np.ndarray, wv: np.ndarray) -> np.ndarray:
    """Polygons of rectangles centred at (cu, cv) in the frame, sides wu x wv along its axes."""
    du = np.array([-0.5, 0.5, 0.5, -0.5, -0.5])
    dv = np.array([-0.5, -0.5, 0.5, 0.5, -0.5])
    u = cu[:, None] + wu[:, None] * du
    v = cv[:, None] + wv[:, None] * dv
    x, y = frame.to_world(u, v)
    return shapely.polygons(np.stack([x, y], axis=-1))


ROOF_COLOURS = np.array(
    [
        [168, 82, 58], [150, 70, 52], [186, 110, 80], [112, 112, 118], [82, 84, 92],
        [140, 104, 84], [196, 190, 180], [120, 96, 80], [160, 150, 140], [96, 70, 62],
    ],
    dtype=np.float32,
)
FLAT_ROOF_COLOURS = np.array(
    [[205, 205, 200], [178, 178, 176], [150, 152, 155], [220, 215, 205], [120, 125, 130]], dtype=np.float32
)


def _buildings(
    rng: np.random.Generator, frame: _Frame, blocks: list[Polygon], block_use: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Houses along the street edges of residential blocks; large flat-roofed buildings on commercial ones."""
    polys, heights, roofs, pitched = [], [], [], []
    for block, use in zip(blocks, block_use):
        if use not in (RESIDENTIAL, COMMERCIAL) or block.area < 400:
            continue
        setback = rng.uniform(3, 7) if use == RESIDENTIAL else rng.uniform(4, 10)
        inner = block.buffer(-setback)
        if inner.is_empty:
            continue
        xs, ys = np.asarray(block.exterior.coords).T
        us, vs = frame.to_frame(xs, ys)
        if use == RESIDENTIAL:
            step_u, step_v = rng.uniform(15, 24), rng.uniform(16, 24)
        else:
            step_u, step_v = rng.uniform(45, 80), rng.uniform(40, 70)
        gu = np.arange(us.min() + rng.uniform(0, step_u), us.max(), step_u)
        gv = np.arange(vs.min() + rng.uniform(0, step_v), vs.max(), step_v)
        cu, cv = (a.ravel() for a in np.meshgrid(gu, gv))
        if cu.size == 0:
            continue
        cu = cu + rng.uniform(-1.5, 1.5, cu.size)
        cv = cv + rng.uniform(-1.5, 1.5, cv.size)
        wu = rng.uniform(0.5, 0.8, cu.size) * step_u
        wv = rng.uniform(0.5, 0.8, cu.size) * step_v
        rects = _rectangles(frame, cu, cv, wu, wv)
        keep = shapely.contains(inner, rects) & (rng.random(cu.size) < 0.9)
        if use == RESIDENTIAL:  # houses face the street: leave the block's interior as back gardens
            keep &= shapely.distance(shapely.centroid(rects), block.exterior) < 30
        n = int(keep.sum())
        if n == 0:
            continue
        polys.append(rects[keep])
        if use == RESIDENTIAL:
            heights.append(rng.uniform(5, 10, n))
            roofs.append(ROOF_COLOURS[rng.integers(0, len(ROOF_COLOURS), n)] + rng.normal(0, 8, (n, 3)))
            pitched.append(np.ones(n, bool))
        else:
            heights.append(rng.uniform(10, 35, n))
            roofs.append(FLAT_ROOF_COLOURS[rng.integers(0, len(FLAT_ROOF_COLOURS), n)] + rng.normal(0, 6, (n, 3)))
            pitched.append(np.zeros(n, bool))
    if not polys:
        return np.array([], dtype=object), np.zeros(0), np.zeros((0, 3), np.float32), np.zeros(0, bool)
    return (
        np.concatenate(polys),
        np.concatenate(heights),
        np.clip(np.concatenate(roofs), 0, 255).astype(np.float32),
        np.concatenate(pitched),
    )


def _trees(
    rng: np.random.Generator, blocks: list[Polygon], block_use: np.ndarray, buildings: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Dense canopy in forests, scattered trees in parks, gardens and (a few) on open land."""
    density = {FOREST: 1 / 22.0, PARK: 1 / 260.0, RESIDENTIAL: 1 / 420.0, OPEN: 1 / 5000.0, COMMERCIAL: 1 / 3000.0}
    houses = shapely.STRtree(buildings) if len(buildings) else None
    centres, radii = [], []
    for block, use in zip(blocks, block_use):
        count = rng.poisson(block.area * density[int(use)])
        if count == 0:
            continue
        x0, y0, x1, y1 = block.bounds
        x = rng.uniform(x0, x1, count * 2)
        y = rng.uniform(y0, y1, count * 2)
        inside = shapely.contains_xy(block.buffer(-2.0), x, y)
        if use in (RESIDENTIAL, COMMERCIAL) and houses is not None:  # not on or right next to a house
            near, _ = houses.query(shapely.points(x, y), predicate="dwithin", distance=3.0)
            inside[near] = False
        x, y = x[inside][:count], y[inside][:count]
        centres.append(np.column_stack([x, y]))
        radii.append(rng.uniform(2.5, 4.5, x.size) if use == FOREST else rng.uniform(2.5, 6.0, x.size))
    if not centres:
        return np.zeros((0, 2)), np.zeros(0)
    return np.concatenate(centres), np.concatenate(radii)


# --------------------------------------------------------------------------------------------------- render


def render_satellite(world: World) -> Rendered:
    """Orthophoto-like uint8 RGB of ``world`` on its UTM grid."""
    spec = world.spec
    rng = np.random.default_rng([spec.seed, spec.width, spec.height, 1])
    shape = (spec.height, spec.width)
    transform = spec.transform
    # Pixel centres in metres from the upper-left corner (local coordinates keep float32 precise).
    x = ((np.arange(spec.width, dtype=np.float32) + 0.5) * np.float32(spec.resolution))[None, :]
    y = (-(np.arange(spec.height, dtype=np.float32) + 0.5) * np.float32(spec.resolution))[:, None]

    # Ground: each block textured by its land use.
    block_id = rasterize_shapes(((b, i + 1) for i, b in enumerate(world.blocks)), shape, transform, dtype="int32")
    uses = np.concatenate([[OPEN], world.block_use]).astype(np.uint8)
    use = uses[block_id]
    img = _ground(rng, world, block_id, use, x, y)

    water = rasterize_shapes(((w, 1) for w in world.water), shape, transform) > 0
    img[water] = _water_texture(rng, shape, x, y)[water]

    # Roads: verges/sidewalks, then carriageways (major over minor), bridges over rivers.
    road = rasterize_shapes(_road_shapes(world, casing=True) + _road_shapes(world, casing=False), shape, transform)
    grain = _value_noise(rng, shape, 6.0)[..., None] * 6 + rng.normal(0, 3, (*shape, 1)).astype(np.float32)
    road_colour = {1: (178, 172, 162), 2: (102, 102, 104), 3: (78, 78, 84)}
    for code, colour in road_colour.items():
        sel = road == code
        img[sel] = (np.asarray(colour, np.float32) + grain[sel])
    _lane_marks(world, img, road, x, y)

    # Shadows of buildings and trees fall away from the sun, on whatever is on the ground.
    shadow = rasterize_shapes(((s, 1) for s in _shadows(world)), shape, transform) > 0
    img[shadow] *= np.array([0.42, 0.45, 0.55], np.float32)

    _draw_trees(rng, world, img, shape, transform, x, y)
    _draw_roofs(world, img, shape, transform, x, y)

    # Sensor: slight haze, illumination drift, noise, optical blur.
    img = img * (1 + 0.04 * _value_noise(rng, shape, 180.0))[..., None] + np.array([6, 8, 12], np.float32)
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    img = _blur(img)
    data = np.clip(np.rint(img), 0, 255).astype(np.uint8).transpose(2, 0, 1)

    mask = None
    if world.mask is not None:
        mask = rasterize_shapes([(world.mask, 1)], shape, transform) > 0
        data[:, ~mask] = 0
    return Rendered(np.ascontiguousarray(data), spec.crs, transform, mask)


def _ground(
    rng: np.random.Generator, world: World, block_id: np.ndarray, use: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    shape = block_id.shape
    n = len(world.blocks) + 1
    low = _value_noise(rng, shape, 40.0)
    mid = _value_noise(rng, shape, 9.0)
    img = np.empty((*shape, 3), np.float32)

    # Open land: fields of one crop each, ploughed in stripes with a per-field direction.
    crops = np.array([[176, 160, 108], [112, 128, 70], [150, 118, 86], [160, 150, 100], [128, 140, 84]], np.float32)
    field_colour = crops[rng.integers(0, len(crops), n)] + rng.normal(0, 8, (n, 3)).astype(np.float32)
    field_angle = rng.uniform(0, np.pi, n).astype(np.float32)
    field_period = rng.uniform(3.0, 8.0, n).astype(np.float32)
    open_land = use == OPEN
    stripe = np.zeros(shape, np.float32)
    ids = block_id[open_land]
    xs, ys = np.broadcast_to(x, shape)[open_land], np.broadcast_to(y, shape)[open_land]
    along = xs * np.cos(field_angle[ids]) + ys * np.sin(field_angle[ids])
    stripe[open_land] = np.sin(2 * np.pi * along / field_period[ids])
    colour = {  # (land use) -> pixels' colours, computed on that use's pixels only
        OPEN: lambda sel: field_colour[block_id[sel]] * (1 + 0.06 * stripe[sel] + 0.05 * low[sel])[:, None],
        RESIDENTIAL: lambda sel: _mix((98, 124, 66), (132, 124, 96), 0.5 + 0.5 * low[sel])
        * (1 + 0.07 * mid[sel])[:, None],
        COMMERCIAL: lambda sel: _mix((150, 150, 146), (118, 118, 116), 0.5 + 0.5 * low[sel])
        * (1 + 0.03 * mid[sel])[:, None],
        PARK: lambda sel: _mix((92, 146, 58), (110, 156, 70), 0.5 + 0.5 * mid[sel]) * (1 + 0.04 * low[sel])[:, None],
        FOREST: lambda sel: _mix((42, 62, 36), (58, 76, 44), 0.5 + 0.5 * mid[sel]),
    }
    for code, paint in colour.items():
        sel = use == code
        img[sel] = paint(sel)
    return img


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0, 1)[..., None]
    return np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t


def _water_texture(rng: np.random.Generator, shape: tuple[int, int], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    depth = _mix((30, 62, 78), (46, 88, 96), 0.5 + 0.5 * _value_noise(rng, shape, 60.0))
    ripple = np.sin((x * 0.8 + y * 0.35) + 2.0 * _value_noise(rng, shape, 15.0))
    sparkle = _value_noise(rng, shape, 2.0)
    glint = np.clip((sparkle - 0.55) * 4, 0, 1) * np.clip(ripple, 0, 1)
    return depth * (1 + 0.05 * ripple)[..., None] + (110 * glint)[..., None]


def _road_shapes(world: World, casing: bool) -> list[tuple[Polygon, int]]:
    """Road polygons with codes 1 (verge/sidewalk), 2 (minor carriageway), 3 (major carriageway)."""
    shapes = []
    for kind in ("minor", "major"):
        half = ROAD_WIDTH[kind] / 2 + (SIDEWALK[kind] if casing else 0.0)
        code = 1 if casing else (2 if kind == "minor" else 3)
        shapes += [(shapely.buffer(line, half), code) for line in world.roads[kind]]
    return shapes


def _lane_marks(world: World, img: np.ndarray, road: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """Dashed white centre lines on the straight major roads of the grid."""
    frame_u = (x * math.cos(world.angle) + y * math.sin(world.angle))
    frame_v = (-x * math.sin(world.angle) + y * math.cos(world.angle))
    major = road == 3
    on_line = np.zeros_like(major)
    spec = world.spec
    origin = np.array(spec.origin)
    for line in world.roads["major"]:
        coords = np.asarray(line.coords)
        if len(coords) != 2:
            continue
        (u0, v0), (u1, v1) = (
            _rotate(c - origin, world.angle) for c in coords
        )
        if abs(u1 - u0) < abs(v1 - v0):  # runs along v: constant u
            on_line |= (np.abs(frame_u - u0) < 0.5) & (np.mod(frame_v, 9.0) < 4.5)
        else:
            on_line |= (np.abs(frame_v - v0) < 0.5) & (np.mod(frame_u, 9.0) < 4.5)
    img[major & on_line] = (225, 225, 220)


def _rotate(point: np.ndarray, angle: float) -> tuple[float, float]:
    c, s = math.cos(angle), math.sin(angle)
    return point[0] * c + point[1] * s, -point[0] * s + point[1] * c


def _shadow_offset(world: World, height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    length = height / math.tan(world.sun_elevation)
    return -length * math.sin(world.sun_azimuth), -length * math.cos(world.sun_azimuth)


def _shadows(world: World) -> list[Polygon]:
    """Each building swept along the shadow direction (hull of footprint and its displaced copy); tree discs."""
    shadows = []
    if len(world.buildings):
        dx, dy = _shadow_offset(world, world.building_height)
        coords = shapely.get_coordinates(world.buildings).reshape(len(world.buildings), 5, 2)
        moved = coords + np.stack([dx, dy], -1)[:, None, :]
        hulls = shapely.convex_hull(shapely.multipoints(np.concatenate([coords, moved], axis=1)))
        shadows += list(hulls)
    if len(world.trees):
        dx, dy = _shadow_offset(world, 2.0 * world.tree_radius + 4.0)
        moved = shapely.points(world.trees + np.stack([dx, dy], -1))
        shadows += list(shapely.buffer(moved, world.tree_radius, quad_segs=4))
    return shadows


def _draw_trees(
    rng: np.random.Generator, world: World, img: np.ndarray, shape: tuple[int, int], transform: Affine,
    x: np.ndarray, y: np.ndarray,
) -> None:
    if not len(world.trees):
        return
    discs = shapely.buffer(shapely.points(world.trees), world.tree_radius, quad_segs=4)
    tree_id = rasterize_shapes(((d, i + 1) for i, d in enumerate(discs)), shape, transform, dtype="int32")
    sel = tree_id > 0
    ids = tree_id[sel] - 1
    origin = np.array(world.spec.origin, np.float32)
    cx = (world.trees[:, 0] - origin[0]).astype(np.float32)[ids]
    cy = (world.trees[:, 1] - origin[1]).astype(np.float32)[ids]
    r = world.tree_radius.astype(np.float32)[ids]
    xs = np.broadcast_to(x, shape)[sel]
    ys = np.broadcast_to(y, shape)[sel]
    dx, dy = (xs - cx) / r, (ys - cy) / r
    sun = np.array([math.sin(world.sun_azimuth), math.cos(world.sun_azimuth)], np.float32)
    dome = 0.75 + 0.35 * np.clip(1 - dx * dx - dy * dy, 0, 1) + 0.25 * (dx * sun[0] + dy * sun[1])
    n = len(world.trees)
    greens = np.array([[46, 78, 38], [60, 92, 44], [38, 66, 40], [72, 96, 50]], np.float32)
    tone = greens[rng.integers(0, len(greens), n)] + rng.normal(0, 5, (n, 3)).astype(np.float32)
    leaves = 1 + 0.18 * _value_noise(rng, shape, 1.5)[sel]
    img[sel] = tone[ids] * (dome * leaves)[:, None]


def _draw_roofs(
    world: World, img: np.ndarray, shape: tuple[int, int], transform: Affine, x: np.ndarray, y: np.ndarray
) -> None:
    if not len(world.buildings):
        return
    building_id = rasterize_shapes(((b, i + 1) for i, b in enumerate(world.buildings)), shape, transform, dtype="int32")
    sel = building_id > 0
    ids = building_id[sel] - 1
    colour = world.building_roof[ids]
    # Pitched roofs: the ridge runs along the longer side; the pitch facing the sun is brighter.
    origin = np.array(world.spec.origin)
    cent = shapely.get_coordinates(shapely.centroid(world.buildings)) - origin
    coords = shapely.get_coordinates(world.buildings).reshape(len(world.buildings), 5, 2)
    side_a = coords[:, 1] - coords[:, 0]
    side_b = coords[:, 2] - coords[:, 1]
    longer = np.where((np.hypot(*side_a.T) >= np.hypot(*side_b.T))[:, None], side_a, side_b)
    normal = np.stack([-longer[:, 1], longer[:, 0]], -1) / np.hypot(*longer.T)[:, None]
    xs = np.broadcast_to(x, shape)[sel]
    ys = np.broadcast_to(y, shape)[sel]
    across = (xs - cent[ids, 0]) * normal[ids, 0] + (ys - cent[ids, 1]) * normal[ids, 1]
    sun = np.array([math.sin(world.sun_azimuth), math.cos(world.sun_azimuth)])
    facing = np.sign(across) * np.sign((normal @ sun)[ids])
    shade = np.where(world.building_pitched[ids], 1 + 0.13 * facing, 1.0)
    ridge = world.building_pitched[ids] & (np.abs(across) < 0.6)
    shade = np.where(ridge, shade * 0.85, shade).astype(np.float32)
    img[sel] = colour * shade[:, None]
    # Parapets / eaves: a darker rim where the roof meets something else.
    rim = np.zeros(shape, bool)
    rim[1:, :] |= building_id[1:, :] != building_id[:-1, :]
    rim[:-1, :] |= building_id[:-1, :] != building_id[1:, :]
    rim[:, 1:] |= building_id[:, 1:] != building_id[:, :-1]
    rim[:, :-1] |= building_id[:, :-1] != building_id[:, 1:]
    img[rim & sel] *= 0.8


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth noise in about [-1, 1] with features ~``cell`` pixels: a random lattice, smoothstep-interpolated."""
    h, w = shape
    grid = rng.uniform(-1, 1, (int(h / cell) + 3, int(w / cell) + 3)).astype(np.float32)

    def axis(n: int) -> tuple[np.ndarray, np.ndarray]:
        t = (np.arange(n, dtype=np.float32) + 0.5) / cell
        i = np.floor(t).astype(np.intp)
        f = t - i
        return i, f * f * (3 - 2 * f)

    iy, fy = axis(h)
    ix, fx = axis(w)
    rows = grid[iy] * (1 - fy)[:, None] + grid[iy + 1] * fy[:, None]
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def _blur(img: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur along both axes (edge pixels replicated): the slight softness of real optics."""
    out = img.copy()
    out[1:-1] = 0.25 * img[:-2] + 0.5 * img[1:-1] + 0.25 * img[2:]
    tmp = out.copy()
    out[:, 1:-1] = 0.25 * tmp[:, :-2] + 0.5 * tmp[:, 1:-1] + 0.25 * tmp[:, 2:]
    return out


def map_grid(spec: SceneSpec) -> tuple[Affine, int, int]:
    """The EPSG:3857 grid that covers the satellite footprint, aligned to multiples of the map resolution."""
    to_map = Transformer.from_crs(spec.crs, MAP_CRS, always_xy=True)
    xmin, ymin, xmax, ymax = to_map.transform_bounds(*spec.bounds, densify_pts=21)
    res = spec.map_resolution
    left, top = math.floor(xmin / res) * res, math.ceil(ymax / res) * res
    width = math.ceil((xmax - left) / res)
    height = math.ceil((top - ymin) / res)
    return Affine(res, 0.0, left, 0.0, -res, top), width, height


def render_map(world: World) -> Rendered:
    """Flat-palette web-map rendering of ``world`` in EPSG:3857."""
    spec = world.spec
    transform, width, height = map_grid(spec)
    to_map = Transformer.from_crs(spec.crs, MAP_CRS, always_xy=True)

    def project(geoms) -> np.ndarray:
        def to_mercator(xy: np.ndarray) -> np.ndarray:
            return np.column_stack(to_map.transform(xy[:, 0], xy[:, 1]))

        return shapely.transform(np.asarray(geoms, dtype=object), to_mercator)

    layers: list[tuple[object, int]] = []
    for use, name in ((FOREST, "forest"), (PARK, "park")):
        layers += [(g, CLASS_INDEX[name]) for g in project(world.polygons(use))]
    layers += [(g, CLASS_INDEX["water"]) for g in project(world.water)]
    roads = _road_shapes(world, casing=True) + _road_shapes(world, casing=False)
    code_class = {1: "road_casing", 2: "minor_road", 3: "major_road"}
    if roads:
        projected = project([g for g, _ in roads])
        layers += [(g, CLASS_INDEX[code_class[code]]) for g, (_, code) in zip(projected, roads)]
    layers += [(g, CLASS_INDEX["building"]) for g in project(world.buildings)]
    classes = rasterize_shapes(layers, (height, width), transform, fill=CLASS_INDEX["land"])
    lut = np.array(list(PALETTE.values()), np.uint8)
    data = lut[classes].transpose(2, 0, 1)
    return Rendered(np.ascontiguousarray(data), MAP_CRS, transform)


# --------------------------------------------------------------------------------------------------- files


def write_rendered(path: str | os.PathLike[str], rendered: Rendered, overwrite: bool = False) -> Path:
    """Write a rendering as an RGB GeoTIFF (internal mask where it has one), atomically."""
    rgb = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    with atomic_output(path, overwrite=overwrite) as tmp:
        write_geotiff(
            tmp, rendered.data, rendered.crs, rendered.transform, mask=rendered.mask, colorinterp=rgb,
            photometric="RGB", predictor=2,
        )
    return Path(path)


def write_scene(
    out_dir: str | os.PathLike[str], spec: SceneSpec, *, overwrite: bool = False, prefix: str = ""
) -> ScenePaths:
    """Render ``spec`` and write ``{prefix}satellite.tif`` and ``{prefix}map.tif`` into ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(spec)
    satellite = write_rendered(out / f"{prefix}satellite.tif", render_satellite(world), overwrite)
    map_path = write_rendered(out / f"{prefix}map.tif", render_map(world), overwrite)
    return ScenePaths(satellite, map_path)
