"""PNG image grids: rows of images, no plotting library needed; bare, or with text labels (Pillow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

#: Grid pixels (before upscaling) between the blocks of a labelled grid: several times the 2 px
#: padding between rows, so that a block (one conditioning set, one stage) reads as one.
GAP = 8


def grid(rows: list[Tensor], pad: int = 2) -> np.ndarray:
    """Tile rows of images ``(n, C, H, W)`` in [0, 1] into one ``(H', W', 3)`` uint8 array."""
    rows = [r.detach().float().cpu().clamp(0, 1) for r in rows]
    rows = [r.expand(-1, 3, -1, -1) if r.size(1) == 1 else r for r in rows]
    n = max(r.size(0) for r in rows)
    h, w = rows[0].shape[-2:]
    canvas = torch.ones(3, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[:, y:y + h, x:x + w] = img
    return (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _image(rows: list[Tensor], scale: int) -> Image.Image:
    """:func:`grid` as an image, nearest-neighbour upscaled by ``scale`` (crisp pixels)."""
    img = Image.fromarray(grid(rows))
    return img if scale == 1 else img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def _save(img: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_grid(rows: list[Tensor], path: str | Path, scale: int = 2) -> Path:
    """Save :func:`grid` as a PNG (nearest-neighbour upscaled by ``scale``)."""
    return _save(_image(rows, scale), path)


def font(size: int = 14) -> ImageFont.ImageFont:
    """Pillow's built-in font: no font file to ship or find."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    """(width, height) of ``text``'s ink, to lay it out before drawing it."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def labelled_grid(blocks: Sequence[Sequence[tuple[str, Tensor]]], columns: Sequence[str] = (), corner: str = "",
                  scale: int = 2) -> Image.Image:
    """Blocks of ``(label, row)`` pairs: each block is its rows' :func:`grid` pixel for pixel
    (upscaled by ``scale``), the blocks stacked :data:`GAP` apart, each row's label in a margin on
    the left, and ``columns`` (one label a column, e.g. a chain's step) above the grid with
    ``corner`` above the row labels. The text scales with the images, so it stays legible. An
    empty block (e.g. no target to refine with one modality) is left out."""
    blocks = [block for block in blocks if block]
    if not blocks:
        raise ValueError("labelled_grid: no rows to draw")
    images = [_image([row for _, row in block], scale) for block in blocks]
    fnt = font(7 * scale)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    space = 4 * scale
    labels = [text for block in blocks for text, _ in block] + [corner]
    left = max(text_size(draw, t, fnt)[0] for t in labels) + 2 * space if any(labels) else 0
    line = text_size(draw, "0123456789m", fnt)[1]
    top = line + 2 * space if columns else 0
    gap = GAP * scale
    canvas = Image.new("RGB", (left + max(img.width for img in images),
                               top + sum(img.height for img in images) + gap * (len(images) - 1)), "white")
    draw = ImageDraw.Draw(canvas)
    h, w = blocks[0][0][1].shape[-2:]
    pitch_y, pitch_x = (h + 2) * scale, (w + 2) * scale  # grid's pad is 2

    def put(text: str, x: float, y: float) -> None:  # left edge x, vertical centre y
        x0, y0, _, y1 = draw.textbbox((0, 0), text, font=fnt)
        draw.text((x - x0, y - (y0 + y1) / 2), text, fill="black", font=fnt)

    y = top
    for block, img in zip(blocks, images):
        canvas.paste(img, (left, y))
        for i, (text, _) in enumerate(block):
            put(text, space, y + 2 * scale + pitch_y * i + h * scale / 2)
        y += img.height + gap
    for j, text in enumerate(columns):
        put(text, left + 2 * scale + pitch_x * j + (w * scale - text_size(draw, text, fnt)[0]) / 2, top / 2)
    if corner and columns:
        put(corner, space, top / 2)
    return canvas


def save_labelled_grid(blocks: Sequence[Sequence[tuple[str, Tensor]]], path: str | Path, columns: Sequence[str] = (),
                       corner: str = "", scale: int = 2) -> Path:
    """Save :func:`labelled_grid` as a PNG."""
    return _save(labelled_grid(blocks, columns, corner, scale), path)
