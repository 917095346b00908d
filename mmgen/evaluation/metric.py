"""The metric contract and the numbers metrics share.

A metric is a :class:`Metric` (or raises :class:`MetricSkipped` when it cannot run here); the
functions are the numerics several metrics need: running feature moments and the Fréchet
distance between them, the (subset, target) pairs of cross coherence, accuracies and means that
tolerate missing values.
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mmgen.classifiers import balanced_accuracy
from mmgen.errors import MMGenWarning
from mmgen.latent import nonempty_subsets

if TYPE_CHECKING:
    from mmgen.evaluation.context import EvalContext


class MetricSkipped(Exception):
    """Raised by a metric that cannot run here (FID without Inception weights, ...).

    The evaluation records ``{"skipped": reason}`` for it and goes on.
    """


class Metric(abc.ABC):
    """Base class of evaluation metrics.

    ``__call__(ctx)`` returns a dict of JSON-able values: floats (one number each), lists (a
    number per modality, an M x M matrix, ...), bools or short strings. ``requires_classifiers``
    tells the driver whether the digit classifiers must be found or trained first; ``outputs``,
    optional, names the keys the dict may hold.
    """

    name: str = "metric"
    requires_classifiers: bool = True
    #: The keys ``__call__`` may return, so that a bench file's table columns and curves are
    #: checked before anything runs; empty (not declared): any key is accepted.
    outputs: tuple[str, ...] = ()
    #: Whether a larger (``"higher"``) or a smaller (``"lower"``: distances, errors, NLLs) number
    #: is better: a bench table's arrow and which mean it bolds.
    better: str = "higher"
    #: A bench table's default columns for this metric, ``(key, label)`` pairs (``key`` may index
    #: a list: ``mean_by_size/0``); empty: every single number the metric reports.
    headlines: tuple[tuple[str, str], ...] = ()

    @classmethod
    def output_shapes(cls, num_modalities: int) -> dict[str, tuple[int, ...]]:
        """The length of each list-valued output with ``num_modalities`` modalities, per level of
        nesting (``(M,)``: a number per modality, ``(M, M)``: a matrix), so that a bench file's
        index into it (``metric/key/i``) is checked before anything runs. An output left out
        (the default: all) is not checked."""
        return {}

    @abc.abstractmethod
    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        """Compute the metric on ``ctx``."""


# ----------------------------------------------------------------------------------------------
# Numerics
# ----------------------------------------------------------------------------------------------
class Moments:
    """Running mean and covariance of feature vectors ``(B, F)``, accumulated in float64.

    Values are shifted by the first batch's mean before accumulating, which keeps the
    sum-of-outer-products formula accurate when features have a large common offset.
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift: Tensor | None = None
        self.sum: Tensor | None = None  # (F,)
        self.outer: Tensor | None = None  # (F, F)

    def update(self, x: Tensor) -> None:
        """Add a batch of feature vectors ``(B, F)``."""
        if x.size(0) == 0:
            return
        x = x.detach().to("cpu", torch.float64)
        if self.shift is None:
            self.shift = x.mean(0)
            self.sum = torch.zeros_like(self.shift)
            self.outer = torch.zeros(x.size(1), x.size(1), dtype=torch.float64)
        x = x - self.shift
        self.n += x.size(0)
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def mean(self) -> Tensor:
        """The mean ``(F,)``."""
        return self.shift + self.sum / self.n

    def cov(self) -> Tensor:
        """Unbiased covariance ``(F, F)``."""
        m = self.sum / self.n
        return (self.outer - self.n * torch.outer(m, m)) / max(self.n - 1, 1)


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2) (Dowson & Landau 1982):

        |mu1 - mu2|^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2})

    (cov1 cov2)^{1/2} is not symmetric, but its trace equals that of the symmetric PSD matrix
    (cov1^{1/2} cov2 cov1^{1/2})^{1/2}, whose eigenvalues ``eigh`` finds stably; no scipy needed.
    """
    mu1, mu2, cov1, cov2 = (t.to(torch.float64) for t in (mu1, mu2, cov1, cov2))
    w, v = torch.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    inner = root1 @ cov2 @ root1
    trace_root = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    value = float(diff @ diff + torch.trace(cov1) + torch.trace(cov2) - 2 * trace_root)
    return max(value, 0.0)  # rounding can leave -1e-12 for identical sets


def moments_distance(a: Moments, b: Moments) -> float:
    """:func:`frechet_distance` between two feature sets' moments (NaN if either has < 2 rows)."""
    if a.n < 2 or b.n < 2:
        return float("nan")
    return frechet_distance(a.mean(), a.cov(), b.mean(), b.cov())


def warn_if_few_samples(metric: str, moments: Sequence[Moments]) -> None:
    """A one-line :class:`MMGenWarning` when a Fréchet distance compares fewer samples than
    features: the covariances are then singular and the distance biased upward, by an amount
    that depends on the sample counts, so only distances at the same counts compare."""
    used = [m for m in moments if m.n >= 2 and m.sum is not None]
    if not used:
        return
    fewest, features = min(m.n for m in used), used[0].sum.numel()
    if fewest <= features:
        warnings.warn(f"{metric}: {fewest} samples for {features} features: the covariances are singular and "
                      f"{metric.upper()} is biased upward; compare only at equal sample counts (evaluate's --n and "
                      f"--n-test, a bench's evaluate.n and n_test; more than {features} of each for a stable value)", MMGenWarning, stacklevel=2)


def conditioning_subsets(num_modalities: int) -> list[tuple[int, ...]]:
    """Every proper non-empty subset S of the modalities (those that leave a target t not in S)."""
    return nonempty_subsets(num_modalities, num_modalities - 1)


def coherence_pairs(num_modalities: int) -> list[tuple[tuple[int, ...], int]]:
    """Every (S, t) of cross coherence: S a proper non-empty subset, t a modality not in S."""
    return [(s, t) for s in conditioning_subsets(num_modalities) for t in range(num_modalities) if t not in s]


def accuracy(pred: Tensor, label: Tensor, num_classes: int) -> tuple[float, float]:
    """Plain and class-balanced accuracy (NaN when nothing is labelled)."""
    if label.numel() == 0:
        return float("nan"), float("nan")
    return float((pred == label).double().mean()), balanced_accuracy(pred, label, num_classes)


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN if none)."""
    good = [v for v in values if v is not None and math.isfinite(v)]
    return sum(good) / len(good) if good else float("nan")

