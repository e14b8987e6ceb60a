"""A labelled comparison grid: one row per prompt/seed, one column per model, readable at a glance.

Shared by training's validation grids, the model card's summary grid and anything else that shows models side by
side. Tiny models draw 32-64 px images, so tiles are enlarged (nearest neighbour: pixels stay honest, no
invented detail) and labels are drawn outside the images.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def labelled_grid(rows: Sequence[tuple[str, Sequence[Any]]], columns: Sequence[str], *, min_tile: int = 192,
                  label_width: int = 240, title: str | None = None) -> Any:
    """``rows`` = [(row label, [PIL image per column]), ...]; ``columns`` = column headings. Returns a PIL image."""
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("labelled_grid: no rows")
    width = max(im.width for _, ims in rows for im in ims)
    scale = max(1, -(-min_tile // width))
    tile = width * scale
    font, small = _font(16), _font(13)
    head = 30 + (26 if title else 0)
    gap = 4
    grid = Image.new("RGB", (label_width + len(columns) * (tile + gap), head + len(rows) * (tile + gap)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((8, 6), title, fill="black", font=font)
    for c, name in enumerate(columns):
        x = label_width + c * (tile + gap)
        draw.text((x + tile // 2, head - 14), name, fill="black", font=font, anchor="mm")
    chars = max(12, label_width // 8)
    for r, (label, images) in enumerate(rows):
        y = head + r * (tile + gap)
        lines = [ln for part in label.split("\n") for ln in textwrap.wrap(part, chars) or [""]]
        draw.multiline_text((8, y + 6), "\n".join(lines[: max(1, tile // 17)]), fill="black", font=small,
                            spacing=3)
        for c, im in enumerate(images):
            big = im.convert("RGB").resize((tile, tile), Image.NEAREST)
            grid.paste(big, (label_width + c * (tile + gap), y))
    return grid
