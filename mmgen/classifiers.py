"""Per-modality digit classifiers: the judges of coherence and the feature extractors of FD.

SPEC section 3: coherence is measured by classifiers the project trains itself on the training
split, one per modality, and their test accuracy is reported with every evaluation. A classifier
set is stored as plain data (state dicts, the dataset's fingerprint, the modalities, accuracies)
so it loads with ``torch.load(weights_only=True)``. It is keyed by the training split's
fingerprint: classifiers trained on other data would judge the wrong digits, so loading them for
a different dataset is an error, never a silent mismatch.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor, nn
from torch.nn import functional as F

from mmgen import __version__
from mmgen.checkpoint import atomic_save, safe_load
from mmgen.data import ModalitySpec, MultimodalDataset
from mmgen.errors import DataError, MMGenError

FORMAT = "mmgen-classifiers-v1"


class ClassifierMismatchError(MMGenError):
    """Stored classifiers were trained on another dataset (or other modalities)."""


@dataclass
class ClassifierConfig:
    """How the classifiers are trained: epochs over the training split, Adam, batch size."""

    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    width: int = 32  # channels of the first conv; the next two have twice as many
    features: int = 128  # size of the penultimate layer (the FD features)
    min_steps: int = 600  # a small training split still gets this many updates per classifier


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------
class DigitClassifier(nn.Module):
    """A small CNN for image modalities ``(C, H, W)``, an MLP for anything else.

    ``forward`` returns ``(logits (B, K), features (B, F))``: the features are the penultimate
    layer after its ReLU, the representation the Fréchet distance (FD) compares.
    """

    def __init__(self, shape: tuple[int, ...], num_classes: int, width: int = 32, features: int = 128):
        super().__init__()
        self.shape = tuple(shape)
        if len(self.shape) == 3:
            c = self.shape[0]
            # Three stride-2 convs: 28 -> 14 -> 7 -> 4; cheap enough to judge 10^5 samples on a CPU.
            self.body = nn.Sequential(
                nn.Conv2d(c, width, 3, 2, 1), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),
                nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.ReLU(),
                nn.Flatten(),
            )
        else:
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(self.shape), 256), nn.ReLU())
        with torch.no_grad():
            flat = self.body(torch.zeros(1, *self.shape)).size(-1)
        self.penultimate = nn.Sequential(nn.Dropout(0.1), nn.Linear(flat, features), nn.ReLU())
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.penultimate(self.body(x))  # (B, F)
        return self.head(h), h


class ClassifierSet(nn.Module):
    """One :class:`DigitClassifier` per modality plus the metadata that identifies its data."""

    def __init__(self, nets: list[nn.Module], meta: dict[str, Any]):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.meta = meta

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the training split the classifiers learned from."""
        return str(self.meta.get("fingerprint", ""))

    @property
    def num_classes(self) -> int:
        """Number of digit classes (largest training label + 1)."""
        return int(self.meta["num_classes"])

    @torch.no_grad()
    def classify(self, m: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """Predicted class ``(B,)`` and features ``(B, F)`` of modality ``m``'s images in [0, 1]."""
        logits, feats = self.nets[m](x)
        return logits.argmax(-1), feats

    def summary(self) -> dict[str, Any]:
        """The plain metadata an evaluation report carries (no weights)."""
        keys = ("fingerprint", "test_fingerprint", "num_classes", "test_accuracy", "test_balanced_accuracy",
                "train", "path")
        return {k: self.meta.get(k) for k in keys}


# ----------------------------------------------------------------------------------------------
# Where classifiers live
# ----------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$MMGEN_CACHE``, else ``$XDG_CACHE_HOME/mmgen``, else ``~/.cache/mmgen`` (as for datasets)."""
    if os.environ.get("MMGEN_CACHE"):
        return Path(os.environ["MMGEN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmgen"


def dataset_fingerprint(dataset: MultimodalDataset) -> str:
    """The dataset's own fingerprint, or a content hash when its plugin did not set one."""
    if dataset.fingerprint:
        return dataset.fingerprint
    h = hashlib.sha1()
    for t in [dataset.labels, *dataset.images]:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def default_path(train_set: MultimodalDataset) -> Path:
    """``<cache>/classifiers/<training split fingerprint>.pt``."""
    return cache_dir() / "classifiers" / f"{dataset_fingerprint(train_set)}.pt"


# ----------------------------------------------------------------------------------------------
# Training and testing
# ----------------------------------------------------------------------------------------------
def _num_classes(train_set: MultimodalDataset) -> int:
    labels = train_set.labels
    if len(labels) == 0 or bool((labels < 0).any()):
        raise DataError("classifiers: the training split has unlabelled tuples (label -1); coherence needs labels")
    return int(labels.max()) + 1


def balanced_accuracy(pred: Tensor, label: Tensor, num_classes: int) -> float:
    """Mean per-class recall over the classes present in ``label`` (MultiVae's coherence)."""
    recalls = [(pred[label == c] == c).double().mean() for c in range(num_classes) if bool((label == c).any())]
    return float(torch.stack(recalls).mean()) if recalls else float("nan")


@torch.no_grad()
def classifier_accuracy(classifiers: ClassifierSet, dataset: MultimodalDataset, device: torch.device | str,
                  batch_size: int = 512) -> tuple[list[float], list[float]]:
    """Plain and class-balanced accuracy of every modality's classifier on ``dataset``."""
    classifiers.eval()
    acc, bal = [], []
    for m, images in enumerate(dataset.images):
        preds = []
        for start in range(0, len(dataset), batch_size):
            x = images[start:start + batch_size].to(device).float() / 255.0  # (B, C, H, W)
            preds.append(classifiers.classify(m, x)[0].cpu())
        pred = torch.cat(preds)
        keep = dataset.mask[:, m] & (dataset.labels >= 0)
        acc.append(float((pred[keep] == dataset.labels[keep]).double().mean()))
        bal.append(balanced_accuracy(pred[keep], dataset.labels[keep], classifiers.num_classes))
    return acc, bal


def train_classifiers(train_set: MultimodalDataset, test_set: MultimodalDataset, cfg: ClassifierConfig | None = None,
                      device: torch.device | str = "cpu", console: Console | None = None,
                      progress: bool = True) -> ClassifierSet:
    """Train one classifier per modality on the training split and test it on the test split."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cfg = cfg or ClassifierConfig()
    num_classes = _num_classes(train_set)
    n = len(train_set)
    per_epoch = max(1, n // cfg.batch_size)
    steps = max(cfg.epochs * per_epoch, cfg.min_steps)
    nets: list[nn.Module] = []
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console or Console(stderr=True), disable=not progress, transient=False)
    # Classifier training must not move the caller's random stream (a training run's, say).
    with bar, torch.random.fork_rng(devices=[]):
        for m, spec in enumerate(train_set.modalities):
            torch.manual_seed(cfg.seed * 1000 + m)
            net = DigitClassifier(spec.shape, num_classes, cfg.width, cfg.features).to(device)
            opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
            observed = torch.nonzero(train_set.mask[:, m]).squeeze(1)
            g = torch.Generator().manual_seed(cfg.seed * 1000 + m)
            task = bar.add_task(f"classifier {spec.name}", total=steps)
            net.train()
            order, pos = observed[torch.randperm(len(observed), generator=g)], 0
            for _ in range(steps):
                if pos + cfg.batch_size > len(order):
                    order, pos = observed[torch.randperm(len(observed), generator=g)], 0
                idx = order[pos:pos + cfg.batch_size]
                pos += cfg.batch_size
                x = train_set.images[m][idx].to(device).float() / 255.0  # (B, C, H, W)
                y = train_set.labels[idx].to(device)
                loss = F.cross_entropy(net(x)[0], y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.advance(task)
            net.eval()
            nets.append(net)
    meta = {
        "format": FORMAT,
        "mmgen_version": __version__,
        "fingerprint": dataset_fingerprint(train_set),
        "test_fingerprint": dataset_fingerprint(test_set),
        "modalities": [{"name": s.name, "shape": list(s.shape)} for s in train_set.modalities],
        "num_classes": num_classes,
        "train": {**asdict(cfg), "steps": steps, "train_size": n},
    }
    classifiers = ClassifierSet(nets, meta).to(device)
    meta["test_accuracy"], meta["test_balanced_accuracy"] = classifier_accuracy(classifiers, test_set, device)
    return classifiers


# ----------------------------------------------------------------------------------------------
# Save, load, find
# ----------------------------------------------------------------------------------------------
def save_classifiers(classifiers: ClassifierSet, path: str | Path) -> Path:
    """Write the classifiers atomically as plain data (loadable with ``weights_only=True``)."""
    path = Path(path)
    meta = {k: v for k, v in classifiers.meta.items() if k != "path"}
    state = [{k: v.detach().cpu() for k, v in net.state_dict().items()} for net in classifiers.nets]
    atomic_save({**meta, "state_dicts": state}, path)
    classifiers.meta["path"] = str(path)
    return path


def load_classifiers(path: str | Path, train_set: MultimodalDataset | None = None,
                     device: torch.device | str = "cpu") -> ClassifierSet:
    """Read classifiers; with ``train_set``, refuse ones trained on any other data."""
    path = Path(path)
    blob = safe_load(path, "classifiers file", "is corrupt or not a classifiers file")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise MMGenError(f"{path} is not an mmgen classifiers file (expected format {FORMAT})")
    modalities = [ModalitySpec(m["name"], tuple(m["shape"])) for m in blob["modalities"]]
    if train_set is not None:
        fingerprint = dataset_fingerprint(train_set)
        if blob["fingerprint"] != fingerprint:
            raise ClassifierMismatchError(
                f"classifiers {path} were trained on dataset {blob['fingerprint']}, but this dataset's training "
                f"split is {fingerprint}; train matching ones with `mmgen classifiers train` (or omit --classifiers)")
        if modalities != list(train_set.modalities):
            raise ClassifierMismatchError(f"classifiers {path} are for modalities {[m.name for m in modalities]} "
                                          f"with other shapes than this dataset's")
    train = blob.get("train", {})
    nets = []
    # Building a network draws its (discarded) initial weights: keep the caller's stream intact.
    with torch.random.fork_rng(devices=[]):
        for spec, state in zip(modalities, blob["state_dicts"], strict=True):
            net = DigitClassifier(spec.shape, blob["num_classes"], train.get("width", 32), train.get("features", 128))
            net.load_state_dict(state)
            nets.append(net.eval())
    meta = {k: v for k, v in blob.items() if k != "state_dicts"}
    meta["path"] = str(path)
    return ClassifierSet(nets, meta).to(device).eval()


def ensure_classifiers(train_set: MultimodalDataset, test_set: MultimodalDataset, path: str | Path | None = None,
                       device: torch.device | str = "cpu", console: Console | None = None,
                       cfg: ClassifierConfig | None = None, progress: bool = True,
                       on_train: Callable[[Path], None] | None = None) -> ClassifierSet:
    """The classifiers for ``train_set``: loaded from ``path`` (default: the cache, keyed by the
    dataset's fingerprint), or trained and saved there on first use."""
    path = Path(path) if path else default_path(train_set)
    if path.is_file():
        return load_classifiers(path, train_set, device)
    if on_train is not None:
        on_train(path)
    classifiers = train_classifiers(train_set, test_set, cfg, device, console, progress)
    save_classifiers(classifiers, path)
    return classifiers
