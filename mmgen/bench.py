"""Benchmarks: many runs, one protocol (``mmgen bench FILE``).

A bench file (YAML) lists runs — each a recipe and/or component choices plus overrides — and the
seeds, the one dataset, the one training budget and the one evaluation every run gets. This
module turns it into a *plan* and carries the plan out:

1. **Validate** (:func:`load_spec`, :func:`make_plan`): the file's structure, then every
   (run, seed) config through :func:`mmgen.config.resolve` and the metrics through the registry,
   all before anything starts; every problem is one line naming its key.
2. **Decide** what each run needs. A run's identity is a hash of its fully resolved config
   (``out`` and the progress-bar switch left out), kept in ``RUN_DIR/bench.json`` together with the
   hash of the evaluation settings its ``eval.json`` was made with. Same config and evaluation:
   skip. Same config, other evaluation: evaluate again. Same config, interrupted: resume from
   ``checkpoints/latest.pt``. A changed config: that run directory is deleted and trained anew;
   the other runs are untouched.
3. **Execute**: each run is its own process that runs ``mmgen train`` and then ``mmgen evaluate``
   (the CLI commands themselves, in that process) with its output in ``RUN_DIR/bench.log``, and
   writes ``bench-cross.png`` for the side-by-side cross-generation figure. A failed run is
   recorded in its ``bench.json`` and the others go on. Locally, ``--jobs N`` keeps N such
   processes running (one per GPU when several are visible); ``--launcher slurm`` hands them to
   Slurm through submitit.

Local worker processes are forked from a *fork server* that has imported torch and mmgen once,
so a run starts in milliseconds instead of paying several seconds of imports; the server only
imports (it runs no torch code and does not initialise CUDA), so forking it is safe, and every run
still gets a fresh process. A worker ends when the benchmark process does (Ctrl-C, ``kill``, even
``kill -9``), so a stopped benchmark leaves nothing training on its own.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any

import yaml

from mmgen.bench_report import Column, parse_columns
from mmgen.checkpoint import atomic_write_text
from mmgen.config import (COMPONENT_SECTIONS, RunConfig, compose, find_recipe, load_yaml, parse_overrides,
                          resolve, to_yaml)
from mmgen.errors import ConfigError, MMGenError, did_you_mean

STATE_FILE = "bench.json"
CONFIG_FILE = "bench-config.yaml"
LOG_FILE = "bench.log"
CROSS_FILE = "bench-cross.png"
PARENT_ENV = "MMGEN_BENCH_PARENT_PID"  # set for local workers: they end when the benchmark does

TOP_KEYS = ("name", "description", "seeds", "budget", "data", "overrides", "evaluate", "report", "runs", "slurm")
RUN_KEYS = ("name", "recipe", "config", "prior", "agg", "aggregator", "inference", "encoder", "decoder",
            "objective", "overrides", "seeds")
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
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: What the local fork server imports once (every run process is forked from it).
PRELOAD = ["mmgen.bench", "mmgen.cli.main", "mmgen.train", "mmgen.evaluation", "mmgen.run", "mmgen.generation",
           "accelerate", "torch._dynamo"]


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


def load_spec(path: str | Path) -> BenchSpec:
    """Read and check a bench file's structure; raise :class:`ConfigError` listing every problem.

    Run configs themselves are checked by :func:`make_plan` (they need the plugin registry).
    """
    path = Path(path)
    raw = load_yaml(path, "bench")
    errors: list[str] = []
    _unknown(raw, TOP_KEYS, "", errors)

    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not NAME.match(name):
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
                kind = "positive number" if key == "lr" else \
                    "non-negative integer" if key in ("seed", "min_steps") else "positive integer"
                ok = isinstance(value, (int, float) if key == "lr" else int) and not isinstance(value, bool) \
                    and (value >= 0 if kind.startswith("non") else value > 0)
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
        errors.append("runs: missing; list the runs, e.g. [{name: mmvae, recipe: mmvae}]")
        raw_runs = []
    for i, entry in enumerate(raw_runs):
        where = f"runs[{i}]"
        if not isinstance(entry, dict):
            errors.append(f"{where}: expected a mapping with name and recipe/overrides, got {entry!r}")
            continue
        _unknown(entry, RUN_KEYS, f"{where}.", errors)
        run_name = entry.get("name")
        if not isinstance(run_name, str) or not NAME.match(run_name):
            errors.append(f"{where}.name: expected a folder-safe name (letters, digits, . _ -), got {run_name!r}")
            continue
        where = f"runs[{i}] ({run_name})"
        if any(r.name == run_name for r in runs):
            errors.append(f"{where}.name: '{run_name}' is used by another run; run names must be unique")
        spec = RunSpec(run_name)
        if entry.get("recipe") is not None:
            try:
                find_recipe(str(entry["recipe"]))
                spec.recipe = str(entry["recipe"])
            except MMGenError as exc:
                errors.append(f"{where}.recipe: {exc}")
        if entry.get("config") is not None:
            config = Path(str(entry["config"]))
            if not config.is_absolute() and not config.is_file():
                config = path.parent / config  # relative to the bench file
            if not config.is_file():
                errors.append(f"{where}.config: file not found: {entry['config']}")
            spec.config = str(config)
        for key, cfg_path in CHOICE_PATHS.items():
            if key in entry:
                if not isinstance(entry[key], str):
                    errors.append(f"{where}.{key}: expected a component name, got {entry[key]!r}")
                else:
                    spec.choices[cfg_path] = entry[key]
        spec.overrides = _strings(entry.get("overrides"), f"{where}.overrides", errors)
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


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------
@dataclass
class PlannedRun:
    """One (run, seed): its resolved config, identity and what it needs now."""

    run: str
    seed: int
    run_dir: Path
    config: dict[str, Any]
    config_hash: str
    eval_hash: str
    action: str = "train"  # train | resume | evaluate | skip
    reason: str = ""
    selected: bool = True  # False: excluded by --only (kept for the report)

    @property
    def id(self) -> str:
        return f"{self.run}-s{self.seed}"

    def record(self) -> dict[str, Any]:
        """What the report needs to find and check this run's results."""
        return {"run": self.run, "seed": self.seed, "run_dir": str(self.run_dir),
                "config_hash": self.config_hash, "eval_hash": self.eval_hash}


@dataclass
class Plan:
    """Every planned run, plus what the execution shares (metrics, classifiers, plugins)."""

    spec: BenchSpec
    bench_dir: Path
    runs: list[PlannedRun]
    metrics: list[str]
    columns: list[Column]
    classifiers_path: Path | None  # None: the shared cache, keyed by the dataset's fingerprint

    @property
    def todo(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.selected and r.action != "skip"]


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_hash(cfg: dict[str, Any]) -> str:
    """A run's identity: the hash of its resolved config without where it lives or how it prints."""
    cfg = copy.deepcopy(cfg)
    cfg.pop("out", None)
    cfg.pop("plugin_versions", None)
    cfg.get("train", {}).pop("progress", None)
    return _digest(cfg)


def eval_settings(spec: BenchSpec, metrics: Sequence[str]) -> dict[str, Any]:
    """Everything that decides a run's eval.json and bench-cross.png (besides its weights)."""
    ev = {k: v for k, v in spec.evaluate.items() if k not in ("columns", "metrics")}
    return {"metrics": list(metrics), **ev, "cross_given": spec.report["cross_given"], "cross_n": spec.report["cross_n"]}


def run_config(spec: BenchSpec, run: RunSpec, seed: int, run_dir: Path) -> dict[str, Any]:
    """The raw config of (run, seed): defaults -> recipe -> config file -> component choices ->
    the benchmark's overrides -> the run's overrides, then the benchmark's data, budget and seed."""
    raw = compose(run.recipe, run.config, dict(run.choices), list(spec.overrides) + list(run.overrides))
    raw["data"] = copy.deepcopy(spec.data)  # the same data for every run, whatever a recipe says
    train = raw.setdefault("train", {})
    train["epochs"] = spec.budget.get("epochs", spec.budget.get("max_steps"))  # max_steps alone: it binds
    train["max_steps"] = spec.budget.get("max_steps", 0)
    train["progress"] = False  # a progress bar in a log file is noise
    raw.update(seed=seed, name=f"{run.name}-s{seed}", out=str(run_dir))
    return raw


def read_json_file(path: Path) -> Any:
    """A JSON file's content (None when absent or unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """A run directory's ``bench.json`` (None when absent or unreadable)."""
    return read_json_file(Path(run_dir) / STATE_FILE)


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_text(json.dumps(state, indent=2) + "\n", Path(run_dir) / STATE_FILE)


def with_new_defaults(stored: Any, current: Any, defaults: Any) -> Any:
    """``stored`` with every key it lacks but ``current`` has set to its default value."""
    if not isinstance(stored, dict) or not isinstance(current, dict):
        return stored
    out = dict(stored)
    for key, value in current.items():
        if key not in stored:
            if isinstance(defaults, dict) and key in defaults:
                out[key] = copy.deepcopy(defaults[key])
        else:
            out[key] = with_new_defaults(stored[key], value, defaults.get(key) if isinstance(defaults, dict) else None)
    return out


def default_config(cfg: dict[str, Any], registry: Any) -> dict[str, Any] | None:
    """Every option's default value for the components ``cfg`` chooses (None if they have none)."""
    raw = dataclasses.asdict(RunConfig())
    for path in COMPONENT_SECTIONS:
        parent, _, key = path.rpartition(".")
        target = raw[parent.split(".")[0]] if parent else raw
        target[key] = {"name": _section(cfg, path)["name"]}
    try:
        return resolve(raw, registry)
    except MMGenError:
        return None


def _section(cfg: dict[str, Any], path: str) -> dict[str, Any]:
    for part in path.split("."):
        cfg = cfg[part]
    return cfg


def identity(run_dir: Path, cfg: dict[str, Any], registry: Any) -> str:
    """The hash that identifies ``cfg`` in ``run_dir``: :func:`config_hash`, except that a run
    made before mmgen gained an option keeps its identity when the option is at its default
    (so upgrading mmgen does not re-run a whole benchmark; a changed value still does)."""
    current = config_hash(cfg)
    state = read_state(run_dir)
    if state is None or state.get("config_hash") in (None, current):
        return current
    stored = read_yaml_file(run_dir / "config.yaml") or read_yaml_file(run_dir / CONFIG_FILE)
    defaults = default_config(cfg, registry) if stored else None
    if defaults is not None and config_hash(stored) == state["config_hash"] \
            and config_hash(with_new_defaults(stored, cfg, defaults)) == current:
        return state["config_hash"]
    return current


def read_yaml_file(path: Path) -> Any:
    """A YAML file's content (None when absent or unreadable)."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None


def decide(run_dir: Path, cfg_hash: str, ev_hash: str) -> tuple[str, str]:
    """What a run needs, from what its directory holds: (action, reason)."""
    if not run_dir.exists():
        return "train", "new"
    state = read_state(run_dir)
    if state is None:
        return "train", "no bench record (directory will be replaced)"
    if state.get("config_hash") != cfg_hash:
        return "train", f"config changed ({state.get('config_hash')} -> {cfg_hash})"
    ckpt = run_dir / "checkpoints"
    if (ckpt / "final.pt").is_file():
        if state.get("eval_hash") == ev_hash and (run_dir / "eval.json").is_file():
            return "skip", "finished"
        return "evaluate", "evaluation settings changed" if state.get("last_eval_hash") not in (None, ev_hash) \
            else "trained, not evaluated"
    if (ckpt / "latest.pt").is_file():
        return "resume", "interrupted or failed; resuming from checkpoints/latest.pt"
    return "train", "no checkpoint yet"


def _selected(run: str, seed: int, only: Sequence[str]) -> bool:
    return not only or any(fnmatch(run, p) or fnmatch(f"{run}-s{seed}", p) for p in only)


def make_plan(spec: BenchSpec, bench_dir: str | Path, only: Sequence[str] = ()) -> Plan:
    """Resolve every (run, seed) config, check the metrics, and decide what each run needs.

    Raises :class:`ConfigError` with every problem (each naming the run and the key) before
    anything is written.
    """
    from mmgen.evaluation import build_metrics, check_metric_names, parse_metric_names
    from mmgen.plugins import create_plugin_manager

    bench_dir = Path(bench_dir)
    errors: list[str] = []
    registries: dict[tuple[str, ...], Any] = {}
    planned: list[PlannedRun] = []
    unknown = [p for p in only if not any(fnmatch(r.name, p) or any(fnmatch(f"{r.name}-s{s}", p) for s in r.seeds)
                                           for r in spec.runs)]
    if unknown:
        names = [r.name for r in spec.runs]
        raise MMGenError(f"--only {unknown[0]}: no such run{did_you_mean(unknown[0], names)}; runs: {', '.join(names)}")
    resolved: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    registry = None
    for i, run in enumerate(spec.runs):
        where = f"{spec.path}: runs[{i}] ({run.name})"
        for seed in run.seeds:
            run_dir = bench_dir / "runs" / f"{run.name}-s{seed}"
            try:
                raw = run_config(spec, run, seed, run_dir.resolve())
                extra = tuple(str(m) for m in raw.get("plugins") or [])
                if extra not in registries:
                    registries[extra] = create_plugin_manager(list(extra)).registry
                registry = registries[extra]
                cfg = resolve(raw, registry)
            except ConfigError as exc:
                errors += [f"{where}: {e}" for e in exc.errors]
                break  # the seeds differ only in the seed: one report per run is enough
            except MMGenError as exc:
                errors.append(f"{where}: {exc}")
                break
            resolved.setdefault(run.name, []).append((seed, cfg, registry))
    if registry is None:
        registry = create_plugin_manager().registry
    metrics = list(spec.evaluate["metrics"] or parse_metric_names(None, registry))
    errors += [f"{spec.path}: evaluate.metrics: {e}" for e in check_metric_names(registry, metrics)]
    if not errors:
        try:
            build_metrics(registry, metrics, parse_overrides(spec.evaluate["options"]))
        except MMGenError as exc:
            errors.append(f"{spec.path}: evaluate.options: {exc}")
    columns, column_errors = parse_columns(spec.evaluate["columns"], metrics)
    errors += [f"{spec.path}: {e}" for e in column_errors]
    if errors:
        raise ConfigError(errors)
    ev_settings = eval_settings(spec, metrics)
    for run in spec.runs:
        for seed, cfg, run_registry in resolved[run.name]:
            run_dir = bench_dir / "runs" / f"{run.name}-s{seed}"
            c_hash = identity(run_dir, cfg, run_registry)
            e_hash = _digest({"config": c_hash, **ev_settings})
            action, reason = decide(run_dir, c_hash, e_hash)
            planned.append(PlannedRun(run.name, seed, run_dir, cfg, c_hash, e_hash, action, reason,
                                      _selected(run.name, seed, only)))
    classifiers = bench_dir / "classifiers.pt" if spec.evaluate["classifiers"] else None
    return Plan(spec, bench_dir, planned, metrics, columns, classifiers)


def train_args(p: PlannedRun) -> list[str]:
    """The ``mmgen train`` arguments of a planned run."""
    if p.action == "resume":
        return ["train", "--resume", str(p.run_dir.resolve())]
    return ["train", "--config", str((p.run_dir / CONFIG_FILE).resolve()), "--out", str(p.run_dir.resolve())]


def evaluate_args(plan: Plan, p: PlannedRun) -> list[str]:
    """The ``mmgen evaluate`` arguments of a planned run."""
    ev = plan.spec.evaluate
    device = p.config["train"]["device"]
    args = ["evaluate", str(p.run_dir.resolve()), "--metrics", ",".join(plan.metrics), "--n", str(ev["n"]),
            "--n-test", str(ev["n_test"]), "--batch-size", str(ev["batch_size"]), "--seed", str(ev["seed"]),
            "--refine" if ev["refine"] else "--no-refine", "--figures" if ev["figures"] else "--no-figures",
            "--device", device if device in ("cpu", "cuda") else "auto", "--no-progress"]
    if plan.classifiers_path is not None:
        args += ["--classifiers", str(plan.classifiers_path.resolve())]
    return args + list(ev["options"])


def commands(plan: Plan, p: PlannedRun) -> list[list[str]]:
    """The mmgen commands a run's process executes (for --dry-run and the log)."""
    steps = []
    if p.action in ("train", "resume"):
        steps.append(["mmgen", *train_args(p)])
    if p.action != "skip":
        steps.append(["mmgen", *evaluate_args(plan, p)])
    return steps


# ----------------------------------------------------------------------------------------------
# What runs in the worker processes
# ----------------------------------------------------------------------------------------------
def _enter(cwd: str | None, env: dict[str, str] | None, threads: int, log: Path) -> None:
    """Make a fresh worker process look like the bench process: environment, folder, output."""
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    if cwd:
        os.chdir(cwd)
    if os.environ.get(PARENT_ENV, "").isdigit():
        _watch_parent(int(os.environ[PARENT_ENV]))
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if threads:
        import torch

        torch.set_num_threads(threads)


def _watch_parent(pid: int, every: float = 2.0) -> None:
    """End this worker (SIGTERM) when the benchmark process ``pid`` is gone, so that a killed
    benchmark leaves no run training on its own (its checkpoints are atomic: nothing is lost)."""
    import signal
    import threading

    def watch() -> None:
        while True:
            time.sleep(every)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except OSError:  # exists but is not ours to signal: still alive
                continue

    threading.Thread(target=watch, name="mmgen-bench-watch-parent", daemon=True).start()


def _mmgen(args: Sequence[str]) -> int:
    """Run one mmgen CLI command in this process; its exit code."""
    import shlex

    from typer.main import get_command

    from mmgen.cli.main import create_app

    print(f"\n$ mmgen {shlex.join(args)}", flush=True)
    command = get_command(create_app(with_plugin_commands=False))
    try:
        code = command.main(args=list(args), prog_name="mmgen", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    except Exception:  # click usage errors and bugs alike: the run fails, the benchmark goes on
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code if isinstance(code, int) else (0 if code is None else 1)


def _last_error(log: Path) -> str:
    """The last ``error: ...`` line of a log (else its last line), for the report."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if line.startswith("error:") or re.match(r"^\w+(Error|Exception):", line):
            return line.removeprefix("error:").strip()[:300]
    return (lines[-1] if lines else "no output")[:300]


def save_cross(run_dir: Path, given: list[int], n: int, seed: int, refine: bool, device: str) -> Path:
    """``bench-cross.png``: the first ``n`` test tuples' given modalities, then every modality
    generated from them — the same tuples and random stream for every model of the benchmark."""
    import torch

    from mmgen.figures import save_grid
    from mmgen.generation import cross_rows
    from mmgen.run import load_run

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_run(run_dir, device)
    M = len(loaded.test_set.modalities)
    bad = [g for g in given if g >= M]
    if bad:
        raise MMGenError(f"report.cross_given: modality {bad[0]} does not exist (the data has {M} modalities)")
    batch = loaded.test_set.batch(torch.arange(min(n, len(loaded.test_set)))).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rows = cross_rows(loaded.model, batch, list(given), refine=refine)
    return save_grid(rows, run_dir / CROSS_FILE)


def execute_run(run_dir: str, cwd: str | None = None, env: dict[str, str] | None = None, threads: int = 0) -> int:
    """A worker process's whole job for one run: train (or resume), evaluate, draw the cross grid.

    Reads the job from ``RUN_DIR/bench.json`` (written by :func:`stage`), appends everything it
    prints to ``RUN_DIR/bench.log``, and records progress and the outcome in ``bench.json``.
    Returns 0 on success, 1 on failure (never raises).
    """
    path = Path(run_dir)
    log = path / LOG_FILE
    _enter(cwd, env, threads, log)
    state = read_state(path) or {}
    job = state.get("job", {})
    times = state.setdefault("times", {})
    state["attempts"] = state.get("attempts", 0) + 1
    print(f"\n=== mmgen bench: {job.get('action')} {path.name} (attempt {state['attempts']}, "
          f"pid {os.getpid()}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}) ===", flush=True)

    def fail(message: str) -> int:
        state.update(status="failed", error=message)
        write_state(path, state)
        print(f"=== failed: {message} ===", flush=True)
        return 1

    try:
        if job.get("action") in ("train", "resume"):
            state.update(status="training", error=None)
            write_state(path, state)
            t0 = time.perf_counter()
            code = _mmgen(job["train"])
            times["train_s"] = round(times.get("train_s", 0.0) + time.perf_counter() - t0, 3)
            if code != 0:
                return fail(f"training failed (exit code {code}): {_last_error(log)}")
        state.update(status="evaluating", error=None, eval_hash=None)
        write_state(path, state)
        t0 = time.perf_counter()
        code = _mmgen(job["evaluate"])
        if code != 0:
            return fail(f"evaluation failed (exit code {code}): {_last_error(log)}")
        cross = job["cross"]
        save_cross(path, cross["given"], cross["n"], cross["seed"], cross["refine"], cross["device"])
        times["eval_s"] = round(time.perf_counter() - t0, 3)
        state.update(status="finished", eval_hash=job["eval_hash"], last_eval_hash=job["eval_hash"])
        write_state(path, state)
        print("=== finished ===", flush=True)
        return 0
    except MMGenError as exc:
        return fail(str(exc))
    except BaseException as exc:  # noqa: BLE001 - a worker must record every way it can end
        traceback.print_exc()
        return fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def prepare_classifiers(path: str | None, cfg: dict[str, Any], settings: dict[str, Any] | None, log: str,
                        cwd: str | None = None, env: dict[str, str] | None = None, threads: int = 0) -> int:
    """Build the dataset and the digit classifiers once, before the runs (so parallel evaluations
    do not each train them). ``path`` None: the shared cache with the default settings."""
    _enter(cwd, env, threads, Path(log))
    try:
        from mmgen.classifiers import ClassifierConfig, default_path, ensure_classifiers, load_classifiers
        from mmgen.plugins import create_plugin_manager
        from mmgen.train import load_datasets

        plugins = create_plugin_manager([str(m) for m in cfg.get("plugins") or []])
        train_set, test_set = load_datasets(cfg, plugins)
        target = Path(path) if path else default_path(train_set)
        if target.is_file():
            try:
                load_classifiers(target, train_set)
                print(f"classifiers ready: {target}", flush=True)
                return 0
            except MMGenError as exc:
                print(f"retraining the classifiers: {exc}", flush=True)
                target.unlink()
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        ccfg = ClassifierConfig(**(settings or {}))
        print(f"training digit classifiers into {target} ({ccfg})", flush=True)
        classifiers = ensure_classifiers(train_set, test_set, target, device, cfg=ccfg, progress=False)
        print(f"classifier test accuracy: {classifiers.meta.get('test_accuracy')}", flush=True)
        return 0
    except MMGenError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        return 1


def _exit_with(fn: Callable[..., int], *args: Any) -> None:
    """Process target: run ``fn`` and exit with its return code."""
    code = fn(*args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip atexit handlers inherited from the fork server


# ----------------------------------------------------------------------------------------------
# Launchers: who starts the worker processes
# ----------------------------------------------------------------------------------------------
@dataclass
class Task:
    """One worker process: ``fn(*args, cwd, env, threads)``; 0 means success."""

    label: str
    fn: Callable[..., int]
    args: tuple
    log: Path


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every CUDA device."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 - a broken driver means no GPU here
        return []


class LocalLauncher:
    """Up to ``jobs`` worker processes at once on this machine, each forked from a fork server.

    With several visible GPUs, each process gets one (``CUDA_VISIBLE_DEVICES``), round robin over
    the job slots; without a GPU and with several jobs, each gets ``cpu_count // jobs`` threads.
    """

    name = "local"

    def __init__(self, jobs: int = 1, gpus: Sequence[str] | None = None):
        self.jobs = max(1, jobs)
        self.gpus = list(visible_gpus() if gpus is None else gpus)
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            self.ctx.set_forkserver_preload(PRELOAD)

    def slots(self) -> list[str | None]:
        if len(self.gpus) > 1:
            return [self.gpus[i % len(self.gpus)] for i in range(self.jobs)]
        return [None] * self.jobs

    def run(self, tasks: Sequence[Task], on_start: Callable[[Task, str], None],
            on_done: Callable[[Task, int], None]) -> dict[str, int]:
        threads = max(1, (os.cpu_count() or 1) // self.jobs) if self.jobs > 1 and not self.gpus else 0
        pending, free = list(tasks), self.slots()
        running: dict[Any, tuple[Task, Any, str | None]] = {}
        codes: dict[str, int] = {}
        try:
            while pending or running:
                while pending and free:
                    task, slot = pending.pop(0), free.pop(0)
                    env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
                    if slot is not None:
                        env["CUDA_VISIBLE_DEVICES"] = slot
                    proc = self.ctx.Process(target=_exit_with, name=f"mmgen-bench {task.label}",
                                            args=(task.fn, *task.args, os.getcwd(), env, threads))
                    proc.start()
                    running[proc.sentinel] = (task, proc, slot)
                    on_start(task, f"pid {proc.pid}" + (f", GPU {slot}" if slot is not None else ""))
                for sentinel in wait_for(list(running)):
                    task, proc, slot = running.pop(sentinel)
                    proc.join()
                    free.append(slot)
                    codes[task.label] = proc.exitcode if proc.exitcode is not None else 1
                    on_done(task, codes[task.label])
        except BaseException:
            for _, proc, _ in running.values():  # an interrupted benchmark leaves no orphans
                proc.terminate()
            for task, proc, _ in running.values():
                proc.join(10)
                on_done(task, proc.exitcode if proc.exitcode is not None else -15)
            raise
        return codes


class SubmititLauncher:
    """Every task as a job of an existing scheduler through submitit (Slurm, or its local executor).

    ``params`` are submitit's (``timeout_min``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``,
    ``slurm_partition``, ``slurm_account``, ...): the bench file's ``slurm:`` mapping.
    """

    def __init__(self, cluster: str, folder: Path, params: dict[str, Any] | None = None):
        try:
            import submitit
        except ImportError:
            raise MMGenError("--launcher slurm needs submitit, which is not installed: pip install 'mmgen[slurm]' "
                             "(or pip install submitit)") from None
        self.name = "slurm" if cluster == "slurm" else "submitit-local"
        try:
            self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
            params = dict(params or {})
            params.setdefault("timeout_min", 24 * 60)
            self.executor.update_parameters(**params)
        except Exception as exc:  # noqa: BLE001 - no sbatch here, a bad parameter, ...
            raise MMGenError(f"--launcher {self.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    def run(self, tasks: Sequence[Task], on_start: Callable[[Task, str], None],
            on_done: Callable[[Task, int], None]) -> dict[str, int]:
        jobs = []
        for task in tasks:
            self.executor.update_parameters(name=f"mmgen-{task.label}")
            job = self.executor.submit(task.fn, *task.args, os.getcwd(), None, 0)
            jobs.append((task, job))
            on_start(task, f"job {job.job_id}")
        codes: dict[str, int] = {}
        try:
            while len(codes) < len(jobs):
                for task, job in jobs:
                    if task.label in codes or not job.done():
                        continue
                    try:
                        code = job.result()
                    except Exception as exc:  # noqa: BLE001 - killed, timed out, node failure
                        _append(task.log, f"\n=== {self.name} job {job.job_id} failed: {str(exc)[-2000:]} ===\n")
                        code = 1
                    codes[task.label] = int(code or 0)
                    on_done(task, codes[task.label])
                time.sleep(1.0)
        except BaseException:
            for task, job in jobs:
                if task.label not in codes:
                    job.cancel(check=False)
            raise
        return codes


@contextlib.contextmanager
def _locked(bench_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the benchmark folder: two benchmarks writing the same run
    directories at once would corrupt each other's runs."""
    with (bench_dir / ".lock").open("a+") as handle:
        try:
            import fcntl
        except ImportError:  # no fcntl on this platform: no lock
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise MMGenError(f"{bench_dir} is in use by another mmgen bench ({owner}); wait for it or use --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield  # closing the file releases the lock


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(text)


def make_launcher(name: str, plan: Plan, jobs: int) -> LocalLauncher | SubmititLauncher:
    """``local`` (processes on this machine), ``slurm`` or ``submitit-local`` (submitit executors)."""
    if name == "local":
        return LocalLauncher(jobs)
    if name in ("slurm", "submitit-local"):
        return SubmititLauncher("slurm" if name == "slurm" else "local", plan.bench_dir / "submitit",
                                plan.spec.slurm)
    raise MMGenError(f"--launcher: invalid value '{name}'; valid: local, slurm, submitit-local")


# ----------------------------------------------------------------------------------------------
# Executing a plan
# ----------------------------------------------------------------------------------------------
def stage(plan: Plan, p: PlannedRun) -> None:
    """Prepare a run directory for its worker: a changed or foreign one is replaced; the job goes
    into ``bench.json`` and, for a fresh run, the resolved config into ``bench-config.yaml``."""
    if p.action == "train" and p.run_dir.exists():
        shutil.rmtree(p.run_dir)
    p.run_dir.mkdir(parents=True, exist_ok=True)
    if p.action == "train":
        atomic_write_text(to_yaml(p.config), p.run_dir / CONFIG_FILE)
    state = read_state(p.run_dir) or {}
    ev = plan.spec.evaluate
    state.update({
        "run": p.run, "seed": p.seed, "config_hash": p.config_hash, "status": "queued", "error": None,
        "job": {"action": p.action, "train": train_args(p), "evaluate": evaluate_args(plan, p), "eval_hash": p.eval_hash,
                "cross": {"given": plan.spec.report["cross_given"], "n": plan.spec.report["cross_n"],
                          "seed": ev["seed"], "refine": ev["refine"], "device": p.config["train"]["device"]}},
    })
    state["eval_hash"] = None  # until this job's evaluation has finished
    write_state(p.run_dir, state)


def execute(plan: Plan, launcher: LocalLauncher | SubmititLauncher, console: Any) -> dict[str, str]:
    """Prepare the classifiers, then run every selected run that needs it; never stops at a
    failed run. Returns ``{run id: "finished" | "failed: reason"}`` for the runs it started."""
    todo = plan.todo
    outcome: dict[str, str] = {}
    if not todo:
        return outcome
    plan.bench_dir.mkdir(parents=True, exist_ok=True)
    with _locked(plan.bench_dir):
        _execute(plan, todo, launcher, console, outcome)
    return outcome


def _execute(plan: Plan, todo: list[PlannedRun], launcher: LocalLauncher | SubmititLauncher, console: Any,
             outcome: dict[str, str]) -> None:
    def started(task: Task, where: str) -> None:
        console.print(f"[cyan]started[/] {task.label} ({where}; log {task.log})")

    if plan.metrics:
        # Once per dataset and classifier settings: a re-run (or a Slurm re-submission) skips it.
        log, marker = plan.bench_dir / "prepare.log", plan.bench_dir / "prepare.json"
        settings = plan.spec.evaluate["classifiers"]
        key = _digest({"data": todo[0].config["data"], "plugins": todo[0].config.get("plugins"), "classifiers": settings})
        path = str(plan.classifiers_path.resolve()) if plan.classifiers_path else None
        done_before = (read_json_file(marker) or {}).get("key") == key and (path is None or Path(path).is_file())
        if not done_before:
            prep = Task("prepare", prepare_classifiers, (path, todo[0].config, settings, str(log.resolve())), log)
            codes = launcher.run([prep], started, lambda t, c: None)
            if codes.get("prepare") != 0:
                raise MMGenError(f"preparing the data and classifiers failed: {_last_error(log)} (see {log})")
            atomic_write_text(json.dumps({"key": key}) + "\n", marker)

    for p in todo:
        stage(plan, p)
    by_label = {p.id: p for p in todo}

    def done(task: Task, code: int) -> None:
        p = by_label[task.label]
        state = read_state(p.run_dir) or {}
        if code == 0 and state.get("status") == "finished":
            t = state.get("times", {})
            outcome[p.id] = "finished"
            console.print(f"[green]finished[/] {p.id} (train {t.get('train_s', 0):.0f} s, eval {t.get('eval_s', 0):.0f} s)")
        else:
            reason = state.get("error") if state.get("status") == "failed" else None
            if reason is None and code < 0:
                reason = f"stopped by signal {-code} while {state.get('status', 'starting')}"
            reason = reason or f"worker exited with code {code}: {_last_error(p.run_dir / LOG_FILE)}"
            if state.get("status") != "failed":
                state.update(status="failed", error=reason)
                write_state(p.run_dir, state)
            outcome[p.id] = f"failed: {reason}"
            console.print(f"[red]failed[/] {p.id}: {reason} (log {p.run_dir / LOG_FILE})")

    tasks = [Task(p.id, execute_run, (str(p.run_dir.resolve()),), p.run_dir / LOG_FILE) for p in todo]
    launcher.run(tasks, started, done)


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------
def report(plan: Plan) -> tuple[dict[str, Any], list[Path]]:
    """Collect every planned run's results and write results.md/csv/json and the plots."""
    from mmgen import bench_report as br

    result = br.build_report(plan.spec.summary(plan.metrics), [p.record() for p in plan.runs], plan.columns)
    names: list[str] = []
    for r in result["runs"]:
        if r["status"] == "finished":
            ev = br.read_json(Path(r["run_dir"]) / "eval.json") or {}
            names = [m["name"] for m in ev.get("dataset", {}).get("modalities", [])]
            break
    given = plan.spec.report["cross_given"]
    rows = [f"{names[g]} (given)" for g in given if g < len(names)] + [f"→ {n}" for n in names]
    plots = br.write_plots(result, plan.bench_dir / "plots", plan.spec.report["curves"], rows)
    result["plots"] = [str(p.relative_to(plan.bench_dir)) for p in plots]
    files = br.write_results(result, plan.bench_dir)
    return result, files + plots
