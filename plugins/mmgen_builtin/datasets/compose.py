"""The PolyMNIST recipe (Sutter et al. 2021; SPEC section 2), shared by ``mmgen data make`` and the
offline default dataset.

Each modality m pairs tuple i with an image of the same digit class drawn by modality m's own
seeded permutation within the class, binarises it at > 128, takes a random 28 x 28 crop of
background m and inverts the crop's colours where the digit is on. Tuples therefore share only
the digit label.
"""

from __future__ import annotations

import numpy as np


def classwise_permutation(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``perm`` with ``labels[perm[i]] == labels[i]``: a random shuffle inside every class."""
    perm = np.empty(len(labels), dtype=np.int64)
    for digit in np.unique(labels):
        idx = np.flatnonzero(labels == digit)
        perm[idx] = idx[rng.permutation(len(idx))]
    return perm


def compose(digits: np.ndarray, labels: np.ndarray, backgrounds: list[np.ndarray], num_tuples: int,
            seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Build ``num_tuples`` PolyMNIST tuples.

    ``digits`` ``(N, 28, 28)`` uint8, ``labels`` ``(N,)``, one ``(H, W, 3)`` uint8 background per
    modality. Returns M arrays ``(T, 3, 28, 28)`` uint8 and the tuple labels ``(T,)``. With
    ``num_tuples > N`` the digits are reused in further rounds, each with fresh permutations and
    crops. Deterministic in ``seed``.
    """
    n = len(labels)
    rounds = -(-num_tuples // n)
    base = np.tile(np.arange(n), rounds)[:num_tuples]
    out = []
    for m, bg in enumerate(backgrounds):
        if bg.ndim != 3 or bg.shape[2] != 3 or bg.shape[0] < 28 or bg.shape[1] < 28:
            raise ValueError(f"background {m} must be an (H >= 28, W >= 28, 3) image, got {bg.shape}")
        rng = np.random.default_rng([seed, m])
        source = np.concatenate([classwise_permutation(labels, rng) for _ in range(rounds)])[:num_tuples]
        on = digits[source] > 128  # (T, 28, 28)
        ys = rng.integers(0, bg.shape[0] - 28 + 1, size=num_tuples)
        xs = rng.integers(0, bg.shape[1] - 28 + 1, size=num_tuples)
        # A strided view of every 28 x 28 window: gathering T of them is ~10x faster than
        # fancy-indexing rows and columns, and already comes out channels-first.
        windows = np.lib.stride_tricks.sliding_window_view(bg, (28, 28), axis=(0, 1))  # (H-27, W-27, 3, 28, 28)
        crops = windows[ys, xs]  # (T, 3, 28, 28)
        out.append(np.where(on[:, None], 255 - crops, crops).astype(np.uint8))
    return out, labels[base].astype(np.int64)
