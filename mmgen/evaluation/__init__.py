"""The evaluation engine (SPEC section 3): metrics are plugins, this package runs them.

A metric is registered through ``register_metrics`` as ``factory(cfg) -> Metric`` and called
with an :class:`EvalContext`, which owns what several metrics share (the joint pass, the cross
pass, the real images' feature moments: :mod:`.context`) and computes each at most once.

The whole evaluation runs in a forked RNG, so that evaluating during training leaves the training
run's random stream untouched.

:mod:`.metric` holds the metric contract and the shared numerics (moments, Fréchet distance,
accuracies), :mod:`.context` the context and its passes; :mod:`.selection` turns metric names and
options into metrics through the registry, and :mod:`.driver` runs them (:func:`evaluate`), writes
the report and evaluates during training. Everything is importable from ``mmgen.evaluation``.
"""

from __future__ import annotations

from mmgen.evaluation.context import CrossPass, EvalContext, JointPass, memoized_encoders
from mmgen.evaluation.driver import EvalResult, evaluate, evaluate_during_training, evaluate_run, jsonable, write_report
from mmgen.evaluation.metric import (Metric, MetricSkipped, Moments, accuracy, coherence_pairs, conditioning_subsets,
                                     frechet_distance, moments_distance, nanmean, warn_if_few_samples)
from mmgen.evaluation.selection import (build_metrics, check_metric_names, metric_config,
                                        metric_options_used, metric_output_shapes, metric_outputs,
                                        metric_presentation, parse_metric_names)

__all__ = ["CrossPass", "EvalContext", "EvalResult", "JointPass", "Metric", "MetricSkipped", "Moments",
           "accuracy", "build_metrics", "check_metric_names", "coherence_pairs", "conditioning_subsets", "evaluate",
           "evaluate_during_training", "evaluate_run", "frechet_distance", "jsonable", "memoized_encoders",
           "metric_config", "metric_options_used", "metric_output_shapes", "metric_outputs", "metric_presentation",
           "moments_distance", "nanmean", "parse_metric_names", "warn_if_few_samples", "write_report"]
