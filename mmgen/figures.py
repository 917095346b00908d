"""PNG image grids: rows of images, no plotting library needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


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


def save_grid(rows: list[Tensor], path: str | Path, scale: int = 2) -> Path:
    """Save :func:`grid` as a PNG (nearest-neighbour upscaled by ``scale``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(grid(rows))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path
