"""The offline default dataset: PolyMNIST-format tuples built from nothing but installed packages.

Digits are the 1,797 real handwritten digits bundled with scikit-learn (``load_digits``: 8 x 8,
17 grey levels, from the UCI "Optical Recognition of Handwritten Digits" set), upsampled to a
20 x 20 box centred in 28 x 28 like MNIST. Backgrounds are procedural colour textures, one per
modality. The PolyMNIST recipe then composes the tuples. Numbers measured on it are NOT
comparable with published PolyMNIST results; it exists so ``mmgen train`` works offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmgen.checkpoint import staging_folder
from mmgen.config import check_positive
from mmgen.data import MultimodalDataset
from mmgen.errors import DataError, MMGenWarning

from .compose import compose
from .polymnist import fingerprint, read_tensor_layout

VERSION = 1


@dataclass
class DefaultDataConfig:
    """Number of modalities and tuples; the seed fixes permutations, crops and textures."""

    modalities: int = 5
    train_size: int = 5000
    test_size: int = 1000
    seed: int = 0

    def __post_init__(self):
        check_positive(self, "train_size", "test_size")
        if self.modalities < 2:
            raise ValueError(f"modalities: a multimodal dataset needs >= 2, got {self.modalities}")


def cache_dir() -> Path:
    """``$MMGEN_CACHE``, else ``$XDG_CACHE_HOME/mmgen``, else ``~/.cache/mmgen``."""
    if os.environ.get("MMGEN_CACHE"):
        return Path(os.environ["MMGEN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmgen"


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as MNIST-like ``(N, 28, 28)`` uint8 and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    big = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    canvas = torch.zeros(len(small), 28, 28)
    canvas[:, 4:24, 4:24] = big[:, 0].clamp(0, 1)
    return (canvas * 255).round().to(torch.uint8).numpy(), bunch.target.astype(np.int64)


def texture(seed: int, size: int = 96) -> np.ndarray:
    """A colour texture ``(size, size, 3)`` uint8: octaves of smooth noise through a random palette."""
    g = torch.Generator().manual_seed(seed)
    field = torch.zeros(1, 3, size, size)
    for octave, cells in enumerate((3, 6, 12, 24)):
        noise = torch.rand(1, 3, cells, cells, generator=g)
        field += F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False) / 2**octave
    field = (field - field.amin()) / (field.amax() - field.amin())
    freq = 2 + 6 * torch.rand(2, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    stripes = 0.5 + 0.5 * torch.sin(2 * torch.pi * (freq[0] * xx + freq[1] * yy))
    palette = torch.rand(3, 3, generator=g)  # mixes (noise, stripes) into RGB
    rgb = palette[:, 0, None, None] * field[0, 0] + palette[:, 1, None, None] * stripes + palette[:, 2, None, None] * field[0, 1]
    rgb = (rgb - rgb.amin()) / (rgb.amax() - rgb.amin())
    return (rgb.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def build(cfg: DefaultDataConfig, out: Path) -> None:
    """Write the dataset in the PolyMNIST tensor layout, atomically (a temp dir then rename)."""
    digits, labels = sklearn_digits()
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(labels))
    n_test = len(labels) // 5  # 20% of the digits are held out: no test digit is seen in training
    splits = {"train": (order[n_test:], cfg.train_size), "test": (order[:n_test], cfg.test_size)}
    backgrounds = [texture(1000 * cfg.seed + m) for m in range(cfg.modalities)]
    tmp = staging_folder(out)
    try:
        fingerprints = {}
        for i, (split, (idx, size)) in enumerate(splits.items()):
            images, tuple_labels = compose(digits[idx], labels[idx], backgrounds, size, seed=cfg.seed + i)
            (tmp / split).mkdir()
            tensors = [torch.from_numpy(img) for img in images]
            for m, img in enumerate(tensors):
                torch.save(img, tmp / split / f"m{m}.pt")
            torch.save(torch.from_numpy(tuple_labels), tmp / split / "labels.pt")
            fingerprints[split] = fingerprint(tensors, torch.from_numpy(tuple_labels))
        manifest = {"dataset": "mmgen offline default", "version": VERSION, "config": asdict(cfg),
                    "digits": "sklearn.datasets.load_digits (8x8 upsampled to 20x20 in 28x28)",
                    "backgrounds": "procedural textures (mmgen_builtin.datasets.default.texture)",
                    "fingerprints": fingerprints}  # content hashes: a file changed since is rebuilt
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        try:
            tmp.rename(out)
        except OSError:  # another process built it first
            if not out.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def location(cfg: DefaultDataConfig) -> Path:
    """The cache folder of this configuration."""
    key = hashlib.sha1(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / f"default-v{VERSION}-{key}"


def checked(dataset: MultimodalDataset, path: Path, split: str) -> MultimodalDataset:
    """``dataset`` if its content hash is the one the manifest recorded when ``path`` was built (a
    cache from before fingerprints were recorded is taken as it is), else a DataError."""
    try:
        expected = json.loads((path / "manifest.json").read_text()).get("fingerprints", {}).get(split)
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{path / 'manifest.json'}: unreadable ({exc})") from None
    if expected is not None and dataset.fingerprint != expected:
        raise DataError(f"{path / split}: content hash {dataset.fingerprint} is not the {expected} it was built with")
    return dataset


def default_dataset(cfg: DefaultDataConfig, split: str) -> MultimodalDataset:
    """The offline default dataset, built into the cache on first use (a few seconds)."""
    path = location(cfg)
    if not (path / "manifest.json").is_file():
        build(cfg, path)
    try:
        return checked(read_tensor_layout(path, split), path, split)
    except DataError as exc:  # a damaged cache: it is derived data, so build it again
        warnings.warn(f"the cached default dataset is damaged ({exc}); rebuilding it", MMGenWarning, stacklevel=2)
        damaged = path.with_name(f"{path.name}.damaged-{os.getpid()}")
        path.rename(damaged)
        shutil.rmtree(damaged, ignore_errors=True)
        build(cfg, path)
        return read_tensor_layout(path, split)
