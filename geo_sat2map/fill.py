"""Filling invalid (masked) pixels before they reach the generator (pure numpy).

A convolutional generator mixes every pixel with its neighbours, so whatever sits under the nodata area
(zeros, sensor garbage) leaks into valid pixels near the footprint edge and into per-tile normalisation
statistics. Push-pull filling replaces invalid pixels by a smooth extension of the nearby valid ones:
average the valid pixels down a 2x pyramid until every cell has data, then pull the coarse values back up
into the holes. Valid pixels are never changed. Cost is linear in the number of pixels.
"""

from __future__ import annotations

import numpy as np


def _halve(array: np.ndarray) -> np.ndarray:
    """Sum 2x2 blocks over the last two axes (zero-padding odd sizes)."""
    height, width = array.shape[-2:]
    pad = [(0, 0)] * (array.ndim - 2) + [(0, height % 2), (0, width % 2)]
    if height % 2 or width % 2:
        array = np.pad(array, pad)
    h2, w2 = array.shape[-2] // 2, array.shape[-1] // 2
    return array.reshape(*array.shape[:-2], h2, 2, w2, 2).sum(axis=(-3, -1))


def _double(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour 2x upsampling over the last two axes, cropped to ``shape``."""
    return array.repeat(2, axis=-2).repeat(2, axis=-1)[..., : shape[0], : shape[1]]


def fill_invalid(data: np.ndarray, valid: np.ndarray, empty_value: float = 0.0) -> np.ndarray:
    """(bands, H, W) float data with invalid pixels (``valid`` False) replaced by push-pull fill.

    Returns ``data`` itself when every pixel is valid, and ``empty_value`` everywhere when none is.
    """
    if valid.all():
        return data
    if not valid.any():
        return np.full_like(data, empty_value)
    weight = valid.astype(np.float32)
    sums = np.where(valid, data, 0).astype(np.float32)  # never data * weight: NaN * 0 is NaN
    levels = [(sums, weight)]
    while not (levels[-1][1] > 0).all():
        sums, weight = _halve(sums), _halve(weight)
        levels.append((sums, weight))
    sums, weight = levels[-1]
    filled = sums / weight
    for sums, weight in reversed(levels[:-1]):
        coarse = _double(filled, weight.shape)
        trust = np.minimum(weight, 1.0)  # a cell with any valid pixel keeps its own mean
        mean = np.divide(sums, weight, out=np.zeros_like(sums), where=weight > 0)
        filled = mean * trust + coarse * (1.0 - trust)
    return np.where(valid, data, filled).astype(data.dtype, copy=False)
