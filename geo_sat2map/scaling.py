"""Input scaling: how raw band values map to the generator's [-1, 1] range.

One representation serves every case: per-band ``low``/``high`` so that
``x_norm = clip((x - low) / (high - low), 0, 1) * 2 - 1``. uint8 imagery uses low=0, high=255
(pix2pix's x/127.5 - 1); 16-bit or float imagery uses a per-band 2-98 % percentile stretch computed
once per scene (never per tile, which would create seams).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

UINT8_KIND = "uint8"
PERCENTILE_KIND = "percentile"


@dataclass(frozen=True)
class InputScaling:
    kind: str  # "uint8" or "percentile"
    low: tuple[float, ...]
    high: tuple[float, ...]
    percentiles: tuple[float, float] | None = field(default=None)

    @classmethod
    def uint8(cls, band_count: int = 3) -> InputScaling:
        return cls(UINT8_KIND, (0.0,) * band_count, (255.0,) * band_count)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputScaling:
        pct = data.get("percentiles")
        return cls(
            kind=str(data["kind"]),
            low=tuple(float(v) for v in data["low"]),
            high=tuple(float(v) for v in data["high"]),
            percentiles=tuple(float(v) for v in pct) if pct is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "low": list(self.low), "high": list(self.high)}
        if self.percentiles is not None:
            out["percentiles"] = list(self.percentiles)
        return out

    def describe(self) -> str:
        if self.kind == UINT8_KIND:
            return "uint8 x/127.5-1"
        ranges = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in zip(self.low, self.high))
        pct = f" ({self.percentiles[0]:g}-{self.percentiles[1]:g} %)" if self.percentiles else ""
        return f"per-band stretch{pct}: {ranges}"

    def _bounds(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        shape = (-1,) + (1,) * (ndim - 1)  # bands first
        low = np.asarray(self.low, dtype=np.float32).reshape(shape)
        span = np.asarray(self.high, dtype=np.float32).reshape(shape) - low
        return low, np.where(span > 0, span, np.float32(1.0))

    def to_unit(self, bands: np.ndarray) -> np.ndarray:
        """(bands, ...) raw values -> float32 in [-1, 1]. In place on one float32 copy: large strips stream."""
        unit = bands.astype(np.float32)
        if self.kind == UINT8_KIND:
            unit /= np.float32(127.5)
            unit -= np.float32(1.0)
            return unit
        low, span = self._bounds(bands.ndim)
        unit -= low
        unit /= span
        np.clip(unit, 0.0, 1.0, out=unit)
        unit *= np.float32(2.0)
        unit -= np.float32(1.0)
        return unit

    def to_uint8(self, bands: np.ndarray) -> np.ndarray:
        """(bands, ...) raw values -> uint8 0..255, the form training tiles are stored in."""
        if self.kind == UINT8_KIND:
            return np.clip(bands, 0, 255).astype(np.uint8)
        low, span = self._bounds(bands.ndim)
        unit = np.clip((bands.astype(np.float32) - low) / span, 0.0, 1.0)
        return np.rint(unit * 255.0).astype(np.uint8)


def percentile_scaling(
    samples: np.ndarray, valid: np.ndarray | None = None, percentiles: tuple[float, float] = (2.0, 98.0)
) -> InputScaling:
    """Per-band percentile stretch from a (bands, H, W) sample (a decimated read of the whole scene)."""
    lows, highs = [], []
    for b in range(samples.shape[0]):
        values = samples[b][valid] if valid is not None else samples[b].ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = (float(v) for v in np.percentile(values, percentiles))
            if hi <= lo:
                hi = lo + 1.0
        lows.append(lo)
        highs.append(hi)
    return InputScaling(PERCENTILE_KIND, tuple(lows), tuple(highs), percentiles)
