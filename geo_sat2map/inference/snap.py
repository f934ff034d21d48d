"""Crisp maps in the stream: finished RGBA rows -> palette classes -> majority filter -> the output's rows.

``SnapStage`` sits between the row assembler and the level emitter (``engine.RowMerger``). It gives every valid
pixel its nearest palette colour after blending (so snapping is as seamless as the blend), then runs
``passes`` majority filters of radius ``radius`` (``--min-region``). A filter pass can only finish a row once
``radius`` rows below it have arrived, so the stage holds ``halo = radius * passes`` rows back, and a band of
the scene (``windows.RowBand`` with that halo) computes ``halo`` rows of context above and below the rows it
owns: every output row is the one a single pass over the whole scene gives, whatever the split.

Outputs (``--format``): ``rgba`` (the palette colours, alpha from the mask), ``paletted`` and ``classes`` (one
uint8 band of class indices, the palette's ``nodata_index`` for the mask; the writer adds the colour table or
categories).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from geo_sat2map.errors import UserError
from geo_sat2map.inference.ops import majority_filter, snap_classes
from geo_sat2map.palette import Palette, load_palette, nodata_index

OUTPUT_FORMATS = ("rgba", "paletted", "classes")
DEFAULT_MIN_REGION = 8  # pixels: a 5x5 majority window (see majority_radius)
MAJORITY_PASSES = 2  # a second pass removes most of the disagreements the first one leaves on class edges

def majority_radius(min_region: int) -> int:
    """``--min-region N`` -> radius of the majority window: the smallest odd side s with s * s >= 2 N, so a
    compact region of fewer than N pixels is outvoted by its surroundings; 0 for N = 0 (no filter)."""
    if min_region <= 0:
        return 0
    side = math.ceil(math.sqrt(2 * min_region))
    side += 1 - side % 2
    return (side - 1) // 2


@dataclass(frozen=True)
class SnapSpec:
    """What translate does with a palette: snap to ``colours``, filter, and write ``output_format``."""

    colours: tuple[tuple[int, int, int], ...]
    names: tuple[str, ...] = ()
    min_region: int = DEFAULT_MIN_REGION
    output_format: str = "rgba"
    passes: int = MAJORITY_PASSES

    @property
    def radius(self) -> int:
        return majority_radius(self.min_region)

    @property
    def halo(self) -> int:
        """Rows of context a row needs on each side."""
        return self.radius * self.passes

    @property
    def one_band(self) -> bool:
        return self.output_format != "rgba"

    @property
    def nodata(self) -> int:
        """The mask's value in one-band output."""
        return nodata_index(len(self.colours))


class MajorityRows:
    """One streaming majority-filter pass: class rows in order -> the rows it can finish exactly.

    Rows above ``first_row`` are not given: unless it is 0 (the scene top), the first ``radius`` rows are
    context only and the pass starts emitting at ``first_row + radius``. Rows past ``height`` have no votes."""

    def __init__(self, radius: int, count: int, first_row: int, height: int) -> None:
        self.radius, self.count, self.height = radius, count, height
        self.next = first_row if first_row == 0 else first_row + radius  # next row to emit
        self.start = first_row  # scene row of buffer row 0
        self.classes: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None

    def push(self, row_off: int, classes: torch.Tensor, valid: torch.Tensor
             ) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        if self.classes is None:
            self.classes, self.valid, self.start = classes, valid, row_off
        else:
            if row_off != self.start + self.classes.shape[0]:
                raise ValueError(f"rows must arrive in order: expected {self.start + self.classes.shape[0]}, "
                                 f"got {row_off}")
            self.classes, self.valid = torch.cat([self.classes, classes]), torch.cat([self.valid, valid])
        end = self.start + self.classes.shape[0]
        last = end if end == self.height else end - self.radius  # rows [next, last) have all their context
        if last <= self.next:
            return None
        r = self.radius
        lo, hi = max(self.next - r, 0), min(last + r, self.height)
        out = majority_filter(self.classes[lo - self.start:hi - self.start], self.valid[lo - self.start:hi - self.start],
                              self.count, r, pad_top=lo - (self.next - r), pad_bottom=last + r - hi)
        result = (self.next, out, self.valid[self.next - self.start:last - self.start])
        keep = max(last - r, self.start)
        self.classes, self.valid = self.classes[keep - self.start:], self.valid[keep - self.start:]
        self.start, self.next = keep, last
        return result


class SnapStage:
    """Finished RGBA rows (in order, from ``first_row``) -> snapped, filtered output rows.

    ``keep_masked`` (a map resampled onto the scene's grid afterwards, ``DeviceRowAssembler.keep_colour``): masked
    pixels that windows covered keep the nearest class of their colour (RGBA: its palette colour under alpha 0;
    one band: the class itself), so a scene pixel whose nearest processing pixel is masked still gets a class.
    Pixels no window covered arrive as (0, 0, 0, 0) and stay masked."""

    def __init__(self, spec: SnapSpec, device: torch.device, first_row: int, height: int,
                 keep_masked: bool = False) -> None:
        self.spec, self.keep_masked = spec, keep_masked
        self.lut = torch.tensor(spec.colours, dtype=torch.uint8, device=device)
        self.passes: list[MajorityRows] = []
        for _ in range(spec.passes if spec.radius else 0):  # a pass's input starts where the previous one's output does
            self.passes.append(MajorityRows(spec.radius, len(spec.colours), first_row, height))
            first_row = self.passes[-1].next
        self._kept: torch.Tensor | None = None  # keep_masked: nearest classes (-1: no colour) of rows not yet out
        self._kept_start = 0  # the scene row of _kept's first row

    def push(self, row_off: int, rgba: torch.Tensor) -> tuple[int, torch.Tensor] | None:
        """(row_off, (n, W, 4) RGBA) -> (first row, output rows) of the rows this finishes, if any."""
        valid = rgba[..., 3] > 0
        classes = snap_classes(rgba, self.spec.colours)
        if self.keep_masked:
            kept = torch.where(valid | rgba[..., :3].ne(0).any(dim=-1), classes, -1)
            if self._kept is None:
                self._kept, self._kept_start = kept, row_off
            else:
                self._kept = torch.cat([self._kept, kept])
        step: tuple[int, torch.Tensor, torch.Tensor] | None = (row_off, classes, valid)
        for filter_pass in self.passes:
            step = filter_pass.push(*step)
            if step is None:
                return None
        start, classes, valid = step
        if not self.keep_masked:
            return start, self.render(classes, valid)
        stop = start + classes.shape[0]
        kept = self._kept[start - self._kept_start:stop - self._kept_start]
        self._kept, self._kept_start = self._kept[stop - self._kept_start:], stop
        classes = torch.where(valid, classes, kept)
        return start, self.render(classes.clamp(min=0), valid, classes >= 0)

    def render(self, classes: torch.Tensor, valid: torch.Tensor, coloured: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Class rows -> (n, W, 4) RGBA palette colours with alpha from ``valid``, or (n, W, 1) uint8 indices;
        pixels outside ``coloured`` (default: ``valid``) are 0 / the nodata index."""
        coloured = valid if coloured is None else coloured
        if self.spec.one_band:
            return torch.where(coloured, classes, self.spec.nodata).to(torch.uint8)[..., None]
        rgba = torch.zeros((*classes.shape, 4), dtype=torch.uint8, device=classes.device)
        rgba[..., :3] = self.lut[classes] * coloured[..., None]
        rgba[..., 3] = valid.to(torch.uint8) * 255
        return rgba


def check_snap_options(output_format: str, min_region: int) -> None:
    """The cheap checks, before anything is loaded."""
    if output_format not in OUTPUT_FORMATS:
        raise UserError(f"--format {output_format!r}: expected one of {', '.join(OUTPUT_FORMATS)}")
    if min_region < 0:
        raise UserError(f"--min-region {min_region}: must be 0 (off) or more pixels")


def resolve_snap(palette: str, min_region: int, output_format: str, learned: Palette | None,
                 weights: str | os.PathLike[str]) -> tuple[SnapSpec | None, str]:
    """(what translate does, why) for ``--palette auto|none|FILE`` and the checkpoint's ``learned`` palette.

    auto snaps to an exact learned palette; a one-band ``--format`` also takes a clustered one (it needs some
    palette). none never snaps. FILE snaps to that palette JSON."""
    if palette == "none":
        chosen, why = None, "--palette none"
    elif palette == "auto":
        if learned is not None and (learned.kind == "exact" or output_format != "rgba"):
            chosen, why = learned, f"the checkpoint's {learned.kind} palette"
        else:
            chosen = None
            why = (f"the checkpoint's palette is {learned.kind}, not exact" if learned is not None
                   else "the checkpoint has no palette")
    else:
        chosen = load_palette(palette)
        why = f"palette {palette}"
    if chosen is None:
        if output_format != "rgba":
            raise UserError(f"--format {output_format} needs a palette, but {why} ({weights}); give --palette FILE "
                            "(a palette JSON, e.g. written by `geo-sat2map palette`)")
        return None, f"not snapped: {why}"
    spec = SnapSpec(chosen.colours, chosen.names, min_region, output_format)
    return spec, f"snapped to {why} ({len(chosen.colours)} classes), min region {min_region} px " \
                 f"(majority {2 * spec.radius + 1}x{2 * spec.radius + 1}, {spec.passes if spec.radius else 0} passes)"
