"""The bench file: its schema, validation and the specification it describes."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgen.config import find_recipe, load_yaml
from mmgen.errors import ConfigError, MMGenError, did_you_mean


STATE_FILE = "bench.json"
CONFIG_FILE = "bench-config.yaml"
LOG_FILE = "bench.log"
CROSS_FILE = "bench-cross.png"
PARENT_ENV = "MMGEN_BENCH_PARENT_PID"  # set for local workers: they end when the benchmark does

TOP_KEYS = ("name", "description", "seeds", "budget", "data", "overrides", "evaluate", "report", "runs", "slurm")
RUN_KEYS = ("name", "recipe", "config", "prior", "agg", "aggregator", "inference", "encoder", "decoder",
            "objective", "grid", "overrides", "seeds")
#: Component choices a run may name directly, like ``mmgen train --prior ebm --agg moe``.
CHOICE_PATHS = {"prior": "model.prior.name", "agg": "model.aggregator.name", "aggregator": "model.aggregator.name",
                "inference": "model.inference.name", "encoder": "model.encoder.name",
                "decoder": "model.decoder.name", "objective": "model.objective.name"}
BUDGET_KEYS = ("epochs", "max_steps")
#: Config paths the benchmark sets for every run; a run's own overrides may not change them.
SHARED_PATHS = ("data", "train.epochs", "train.max_steps", "seed", "name", "out")
EVAL_DEFAULTS: dict[str, Any] = {"metrics": None, "n": 1000, "n_test": 0, "batch_size": 256, "seed": 0,
                                 "refine": True, "figures": True, "options": [], "classifiers": None,
                                 "columns": None}
CLASSIFIER_KEYS = ("epochs", "min_steps", "batch_size", "lr", "seed")
REPORT_DEFAULTS: dict[str, Any] = {"curves": ["loss"], "cross_given": [0], "cross_n": 8}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # fullmatch: a "$" also matched before a trailing newline
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")  # {agg}, {model.prior.steps} or {steps} in a grid run's name
#: What the local fork server imports once (every run process is forked from it).
PRELOAD = ["mmgen.bench", "mmgen.bench.worker", "mmgen.cli.main", "mmgen.train", "mmgen.evaluation", "mmgen.run",
           "mmgen.generation", "accelerate", "torch._dynamo"]


# ----------------------------------------------------------------------------------------------
# The bench file
# ----------------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    """One entry of ``runs:``: how to build the run's config, and which seeds it runs."""

    name: str
    recipe: str | None = None
    config: str | None = None
    choices: dict[str, str] = field(default_factory=dict)  # config path -> component name
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    index: int = 0  # its entry in the file's runs: (an entry with lists stands for several runs)


@dataclass
class BenchSpec:
    """A parsed bench file."""

    path: Path
    name: str
    description: str
    seeds: list[int]
    budget: dict[str, int]
    data: dict[str, Any]
    overrides: list[str]
    evaluate: dict[str, Any]
    report: dict[str, Any]
    runs: list[RunSpec]
    slurm: dict[str, Any]

    def summary(self, metrics: Sequence[str]) -> dict[str, Any]:
        """The benchmark's settings as plain data (for results.json)."""
        ev = {k: v for k, v in self.evaluate.items() if k != "columns"} | {"metrics": list(metrics)}
        return {"name": self.name, "file": str(self.path), "description": self.description, "seeds": self.seeds,
                "budget": self.budget, "data": self.data, "overrides": self.overrides, "evaluate": ev,
                "runs": [dataclasses.asdict(r) for r in self.runs]}


def _strings(value: Any, where: str, errors: list[str]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors.append(f"{where}: expected a list of key.path=value strings, got {value!r}")
        return []
    bad = [v for v in value if "=" not in v or v.startswith("=")]
    if bad:
        errors.append(f"{where}: '{bad[0]}' is not of the form key.path=value")
        return []
    return list(value)


def _seeds(value: Any, where: str, errors: list[str]) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)):
        errors.append(f"{where}: expected a non-empty list of non-negative integers, got {value!r}")
        return []
    if len(set(value)) != len(value):
        errors.append(f"{where}: seeds must be distinct, got {value}")
        return []
    return list(value)


def _defaults_section(raw: dict, key: str, defaults: dict, keys_hint: str, errors: list[str]) -> dict:
    """A mapping section of the bench file merged over its defaults; a non-mapping or an unknown
    key is an error naming it."""
    section = raw.get(key) or {}
    if not isinstance(section, dict):
        errors.append(f"{key}: expected a mapping ({keys_hint}), got {section!r}")
        section = {}
    _unknown(section, tuple(defaults), f"{key}.", errors)
    return {**defaults, **{k: v for k, v in section.items() if k in defaults}}

def _unknown(d: dict[str, Any], valid: Sequence[str], where: str, errors: list[str]) -> None:
    for key in d:
        if key not in valid:
            errors.append(f"{where}{key}: unknown key{did_you_mean(str(key), valid)}; valid keys: {', '.join(valid)}")


def _touches(override: str, paths: Sequence[str]) -> str | None:
    key = override.split("=", 1)[0].strip()
    for path in paths:
        if key == path or key.startswith(path + "."):
            return path
    return None


def _data_section(value: Any, errors: list[str]) -> dict[str, Any]:
    if value is None:
        return {"name": "default"}
    if isinstance(value, str):
        name, _, path = value.partition(":")
        return {"name": name, **({"path": path} if path else {})}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return dict(value)
    errors.append(f"data: expected NAME, NAME:PATH or a mapping with a name (e.g. {{name: default, modalities: 2}}), got {value!r}")
    return {}


#: Keys of a run that may hold a list of names: the entry then stands for one run per combination.
GRID_CHOICES = ("recipe", *CHOICE_PATHS)
GRID_EXAMPLE = "e.g. {name: 'mmvae-{agg}-{prior}', recipe: mmvae, agg: [poe, moe], grid: {model.prior.steps: [10, 30]}}"


def _grid_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _expand_grid(entry: dict[str, Any], where: str, errors: list[str]) -> list[dict[str, Any]]:
    """The runs one ``runs:`` entry stands for: the entry itself, or, when component choices are lists
    (``agg: [poe, moe]``) or ``grid:`` maps config paths to lists of values, one run per combination
    (in the order written, the last key varying fastest), each named by filling the ``{key}``
    placeholders of the entry's name (``{agg}``; a grid path in full or by its last part, ``{steps}``)
    and given its grid values as overrides after the entry's own."""
    name, before = entry.get("name"), len(errors)
    axes: dict[str, tuple[str | None, list[Any]]] = {}  # placeholder -> (config path of a grid key, values)
    grid = entry.get("grid")
    if grid is not None and (not isinstance(grid, dict) or not grid):
        errors.append(f"{where}.grid: expected a mapping of config paths to lists of values, {GRID_EXAMPLE}; got {grid!r}")
    lists: list[tuple[str, str | None, Any]] = []  # (placeholder, grid path or None, values), in the order written
    for key, value in entry.items():
        if key in GRID_CHOICES and isinstance(value, list):
            lists.append((key, None, value))
        elif key == "grid" and isinstance(value, dict):
            lists += [(str(path), str(path), values) for path, values in value.items()]
    for key, path, values in lists:
        if path is None:
            axes[key] = (None, values)
            if not values or not all(isinstance(v, str) for v in values):
                errors.append(f"{where}.{key}: expected a name or a non-empty list of names, got {values!r}")
            continue
        if not isinstance(values, list) or not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
            errors.append(f"{where}.grid.{path}: expected a non-empty list of values (numbers, strings, true/false), "
                          f"got {values!r}")
        elif shared := _touches(f"{path}=", SHARED_PATHS):
            errors.append(f"{where}.grid.{path}: sets {shared}, which the benchmark sets for every run "
                          f"(use data:, budget: or seeds:)")
        else:
            axes[path] = (path, values)
    if len(errors) > before:
        return []  # a malformed list: its error says so
    plain = {k: v for k, v in entry.items() if k != "grid"}
    if not isinstance(name, str):
        return [plain]  # the name's own check says what is wrong
    used = PLACEHOLDER.findall(name)
    if not axes:
        if used:
            errors.append(f"{where}.name: '{name}' has placeholders but the run has no lists to fill them; {GRID_EXAMPLE}")
        return [] if used else [plain]
    tails = [p.rsplit(".", 1)[-1] for p in axes]
    aliases = {**{t: p for t, p in zip(tails, axes) if tails.count(t) == 1}, **{p: p for p in axes}}
    unknown = [key for key in used if key not in aliases]
    for key in unknown:
        errors.append(f"{where}.name: '{{{key}}}' names none of this run's lists; placeholders: "
                      + ", ".join("{" + a + "}" for a in aliases))
    named = {aliases.get(u) for u in used}
    unnamed = [] if unknown else [k for k, (_, values) in axes.items() if len(values) > 1 and k not in named]
    if unnamed:
        hint = "-".join("{" + next(a for a in aliases if aliases[a] == k) + "}" for k in unnamed)
        errors.append(f"{where}.name: '{name}' would give its {math.prod(len(v) for _, v in axes.values())} runs "
                      f"the same name; put {hint} in it, e.g. '{PLACEHOLDER.sub('', name).strip('-_.') or 'run'}-{hint}'")
    if len(errors) > before:
        return []
    runs = []
    for combo in itertools.product(*(values for _, values in axes.values())):
        chosen = dict(zip(axes, combo))
        run = plain | {k: v for k, v in chosen.items() if axes[k][0] is None}
        run["name"] = PLACEHOLDER.sub(lambda m: _grid_text(chosen[aliases[m.group(1)]]), name)
        run["grid"] = [f"{path}={_grid_text(v)}" for k, v in chosen.items() if (path := axes[k][0])]
        runs.append(run)
    return runs


def load_spec(path: str | Path) -> BenchSpec:
    """Read and check a bench file's structure; raise :class:`ConfigError` listing every problem.

    Run configs themselves are checked by :func:`make_plan` (they need the plugin registry).
    """
    path = Path(path)
    raw = load_yaml(path, "bench")
    errors: list[str] = []
    _unknown(raw, TOP_KEYS, "", errors)

    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not NAME.fullmatch(name):
        errors.append(f"name: expected a folder-safe name (letters, digits, . _ -), got {name!r}")
    description = raw.get("description") or ""
    seeds = _seeds(raw.get("seeds", [0]), "seeds", errors)

    budget = raw.get("budget")
    if not isinstance(budget, dict) or not budget:
        errors.append("budget: missing; give the training budget every run gets, e.g. {epochs: 5} or {max_steps: 1000}")
        budget = {}
    else:
        _unknown(budget, BUDGET_KEYS, "budget.", errors)
        for key, value in budget.items():
            if key in BUDGET_KEYS and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                errors.append(f"budget.{key}: expected a positive integer, got {value!r}")

    data = _data_section(raw.get("data"), errors)
    overrides = _strings(raw.get("overrides"), "overrides", errors)
    for o in overrides:
        if shared := _touches(o, SHARED_PATHS):
            errors.append(f"overrides: '{o}' sets {shared}, which the benchmark controls (use data:, budget: or seeds:)")

    evaluate = _defaults_section(raw, "evaluate", EVAL_DEFAULTS, "metrics, n, n_test, ...", errors)
    metrics = evaluate["metrics"]
    if metrics is not None and (not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics)):
        errors.append(f"evaluate.metrics: expected a non-empty list of metric names, got {metrics!r}")
        evaluate["metrics"] = None
    elif metrics is not None and len(set(metrics)) != len(metrics):
        twice = next(m for i, m in enumerate(metrics) if m in metrics[:i])
        errors.append(f"evaluate.metrics: '{twice}' is listed twice (its columns would be too)")
        evaluate["metrics"] = list(dict.fromkeys(metrics))
    for key in ("n", "batch_size"):
        if not isinstance(evaluate[key], int) or isinstance(evaluate[key], bool) or evaluate[key] < 1:
            errors.append(f"evaluate.{key}: expected a positive integer, got {evaluate[key]!r}")
    for key in ("n_test", "seed"):
        if not isinstance(evaluate[key], int) or isinstance(evaluate[key], bool) or evaluate[key] < 0:
            errors.append(f"evaluate.{key}: expected a non-negative integer, got {evaluate[key]!r}")
    for key in ("refine", "figures"):
        if not isinstance(evaluate[key], bool):
            errors.append(f"evaluate.{key}: expected true or false, got {evaluate[key]!r}")
    evaluate["options"] = _strings(evaluate["options"], "evaluate.options", errors)
    classifiers = evaluate["classifiers"]
    if classifiers is not None:
        if not isinstance(classifiers, dict):
            errors.append(f"evaluate.classifiers: expected a mapping ({', '.join(CLASSIFIER_KEYS)}), got {classifiers!r}")
            evaluate["classifiers"] = None
        else:
            _unknown(classifiers, CLASSIFIER_KEYS, "evaluate.classifiers.", errors)
            for key, value in classifiers.items():
                kind = "finite positive number" if key == "lr" else \
                    "non-negative integer" if key in ("seed", "min_steps") else "positive integer"
                ok = isinstance(value, (int, float) if key == "lr" else int) and not isinstance(value, bool) \
                    and math.isfinite(value) and (value >= 0 if kind.startswith("non") else value > 0)
                if key in CLASSIFIER_KEYS and not ok:
                    errors.append(f"evaluate.classifiers.{key}: invalid value {value!r} (expected a {kind})")

    report = _defaults_section(raw, "report", REPORT_DEFAULTS, "curves, cross_given, cross_n", errors)
    if isinstance(report["cross_given"], int) and not isinstance(report["cross_given"], bool):
        report["cross_given"] = [report["cross_given"]]
    if (not isinstance(report["cross_given"], list) or not report["cross_given"]
            or not all(isinstance(g, int) and g >= 0 for g in report["cross_given"])):
        errors.append(f"report.cross_given: expected modality indices (e.g. [0]), got {report['cross_given']!r}")
    if not isinstance(report["cross_n"], int) or report["cross_n"] < 1:
        errors.append(f"report.cross_n: expected a positive integer, got {report['cross_n']!r}")
    if not isinstance(report["curves"], list) or not all(isinstance(c, str) for c in report["curves"]):
        errors.append(f"report.curves: expected a list of logged statistics (e.g. [loss]), got {report['curves']!r}")

    runs: list[RunSpec] = []
    raw_runs = raw.get("runs")
    if not isinstance(raw_runs, list) or not raw_runs:
        problem = "missing" if raw_runs is None else "empty" if raw_runs == [] else \
            f"expected a list of runs, got a {type(raw_runs).__name__}"
        errors.append(f"runs: {problem}; list the runs, e.g. [{{name: mmvae, recipe: mmvae}}]")
        raw_runs = []
    expanded: list[tuple[int, dict[str, Any]]] = []
    for i, entry in enumerate(raw_runs):
        if not isinstance(entry, dict):
            errors.append(f"runs[{i}]: expected a mapping with name and recipe/overrides, got {entry!r}")
            continue
        _unknown(entry, RUN_KEYS, f"runs[{i}].", errors)
        expanded += [(i, e) for e in _expand_grid(entry, f"runs[{i}]", errors)]
    for i, entry in expanded:
        where = f"runs[{i}]"
        run_name = entry.get("name")
        if not isinstance(run_name, str) or not NAME.fullmatch(run_name):
            errors.append(f"{where}.name: expected a folder-safe name (letters, digits, . _ -), got {run_name!r}")
            continue
        where = f"runs[{i}] ({run_name})"
        if any(r.name == run_name for r in runs):
            errors.append(f"{where}.name: '{run_name}' is used by another run; run names must be unique")
        spec = RunSpec(run_name, index=i)
        if entry.get("recipe") is not None:
            try:
                find_recipe(str(entry["recipe"]))
                spec.recipe = str(entry["recipe"])
            except MMGenError as exc:
                errors.append(f"{where}.recipe: {exc}")
        if entry.get("config") is not None:
            config = Path(str(entry["config"]))
            if not config.is_absolute() and (path.parent / config).is_file():
                config = path.parent / config  # relative to the bench file's folder, else to the cwd
            if not config.is_file():
                errors.append(f"{where}.config: file not found: {entry['config']}")
            spec.config = str(config)
        for key, cfg_path in CHOICE_PATHS.items():
            if key in entry:
                if not isinstance(entry[key], str):
                    errors.append(f"{where}.{key}: expected a component name, got {entry[key]!r}")
                else:
                    spec.choices[cfg_path] = entry[key]
        spec.overrides = _strings(entry.get("overrides"), f"{where}.overrides", errors) + entry.get("grid", [])
        for o in spec.overrides:
            if shared := _touches(o, SHARED_PATHS):
                errors.append(f"{where}.overrides: '{o}' sets {shared}, which the benchmark sets for every run "
                              f"(use data:, budget: or seeds:)")
        spec.seeds = _seeds(entry["seeds"], f"{where}.seeds", errors) if "seeds" in entry else list(seeds)
        runs.append(spec)

    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        errors.append(f"slurm: expected a mapping of submitit parameters (timeout_min, slurm_partition, ...), got {slurm!r}")
        slurm = {}
    if errors:
        raise ConfigError([f"{path}: {e}" for e in errors])
    return BenchSpec(path, name, description, seeds, dict(budget), data, overrides, evaluate, report, runs, dict(slurm))
