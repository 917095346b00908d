"""The plan: every (run, seed) resolved and identified, and what each needs (skip, resume, evaluate, train)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from mmgen.bench.report import Column, check_curves, check_indices, parse_columns
from mmgen.bench.spec import BenchSpec, CONFIG_FILE, RunSpec, STATE_FILE
from mmgen.checkpoint import atomic_write_text
from mmgen.config import COMPONENT_SECTIONS, RunConfig, compose, parse_overrides, resolve
from mmgen.errors import ConfigError, MMGenError, did_you_mean


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
    """Every option's default value for the components ``cfg`` chooses (None if one is not
    registered). Read from the config dataclasses' fields, not validated: a component whose
    config needs a value (PolyMNIST's data.path) has no valid all-defaults config, and resolving
    one made every polymnist run look changed after an upgrade."""
    raw = dataclasses.asdict(RunConfig())
    for path, kind in COMPONENT_SECTIONS.items():
        parent, _, key = path.rpartition(".")
        target = raw[parent.split(".")[0]] if parent else raw
        name = _section(cfg, path)["name"]
        try:
            component = registry.get(kind, name)
        except MMGenError:
            return None
        defaults = component.default_config()
        target[key] = {"name": name, **{k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                                        for k, v in defaults.items()}}
    return raw


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


OWNER_FILE = "bench-file.json"  # in the benchmark folder: which bench file its runs belong to


def check_owner(spec: BenchSpec, bench_dir: Path, explicit_out: bool) -> None:
    """Refuse to run a bench file in a folder whose runs another bench file made (two files with
    the same ``name:``, e.g. a copy edited into a new comparison): its same-named runs would look
    changed and be trained over. ``--out`` (``explicit_out``) adopts the folder deliberately, and so
    does a file when the recorded one no longer exists (moved or renamed: no other file's runs to keep)."""
    record = read_json_file(bench_dir / OWNER_FILE)
    here = str(Path(spec.path).resolve())
    if explicit_out or not isinstance(record, dict) or record.get("file") in (None, here):
        return
    if not Path(str(record["file"])).exists():
        return
    raise MMGenError(f"{bench_dir} holds the runs of another bench file ({record['file']}) with the same name "
                     f"'{spec.name}'; give this one its own name: (or --out FOLDER), or pass --out {bench_dir} "
                     "to run it there anyway")


def claim_owner(spec: BenchSpec, bench_dir: Path) -> None:
    """Record that ``bench_dir``'s runs are ``spec``'s file's (see :func:`check_owner`)."""
    bench_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps({"file": str(Path(spec.path).resolve())}) + "\n", bench_dir / OWNER_FILE)


def make_plan(spec: BenchSpec, bench_dir: str | Path, only: Sequence[str] = ()) -> Plan:
    """Resolve every (run, seed) config, check the metrics, and decide what each run needs.

    Raises :class:`ConfigError` with every problem (each naming the run and the key) before
    anything is written.
    """
    from mmgen.evaluation import (build_metrics, check_metric_names, metric_outputs, metric_presentation,
                                  parse_metric_names)
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
    for run in spec.runs:
        where = f"{spec.path}: runs[{run.index}] ({run.name})"
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
    known = set(registry.names("metric"))
    outputs = {m: metric_outputs(registry, m) for m in metrics if m in known}
    presentation = {}
    for m in metrics:
        if m in known:
            try:
                presentation[m] = metric_presentation(registry, m)
            except MMGenError as exc:
                errors.append(f"{spec.path}: evaluate.metrics: {exc}")
    columns, column_errors = parse_columns(spec.evaluate["columns"], metrics, outputs=outputs, presentation=presentation)
    errors += [f"{spec.path}: {e}" for e in column_errors]
    configs = [cfg for runs in resolved.values() for _, cfg, _ in runs]
    periodic = {m: metric_outputs(registry, m) for cfg in configs if cfg["train"]["eval_every"]
                for m in cfg["train"]["eval_metrics"] if m in known}
    errors += [f"{spec.path}: {e}" for e in check_curves(spec.report["curves"], periodic)]
    if configs:  # every run has the same data
        errors += [f"{spec.path}: {e}" for e in check_cross_given(spec.report["cross_given"], configs[0]["data"])]
        if not column_errors:  # then columns[i] is the file's columns[i]
            keys = [c.key for c in columns]
            errors += [f"{spec.path}: {e}" for e in check_column_indices(keys, registry, configs[0]["data"])]
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


def modality_count(data: dict[str, Any], modalities: int | None = None) -> int | None:
    """``modalities`` when known (the loaded data), else the data config's ``modalities`` when it
    sets a positive one; otherwise (e.g. every modality on disk) None: known once the data loads."""
    count = modalities if modalities is not None else data.get("modalities")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        return None
    return count


def check_cross_given(given: Sequence[int], data: dict[str, Any], modalities: int | None = None) -> list[str]:
    """An error line when ``report.cross_given`` names a modality the data lacks (unchecked while
    the count is unknown: :func:`modality_count`)."""
    count = modality_count(data, modalities)
    if count is None:
        return []
    bad = [g for g in given if g >= count]
    if not bad:
        return []
    return [f"report.cross_given: modality {bad[0]} does not exist (the data has {count} modalities; "
            f"valid: 0..{count - 1})"]


def check_column_indices(keys: Sequence[str], registry: Any, data: dict[str, Any],
                         modalities: int | None = None) -> list[str]:
    """Error lines for ``evaluate.columns`` entries (``keys``, in the file's order) whose index
    into a list-valued metric output is out of range for the data's number of modalities
    (unchecked while the count is unknown: :func:`modality_count`)."""
    from mmgen.evaluation import metric_output_shapes

    count = modality_count(data, modalities)
    if count is None:
        return []
    known = set(registry.names("metric"))
    shapes = {m: metric_output_shapes(registry, m, count) for m in {k.split("/")[0] for k in keys} if m in known}
    return check_indices(keys, shapes, count)


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
