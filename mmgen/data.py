"""The batch format and the in-memory multimodal dataset every dataset plugin returns.

Images stay uint8 on the host (4x less memory and transfer than float32) and become floats in
[0, 1] on the device (:meth:`Batch.to`). A sample may lack modalities: ``mask`` marks the
observed ones, and every component reads the mask rather than taking a special code path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ModalitySpec:
    """A modality's name and the shape of one sample, e.g. ``("m0", (3, 28, 28))``."""

    name: str
    shape: tuple[int, ...]


def format_shape(shape: tuple[int, ...]) -> str:
    """``3 x 28 x 28``: a sample's shape as messages write it."""
    return " x ".join(map(str, shape))


@dataclass
class Batch:
    """A minibatch: one tensor per modality, the observed-modality mask and the labels."""

    x: list[Tensor]  # M tensors (B, *shape): uint8 on the host, float in [0, 1] after .to()
    mask: Tensor  # (B, M) bool
    label: Tensor  # (B,) long; -1 where unknown
    #: The mask as it was on the host before ``.to()`` moved it (None when unknown): components
    #: read it to decide what to compute (which decoders to run) without a device-host sync.
    host_mask: Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Batch:
        """Move to ``device`` and convert images to ``dtype`` in [0, 1] there."""
        xs = []
        for x in self.x:
            x = x.to(device, non_blocking=True)
            xs.append(x.to(dtype) / 255.0 if x.dtype == torch.uint8 else x.to(dtype))
        host_mask = self.mask if self.mask.device.type == "cpu" else self.host_mask
        return Batch(xs, self.mask.to(device, non_blocking=True), self.label.to(device, non_blocking=True), host_mask)

    def observed(self, mask: Tensor | None = None) -> list[int]:
        """The modalities that ``mask`` (default: the batch's own) observes in at least one row;
        read from the host copy when ``mask`` is the batch's own, else with one sync."""
        if mask is None or mask is self.mask:
            mask = self.host_mask if self.host_mask is not None else self.mask
        return [m for m, seen in enumerate(mask.any(0).tolist()) if seen]

    def __len__(self) -> int:
        return self.label.size(0)

    def select(self, index: Tensor | slice) -> Batch:
        """A sub-batch."""
        return Batch([x[index] for x in self.x], self.mask[index], self.label[index])


class MultimodalDataset:
    """Aligned multimodal samples held in memory: ``images[m][i]`` belongs to tuple ``i``.

    Dataset plugins return one of these (or a subclass). Indexing by a tensor of indices returns
    a whole :class:`Batch` at once, so loading a batch is a handful of gathers, not B Python calls.
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        images: Sequence[Tensor],
        labels: Tensor,
        mask: Tensor | None = None,
        fingerprint: str = "",
    ):
        n = labels.size(0)
        for spec, x in zip(modalities, images, strict=True):
            if x.size(0) != n or tuple(x.shape[1:]) != tuple(spec.shape):
                raise ValueError(f"modality {spec.name}: tensor {tuple(x.shape)} does not match {n} x {spec.shape}")
        self.modalities = list(modalities)
        self.images = list(images)
        self.labels = labels.long()
        self.mask = mask if mask is not None else torch.ones(n, len(modalities), dtype=torch.bool)
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return self.labels.size(0)

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def batch(self, index: Tensor) -> Batch:
        """The samples at ``index`` as one :class:`Batch`."""
        return Batch([x[index] for x in self.images], self.mask[index], self.labels[index])


class EpochBatches:
    """Deterministic, resumable batches for one epoch, sharded across processes.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a run resumed at any step sees
    exactly the batches an uninterrupted run would have seen. Each process takes every
    ``world``-th batch, starting at its ``rank``.
    """

    def __init__(self, dataset: MultimodalDataset, batch_size: int, seed: int, epoch: int,
                 shuffle: bool = True, drop_last: bool = True, rank: int = 0, world: int = 1):
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world

    def __len__(self) -> int:
        n = len(self.dataset)
        full = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return full // self.world

    def order(self) -> Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(n, generator=g)

    def iterate(self, start: int = 0) -> Iterator[Batch]:
        """Yield this process's batches, skipping the first ``start`` of them."""
        order = self.order()
        for i in range(start, len(self)):
            j = i * self.world + self.rank
            yield self.dataset.batch(order[j * self.batch_size:(j + 1) * self.batch_size])

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate(0)


def iterate_batches(dataset: MultimodalDataset, batch_size: int) -> Iterator[Batch]:
    """The whole dataset in order, in batches (for evaluation)."""
    for start in range(0, len(dataset), batch_size):
        yield dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))))
