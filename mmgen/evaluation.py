"""The evaluation engine (SPEC section 3): metrics are plugins, this module runs them.

A metric is registered through ``register_metrics`` as ``factory(cfg) -> Metric`` and called
with an :class:`EvalContext`. The context owns what several metrics share and computes each at
most once, in batches on the evaluation device:

- the *joint pass*: N unconditional samples (prior Langevin for an EBM prior), each modality's
  predicted class and the running moments of its classifier features (joint coherence, FD);
- the *cross pass*: for every proper non-empty subset S of modalities and every test tuple, the
  targets t not in S generated from x_S, their predicted classes and feature moments (cross
  coherence, conditional FD);
- the real test images' feature moments (the FD reference).

Each pass reseeds the random stream from the evaluation seed, so a number does not depend on
which metrics ran before it, and the whole evaluation runs in a forked RNG so that evaluating
during training leaves the training run's random stream untouched.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from torch import Tensor, nn

from mmgen.checkpoint import atomic_write_text
from mmgen.classifiers import ClassifierSet, balanced_accuracy
from mmgen.data import Batch, MultimodalDataset
from mmgen.errors import MMGenError, did_you_mean
from mmgen.latent import nonempty_subsets
from mmgen.registry import Registry

#: What ``mmgen evaluate`` runs when ``--metrics`` is not given, in this order (others on request).
DEFAULT_METRICS = ("cross_coherence", "joint_coherence", "fd", "fid", "probe", "nll")


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


# ----------------------------------------------------------------------------------------------
# Shared passes
# ----------------------------------------------------------------------------------------------
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
    def joint(self) -> JointPass:
        """Classify N unconditional samples (computed once per evaluation)."""
        if "joint" not in self.cache:
            classifiers = self.require_classifiers()
            t0 = time.perf_counter()
            self.reseed(1)
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
            self.cache["joint"] = JointPass(torch.cat(preds), moments)
            self.timings["joint_pass"] = time.perf_counter() - t0
        return self.cache["joint"]

    def cross(self) -> CrossPass:
        """Classify every target generated from every proper subset, for every test tuple (once)."""
        if "cross" not in self.cache:
            classifiers = self.require_classifiers()
            t0 = time.perf_counter()
            self.reseed(2)
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
            self.cache["cross"] = CrossPass(
                torch.cat(labels), {k: torch.cat(v) for k, v in preds.items()},
                {k: torch.cat(v) for k, v in valid.items()}, moments)
            self.timings["cross_pass"] = time.perf_counter() - t0
        return self.cache["cross"]

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


# ----------------------------------------------------------------------------------------------
# Choosing metrics
# ----------------------------------------------------------------------------------------------
def parse_metric_names(text: str | None, registry: Registry) -> list[str]:
    """``"a,b"`` -> names, each checked against the registry (default: every registered metric)."""
    available = registry.names("metric")
    if not text:
        ordered = [m for m in DEFAULT_METRICS if m in available]
        return ordered + [m for m in available if m not in ordered]
    names = [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        if name not in available:
            raise MMGenError(f"--metrics: unknown metric '{name}'{did_you_mean(name, available)}; "
                             f"registered metrics: {', '.join(available) or '(none)'}")
    return list(dict.fromkeys(names))


def check_metric_names(registry: Registry, names: Sequence[str]) -> list[str]:
    """Config-validation helper: one error line per unknown metric name (empty when all are known)."""
    available = registry.names("metric")
    return [f"unknown metric '{n}'{did_you_mean(str(n), available)}; registered metrics: {', '.join(available)}"
            for n in names if n not in available]


def metric_outputs(registry: Registry, name: str) -> tuple[str, ...]:
    """The keys metric ``name`` declares it reports (:attr:`Metric.outputs`; empty: not declared)."""
    return tuple(getattr(registry.get("metric", name).factory, "outputs", ()) or ())


def metric_config(registry: Registry, name: str, params: dict[str, Any]) -> Any:
    """Instantiate metric ``name``'s config dataclass from ``params``; unknown keys are errors."""
    component = registry.get("metric", name)
    if component.config is None:
        if params:
            raise MMGenError(f"metric '{name}' takes no options, got {', '.join(params)}")
        return None
    valid = [f.name for f in dataclasses.fields(component.config)]
    for key in params:
        if key not in valid:
            raise MMGenError(f"{name}.{key}: unknown option{did_you_mean(str(key), valid)}; "
                             f"valid options of metric '{name}': {', '.join(valid)}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(component.config), params))
    except OmegaConfBaseException as exc:
        raise MMGenError(f"metric '{name}': invalid option ({str(exc).splitlines()[0]})") from None
    except ValueError as exc:  # the config's own range checks ("k: must be > 0, got 0")
        raise MMGenError(f"{name}.{exc}") from None


def build_metrics(registry: Registry, names: Sequence[str], options: dict[str, dict[str, Any]] | None = None) -> list[Metric]:
    """Build the named metrics through the registry; ``options[name]`` configures each."""
    options = dict(options or {})
    stray = [k for k in options if k not in names]
    if stray:
        raise MMGenError(f"options given for metric '{stray[0]}', which is not being run (running: {', '.join(names)})")
    metrics = []
    for name in names:
        params = options.get(name) or {}
        if not isinstance(params, dict):
            raise MMGenError(f"metric options must look like {name}.key=value, got {name}={params!r}")
        metric = registry.get("metric", name).factory(metric_config(registry, name, params))
        metric.name = name
        metrics.append(metric)
    return metrics


def metric_options_used(metrics: Sequence[Metric]) -> dict[str, Any]:
    """Each metric's resolved options (its ``cfg`` dataclass, when it keeps one), for reports."""
    out = {}
    for m in metrics:
        cfg = getattr(m, "cfg", None)
        out[m.name] = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
    return out


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """Each metric's values (or ``{"skipped": reason}``), wall-clock seconds per metric and pass."""

    metrics: dict[str, dict[str, Any]]
    timings: dict[str, float]

    def scalars(self) -> dict[str, float]:
        """``"metric/key" -> number`` for every single-number value (for logs and tables)."""
        out = {}
        for name, values in self.metrics.items():
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[f"{name}/{key}"] = float(value)
        return out


def _device_of(device: torch.device | str) -> list[int]:
    d = torch.device(device)
    if d.type == "cuda":
        return [d.index if d.index is not None else torch.cuda.current_device()]
    return []


def evaluate(model: Any, train_set: MultimodalDataset, test_set: MultimodalDataset, metrics: Sequence[Metric], *,
             classifiers: ClassifierSet | None = None, device: torch.device | str = "cpu", n: int = 10_000,
             batch_size: int = 256, seed: int = 0, refine: bool = True, n_test: int = 0,
             console: Console | None = None, progress: bool = True) -> EvalResult:
    """Run ``metrics`` on ``model`` (in eval mode, without gradients, under ``seed``).

    A metric that raises :class:`MetricSkipped` is recorded as skipped; any other error stops
    the evaluation. The model's train/eval mode and the caller's RNG state are restored.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if any(m.requires_classifiers for m in metrics) and classifiers is None:
        need = ", ".join(m.name for m in metrics if m.requires_classifiers)
        raise MMGenError(f"metrics {need} need the digit classifiers (mmgen.classifiers.ensure_classifiers)")
    if n < 1 or batch_size < 1:
        raise MMGenError("evaluation: n and batch_size must be >= 1")
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console or Console(stderr=True), disable=not progress)
    was_training = model.training if hasattr(model, "training") else False
    if hasattr(model, "eval"):
        model.eval()
    if classifiers is not None:
        classifiers.to(device).eval()
    results: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    try:
        with torch.random.fork_rng(devices=_device_of(device)), torch.no_grad(), bar:
            ctx = EvalContext(model, train_set, test_set, classifiers, device, n, batch_size, seed,
                              refine=refine, n_test=n_test, progress=bar if progress else None)
            for metric in metrics:
                t0 = time.perf_counter()
                try:
                    results[metric.name] = metric(ctx)
                except MetricSkipped as skip:
                    results[metric.name] = {"skipped": str(skip)}
                timings[metric.name] = round(time.perf_counter() - t0, 3)
            timings.update({k: round(v, 3) for k, v in ctx.timings.items()})
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    return EvalResult(results, timings)


def evaluate_run(run: Any, metrics: Sequence[Metric], **kwargs: Any) -> EvalResult:
    """:func:`evaluate` on a :class:`mmgen.run.LoadedRun` (its model and its two splits)."""
    return evaluate(run.model, run.train_set, run.test_set, metrics, **kwargs)


def jsonable(value: Any) -> Any:
    """Plain JSON data: tensors to lists, tuples to lists, NaN and infinities to null."""
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write an evaluation report as JSON, atomically."""
    path = Path(path)
    atomic_write_text(json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n", path)
    return path


# ----------------------------------------------------------------------------------------------
# Evaluation during training
# ----------------------------------------------------------------------------------------------
def evaluate_during_training(model: Any, train_set: MultimodalDataset, test_set: MultimodalDataset,
                             registry: Registry, run_dir: Path, step: int, epoch: int, *,
                             metrics: Sequence[str] = ("cross_coherence", "joint_coherence"), n: int = 1000,
                             n_test: int = 1000, device: torch.device | str = "cpu",
                             console: Console | None = None) -> dict[str, float]:
    """One periodic evaluation from inside the training loop.

    Finds (or trains, once, into the cache) the classifiers, runs ``metrics`` with ``n`` joint
    samples on at most ``n_test`` test tuples, appends ``{"step", "epoch", "metric/key": value}``
    to ``run_dir/eval.jsonl`` and returns those scalars. The model's mode and the training run's
    random stream are left as they were, so resumed runs stay bitwise identical.
    """
    from mmgen.classifiers import ensure_classifiers

    with torch.random.fork_rng(devices=_device_of(device)):
        built = build_metrics(registry, list(metrics))
        classifiers = None
        if any(m.requires_classifiers for m in built):
            classifiers = ensure_classifiers(train_set, test_set, device=device, console=console, progress=False)
        result = evaluate(model, train_set, test_set, built, classifiers=classifiers, device=device, n=n,
                          n_test=n_test, console=console, progress=False)
    record = {"step": step, "epoch": epoch, **result.scalars()}
    path = Path(run_dir) / "eval.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(jsonable(record)) + "\n")
    return record
