"""PolyMNIST on disk, in either official layout (Sutter et al. 2021):

- PNG folders ``{train,test}/m{k}/{i}.{digit}.png``: the same ``i`` across folders is one tuple;
- tensor files ``{train,test}/m{k}.pt`` (uint8 ``(N, 3, 28, 28)``) and ``labels.pt``.

Tuples are aligned by the explicit index ``i`` (never by directory listing order) and the number
of modalities is read from disk. Every inconsistency is a one-line :class:`DataError` naming the
file: a silently shorter dataset is worse than none.

Decoding tens of thousands of small PNGs takes seconds, so each decoded modality folder is cached
as one uint8 tensor in the cache directory, keyed by the folder's path and every file's name,
size and mtime: touching, adding or removing a file invalidates it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from mmgen.checkpoint import as_created, load_failure
from mmgen.config import check_nonnegative
from mmgen.data import ModalitySpec, MultimodalDataset
from mmgen.errors import DataError, DataNotFound

PNG_NAME = re.compile(r"^(\d+)\.(\d+)\.png$", re.IGNORECASE)
MODALITY_NAME = re.compile(r"m(\d+)(\.pt)?")
CACHE_VERSION = 1


@dataclass
class PolyMNISTConfig:
    """Root folder holding ``train/`` and ``test/``; optionally use only the first N modalities."""

    path: str = ""
    modalities: int = 0  # 0 = every modality found on disk

    def __post_init__(self):
        if not self.path:  # (said when the config is checked: validate, config show, bench --dry-run)
            raise ValueError("path: PolyMNIST needs the dataset folder (--data polymnist:/path/to/PolyMNIST "
                             "or data.path=/path/to/PolyMNIST)")
        check_nonnegative(self, "modalities")
        if self.modalities == 1:
            raise ValueError("modalities: a multimodal dataset needs >= 2 (or 0 for all on disk)")


def fingerprint(images: list[torch.Tensor], labels: torch.Tensor) -> str:
    """A content hash identifying the data (classifiers refuse data they were not trained on)."""
    h = hashlib.sha1()
    for t in [labels, *images]:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def find_modalities(split_dir: Path) -> list[Path]:
    """``m0, m1, ...`` entries (``.pt`` files or folders), contiguous from 0."""
    found: dict[int, Path] = {}
    for p in sorted(split_dir.iterdir()):
        match = MODALITY_NAME.fullmatch(p.name)
        if match:
            k = int(match.group(1))
            if k in found:  # m1/ next to m1.pt, or m1 next to m01: which one is meant is a guess
                raise DataError(f"{p}: modality m{k} appears twice in {split_dir} (also {found[k].name})")
            found[k] = p
    if not found:
        raise DataError(f"no modality entries m0, m1, ... (folders or .pt files) in {split_dir}")
    missing = [k for k in range(max(found) + 1) if k not in found]
    if missing:
        raise DataError(f"missing modality m{missing[0]} in {split_dir} (found {', '.join(sorted(p.name for p in found.values()))})")
    return [found[k] for k in range(len(found))]


def _select(entries: list[Path], limit: int, split_dir: Path) -> list[Path]:
    if limit < 0 or limit > len(entries):
        raise DataError(f"data.modalities={limit}, but {split_dir} has {len(entries)} modalities (m0..m{len(entries) - 1})")
    return entries[: limit or None]


def _load_tensor(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise DataError(f"missing dataset file: {path}")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"corrupt dataset file {path}: {load_failure(exc)}") from None
    if not isinstance(value, torch.Tensor):
        raise DataError(f"dataset file {path} holds a {type(value).__name__}, expected a tensor")
    return value


def _as_uint8(x: torch.Tensor, path: Path) -> torch.Tensor:
    if x.dim() != 4:
        raise DataError(f"{path}: expected images (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if x.is_floating_point():  # [0, 1] floats, as some exports store them
        if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):  # also catches NaN
            raise DataError(f"{path}: float images must lie in [0, 1] (found values outside, or NaN)")
        return (x * 255).round().to(torch.uint8)
    raise DataError(f"{path}: expected uint8 or float images, got {x.dtype}")


def _as_labels(y: torch.Tensor, path: Path) -> torch.Tensor:
    if y.dim() == 2 and y.size(1) == 1:
        y = y[:, 0]
    if y.dim() != 1:
        raise DataError(f"{path}: expected labels (N,), got shape {tuple(y.shape)}")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise DataError(f"{path}: labels must be whole numbers")
    return y.long()


def read_tensor_layout(root: Path, split: str, limit: int = 0) -> MultimodalDataset:
    """Read ``root/split/m{k}.pt`` and ``labels.pt``."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DataError(f"dataset split folder not found: {split_dir}")
    paths = _select(find_modalities(split_dir), limit, split_dir)
    labels = _as_labels(_load_tensor(split_dir / "labels.pt"), split_dir / "labels.pt")
    images = []
    for path in paths:
        if path.suffix != ".pt":
            raise DataError(f"{path}: expected a tensor file {path.name}.pt (mixed layouts in {split_dir})")
        x = _as_uint8(_load_tensor(path), path)
        if x.size(0) != labels.size(0):
            raise DataError(f"{path}: {x.size(0)} images but labels.pt has {labels.size(0)} labels")
        images.append(x)
    specs = [ModalitySpec(f"m{k}", tuple(x.shape[1:])) for k, x in enumerate(images)]
    return MultimodalDataset(specs, images, labels, fingerprint=fingerprint(images, labels))


class PngEntry(NamedTuple):
    """One ``{i}.{digit}.png`` file: its digit, name and the stat fields the cache key uses."""

    digit: int
    name: str
    mtime_ns: int
    size: int


def list_png_folder(folder: Path) -> dict[int, PngEntry]:
    """Map tuple index ``i`` to the folder's ``{i}.{digit}.png`` file; other names are errors."""
    table: dict[int, PngEntry] = {}
    with os.scandir(folder) as it:
        for e in it:
            if not e.name.lower().endswith(".png"):  # .DS_Store, Thumbs.db, README: not images
                continue
            match = PNG_NAME.match(e.name)
            if not match:
                raise DataError(f"{folder / e.name}: file name is not of the form <index>.<digit>.png")
            i = int(match.group(1))
            if i in table:  # 7.3.png next to 07.3.png or 7.4.png: one tuple, two images
                raise DataError(f"{folder / e.name}: tuple index {i} appears twice in {folder} (also {table[i].name})")
            st = e.stat()
            table[i] = PngEntry(int(match.group(2)), e.name, st.st_mtime_ns, st.st_size)
    return table


def _check_aligned(folders: list[Path], tables: list[dict[int, PngEntry]]) -> None:
    reference = tables[0]
    if not reference:
        raise DataError(f"{folders[0]}: no images named <index>.<digit>.png")
    for folder, table in zip(folders[1:], tables[1:]):
        missing = sorted(reference.keys() - table.keys())
        extra = sorted(table.keys() - reference.keys())
        if missing or extra:
            what = (f"missing {folder / reference[missing[0]].name}" if missing
                    else f"{folder / table[extra[0]].name} has no partner in {folders[0]}")
            raise DataError(f"{folder}: {len(table)} images but {folders[0]} has {len(reference)} ({what})")
        for i, entry in reference.items():
            if table[i].digit != entry.digit:
                raise DataError(f"{folder / table[i].name}: digit {table[i].digit} but {folders[0] / entry.name} "
                                f"says {entry.digit}")


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise DataError(f"corrupt image file {path}: {str(exc).splitlines()[0][:200]}") from None


def _cache_path(folder: Path, table: dict[int, PngEntry], index: list[int]) -> Path:
    from .default import cache_dir  # deferred: default.py imports this module

    h = hashlib.sha256(f"v{CACHE_VERSION}\n{folder.resolve()}".encode())
    for i in index:
        e = table[i]
        h.update(f"\n{e.name}:{e.size}:{e.mtime_ns}".encode())
    return cache_dir() / "polymnist-png" / f"{h.hexdigest()[:32]}.pt"


def _load_cached(path: Path, n: int) -> torch.Tensor | None:
    try:
        x = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # absent, or a partial/foreign file: decoding again is always correct
        return None
    ok = isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 4 and x.size(0) == n
    return x if ok else None


def _store_cached(path: Path, x: torch.Tensor) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        torch.save(x, tmp)
        as_created(tmp)
        os.replace(tmp, path)  # readers never see a half-written cache file
    except OSError:
        pass  # a read-only or full cache only costs speed


def decode_png_folder(folder: Path, table: dict[int, PngEntry], index: list[int]) -> torch.Tensor:
    """The images of ``folder`` in the order ``index`` as ``(N, 3, H, W)`` uint8, cached on disk."""
    cache = _cache_path(folder, table, index)
    cached = _load_cached(cache, len(index))
    if cached is not None:
        return cached
    first = _read_png(folder / table[index[0]].name)
    out = np.empty((len(index), *first.shape), dtype=np.uint8)  # (N, H, W, 3)
    out[0] = first
    for j, i in enumerate(index[1:], start=1):
        img = _read_png(folder / table[i].name)
        if img.shape != first.shape:
            raise DataError(f"{folder / table[i].name}: {img.shape[1]}x{img.shape[0]} pixels but "
                            f"{table[index[0]].name} has {first.shape[1]}x{first.shape[0]}")
        out[j] = img
    x = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    _store_cached(cache, x)
    return x


def read_png_layout(root: Path, split: str, limit: int = 0) -> MultimodalDataset:
    """Read ``root/split/m{k}/{i}.{digit}.png``, aligning tuples by ``i``."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DataError(f"dataset split folder not found: {split_dir}")
    folders = _select(find_modalities(split_dir), limit, split_dir)
    for folder in folders:
        if not folder.is_dir():
            raise DataError(f"{folder}: expected a folder of PNG files (mixed layouts in {split_dir})")
    tables = [list_png_folder(folder) for folder in folders]
    _check_aligned(folders, tables)
    index = sorted(tables[0])
    labels = torch.tensor([tables[0][i].digit for i in index], dtype=torch.long)
    images = [decode_png_folder(folder, table, index) for folder, table in zip(folders, tables)]
    specs = [ModalitySpec(f"m{k}", tuple(x.shape[1:])) for k, x in enumerate(images)]
    return MultimodalDataset(specs, images, labels, fingerprint=fingerprint(images, labels))


def detect_layout(root: Path, split: str) -> str:
    """``"pt"`` when ``root/split`` holds tensor files, else ``"png"``."""
    split_dir = Path(root) / split
    return "pt" if (split_dir / "labels.pt").exists() or (split_dir / "m0.pt").exists() else "png"


def read_polymnist(root: str | Path, split: str, limit: int = 0) -> MultimodalDataset:
    """Detect the layout of ``root/split`` and read it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFound(f"dataset folder not found: {root}")
    if detect_layout(root, split) == "pt":
        return read_tensor_layout(root, split, limit)
    return read_png_layout(root, split, limit)


def polymnist_dataset(cfg: PolyMNISTConfig, split: str) -> MultimodalDataset:
    """PolyMNIST read from ``cfg.path`` (either official layout)."""
    return read_polymnist(cfg.path, split, cfg.modalities)
