"""Window grid, blend weights, streaming assembly and masked-pixel filling (pure numpy)."""

import numpy as np
import pytest

from geo_sat2map.fill import fill_invalid
from geo_sat2map.windows import RowAssembler, WindowGrid, axis_starts, axis_weights, phase_step

AXES = [(256, 256, 0), (300, 256, 0), (1000, 256, 64), (1000, 256, 128), (257, 256, 64), (700, 512, 200),
        (100, 256, 64), (5, 256, 0), (1, 256, 128), (2000, 256, 192)]


@pytest.mark.parametrize("origin", [0, 37, -1000, 12345])
@pytest.mark.parametrize(("length", "tile", "overlap"), AXES)
def test_axis_windows_form_a_regular_aligned_lattice_covering_scene_and_margin(length, tile, overlap, origin):
    starts = axis_starts(length, tile, overlap, origin)
    margin = overlap // 2
    coverage = np.zeros(length, int)
    for start in starts:
        coverage[max(start, 0):min(start + tile, length)] += 1
        assert start < length and start + tile > 0, "a window entirely outside the scene"
    assert coverage.min() >= 1
    assert (np.diff(starts) == tile - overlap).all()  # neighbours share exactly `overlap` pixels
    before, after = -starts[0], starts[-1] + tile - length  # reflection padding at each end
    assert before >= margin and after >= margin
    if length + 2 * margin <= tile:
        assert len(starts) == 1 and abs(before - after) <= 1  # centred
    else:
        assert (origin + starts[0]) % phase_step(tile - overlap) == 0  # on the global phase lattice
        assert before - margin < tile - overlap + phase_step(tile - overlap)  # never a spare window
        assert after - margin < tile - overlap + phase_step(tile - overlap)


def test_crops_of_the_same_imagery_put_windows_on_the_same_phase():
    whole = axis_starts(2000, 256, 64, origin=500)
    crop = axis_starts(1500, 256, 64, origin=600)  # the same imagery without its first 100 pixels
    step = phase_step(256 - 64)
    assert step > 1
    phases = {(500 + s) % step for s in whole} | {(600 + s) % step for s in crop}
    assert phases == {0}


def test_one_tile_scene_without_overlap_is_exactly_one_window():
    assert axis_starts(256, 256, 0) == (0,)
    assert axis_starts(512, 256, 0) == (0, 256)


def test_axis_starts_rejects_impossible_overlap():
    with pytest.raises(ValueError):
        axis_starts(1000, 256, 256)


@pytest.mark.parametrize(("length", "tile", "overlap"), [(1000, 256, 64), (1000, 256, 128), (300, 256, 0)])
def test_feather_weights_are_a_partition_of_unity(length, tile, overlap):
    starts = axis_starts(length, tile, overlap)
    profiles = axis_weights(starts, tile, "feather")
    total = np.zeros(length + tile * 2)
    offset = tile
    for start, weights in zip(starts, profiles):
        assert (weights > 0).all()
        total[offset + start:offset + start + tile] += weights
    covered = total[offset + starts[0]:offset + starts[-1] + tile]
    np.testing.assert_allclose(covered, 1.0, atol=1e-6)


def test_single_window_weights_are_flat_for_feather_and_average():
    for blend in ("feather", "average"):
        (weights,) = axis_weights((0,), 256, blend)
        assert (weights == 1).all()
    (hann,) = axis_weights((0,), 256, "hann")
    assert hann.min() > 0 and hann[128] > 0.99 and hann[0] < 0.01


def _brute_force_blend(grid, outputs, blend):
    """Full-scene weighted mean, the reference for the streaming assembler."""
    rows, cols = axis_weights(grid.row_starts, grid.tile, blend), axis_weights(grid.col_starts, grid.tile, blend)
    pad = grid.tile
    sums = np.zeros((3, grid.height + 2 * pad, grid.width + 2 * pad))
    weights = np.zeros((grid.height + 2 * pad, grid.width + 2 * pad))
    for (r, c), values in outputs.items():
        top, left = grid.row_starts[r] + pad, grid.col_starts[c] + pad
        w = np.outer(rows[r], cols[c])
        sums[:, top:top + grid.tile, left:left + grid.tile] += values * w
        weights[top:top + grid.tile, left:left + grid.tile] += w
    sums, weights = sums[:, pad:-pad, pad:-pad], weights[pad:-pad, pad:-pad]
    return sums / weights


@pytest.mark.parametrize("blend", ["feather", "hann", "average"])
@pytest.mark.parametrize(("height", "width", "tile", "overlap"), [(700, 300, 128, 32), (90, 200, 128, 64),
                                                                  (515, 260, 128, 0)])
def test_streaming_assembly_equals_full_scene_blend_with_bounded_buffer(blend, height, width, tile, overlap):
    rng = np.random.default_rng(0)
    grid = WindowGrid.build(height, width, tile, overlap)
    outputs = {(r, c): rng.uniform(-1, 1, (3, tile, tile)).astype(np.float32)
               for r in range(grid.shape[0]) for c in range(grid.shape[1])}
    valid = rng.random((height, width)) > 0.1
    assembler = RowAssembler(grid, blend)
    pieces, masks, mask_end, max_buffer = [], [], 0, 0
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            assembler.add(r, c, outputs[r, c])
        max_buffer = max(max_buffer, assembler.buffered_rows)
        end = grid.rows_in_scene(r)[1]
        assembler.add_mask(mask_end, valid[mask_end:end])
        mask_end = end
        released = assembler.release(r)
        if released is not None:
            row_off, values, released_valid = released
            assert row_off == sum(p.shape[1] for p in pieces)
            pieces.append(values)
            masks.append(released_valid)
    assert assembler.released == height
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), _brute_force_blend(grid, outputs, blend), atol=1e-5)
    assert (np.concatenate(masks) == valid).all()
    assert max_buffer <= 2 * tile  # memory is a band of rows, whatever the scene height


def test_finished_rows_never_include_rows_a_later_window_touches():
    grid = WindowGrid.build(1000, 50, 256, 64)
    finished = [grid.finished_rows(r) for r in range(grid.shape[0])]
    assert finished == sorted(finished) and finished[-1] == 1000
    for r, done in enumerate(finished[:-1]):
        assert all(start >= done for start in grid.row_starts[r + 1:])


def test_assembler_refuses_windows_over_released_rows():
    grid = WindowGrid.build(600, 100, 256, 0)
    assembler = RowAssembler(grid)
    for c in range(grid.shape[1]):
        assembler.add(0, c, np.zeros((3, 256, 256), np.float32))
    assembler.add_mask(0, np.ones((256, 100), bool))
    assembler.release(0)
    with pytest.raises(ValueError):
        assembler.add(0, 0, np.zeros((3, 256, 256), np.float32))


def test_fill_keeps_valid_pixels_and_fills_holes_from_their_surroundings():
    rng = np.random.default_rng(1)
    data = np.empty((3, 64, 80), np.float32)
    data[:] = np.array([0.5, -0.25, 0.75], np.float32)[:, None, None]
    data[:, :, 40:] = -0.5  # two flat regions
    valid = np.ones((64, 80), bool)
    valid[10:30, 5:20] = False  # hole inside the left region
    valid[40:60, 60:75] = False  # hole inside the right region
    garbage = data.copy()
    garbage[:, ~valid] = rng.uniform(-1, 1, (3, int((~valid).sum())))
    filled = fill_invalid(garbage, valid)
    assert np.array_equal(filled[:, valid], data[:, valid])
    np.testing.assert_allclose(filled[:, 15:25, 8:17], data[:, 15:25, 8:17], atol=1e-6)
    np.testing.assert_allclose(filled[:, 45:55, 63:72], -0.5, atol=1e-6)


def test_fill_stays_within_the_valid_range_and_handles_edge_cases():
    rng = np.random.default_rng(2)
    data = rng.uniform(-0.3, 0.6, (3, 33, 47)).astype(np.float32)
    valid = np.zeros((33, 47), bool)
    valid[::7, ::5] = True  # sparse valid pixels, odd sizes
    filled = fill_invalid(np.where(valid, data, 99.0).astype(np.float32), valid)
    assert filled.min() >= data[:, valid].min() - 1e-6 and filled.max() <= data[:, valid].max() + 1e-6
    with_nan = np.where(valid, data, np.nan).astype(np.float32)
    np.testing.assert_array_equal(fill_invalid(with_nan, valid), filled)
    everything = np.ones((33, 47), bool)
    assert fill_invalid(data, everything) is data
    assert (fill_invalid(data, ~everything) == 0).all()
