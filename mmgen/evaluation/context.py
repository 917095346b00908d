"""What a metric sees: :class:`EvalContext` and the passes it shares between metrics.

The context owns what several metrics share and computes each at most once, in batches on the
evaluation device:

- the *joint pass*: N unconditional samples (prior Langevin for an EBM prior), each modality's
  predicted class and the running moments of its classifier features (joint coherence, FD);
- the *cross pass*: for every proper non-empty subset S of modalities and every test tuple, the
  targets t not in S generated from x_S, their predicted classes and feature moments (cross
  coherence, conditional FD);
- the real test images' feature moments (the FD reference).

Each pass reseeds the random stream from the evaluation seed, so a number does not depend on
which metrics ran before it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mmgen.classifiers import ClassifierSet
from mmgen.data import Batch, MultimodalDataset
from mmgen.errors import MMGenError
from mmgen.evaluation.metric import Moments, accuracy, coherence_pairs, conditioning_subsets


@dataclass
class JointPass:
    """Classifier outputs on the N unconditional samples."""

    preds: Tensor  # (N, M) predicted class of each modality's sample
    moments: list[Moments]  # per modality, classifier features


@dataclass
class CrossPass:
    """Classifier outputs on cross-generated targets, for every (S, t) of :func:`coherence_pairs`."""

    labels: Tensor  # (N,) true labels of the conditioning test tuples (-1 unknown)
    preds: dict[tuple[tuple[int, ...], int], Tensor]  # (S, t) -> (N,)
    valid: dict[tuple[int, ...], Tensor]  # S -> (N,) bool: every modality of S observed
    moments: dict[tuple[tuple[int, ...], int], Moments]  # (S, t) -> features of generated x_t

    def accuracy(self, subset: tuple[int, ...], target: int, num_classes: int) -> tuple[float, float]:
        """Plain and class-balanced coherence of generating ``target`` from ``subset``."""
        keep = self.valid[subset] & (self.labels >= 0)
        return accuracy(self.preds[(subset, target)][keep], self.labels[keep], num_classes)


class _MemoEncoder(nn.Module):
    """An encoder that returns its last outputs again for the very same input tensors."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.memo: list[tuple[Tensor, Any]] = []

    def forward(self, x: Tensor) -> Any:
        for key, value in self.memo:
            if key is x:
                return value
        value = self.inner(x)
        self.memo = [*self.memo[-1:], (x, value)]  # the real and the blanked input of one batch
        return value


@contextlib.contextmanager
def memoized_encoders(model: Any) -> Iterator[None]:
    """Within the block, each encoder runs once per input tensor instead of once per call.

    ``model.encode(x, mask)`` runs every encoder on every modality whatever the mask, so
    conditioning one batch on all 2^M - 2 subsets would encode it 2^M - 2 times. Passing the
    same tensor objects (the batch's images, or one blank per modality) makes every call after
    the first a lookup; the model itself is untouched once the block ends. Models without an
    ``encoders`` ModuleList are left alone.
    """
    encoders = getattr(model, "encoders", None)
    if not isinstance(encoders, nn.ModuleList):
        yield
        return
    model.encoders = nn.ModuleList([_MemoEncoder(e) for e in encoders])
    try:
        yield
    finally:
        model.encoders = encoders


class _Task:
    """One progress-bar task (a no-op without a progress display)."""

    def __init__(self, progress: Any, description: str, total: int):
        self.progress = progress
        self.id = progress.add_task(description, total=total) if progress is not None else None

    def advance(self, k: int = 1) -> None:
        if self.id is not None:
            self.progress.advance(self.id, k)


@dataclass
class EvalContext:
    """What a metric sees: the model, the data, the classifiers and the evaluation settings.

    ``n`` is the number of unconditional samples, ``n_test`` caps the test tuples used (0 = all),
    ``refine`` turns on the inference method's refinement (posterior Langevin) in cross
    generation. ``generator`` is a seeded generator for a metric's own randomness (subsampling);
    sampling from the model uses the global stream, reseeded per pass.
    """

    model: Any
    train_set: MultimodalDataset
    test_set: MultimodalDataset
    classifiers: ClassifierSet | None
    device: torch.device | str = "cpu"
    n: int = 10_000
    batch_size: int = 256
    seed: int = 0
    generator: torch.Generator | None = None
    refine: bool = True
    n_test: int = 0
    progress: Any = None
    cache: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def num_modalities(self) -> int:
        """M."""
        return len(self.test_set.modalities)

    @property
    def names(self) -> list[str]:
        """Modality names, in order."""
        return [m.name for m in self.test_set.modalities]

    @property
    def test_size(self) -> int:
        """Test tuples used."""
        return min(self.n_test or len(self.test_set), len(self.test_set))

    def reseed(self, offset: int) -> None:
        """Seed the global stream for one pass: the pass's samples depend only on (seed, pass)."""
        torch.manual_seed(self.seed * 7919 + offset)

    def task(self, description: str, total: int) -> _Task:
        """A progress-bar task (shown by ``mmgen evaluate``)."""
        return _Task(self.progress, description, total)

    def require_classifiers(self) -> ClassifierSet:
        """The classifiers, or an error saying this metric needs them."""
        if self.classifiers is None:
            raise MMGenError("this metric needs the digit classifiers; pass them to evaluate()")
        return self.classifiers

    def test_batches(self, limit: int | None = None, dataset: MultimodalDataset | None = None) -> Iterator[Batch]:
        """Batches of the test set (or ``dataset``) on the device, floats in [0, 1]."""
        dataset = dataset or self.test_set
        n = min(limit if limit is not None else self.test_size, len(dataset))
        for start in range(0, n, self.batch_size):
            yield dataset.batch(torch.arange(start, min(start + self.batch_size, n))).to(self.device)

    def hide(self, batch: Batch, subset: tuple[int, ...], blanks: Sequence[Tensor] | None = None) -> Batch:
        """``batch`` as the model may see it when given ``subset``: other modalities zeroed (the
        tensors ``blanks`` when given), unobserved in the mask, labels unknown (-1)."""
        given = torch.zeros_like(batch.mask)
        given[:, list(subset)] = True
        given &= batch.mask  # (B, M)
        x = [x_m if m in subset else (blanks[m] if blanks is not None else torch.zeros_like(x_m))
             for m, x_m in enumerate(batch.x)]
        return Batch(x, given, torch.full_like(batch.label, -1))

    @staticmethod
    def observing(batch: Batch, subset: tuple[int, ...]) -> Batch | None:
        """The rows of ``batch`` that observe every modality of ``subset`` (``batch`` itself when
        all do, ``None`` when none do): what conditional generation from ``subset`` is scored on."""
        ok = batch.mask[:, list(subset)].all(1)
        if bool(ok.all()):
            return batch
        return batch.select(ok) if bool(ok.any()) else None

    def generate_targets(self, batch: Batch, subset: tuple[int, ...], targets: Sequence[int],
                         blanks: Sequence[Tensor] | None = None) -> dict[int, Tensor]:
        """Generate each target modality ``(B, *shape_t)`` from the modalities in ``subset``.

        The modalities outside ``subset`` and the labels are blanked before the model sees the
        batch (:meth:`hide`): no component can peek at what it is asked to generate. Every row
        must observe some modality of ``subset`` (:meth:`observing` selects such rows).
        """
        hidden = self.hide(batch, subset, blanks)
        given = hidden.mask
        z, w = self.model.conditional_latents(hidden, given, refine=self.refine)  # (B, D), (B, M, W)
        return {t: self.model.decode(t, z, None if w is None else w[:, t]).clamp(0, 1) for t in targets}

    # -- the shared passes ---------------------------------------------------------------------
    def _shared_pass(self, name: str, seed_offset: int, compute: Callable[[Any], Any]) -> Any:
        """``compute(classifiers)`` once per evaluation, from its own seed offset (so a number does
        not depend on which other metrics ran), cached as ``name`` and timed as ``<name>_pass``."""
        if name not in self.cache:
            classifiers = self.require_classifiers()
            t0 = time.perf_counter()
            self.reseed(seed_offset)
            self.cache[name] = compute(classifiers)
            self.timings[f"{name}_pass"] = time.perf_counter() - t0
        return self.cache[name]

    def joint(self) -> JointPass:
        """Classify N unconditional samples (computed once per evaluation)."""
        return self._shared_pass("joint", 1, self._joint_pass)

    def _joint_pass(self, classifiers: ClassifierSet) -> JointPass:
        M = self.num_modalities
        preds, moments = [], [Moments() for _ in range(M)]
        task = self.task("joint samples", self.n)
        for start in range(0, self.n, self.batch_size):
            b = min(self.batch_size, self.n - start)
            xs = self.model.generate(b, self.device)  # M x (b, *shape_m)
            row = []
            for m, x in enumerate(xs):
                p, f = classifiers.classify(m, x)
                row.append(p.cpu())
                moments[m].update(f)
            preds.append(torch.stack(row, 1))  # (b, M)
            task.advance(b)
        return JointPass(torch.cat(preds), moments)

    def cross(self) -> CrossPass:
        """Classify every target generated from every proper subset, for every test tuple (once)."""
        return self._shared_pass("cross", 2, self._cross_pass)

    def _cross_pass(self, classifiers: ClassifierSet) -> CrossPass:
        M = self.num_modalities
        subsets = conditioning_subsets(M)
        pairs = coherence_pairs(M)
        preds: dict[Any, list[Tensor]] = {p: [] for p in pairs}
        moments = {p: Moments() for p in pairs}
        valid: dict[Any, list[Tensor]] = {s: [] for s in subsets}
        labels = []
        task = self.task("cross generation", len(subsets) * self.test_size)
        # Batches outside, subsets inside: each test batch moves to the device once and each
        # encoder sees it (and its blank) once, not once per subset.
        with memoized_encoders(self.model):
            for batch in self.test_batches():
                labels.append(batch.label.cpu())
                blanks = [torch.zeros_like(x) for x in batch.x]
                for s in subsets:
                    ok = batch.mask[:, list(s)].all(1)  # (B,)
                    valid[s].append(ok.cpu())
                    targets = [t for t in range(M) if t not in s]
                    # Only rows that observe all of s are scored (and generated from: a row
                    # that observes none of s has no posterior to sample).
                    part = self.observing(batch, s)
                    if part is None:
                        for t in targets:
                            preds[(s, t)].append(torch.full(ok.shape, -1, dtype=torch.long))
                    else:
                        part_blanks = blanks if part is batch else [b[ok] for b in blanks]
                        for t, x in self.generate_targets(part, s, targets, part_blanks).items():
                            p, f = classifiers.classify(t, x)
                            if part is not batch:  # back to one prediction per row, -1 where unscored
                                p = torch.full(ok.shape, -1, dtype=p.dtype, device=p.device).masked_scatter(ok, p)
                            preds[(s, t)].append(p.cpu())
                            moments[(s, t)].update(f)
                    task.advance(len(batch))
        return CrossPass(
            torch.cat(labels), {k: torch.cat(v) for k, v in preds.items()},
            {k: torch.cat(v) for k, v in valid.items()}, moments)

    def real(self) -> list[Moments]:
        """Feature moments of the real test images, per modality (the FD reference)."""
        if "real" not in self.cache:
            classifiers = self.require_classifiers()
            moments = [Moments() for _ in range(self.num_modalities)]
            for batch in self.test_batches():
                for m, x in enumerate(batch.x):
                    moments[m].update(classifiers.classify(m, x)[1][batch.mask[:, m]])
            self.cache["real"] = moments
        return self.cache["real"]

