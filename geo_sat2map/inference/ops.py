"""Per-pixel window operations in torch (no I/O): the device half of ``translate``.

Each function mirrors a numpy reference that stays the test oracle: ``UnitScaler`` mirrors
``InputScaling.to_unit``, ``fill_invalid`` mirrors ``fill.fill_invalid``, ``reflect_index`` mirrors
``np.pad(mode="reflect")``, ``quantize_rgba`` mirrors ``windows.to_rgba`` and the overlap-add mirrors
``windows.RowAssembler``. The same code runs on CPU and GPU; nothing here reads a tensor back to the host, so
a CUDA stream never stalls on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from geo_sat2map.scaling import UINT8_KIND, InputScaling


def reflect_index(start: int, stop: int, size: int) -> np.ndarray:
    """Indices into ``range(size)`` for positions [start, stop), reflected at both ends as ``np.pad(mode="reflect")``
    does (repeatedly, for pads longer than the array): a triangle wave of period 2 * (size - 1)."""
    positions = np.arange(start, stop)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    folded = np.mod(positions, period)
    return np.where(folded >= size, period - folded, folded)


class UnitScaler:
    """(bands, ...) raw values on ``device`` -> float32 in [-1, 1]; same operations, in the same order, as
    ``InputScaling.to_unit``.

    A stretch's per-band constants are uploaded here, once: made per call, they would be a blocking copy from
    pageable host memory that stalls a CUDA stream once or twice per window row.
    """

    def __init__(self, scaling: InputScaling, device: torch.device) -> None:
        self.stretch: tuple[torch.Tensor, torch.Tensor] | None = None
        if scaling.kind != UINT8_KIND:
            low = torch.tensor(scaling.low, dtype=torch.float32)
            span = torch.tensor(scaling.high, dtype=torch.float32) - low
            span = torch.where(span > 0, span, torch.ones_like(span))
            self.stretch = low.to(device), span.to(device)

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        unit = raw.to(torch.float32)  # uint8, int32 or float32 raw rows: exact
        if self.stretch is None:
            return unit.div_(127.5).sub_(1.0)
        shape = (-1,) + (1,) * (raw.dim() - 1)
        low, span = (constant.reshape(shape) for constant in self.stretch)
        return unit.sub_(low).div_(span).clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)


def _halve(array: torch.Tensor) -> torch.Tensor:
    """Sum 2x2 blocks over the last two dims, zero-padding odd sizes."""
    height, width = array.shape[-2:]
    if height % 2 or width % 2:
        array = F.pad(array, (0, width % 2, 0, height % 2))
    h2, w2 = array.shape[-2] // 2, array.shape[-1] // 2
    return array.reshape(*array.shape[:-2], h2, 2, w2, 2).sum(dim=(-3, -1))


def _double(array: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling over the last two dims, cropped to ``shape``."""
    return array.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., : shape[0], : shape[1]]


def fill_invalid(data: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(bands, H, W) float data with invalid pixels replaced by push-pull fill (see ``geo_sat2map.fill``).

    The caller skips this when every pixel is valid and never calls it when none is (it knows from the host-side
    mask). The pyramid always runs to a single cell instead of stopping at the first fully covered level: the
    result is identical (covered cells trust their own mean completely) and no device->host read is needed.
    """
    weight = valid.to(torch.float32)
    sums = torch.where(valid, data, torch.zeros((), dtype=data.dtype, device=data.device))
    levels = [(sums, weight)]
    while max(levels[-1][1].shape[-2:]) > 1:
        sums, weight = _halve(sums), _halve(weight)
        levels.append((sums, weight))
    sums, weight = levels[-1]
    filled = sums / weight  # the whole strip's valid mean (the caller guarantees weight > 0 here)
    for sums, weight in reversed(levels[:-1]):
        coarse = _double(filled, tuple(weight.shape[-2:]))
        trust = weight.clamp(max=1.0)
        mean = torch.where(weight > 0, sums / weight.clamp(min=1.0), torch.zeros_like(sums))
        filled = mean * trust + coarse * (1.0 - trust)
    return torch.where(valid, data, filled)


def quantize_rgba(values: torch.Tensor, valid: torch.Tensor, coloured: torch.Tensor | None = None) -> torch.Tensor:
    """(3, H, W) generator-range floats (overwritten) and a validity mask -> (H, W, 4) pixel-interleaved RGBA
    uint8. Same rounding as ``windows.to_rgba`` (round half to even); masked pixels are 0 in every band, unless
    ``coloured`` says where colour is kept under a transparent alpha (an intermediate map resampled later)."""
    values.clamp_(-1.0, 1.0).add_(1.0).mul_(127.5).round_().mul_(valid if coloured is None else coloured)
    rgba = torch.empty((*valid.shape, 4), dtype=torch.uint8, device=values.device)
    rgba[..., :3].copy_(values.permute(1, 2, 0))
    rgba[..., 3] = valid
    rgba[..., 3] *= 255
    return rgba


def downsample_rgba(rows: torch.Tensor, last: bool = False) -> torch.Tensor:
    """Alpha-weighted 2x2 average of (2k [+1 if last], W, 4) RGBA uint8 rows -> (k [+1], ceil(W/2), 4).

    Colour is the alpha-weighted mean (transparent pixels do not darken the edge), alpha the plain mean of the
    pixels that exist (``avg_pool2d`` with ``ceil_mode`` averages an odd last row or column over the pixels
    it has), rounded half up as GDAL's average resampling does. ``last``: an odd final row is averaged alone.
    """
    if rows.shape[0] % 2 and not last:
        raise ValueError("an odd number of rows can only be downsampled at the end of the image")
    # Opaque rows (most of a scene) reduce to integer means, equal to the float path's bits. Checked on the CPU
    # only: the check would stall a CUDA merge thread on the device.
    if rows.device.type == "cpu" and rows.shape[0] % 2 == 0 and bool((rows[..., 3] == 255).all()):
        return _downsample_opaque(rows)
    planes = rows.permute(2, 0, 1).to(torch.float32)
    alpha = planes[3:]
    pooled = F.avg_pool2d(torch.cat([planes[:3] * alpha, alpha])[None], 2, 2, ceil_mode=True)[0]
    mean_alpha = pooled[3:]
    colour = torch.where(mean_alpha > 0, pooled[:3] / mean_alpha.clamp(min=1e-30), 0.0)
    out = torch.cat([colour, mean_alpha]).add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)
    return out.permute(1, 2, 0).contiguous()


def _downsample_opaque(rows: torch.Tensor) -> torch.Tensor:
    """``downsample_rgba`` of (2k, W, 4) rows whose alpha is 255 everywhere: each 2x2 (2x1 in an odd last column)
    mean rounded half up, in int16, about 20x faster than the alpha-weighted float path on one CPU thread."""
    half = rows.shape[1] // 2
    vertical = rows[0::2].to(torch.int16) + rows[1::2]  # (k, W, 4) sums of row pairs
    out = torch.empty((vertical.shape[0], (rows.shape[1] + 1) // 2, 4), dtype=torch.uint8, device=rows.device)
    out[:, :half] = (vertical[:, 0:2 * half:2] + vertical[:, 1:2 * half:2]).add_(2).bitwise_right_shift_(2)
    if rows.shape[1] % 2:
        out[:, half] = vertical[:, -1].add(1).bitwise_right_shift_(1)
    return out


# --- map palettes: nearest colour, majority filter, class overviews (numpy oracles in tests/inference_oracle.py) --

_CHUNK_ELEMENTS = 1 << 24  # bounds the (rows, width, classes) temporaries of the palette ops


def _row_chunk(width: int, classes: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, width * classes))


def snap_classes(rgba: torch.Tensor, colours: Sequence[Sequence[int]]) -> torch.Tensor:
    """(n, W, 4 or 3) uint8 pixels -> (n, W) int64 index of the nearest of the K RGB integer ``colours``.

    Squared Euclidean RGB distance less the pixel's own |x|^2 (the same for every colour): |c|^2 - 2 x.c, built
    plane by plane in float32 (integers below 2^24, so exact on any device) with a running minimum over the
    colours, the first index winning ties: the same class as ``metrics.nearest_colour``. Three passes a colour
    over (n, W) planes: twice as fast on one CPU thread as distances over (n, W, K) and an argmin over K."""
    out = torch.empty(rgba.shape[:2], dtype=torch.int64, device=rgba.device)
    step = _row_chunk(rgba.shape[1], 8)
    for start in range(0, rgba.shape[0], step):
        red, green, blue = (rgba[start:start + step, :, channel].to(torch.float32) for channel in range(3))
        index = out[start:start + step]
        index.zero_()
        best: torch.Tensor | None = None
        for k, colour in enumerate(colours):
            r, g, b = (int(value) for value in colour)  # Python ints: uint8 squares would wrap
            score = (red * (-2.0 * r)).add_(float(r * r + g * g + b * b))
            score.add_(green, alpha=-2.0 * g).add_(blue, alpha=-2.0 * b)
            if best is None:
                best = score
            else:
                index.masked_fill_(score < best, k)
                torch.minimum(best, score, out=best)
    return out


def majority_filter(classes: torch.Tensor, valid: torch.Tensor, count: int, radius: int, pad_top: int = 0,
                    pad_bottom: int = 0) -> torch.Tensor:
    """Each pixel's majority class among the valid pixels of its (2r+1)^2 neighbourhood, its own class winning
    ties (else the lowest index). ``classes`` (h, W) int64 and ``valid`` (h, W) are the rows with their context;
    ``pad_top``/``pad_bottom`` rows beyond the scene (no votes) are added, columns beyond it have none either.
    Returns the (h + pad_top + pad_bottom - 2r, W) centre rows.

    Votes are counted exactly: as uint8 box sums of shifted one-hot planes (separable, 2 (2r+1) adds a pixel)
    while twice the largest count plus one fits, else in float32 by pooling."""
    kernel = 2 * radius + 1
    box_sum = _box_sum_uint8 if 2 * kernel * kernel + 1 <= 255 else _box_sum_float
    out_rows = classes.shape[0] + pad_top + pad_bottom - 2 * radius
    out = torch.empty((out_rows, classes.shape[1]), dtype=torch.int64, device=classes.device)
    index = torch.arange(count, device=classes.device)[:, None, None]
    step = _row_chunk(classes.shape[1], count)
    for start in range(0, out_rows, step):
        stop = min(start + step, out_rows)
        lo, hi = start - pad_top, stop + 2 * radius - pad_top  # input rows this chunk needs (may lie beyond)
        rows = slice(max(lo, 0), min(hi, classes.shape[0]))
        onehot = (classes[rows][None] == index) & valid[rows][None]
        onehot = F.pad(onehot.to(torch.uint8), (0, 0, max(-lo, 0), max(hi - classes.shape[0], 0)))
        # twice the votes plus one for the pixel's own class: its class wins a tie
        votes = box_sum(onehot, radius) * 2 + onehot[:, radius:radius + stop - start]
        out[start:stop] = first_argmax(votes)
    return out


def _box_sum_uint8(onehot: torch.Tensor, radius: int) -> torch.Tensor:
    """(K, h, W) uint8 0/1 planes -> (K, h - 2r, W) sums over each (2r+1)^2 window (zero columns beyond the
    edges): rows then columns, as shifted adds (the caller guarantees no overflow)."""
    kernel, rows, width = 2 * radius + 1, onehot.shape[1] - 2 * radius, onehot.shape[2]
    column_sums = onehot[:, 0:rows].clone()
    for shift in range(1, kernel):
        column_sums += onehot[:, shift:shift + rows]
    padded = F.pad(column_sums, (radius, radius))
    sums = padded[:, :, 0:width].clone()
    for shift in range(1, kernel):
        sums += padded[:, :, shift:shift + width]
    return sums


def _box_sum_float(onehot: torch.Tensor, radius: int) -> torch.Tensor:
    """``_box_sum_uint8`` for windows too large for uint8 counts: float32 pooling (small integers: exact)."""
    kernel = 2 * radius + 1
    return F.avg_pool2d(onehot.to(torch.float32)[None], kernel, stride=1, padding=(0, radius),
                        divisor_override=1)[0]


def first_argmax(values: torch.Tensor) -> torch.Tensor:
    """``values.argmax(dim=0)`` (the first index on ties) as a running maximum over the planes: on a CPU,
    ``argmax`` over the outermost dimension of (K, H, W) costs as much as the whole majority vote."""
    best, index = values[0].clone(), torch.zeros(values.shape[1:], dtype=torch.int64, device=values.device)
    for k in range(1, values.shape[0]):
        better = values[k] > best
        best = torch.maximum(best, values[k])
        index.masked_fill_(better, k)
    return index


def downsample_classes(rows: torch.Tensor, count: int, nodata: int, last: bool = False) -> torch.Tensor:
    """Mode of each 2x2 block of (2k [+1 if last], W, 1) uint8 class rows -> (k [+1], ceil(W/2), 1): the most
    frequent class among the block's valid pixels (lowest index on ties), ``nodata`` where none is valid.
    Classes are never averaged."""
    if rows.shape[0] % 2 and not last:
        raise ValueError("an odd number of rows can only be downsampled at the end of the image")
    values = rows[..., 0].to(torch.int64)
    onehot = (values[None] == torch.arange(count, device=rows.device)[:, None, None]).to(torch.float32)
    votes = F.avg_pool2d(onehot[None], 2, 2, ceil_mode=True, divisor_override=1)[0]
    out = torch.where(votes.amax(dim=0) > 0, first_argmax(votes), nodata)
    return out.to(torch.uint8)[..., None]
