"""A map smaller than the stream that makes it: ``--bbox`` / ``--aoi`` runs translate the windows a box needs
(``WindowGrid.region``) and keep only the box, with pixels outside the AOI polygon masked (transparent RGBA, or
the nodata index of a one-band class map)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geo_sat2map.inference.engine import LevelEmitter, RowStyle

Footprint = Callable[[int, int], np.ndarray]  # (first map row, rows) -> (rows, width) bool: inside the AOI


@dataclass(frozen=True)
class Crop:
    """The map's pixels within the stream: rows [r0, r1) and columns [c0, c1); ``footprint`` masks the AOI."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    footprint: Footprint | None = None


class CroppedRows:
    """A map sink seen through a crop: takes the stream's full-width rows (``style``: RGBA, or one-band classes)
    in order from its first row, passes on the cropped rows (outside the AOI masked) and makes their overview rows
    itself, since the stream's overviews would be of the wider stream. ``crop`` None: every row, whole (a sink
    fed rows that come without overviews, e.g. re-read from parts)."""

    overview_levels = 0  # the engine makes none; see above

    def __init__(self, sink: Any, crop: Crop | None, style: RowStyle) -> None:
        self.sink, self.crop, self.style = sink, crop, style
        self.levels = LevelEmitter(lambda level, rows: sink.write_rows(level, rows.numpy()), sink.overview_levels,
                                   downsample=style.downsample)
        self._next = 0  # the stream row the next rows start at

    def write_rows(self, level: int, rows: np.ndarray) -> None:
        if level != 0:
            raise ValueError("CroppedRows takes full-resolution rows only")
        if self.crop is None:
            self.levels.rows(torch.from_numpy(rows))
            return
        start = self._next
        self._next += rows.shape[0]
        (r0, r1), (c0, c1) = self.crop.rows, self.crop.cols
        first, last = max(start, r0), min(self._next, r1)
        if last <= first:
            return
        kept = np.ascontiguousarray(rows[first - start:last - start, c0:c1])
        if self.crop.footprint is not None:
            kept[~self.crop.footprint(first - r0, last - first)] = self.style.masked
        self.levels.rows(torch.from_numpy(kept))

    def finish(self) -> None:
        """After the last rows: the overview rows still waiting for a partner row."""
        self.levels.finish()
