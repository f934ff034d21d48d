"""The synthetic world: determinism, georeferencing of both renderings, and that map and satellite line up."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.enums import ColorInterp

from geo_sat2map.raster_io import open_raster, warped_onto
from geo_sat2map.raster_io.rasterize import rasterize_shapes
from geo_sat2map.synthetic import (
    MAP_CRS,
    PALETTE,
    SceneSpec,
    make_world,
    render_map,
    render_satellite,
    write_scene,
)

SPEC = SceneSpec(seed=7, width=384, height=320)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return SPEC, write_scene(out, SPEC)


def test_same_spec_gives_identical_rasters_and_another_seed_does_not():
    first, again = make_world(SPEC), make_world(SPEC)
    assert np.array_equal(render_satellite(first).data, render_satellite(again).data)
    assert np.array_equal(render_map(first).data, render_map(again).data)
    other = make_world(SceneSpec(seed=8, width=384, height=320))
    assert not np.array_equal(render_map(first).data, render_map(other).data)


def test_satellite_is_utm_rgb_on_the_spec_grid(scene):
    spec, paths = scene
    with rasterio.open(paths.satellite) as ds:
        assert ds.crs.to_epsg() == 32632
        assert ds.transform == spec.transform
        assert (ds.width, ds.height, ds.count, ds.dtypes[0]) == (384, 320, 3, "uint8")
        assert ds.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        data = ds.read()
    assert data.std() > 20  # textured, not flat


def test_map_is_web_mercator_at_another_resolution_and_covers_the_satellite(scene):
    spec, paths = scene
    with rasterio.open(paths.map) as ds:
        assert ds.crs.to_string() == MAP_CRS
        assert ds.res == (spec.map_resolution, spec.map_resolution)
        left, bottom, right, top = ds.bounds
        data = ds.read()
    lat = Transformer.from_crs(spec.crs, "EPSG:4326", always_xy=True).transform(*spec.origin)[1]
    ground = spec.map_resolution * math.cos(math.radians(lat))  # a mercator unit shrinks by cos(lat) on the ground
    assert abs(ground - spec.resolution) > 0.2
    to_map = Transformer.from_crs(spec.crs, MAP_CRS, always_xy=True)
    xs, ys = to_map.transform(*np.array([[b[0], b[1]] for b in _corners(spec.bounds)]).T)
    assert left <= xs.min() and xs.max() <= right and bottom <= ys.min() and ys.max() <= top

    colours = {tuple(c) for c in data.reshape(3, -1).T}
    assert colours <= set(PALETTE.values())  # flat palette: every pixel is exactly one class colour
    for name in ("land", "building", "minor_road", "major_road", "road_casing"):
        assert PALETTE[name] in colours


def test_map_and_satellite_agree_on_where_buildings_are(scene):
    spec, paths = scene
    world = make_world(spec)
    big = world.buildings[shapely.area(world.buildings) > 60]
    assert len(big) >= 10
    # Building interiors (1.5 m in from the walls) and their surroundings, burnt on the satellite grid.
    ids = np.arange(1, len(big) + 1)
    grid = ((spec.height, spec.width), spec.transform)
    interior_id = rasterize_shapes(zip(shapely.buffer(big, -1.5), ids), *grid, dtype="int32")
    near = rasterize_shapes(((b, 1) for b in shapely.buffer(world.buildings, 2.0)), *grid)
    interior = interior_id > 0

    with open_raster(paths.satellite) as sat, open_raster(paths.map) as map_ds:
        satellite = sat.read().astype(np.int16)
        with warped_onto(map_ds, sat.crs, sat.transform, sat.width, sat.height) as view:
            warped = view.read([1, 2, 3])
    is_building = np.all(warped == np.array(PALETTE["building"], np.uint8)[:, None, None], axis=0)
    assert is_building[interior].mean() > 0.98  # the reprojected map has buildings where the features are
    assert is_building[near == 0].mean() < 0.005  # and nowhere else

    # The satellite shows each building's roof there: mean colour inside close to that building's roof colour
    # (roof pitch shading, haze and noise stay within ~12 levels; a 2 px misregistration mixes in the ground).
    roof = world.building_roof[shapely.area(world.buildings) > 60]
    errors = [
        np.abs(satellite[:, interior_id == i + 1].mean(axis=1) - roof[i]).max()
        for i in range(len(big))
        if (interior_id == i + 1).any()
    ]
    assert len(errors) >= 10 and np.percentile(errors, 90) < 15


def test_clipped_corner_is_masked_not_painted_black(tmp_path):
    spec = SceneSpec(seed=3, width=256, height=256, clip_corner=True)
    paths = write_scene(tmp_path, spec)
    with rasterio.open(paths.satellite) as ds:
        mask = ds.dataset_mask() > 0
        assert ds.nodata is None  # the footprint comes from an internal mask
        data = ds.read()
    assert not mask[-1, 0] and mask[0, -1] and mask[-1, -1] and mask[0, 0]
    assert 0.02 < (~mask).mean() < 0.2
    assert (data[:, ~mask] == 0).all() and (data[:, mask].max(axis=0) > 0).all()


def test_write_scene_refuses_to_overwrite(tmp_path):
    spec = SceneSpec(seed=1, width=64, height=64)
    write_scene(tmp_path, spec)
    with pytest.raises(Exception, match="already exists"):
        write_scene(tmp_path, spec)
    write_scene(tmp_path, spec, overwrite=True)


def _corners(bounds):
    xmin, ymin, xmax, ymax = bounds
    return [(xmin, ymin), (xmin, ymax), (xmax, ymin), (xmax, ymax)]
