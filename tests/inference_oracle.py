"""The numpy reference for the device translate engine: the pre-GPU pipeline's arithmetic, window by window.

Reflection-pad each window row's strip, fill masked pixels (``fill.fill_invalid``), run the generator on every
window with a valid pixel, merge with ``windows.RowAssembler`` and quantise with ``windows.to_rgba``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from geo_sat2map.fill import fill_invalid
from geo_sat2map.metrics import nearest_colour
from geo_sat2map.scaling import InputScaling
from geo_sat2map.windows import RowAssembler, WindowGrid, to_rgba


def reference_translate(
    data: np.ndarray, valid: np.ndarray, grid: WindowGrid, blend: str, scaling: InputScaling,
    generator: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """(bands, H, W) raw data + (H, W) validity -> (4, H, W) RGBA uint8, via the numpy reference path."""
    tile = grid.tile
    first_col, end_col = grid.padded_cols
    assembler = RowAssembler(grid, blend)
    out = np.zeros((4, grid.height, grid.width), np.uint8)
    mask_end = 0
    for row in range(grid.shape[0]):
        top = grid.row_starts[row]
        r0, r1 = grid.rows_in_scene(row)
        pad = ((r0 - top, top + tile - r1), (-first_col, end_col - grid.width))
        strip = np.pad(data[:, r0:r1], ((0, 0), *pad), mode="reflect")
        strip = fill_invalid(scaling.to_unit(strip), np.pad(valid[r0:r1], pad, mode="reflect"))
        columns_valid = valid[r0:r1].any(axis=0)
        for col, left in enumerate(grid.col_starts):
            if columns_valid[max(left, 0):min(left + tile, grid.width)].any():
                window = strip[:, :, left - first_col:left - first_col + tile]
                assembler.add(row, col, generator(window[None])[0])
        assembler.add_mask(mask_end, valid[mask_end:r1])
        mask_end = r1
        released = assembler.release(row)
        if released is not None:
            row_off, values, rows_valid = released
            out[:, row_off:row_off + values.shape[1]] = to_rgba(values, rows_valid)
    return out


# --- palette snapping, majority filter and class overviews (the oracle of inference/snap.py and ops.py) ---------


def reference_majority(classes: np.ndarray, valid: np.ndarray, count: int, radius: int) -> np.ndarray:
    """Majority class of each pixel's (2r+1)^2 neighbourhood among valid pixels (outside the scene: none); the
    pixel's own class wins ties, else the lowest index."""
    height, width = classes.shape
    onehot = ((classes[None] == np.arange(count)[:, None, None]) & valid[None]).astype(np.int64)
    padded = np.pad(onehot, ((0, 0), (radius, radius), (radius, radius)))
    votes = np.zeros((count, height, width), np.float64)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            votes += padded[:, dy:dy + height, dx:dx + width]
    return (votes + 0.5 * onehot).argmax(axis=0)


def reference_snap(rgba: np.ndarray, colours: np.ndarray, radius: int, passes: int) -> tuple[np.ndarray, np.ndarray]:
    """(4, H, W) RGBA -> (classes (H, W), valid): nearest palette colour, then ``passes`` majority filters."""
    valid = rgba[3] > 0
    classes = nearest_colour(rgba[:3], colours)
    for _ in range(passes if radius else 0):
        classes = reference_majority(classes, valid, len(colours), radius)
    return classes, valid


def reference_class_overview(values: np.ndarray, count: int, nodata: int) -> np.ndarray:
    """(H, W) class indices (``nodata`` = masked) -> 2x2 modes (lowest index on ties), ``nodata`` if none valid."""
    height, width = values.shape
    out = np.full(((height + 1) // 2, (width + 1) // 2), nodata, np.uint8)
    for row in range(out.shape[0]):
        for col in range(out.shape[1]):
            block = values[2 * row:2 * row + 2, 2 * col:2 * col + 2].ravel()
            block = block[block != nodata]
            if block.size:
                out[row, col] = np.bincount(block, minlength=count).argmax()
    return out
