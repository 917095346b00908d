"""The evaluation driver: runs metrics on a model, writes the JSON report, evaluates during training.

The whole evaluation runs in a forked RNG, so that evaluating during training leaves the
training run's random stream untouched.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor

from mmgen.checkpoint import atomic_write_text
from mmgen.classifiers import ClassifierSet
from mmgen.data import MultimodalDataset
from mmgen.errors import MMGenError, PluginError
from mmgen.evaluation.context import EvalContext
from mmgen.evaluation.metric import Metric, MetricSkipped
from mmgen.evaluation.selection import build_metrics
from mmgen.registry import Registry


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
                if not isinstance(results[metric.name], dict):
                    plugin = getattr(metric, "plugin", None)
                    raise PluginError(f"metric '{metric.name}'" + (f" (plugin '{plugin}')" if plugin else "")
                                      + f" must return a dict of {{key: value}}; got a {type(results[metric.name]).__name__}")
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
