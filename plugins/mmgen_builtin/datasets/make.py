"""``mmgen data make polymnist``: rebuild a PolyMNIST-format dataset from MNIST and background images.

The recipe is :func:`compose.compose`; this module finds and checks the inputs, writes either
official layout into a temporary folder next to the destination and renames it into place, and
records a ``manifest.json`` (recipe, seeds, inputs and the sha256 of every written file). The same
inputs and seed give byte-identical output.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mmgen.checkpoint import staging_folder
from mmgen.errors import DataError

from .compose import compose
from .idx import find_idx_pair, read_mnist

RECIPE_VERSION = 1
BACKGROUND_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
FORMATS = ("png", "pt")
PNG_CHUNK = 500  # files per thread-pool job: large enough to amortise, small enough for progress


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encode_png(img: np.ndarray) -> bytes:
    """An ``(H, W, 3)`` uint8 image as PNG bytes (8-bit RGB, no filter, zlib level 6).

    Hand-rolled because Pillow's per-image overhead dominates at 28 x 28 (about 2.5x slower over
    75,000 files); the output is a plain PNG that any reader, Pillow included, decodes.
    """
    h, w, c = img.shape
    if c != 3 or img.dtype != np.uint8:
        raise ValueError(f"encode_png takes (H, W, 3) uint8, got {img.shape} {img.dtype}")
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # each scanline starts with filter type 0
    raw[:, 1:] = img.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


def find_backgrounds(folder: Path) -> list[Path]:
    """Background images (PNG/JPG) in ``folder``, sorted by file name: the k-th is modality m{k}."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"backgrounds folder not found: {folder}")
    found = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in BACKGROUND_SUFFIXES),
                   key=lambda p: p.name)
    if not found:
        raise DataError(f"no background images (.png, .jpg, .jpeg) in {folder}")
    return found


def load_background(path: Path) -> np.ndarray:
    """A background as ``(H, W, 3)`` uint8 RGB; at least 28 x 28."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise DataError(f"corrupt image file {path}: {str(exc).splitlines()[0][:200]}") from None
    if img.shape[0] < 28 or img.shape[1] < 28:
        raise DataError(f"{path}: {img.shape[1]}x{img.shape[0]} pixels, backgrounds need at least 28x28")
    return img


def split_seed(seed: int, split_index: int) -> int:
    """The recipe seed of a split: a one-to-one map of (seed, split), so no two share a stream."""
    return 2 * seed + split_index


def _write(tmp: Path, rel: str, data: bytes, files: dict[str, str]) -> None:
    path = tmp / rel
    path.write_bytes(data)
    files[rel] = sha256_bytes(data)


def _write_pngs(tmp: Path, folder: str, hwc: np.ndarray, labels: np.ndarray, lo: int, hi: int) -> dict[str, str]:
    """Write tuples ``lo:hi`` of one modality as ``{i}.{digit}.png``; return their checksums."""
    files: dict[str, str] = {}
    for i in range(lo, hi):
        _write(tmp, f"{folder}/{i}.{int(labels[i])}.png", encode_png(hwc[i]), files)
    return files


def _tensor_bytes(t: torch.Tensor) -> bytes:
    # Saving to a buffer, not a path: torch.save names the archive after the file, which would make
    # the bytes depend on the temporary folder's name.
    buf = io.BytesIO()
    torch.save(t, buf)
    return buf.getvalue()


def make_polymnist(mnist: Path, backgrounds: Path, out: Path, modalities: int = 0, seed: int = 0,
                   train_size: int = 0, test_size: int = 0, fmt: str = "png", force: bool = False,
                   progress=None) -> dict:
    """Build PolyMNIST at ``out`` and return its manifest.

    ``modalities``, ``train_size`` and ``test_size`` of 0 mean: one modality per background image,
    and as many tuples as the split has MNIST digits. ``progress`` is an optional
    ``rich.progress.Progress`` that receives one task per split.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if seed < 0:
        raise DataError(f"--seed {seed}: must be >= 0")
    if modalities < 0 or train_size < 0 or test_size < 0:
        raise DataError("--modalities, --train-size and --test-size must be >= 1 (or omitted)")
    if out.exists() and not force:
        raise DataError(f"{out} already exists; remove it, choose another --out, or pass --force")

    bg_paths = find_backgrounds(backgrounds)
    m = modalities or len(bg_paths)
    if m > len(bg_paths):
        raise DataError(f"--modalities {m} but only {len(bg_paths)} background images in {backgrounds} "
                        f"({', '.join(p.name for p in bg_paths)}); add images or ask for fewer modalities")
    bg_paths = bg_paths[:m]
    bgs = [load_background(p) for p in bg_paths]
    sources = {split: read_mnist(mnist, split) for split in SPLITS}
    sizes = {"train": train_size or len(sources["train"][1]), "test": test_size or len(sources["test"][1])}

    manifest: dict = {
        "dataset": "PolyMNIST",
        "generator": "mmgen data make polymnist",
        "recipe": {
            "name": "polymnist", "version": RECIPE_VERSION,
            "description": "per modality and digit class a seeded permutation of the class's digits; "
                           "binarise at > 128; random 28x28 crop of background m; invert the crop's "
                           "colours where the digit is on (Sutter et al. 2021)",
            "threshold": 128, "crop": 28,
            "rng": "numpy.random.default_rng([split_seed, modality]); split_seed = 2 * seed + split_index",
        },
        "seed": seed,
        "format": fmt,
        "modalities": m,
        "backgrounds": [{"modality": f"m{k}", "file": p.name, "sha256": sha256_file(p),
                         "size": [int(b.shape[1]), int(b.shape[0])]} for k, (p, b) in enumerate(zip(bg_paths, bgs))],
        "splits": {},
        "files": {},
    }
    try:
        tmp = staging_folder(out)
    except OSError as exc:
        raise DataError(f"cannot write to {out.parent}: {exc.strerror or exc}") from None
    try:
        for s, split in enumerate(SPLITS):
            digits, labels = sources[split]
            total = m * sizes[split] if fmt == "png" else m + 1
            task = progress.add_task(f"{split}: composing", total=total) if progress is not None else None
            images, tuple_labels = compose(digits, labels, bgs, sizes[split], seed=split_seed(seed, s))
            images_path, labels_path = find_idx_pair(Path(mnist), split)
            counts = Counter(int(y) for y in tuple_labels)
            manifest["splits"][split] = {
                "tuples": int(sizes[split]), "seed": split_seed(seed, s),
                "mnist": {"images": images_path.name, "labels": labels_path.name, "digits": int(len(labels)),
                          "sha256": {images_path.name: sha256_file(images_path),
                                     labels_path.name: sha256_file(labels_path)}},
                "label_counts": {str(k): counts[k] for k in sorted(counts)},
            }
            if task is not None:
                progress.update(task, description=f"{split}: writing {fmt}")
            advance = (lambda n, task=task: progress.advance(task, n)) if task is not None else (lambda n: None)
            write = write_png_split if fmt == "png" else write_tensor_split
            manifest["files"].update(write(tmp, split, images, tuple_labels, advance))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        _replace(tmp, out, force)
    except OSError as exc:  # disk full, permissions: the user's to fix, so one line, not a traceback
        raise DataError(f"cannot write {out}: {exc.strerror or exc} ({exc.filename or tmp})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def write_tensor_split(tmp: Path, split: str, images: list[np.ndarray], labels: np.ndarray,
                       advance=lambda n: None) -> dict[str, str]:
    """Write ``split/m{k}.pt`` (uint8 ``(N, 3, 28, 28)``) and ``split/labels.pt``; return checksums."""
    files: dict[str, str] = {}
    (tmp / split).mkdir()
    for k, img in enumerate(images):
        _write(tmp, f"{split}/m{k}.pt", _tensor_bytes(torch.from_numpy(img)), files)
        advance(1)
    _write(tmp, f"{split}/labels.pt", _tensor_bytes(torch.from_numpy(labels)), files)
    advance(1)
    return files


def write_png_split(tmp: Path, split: str, images: list[np.ndarray], labels: np.ndarray,
                    advance=lambda n: None) -> dict[str, str]:
    """Write ``split/m{k}/{i}.{digit}.png`` for every tuple and modality; return checksums."""
    files: dict[str, str] = {}
    (tmp / split).mkdir()
    # zlib and file writes release the GIL, so threads scale; results are gathered in
    # submission order, so the manifest does not depend on which thread finishes first.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        jobs = []
        for k, img in enumerate(images):
            (tmp / split / f"m{k}").mkdir()
            hwc = img.transpose(0, 2, 3, 1)  # (T, 28, 28, 3)
            for lo in range(0, len(labels), PNG_CHUNK):
                hi = min(lo + PNG_CHUNK, len(labels))
                jobs.append(pool.submit(_write_pngs, tmp, f"{split}/m{k}", hwc, labels, lo, hi))
        for job in jobs:
            written = job.result()
            files.update(written)
            advance(len(written))
    return files


def _replace(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished ``tmp`` to ``out``; with ``force`` an existing ``out`` is replaced."""
    old = None
    if out.exists():
        if not force:
            raise DataError(f"{out} appeared while building; remove it or pass --force")
        # POSIX cannot swap two folders atomically; moving the old copy aside keeps the gap
        # without a dataset at ``out`` to two renames instead of a whole rmtree.
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
