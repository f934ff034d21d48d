"""Palette snapping, the majority filter (--min-region) and class overviews: device ops and the streamed stage
against the numpy oracle, across window rows, row bands and scene edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geo_sat2map.inference.ops import downsample_classes, majority_filter, snap_classes
from geo_sat2map.inference.snap import SnapSpec, majority_radius
from geo_sat2map.metrics import nearest_colour
from geo_sat2map.models import build_generator, prepare_for_inference
from geo_sat2map.palette import NODATA_INDEX, class_bits, nodata_index
from geo_sat2map.scaling import InputScaling
from geo_sat2map.windows import RowBand, WindowGrid

from .conftest import randomise
from .inference_oracle import reference_class_overview, reference_majority, reference_snap
from .test_inference_engine import holes, run_engine, scene

COLOURS = ((20, 30, 40), (200, 40, 60), (60, 190, 80), (90, 90, 220), (240, 240, 240), (128, 128, 128))


@pytest.fixture(scope="module")
def model():
    return prepare_for_inference(randomise(build_generator("unet256", 8), seed=3), "instance")


def test_snapping_equals_the_class_assignment_of_evaluate_ties_included():
    rng = np.random.default_rng(0)
    colours = np.array([[0, 0, 0], [2, 0, 0], [10, 10, 10], [255, 255, 255]], np.uint8)
    pixels = rng.integers(0, 256, (3, 40, 50), dtype=np.uint8)
    pixels[:, :5] = np.array([1, 0, 0], np.uint8)[:, None, None]  # equidistant from classes 0 and 1
    rgba = torch.from_numpy(np.concatenate([pixels, np.full((1, 40, 50), 255, np.uint8)]).transpose(1, 2, 0).copy())
    got = snap_classes(rgba, colours.tolist()).numpy()
    np.testing.assert_array_equal(got, nearest_colour(pixels, colours))
    assert (got[:5] == 0).all()


@pytest.mark.parametrize("radius", [1, 2, 3, 5, 7])  # up to 5: uint8 vote counts; 7 (a 15 px window): float32
def test_majority_filter_equals_the_oracle_with_masks_and_scene_edges(radius):
    rng = np.random.default_rng(radius)
    classes = rng.integers(0, 5, (37, 41))
    valid = rng.random((37, 41)) > 0.2
    expected = reference_majority(classes, valid, 5, radius)
    got = majority_filter(torch.from_numpy(classes), torch.from_numpy(valid), 5, radius, radius, radius)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_class_overviews_are_modes_of_valid_pixels_never_averages():
    rng = np.random.default_rng(4)
    values = rng.integers(0, 4, (13, 11)).astype(np.uint8)
    values[rng.random((13, 11)) < 0.3] = NODATA_INDEX
    values[:2, :2] = NODATA_INDEX  # a block with nothing valid stays nodata
    got = downsample_classes(torch.from_numpy(values)[..., None], 4, NODATA_INDEX, last=True)[..., 0].numpy()
    np.testing.assert_array_equal(got, reference_class_overview(values, 4, NODATA_INDEX))
    assert got[0, 0] == NODATA_INDEX


def test_the_nodata_index_is_the_last_value_of_the_fewest_bits_that_hold_the_classes():
    assert [(class_bits(n), nodata_index(n)) for n in (2, 3, 4, 15, 16, 32, 255)] == [
        (2, 3), (2, 3), (4, 15), (4, 15), (8, 255), (8, 255), (8, NODATA_INDEX)]


def test_min_region_maps_to_the_stated_window():
    assert [majority_radius(n) for n in (0, 1, 4, 5, 8, 12, 13, 24, 25)] == [0, 1, 1, 2, 2, 2, 3, 3, 4]


@pytest.mark.parametrize("output_format,min_region,overlap", [("rgba", 8, 64), ("classes", 2, 0), ("classes", 0, 64)])
def test_streamed_snapping_equals_the_oracle_on_the_whole_scene(model, output_format, min_region, overlap):
    """Rows leave the assembler a window row at a time; the snapped, filtered stream equals the oracle run on
    the whole unsnapped map (the engine's own output, so only the stage is tested)."""
    data, valid = scene(610, 300, seed=5), holes(610, 300, seed=5)
    grid = WindowGrid.build(610, 300, 256, overlap)
    args = (data, valid, grid, "feather", InputScaling.uint8(3), model)
    raw, _ = run_engine(*args, batch_size=4, fixed_batch=True)
    spec = SnapSpec(COLOURS, min_region=min_region, output_format=output_format)
    snapped, _ = run_engine(*args, batch_size=4, fixed_batch=True, snap=spec, overview_levels=2)
    classes, mask = reference_snap(raw[0].transpose(2, 0, 1), np.array(COLOURS, np.uint8), spec.radius, spec.passes)
    if output_format == "classes":
        nodata = nodata_index(len(COLOURS))
        expected = np.where(mask, classes, nodata).astype(np.uint8)
        np.testing.assert_array_equal(snapped[0][..., 0], expected)
        np.testing.assert_array_equal(snapped[1][..., 0], reference_class_overview(expected, len(COLOURS), nodata))
    else:
        expected = np.array(COLOURS, np.uint8)[classes] * mask[..., None]
        np.testing.assert_array_equal(snapped[0][..., :3], expected)
        np.testing.assert_array_equal(snapped[0][..., 3], raw[0][..., 3])
    if min_region:  # the filter really changed something on this noisy map
        assert (classes != nearest_colour(raw[0].transpose(2, 0, 1)[:3], np.array(COLOURS, np.uint8)))[mask].any()


@pytest.mark.parametrize("overlap,parts", [(64, 3), (192, 2)])
def test_bands_with_a_halo_give_the_rows_of_one_pass(model, overlap, parts):
    """Each band runs the window rows its halo needs and keeps only its own rows: pixel-identical to one pass."""
    data, valid = scene(700, 260, seed=6), holes(700, 260, seed=6)
    grid = WindowGrid.build(700, 260, 256, overlap)
    spec = SnapSpec(COLOURS, min_region=12, output_format="classes")
    args = (data, valid, grid, "feather", InputScaling.uint8(3), model)
    whole, _ = run_engine(*args, batch_size=4, fixed_batch=True, snap=spec)
    bands = RowBand.split(grid, parts, halo=spec.halo)
    assert len(bands) == parts
    pieces = [run_engine(*args, batch_size=4, fixed_batch=True, snap=spec, band=band)[0][0] for band in bands]
    for band, piece in zip(bands, pieces):
        assert piece.shape[0] == band.output_rows[1] - band.output_rows[0]
    np.testing.assert_array_equal(np.concatenate(pieces), whole[0])


@pytest.mark.cuda
def test_snapping_and_the_filter_on_cuda_equal_the_cpu_oracle():
    """On the GPU the stage must give the same classes (exact integer votes, no TF32 matmul)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(9)
    rgba = np.concatenate([rng.integers(0, 256, (3, 300, 410), dtype=np.uint8),
                           np.where(rng.random((1, 300, 410)) > 0.1, 255, 0).astype(np.uint8)])
    colours = np.array(COLOURS, np.uint8)
    classes = snap_classes(torch.from_numpy(rgba.transpose(1, 2, 0).copy()).cuda(), colours.tolist())
    filtered = majority_filter(classes, torch.from_numpy(rgba[3] > 0).cuda(), len(colours), 2, 2, 2)
    expected, _ = reference_snap(rgba, colours, radius=2, passes=1)
    np.testing.assert_array_equal(filtered.cpu().numpy(), expected)
