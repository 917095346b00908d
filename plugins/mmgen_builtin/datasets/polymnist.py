"""PolyMNIST on disk, in either official layout (Sutter et al. 2021):

- PNG folders ``{train,test}/m{k}/{i}.{digit}.png``: the same ``i`` across folders is one tuple;
- tensor files ``{train,test}/m{k}.pt`` (uint8 ``(N, 3, 28, 28)``) and ``labels.pt``.

Tuples are aligned by the explicit index ``i`` (never by directory listing order) and the number
of modalities is read from disk. Every inconsistency is a one-line :class:`DataError` naming the
file: a silently shorter dataset is worse than none.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmgen.data import ModalitySpec, MultimodalDataset
from mmgen.errors import DataError

PNG_NAME = re.compile(r"^(\d+)\.(\d+)\.png$")


@dataclass
class PolyMNISTConfig:
    """Root folder holding ``train/`` and ``test/``; optionally use only the first N modalities."""

    path: str = ""
    modalities: int = 0  # 0 = every modality found on disk


def fingerprint(images: list[torch.Tensor], labels: torch.Tensor) -> str:
    """A content hash identifying the data (classifiers refuse data they were not trained on)."""
    h = hashlib.sha1()
    for t in [labels, *images]:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def find_modalities(split_dir: Path) -> list[Path]:
    """``m0, m1, ...`` entries (``.pt`` files or folders), contiguous from 0."""
    found = {}
    for p in split_dir.iterdir():
        match = re.fullmatch(r"m(\d+)(\.pt)?", p.name)
        if match:
            found[int(match.group(1))] = p
    if not found:
        raise DataError(f"no modality entries m0, m1, ... (folders or .pt files) in {split_dir}")
    missing = [k for k in range(max(found) + 1) if k not in found]
    if missing:
        raise DataError(f"missing modality m{missing[0]} in {split_dir} (found {', '.join(sorted(p.name for p in found.values()))})")
    return [found[k] for k in range(len(found))]


def _load_tensor(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise DataError(f"missing dataset file: {path}")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"corrupt dataset file {path}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(value, torch.Tensor):
        raise DataError(f"dataset file {path} holds a {type(value).__name__}, expected a tensor")
    return value


def _as_uint8(x: torch.Tensor, path: Path) -> torch.Tensor:
    if x.dim() != 4:
        raise DataError(f"{path}: expected images (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if x.is_floating_point():  # [0, 1] floats, as some exports store them
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)
    raise DataError(f"{path}: expected uint8 or float images, got {x.dtype}")


def read_tensor_layout(root: Path, split: str, limit: int = 0) -> MultimodalDataset:
    """Read ``root/split/m{k}.pt`` and ``labels.pt``."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DataError(f"dataset split folder not found: {split_dir}")
    paths = find_modalities(split_dir)[: limit or None]
    labels = _load_tensor(split_dir / "labels.pt").long().flatten()
    images = []
    for path in paths:
        x = _as_uint8(_load_tensor(path), path)
        if x.size(0) != labels.size(0):
            raise DataError(f"{path}: {x.size(0)} images but labels.pt has {labels.size(0)} labels")
        images.append(x)
    specs = [ModalitySpec(f"m{k}", tuple(x.shape[1:])) for k, x in enumerate(images)]
    return MultimodalDataset(specs, images, labels, fingerprint=fingerprint(images, labels))


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise DataError(f"corrupt image file {path}: {str(exc).splitlines()[0][:200]}") from None


def read_png_layout(root: Path, split: str, limit: int = 0) -> MultimodalDataset:
    """Read ``root/split/m{k}/{i}.{digit}.png``, aligning tuples by ``i``."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DataError(f"dataset split folder not found: {split_dir}")
    folders = find_modalities(split_dir)[: limit or None]
    tables: list[dict[int, tuple[int, Path]]] = []
    for folder in folders:
        if not folder.is_dir():
            raise DataError(f"{folder}: expected a folder of PNG files (mixed layouts in {split_dir})")
        table: dict[int, tuple[int, Path]] = {}
        for p in folder.iterdir():
            if p.suffix.lower() != ".png":
                continue
            match = PNG_NAME.match(p.name)
            if not match:
                raise DataError(f"{p}: file name is not of the form <index>.<digit>.png")
            table[int(match.group(1))] = (int(match.group(2)), p)
        tables.append(table)
    reference = tables[0]
    for folder, table in zip(folders[1:], tables[1:]):
        if len(table) != len(reference):
            raise DataError(f"{folder}: {len(table)} images but {folders[0]} has {len(reference)}")
        for i, (digit, _) in reference.items():
            if i not in table:
                raise DataError(f"{folder}: missing tuple index {i} (present in {folders[0]})")
            if table[i][0] != digit:
                raise DataError(f"{table[i][1]}: digit {table[i][0]} but {reference[i][1].name} says {digit}")
    index = sorted(reference)
    labels = torch.tensor([reference[i][0] for i in index], dtype=torch.long)
    images = []
    for table in tables:
        arr = np.stack([_read_png(table[i][1]) for i in index])  # (N, H, W, 3)
        images.append(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous())
    specs = [ModalitySpec(f"m{k}", tuple(x.shape[1:])) for k, x in enumerate(images)]
    return MultimodalDataset(specs, images, labels, fingerprint=fingerprint(images, labels))


def read_polymnist(root: str | Path, split: str, limit: int = 0) -> MultimodalDataset:
    """Detect the layout of ``root/split`` and read it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    split_dir = root / split
    if (split_dir / "labels.pt").exists() or (split_dir / "m0.pt").exists():
        return read_tensor_layout(root, split, limit)
    return read_png_layout(root, split, limit)


def polymnist_dataset(cfg: PolyMNISTConfig, split: str) -> MultimodalDataset:
    """PolyMNIST read from ``cfg.path`` (either official layout)."""
    if not cfg.path:
        raise DataError("data.path: PolyMNIST needs the dataset folder (data.path=/path/to/PolyMNIST)")
    return read_polymnist(cfg.path, split, cfg.modalities)
