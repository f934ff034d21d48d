"""The device engine against the numpy reference: values, masks, edges, one-window and odd-sized scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geo_sat2map.inference.engine import StreamEngine
from geo_sat2map.inference.ops import UnitScaler, downsample_rgba, fill_invalid, reflect_index
from geo_sat2map.raster_io.cog import level_sizes
from geo_sat2map.fill import fill_invalid as fill_reference
from geo_sat2map.models import build_generator, prepare_for_inference
from geo_sat2map.scaling import InputScaling, percentile_scaling
from geo_sat2map.windows import RowBand, WindowGrid

from .conftest import randomise
from .inference_oracle import reference_translate


@pytest.fixture(scope="module")
def model():
    return prepare_for_inference(randomise(build_generator("unet256", 8), seed=3), "instance")


def numpy_generator(model):
    def run(windows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(windows))).numpy()
    return run


def torch_generator(model):
    def run(windows: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(windows).float()
    return run


def run_engine(data, valid, grid, blend, scaling, model, batch_size=3, overview_levels=0, fixed_batch=False,
               device="cpu", band=None, background=False, snap=None):
    """Stream ``data`` through the engine exactly as translate does (new rows per window row); gather levels."""
    device = torch.device(device)
    levels: dict[int, list[np.ndarray]] = {}
    engine = StreamEngine(grid=grid, blend=blend, scaling=scaling, generator=torch_generator(model.to(device)),
                          device=device, batch_size=batch_size, overview_levels=overview_levels,
                          fixed_batch=fixed_batch, band=band, background=background, snap=snap, emit=lambda level, rows: levels.setdefault(
                              level, []).append(rows.cpu().numpy().copy()))
    raw = data.astype(np.int32) if data.dtype == np.uint16 else data
    band = band or RowBand.whole(grid)
    for row in range(band.process_from, band.process_end):
        start, stop = band.new_rows(row)
        engine.add_rows(torch.from_numpy(np.ascontiguousarray(raw[:, start:stop])).to(device), valid[start:stop],
                        torch.from_numpy(valid[start:stop]).to(device))
        engine.process_window_row(row)
    engine.finish()
    return {level: np.concatenate(chunks) for level, chunks in levels.items()}, engine


def scene(height, width, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([np.sin(xx / 9.0) + np.cos(yy / 7.0), np.cos((xx - yy) / 11.0), np.sin(xx * yy / 900.0)])
    top = 255 if dtype == np.uint8 else 4000
    return np.clip((base + 2) / 4 * top + rng.normal(0, top / 40, base.shape), 0, top).astype(dtype)


def holes(height, width, seed=0):
    rng = np.random.default_rng(seed)
    valid = np.ones((height, width), bool)
    valid[: height // 3, : width // 4] = False  # a no-data corner
    valid[rng.integers(0, height, 40), rng.integers(0, width, 40)] = False  # speckle
    return valid


CASES = [  # height, width, tile, overlap, blend
    (300, 500, 256, 64, "feather"),
    (256, 256, 256, 0, "feather"),  # exactly one window
    (100, 70, 256, 64, "hann"),  # smaller than one window: reflected several times
    (517, 263, 256, 96, "average"),  # odd sizes
    (700, 300, 256, 0, "feather"),
]


@pytest.mark.parametrize("height,width,tile,overlap,blend", CASES)
@pytest.mark.parametrize("masked", [False, True])
def test_engine_matches_the_numpy_reference_within_one_dn(model, height, width, tile, overlap, blend, masked):
    data = scene(height, width)
    valid = holes(height, width) if masked else np.ones((height, width), bool)
    grid = WindowGrid.build(height, width, tile, overlap, origin=(5, 17))
    scaling = InputScaling.uint8(3)
    expected = reference_translate(data, valid, grid, blend, scaling, numpy_generator(model))
    levels, engine = run_engine(data, valid, grid, blend, scaling, model)
    got = levels[0].transpose(2, 0, 1)
    assert got.shape == expected.shape
    assert np.array_equal(got[3], expected[3])  # the footprint is exact
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01
    assert engine.windows_run + engine.windows_skipped == len(grid)


def test_uint16_with_a_stretch_and_fixed_batches_match_the_reference(model):
    data = scene(333, 410, seed=4, dtype=np.uint16)
    valid = holes(333, 410, seed=4)
    scaling = percentile_scaling(data.astype(np.float64), valid)
    grid = WindowGrid.build(333, 410, 256, 64)
    expected = reference_translate(data, valid, grid, "feather", scaling, numpy_generator(model))
    levels, _ = run_engine(data, valid, grid, "feather", scaling, model, batch_size=4, fixed_batch=True)
    assert np.abs(levels[0].transpose(2, 0, 1).astype(int) - expected.astype(int)).max() <= 1


def test_windows_without_a_valid_pixel_are_not_run_and_stay_transparent(model):
    data = scene(300, 800)
    valid = np.ones((300, 800), bool)
    valid[:, 300:] = False
    grid = WindowGrid.build(300, 800, 256, 64)
    levels, engine = run_engine(data, valid, grid, "feather", InputScaling.uint8(3), model)
    assert engine.windows_skipped > 0
    assert not levels[0][:, 300:].any()


@pytest.mark.parametrize("overlap", [0, 64])
def test_merging_on_a_background_thread_gives_the_same_rows(model, overlap):
    data, valid = scene(520, 600, seed=9), holes(520, 600, seed=9)
    grid = WindowGrid.build(520, 600, 256, overlap)
    args = (data, valid, grid, "feather", InputScaling.uint8(3), model)
    inline, _ = run_engine(*args, batch_size=4, overview_levels=2)
    threaded, _ = run_engine(*args, batch_size=4, overview_levels=2, background=True)
    assert inline.keys() == threaded.keys()
    assert all(np.array_equal(inline[level], threaded[level]) for level in inline)


def test_a_failure_on_the_merge_thread_reaches_the_caller(model):
    data, valid = scene(300, 300), np.ones((300, 300), bool)
    grid = WindowGrid.build(300, 300, 256, 64)

    def broken(level, rows):
        raise OSError("disk full")

    engine = StreamEngine(grid=grid, blend="feather", scaling=InputScaling.uint8(3), generator=torch_generator(model),
                          device=torch.device("cpu"), batch_size=2, emit=broken, background=True)
    with pytest.raises(OSError, match="disk full"):
        for row in range(grid.shape[0]):
            start, stop = grid.new_rows(row)
            engine.add_rows(torch.from_numpy(np.ascontiguousarray(data[:, start:stop])), valid[start:stop],
                            torch.from_numpy(valid[start:stop]))
            engine.process_window_row(row)
        engine.finish()
    engine.abandon()


def test_batch_size_never_changes_results(model):
    data, valid = scene(400, 420, seed=2), holes(400, 420, seed=2)
    grid = WindowGrid.build(400, 420, 256, 64)
    one, _ = run_engine(data, valid, grid, "feather", InputScaling.uint8(3), model, batch_size=1)
    seven, _ = run_engine(data, valid, grid, "feather", InputScaling.uint8(3), model, batch_size=7, fixed_batch=True)
    diff = np.abs(one[0].astype(int) - seven[0].astype(int))  # convolution kernels differ by batch: float ulps
    assert np.array_equal(one[0][..., 3], seven[0][..., 3]) and diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_reflect_index_is_numpys_reflect_padding():
    for size in (1, 2, 5, 9):
        for before, after in ((0, 0), (3, 7), (20, 11)):
            expected = np.pad(np.arange(size), (before, after), mode="reflect")
            assert np.array_equal(reflect_index(-before, size + after, size), expected)


def test_fill_matches_the_numpy_push_pull(rng):
    data = rng.normal(size=(3, 37, 53)).astype(np.float32)
    valid = rng.random((37, 53)) > 0.7
    expected = fill_reference(data.copy(), valid)
    got = fill_invalid(torch.from_numpy(data), torch.from_numpy(valid)).numpy()
    assert np.allclose(got, expected, atol=1e-6)
    assert np.array_equal(got[:, valid], data[:, valid])


def test_scaling_matches_the_numpy_reference(rng):
    raw = rng.integers(0, 3000, (3, 20, 30)).astype(np.int32)
    scaling = InputScaling("percentile", (100.0, 200.0, 50.0), (2500.0, 2600.0, 50.0))  # a flat band too
    assert np.array_equal(UnitScaler(scaling, torch.device("cpu"))(torch.from_numpy(raw)).numpy(),
                          scaling.to_unit(raw))


def test_a_stretch_is_uploaded_once_per_run_not_per_window_row(model, monkeypatch):
    """A tensor made from host values per window row is a blocking copy from pageable memory on CUDA: the
    stretch constants must be made once, however many window rows the scene has."""
    made = []
    real_tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *args, **kwargs: made.append(1) or real_tensor(*args, **kwargs))
    counts = []
    for height in (200, 900):  # 1 and 5 window rows
        data = scene(height, 300, seed=6, dtype=np.uint16)
        valid = holes(height, 300, seed=6)
        scaling = percentile_scaling(data.astype(np.float64), valid)
        made.clear()
        run_engine(data, valid, WindowGrid.build(height, 300, 256, 64), "feather", scaling, model)
        counts.append(len(made))
    assert counts[0] == counts[1]


def test_overviews_are_alpha_weighted_means_with_gdal_sizes(model):
    data, valid = scene(300, 600, seed=5), holes(300, 600, seed=5)
    grid = WindowGrid.build(300, 600, 256, 64)
    levels, _ = run_engine(data, valid, grid, "feather", InputScaling.uint8(3), model, overview_levels=3)
    sizes = level_sizes(600, 300, 64)
    assert [levels[level].shape[:2] for level in range(4)] == [(h, w) for w, h in sizes[:4]]
    full = levels[0].astype(np.float64)
    block = full[:2, :2].reshape(4, 4)
    alpha = block[:, 3]
    if alpha.sum():
        expected = np.floor((block[:, :3] * alpha[:, None]).sum(0) / alpha.sum() + 0.5)
        assert np.array_equal(levels[1][0, 0, :3], expected)
    assert levels[1][0, 0, 3] == np.floor(alpha.mean() + 0.5)
    # a fully transparent block stays fully transparent; a fully valid one stays opaque
    assert np.array_equal(levels[1][..., 3] == 0, (levels[0][:-1:2, :-1:2, 3] == 0) & (levels[0][1::2, :-1:2, 3] == 0)
                          & (levels[0][:-1:2, 1::2, 3] == 0) & (levels[0][1::2, 1::2, 3] == 0))


def test_downsample_handles_odd_last_rows_and_columns():
    rows = torch.tensor([[[10, 20, 30, 255], [50, 60, 70, 255], [90, 90, 90, 0]],
                         [[30, 40, 50, 255], [70, 80, 90, 255], [99, 99, 99, 255]],
                         [[100, 100, 100, 255], [0, 0, 0, 0], [7, 7, 7, 255]]], dtype=torch.uint8)
    out = downsample_rgba(rows, last=True)
    assert out.shape == (2, 2, 4)
    assert out[0, 0].tolist() == [40, 50, 60, 255]
    assert out[0, 1].tolist() == [99, 99, 99, 128]  # one transparent, one opaque pixel: colour of the opaque one
    assert out[1, 0].tolist() == [100, 100, 100, 128]
    assert out[1, 1].tolist() == [7, 7, 7, 255]
    with pytest.raises(ValueError):
        downsample_rgba(rows)


@pytest.mark.parametrize("width", [8, 9])
def test_downsample_of_opaque_rows_is_the_rounded_block_mean_as_with_a_hole(width):
    """Opaque rows take an integer shortcut: it gives the 2x2 (2x1 in an odd last column) means rounded half up,
    the same bytes as the alpha-weighted path gives the blocks of rows that have one transparent pixel."""
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 256, (6, width, 4), dtype=np.uint8)
    rows[..., 3] = 255
    # an odd last column repeated: its 2x2 sum is twice its two pixels, so /4 is their mean
    padded = np.pad(rows[..., :3].astype(np.float64), ((0, 0), (0, width % 2), (0, 0)), mode="edge")
    expected = np.floor(padded.reshape(3, 2, -1, 2, 3).sum(axis=(1, 3)) / 4 + 0.5)
    opaque = downsample_rgba(torch.from_numpy(rows)).numpy()
    assert np.array_equal(opaque[..., :3], expected) and np.all(opaque[..., 3] == 255)
    holed = rows.copy()
    holed[0, 0, 3] = 0  # the general path; every block but the first keeps four opaque pixels
    general = downsample_rgba(torch.from_numpy(holed)).numpy()
    assert np.array_equal(general.reshape(-1, 4)[1:], opaque.reshape(-1, 4)[1:])


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_bands_of_window_rows_tile_the_output_exactly(model, parts):
    data, valid = scene(900, 300, seed=8), holes(900, 300, seed=8)
    grid = WindowGrid.build(900, 300, 256, 64)
    whole, _ = run_engine(data, valid, grid, "feather", InputScaling.uint8(3), model, batch_size=4, fixed_batch=True)
    bands = RowBand.split(grid, parts)
    assert bands[0].output_rows[0] == 0 and bands[-1].output_rows[1] == 900
    assert all(a.output_rows[1] == b.output_rows[0] for a, b in zip(bands, bands[1:]))
    pieces = [run_engine(data, valid, grid, "feather", InputScaling.uint8(3), model, batch_size=4, fixed_batch=True,
                         band=band)[0][0] for band in bands]
    assert np.array_equal(np.concatenate(pieces), whole[0])  # the same pixels, whatever the split
