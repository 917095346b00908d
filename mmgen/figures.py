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


def is_image(row: Tensor) -> bool:
    """Whether ``row`` is a batch of images a grid can show: ``(n, C, H, W)`` with 1 or 3 channels.
    Other modalities (vectors, audio, ...) have no picture here; the figures leave them out."""
    return row.dim() == 4 and row.size(1) in (1, 3)


def grid(rows: list[Tensor], pad: int = 2) -> np.ndarray:
    """Tile rows of images ``(n, C, H, W)`` in [0, 1] into one ``(H', W', 3)`` uint8 array; a
    cell is the largest image's size, and a smaller image sits in its cell's top-left corner."""
    rows = [r.detach().float().cpu().clamp(0, 1) for r in rows]
    rows = [r.expand(-1, 3, -1, -1) if r.size(1) == 1 else r for r in rows]
    n = max(r.size(0) for r in rows)
    h, w = max(r.size(-2) for r in rows), max(r.size(-1) for r in rows)
    canvas = torch.ones(3, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[:, y:y + img.size(-2), x:x + img.size(-1)] = img
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


def save_grid(rows: list[Tensor], path: str | Path, scale: int = 2) -> Path | None:
    """Save :func:`grid` of the image rows (:func:`is_image`) as a PNG, nearest-neighbour upscaled
    by ``scale``; None, and no file, when no row is an image."""
    rows = [row for row in rows if is_image(row)]
    return _save(_image(rows, scale), path) if rows else None


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
    empty block (e.g. no target to refine with one modality) is left out, as are rows that are not
    images (:func:`is_image`)."""
    blocks = [kept for block in blocks if (kept := [(text, row) for text, row in block if is_image(row)])]
    if not blocks:
        raise ValueError("labelled_grid: no image rows to draw")
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
    w = max(row.size(-1) for _, row in blocks[0])  # the first block's cells, under the column labels
    pitch_x = (w + 2) * scale  # grid's pad is 2

    def put(text: str, x: float, y: float) -> None:  # left edge x, vertical centre y
        x0, y0, _, y1 = draw.textbbox((0, 0), text, font=fnt)
        draw.text((x - x0, y - (y0 + y1) / 2), text, fill="black", font=fnt)

    y = top
    for block, img in zip(blocks, images):
        canvas.paste(img, (left, y))
        h = max(row.size(-2) for _, row in block)  # the block's cell height (grid's)
        for i, (text, _) in enumerate(block):
            put(text, space, y + 2 * scale + (h + 2) * scale * i + h * scale / 2)
        y += img.height + gap
    for j, text in enumerate(columns):
        put(text, left + 2 * scale + pitch_x * j + (w * scale - text_size(draw, text, fnt)[0]) / 2, top / 2)
    if corner and columns:
        put(corner, space, top / 2)
    return canvas


def save_labelled_grid(blocks: Sequence[Sequence[tuple[str, Tensor]]], path: str | Path, columns: Sequence[str] = (),
                       corner: str = "", scale: int = 2) -> Path | None:
    """Save :func:`labelled_grid` as a PNG; None, and no file, when no row is an image."""
    if not any(is_image(row) for block in blocks for _, row in block):
        return None
    return _save(labelled_grid(blocks, columns, corner, scale), path)
