"""MNIST's IDX files (LeCun et al.), gzip-compressed or raw.

Images: a 16-byte big-endian header (magic 2051, count, rows, columns), then uint8 pixels row-major.
Labels: an 8-byte header (magic 2049, count), then uint8 labels. Anything else is a one-line
:class:`DataError` naming the file.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from mmgen.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IDX_NAME = re.compile(r"^(?P<prefix>.+)-(?P<kind>images-idx3|labels-idx1)-ubyte(?:\.gz)?$")


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"IDX file not found: {path}")
    data = path.read_bytes()
    # Sniff the gzip magic instead of trusting the suffix: both forms circulate under both names.
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc})") from None
    return data


def _header(path: Path, data: bytes, expected: int, dims: int) -> tuple[int, ...]:
    size = 4 * (1 + dims)
    if len(data) < size:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    magic, *shape = struct.unpack(f">{1 + dims}I", data[:size])
    if magic != expected:
        kind = "images" if expected == IMAGES_MAGIC else "labels"
        raise DataError(f"{path}: wrong IDX magic number {magic}, expected {expected} (MNIST {kind} file)")
    need = size + int(np.prod(shape))
    if len(data) != need:
        raise DataError(f"{path}: header says shape {tuple(shape)} ({need} bytes) but the file has {len(data)} bytes")
    return tuple(shape)


def read_idx_images(path: str | Path) -> np.ndarray:
    """Digit images ``(N, rows, cols)`` uint8 from an IDX file with magic 2051."""
    path = Path(path)
    data = _read_bytes(path)
    shape = _header(path, data, IMAGES_MAGIC, 3)
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(shape).copy()


def read_idx_labels(path: str | Path) -> np.ndarray:
    """Labels ``(N,)`` int64 from an IDX file with magic 2049."""
    path = Path(path)
    data = _read_bytes(path)
    _header(path, data, LABELS_MAGIC, 1)
    return np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)


def write_idx(path: str | Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``(N, rows, cols)`` images or ``(N,)`` labels (uint8) as an IDX file, for tests and tools."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = {3: IMAGES_MAGIC, 1: LABELS_MAGIC}.get(array.ndim)
    if magic is None:
        raise ValueError(f"IDX arrays are (N, rows, cols) images or (N,) labels, got shape {array.shape}")
    data = struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()
    # mtime=0 keeps the gzip stream byte-identical across runs.
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def find_idx_pair(folder: Path, split: str) -> tuple[Path, Path]:
    """The ``(images, labels)`` IDX files of ``split`` in ``folder``.

    A file belongs to the training split when its prefix starts with ``train`` (``train-``,
    ``train10k-``) and to the test split when it starts with ``t10k`` or ``test``; the images
    and labels files of a split must share their prefix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"MNIST folder not found: {folder}")
    starts = ("train",) if split == "train" else ("t10k", "test")
    found: dict[str, dict[str, Path]] = {}
    for p in sorted(folder.iterdir()):
        match = IDX_NAME.match(p.name)
        if match and match.group("prefix").lower().startswith(starts):
            found.setdefault(match.group("prefix"), {})[match.group("kind")] = p
    pairs = {prefix: kinds for prefix, kinds in found.items() if len(kinds) == 2}
    if not pairs:
        expected = "train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]" if split == "train" else \
            "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]"
        raise DataError(f"no MNIST {split} IDX pair in {folder} (expected e.g. {expected})")
    if len(pairs) > 1:
        raise DataError(f"several MNIST {split} IDX pairs in {folder} ({', '.join(sorted(pairs))}); keep one per split")
    (kinds,) = pairs.values()
    return kinds["images-idx3"], kinds["labels-idx1"]


def read_mnist(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(digits (N, 28, 28) uint8, labels (N,) int64)`` of ``split`` from an MNIST folder."""
    images_path, labels_path = find_idx_pair(Path(folder), split)
    digits, labels = read_idx_images(images_path), read_idx_labels(labels_path)
    if len(digits) != len(labels):
        raise DataError(f"{images_path}: {len(digits)} images but {labels_path.name} has {len(labels)} labels")
    if digits.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: digits are {digits.shape[1]}x{digits.shape[2]}, the recipe needs 28x28")
    if len(labels) == 0:
        raise DataError(f"{images_path}: holds no digits")
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataError(f"{labels_path}: label {int(labels[bad])} at index {bad}; MNIST labels are digits 0-9")
    return digits, labels
