"""Choosing metrics: names parsed and checked against the registry, options checked, metrics built."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmgen.errors import MMGenError, did_you_mean
from mmgen.evaluation.metric import Metric
from mmgen.registry import Registry

def parse_metric_names(text: str | None, registry: Registry) -> list[str]:
    """``"a,b"`` -> names, each checked against the registry (default: every registered metric, in
    the order registered: the built-in plugin's first, as its hook lists them)."""
    available = registry.names("metric")
    if text is None:
        return registry.registered("metric")
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:  # `--metrics ''` (an empty shell variable, say) ran every metric
        raise MMGenError(f"--metrics: no metric named in '{text}'; leave the option out for all, or name some of: "
                         f"{', '.join(available) or '(none)'}")
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


def metric_presentation(registry: Registry, name: str) -> tuple[tuple[tuple[str, str], ...], str]:
    """How a bench table shows metric ``name``: its headline ``(key, label)`` pairs
    (:attr:`Metric.headlines`; empty: every number it reports) and which way is better
    (:attr:`Metric.better`)."""
    component = registry.get("metric", name)
    factory, who = component.factory, f"metric '{name}' (plugin '{component.plugin}')"
    declared = getattr(factory, "headlines", ()) or ()
    if isinstance(declared, (str, bytes)) or not all(
            isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
            for pair in declared):
        raise MMGenError(f"{who}: headlines must be (key, label) pairs, e.g. (('accuracy', 'latent probe'),), "
                         f"got {declared!r}")
    headlines = tuple((k, label) for k, label in declared)
    outputs = metric_outputs(registry, name)
    for key, _ in headlines:  # a headline its metric never reports would be a column empty in every run
        if outputs and key.split("/")[0] not in outputs:
            raise MMGenError(f"{who}: headline '{key}' names no output{did_you_mean(key.split('/')[0], outputs)}; "
                             f"it reports: {', '.join(outputs)}")
    better = getattr(factory, "better", "higher")
    if better not in ("higher", "lower"):
        raise MMGenError(f"{who}: better must be 'higher' or 'lower', got {better!r}")
    return headlines, better


def metric_output_shapes(registry: Registry, name: str, num_modalities: int) -> dict[str, tuple[int, ...]]:
    """The lengths of metric ``name``'s list-valued outputs with ``num_modalities`` modalities
    (:meth:`Metric.output_shapes`; empty: not declared)."""
    shapes = getattr(registry.get("metric", name).factory, "output_shapes", None)
    return dict(shapes(num_modalities)) if callable(shapes) else {}


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
        component = registry.get("metric", name)
        metric = component.factory(metric_config(registry, name, params))
        metric.name = name
        metric.plugin = component.plugin
        metrics.append(metric)
    return metrics


def metric_options_used(metrics: Sequence[Metric]) -> dict[str, Any]:
    """Each metric's resolved options (its ``cfg`` dataclass, when it keeps one), for reports."""
    out = {}
    for m in metrics:
        cfg = getattr(m, "cfg", None)
        out[m.name] = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
    return out

