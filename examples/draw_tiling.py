"""Draw examples/tiling.png: the real window grid and feather weights of translate over a small scene.

    .venv/bin/python examples/draw_tiling.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from geo_sat2map.windows import WindowGrid, axis_weights

HEIGHT, WIDTH, TILE, OVERLAP = 600, 900, 256, 64


def main(out: Path = Path(__file__).with_name("tiling.png")) -> None:
    grid = WindowGrid.build(HEIGHT, WIDTH, TILE, OVERLAP)
    row_w = axis_weights(grid.row_starts, TILE, "feather")
    col_w = axis_weights(grid.col_starts, TILE, "feather")
    pad = TILE  # room for the reflection padding around the scene
    canvas_h, canvas_w = HEIGHT + 2 * pad, WIDTH + 2 * pad
    # Left panel: the weight of the *dominant* window at each pixel, so overlaps show as smooth fades.
    weight = np.zeros((canvas_h, canvas_w), np.float32)
    for r, r0 in enumerate(grid.row_starts):
        for c, c0 in enumerate(grid.col_starts):
            w = np.outer(row_w[r], col_w[c])
            ys, xs = slice(r0 + pad, r0 + pad + TILE), slice(c0 + pad, c0 + pad + TILE)
            weight[ys, xs] = np.maximum(weight[ys, xs], w)
    shade = (255 - 150 * weight).astype(np.uint8)
    img = Image.fromarray(np.stack([shade, shade, np.full_like(shade, 255)], -1)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for r0 in grid.row_starts:
        for c0 in grid.col_starts:
            draw.rectangle([c0 + pad, r0 + pad, c0 + pad + TILE - 1, r0 + pad + TILE - 1], outline=(40, 90, 200), width=2)
    draw.rectangle([pad, pad, pad + WIDTH - 1, pad + HEIGHT - 1], outline=(200, 30, 30), width=4)
    margin = min(min(grid.row_starts), min(grid.col_starts))
    img = img.crop((pad + margin - 20, pad + margin - 20, pad + WIDTH - margin + 20, pad + HEIGHT - margin + 60))
    draw = ImageDraw.Draw(img)
    draw.text(
        (10, img.height - 30),
        f"scene {WIDTH}x{HEIGHT} (red), {len(grid)} windows of {TILE} px (blue), overlap {OVERLAP} px: "
        "darker = more weight (feather blend); outside red = reflection padding",
        fill=(0, 0, 0),
    )
    img.save(out)
    print(out)


if __name__ == "__main__":
    main()
