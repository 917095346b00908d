"""Run configuration: one schema, one merge order, every error reported at once.

Merge order: dataclass defaults -> recipe YAML (configs/) -> ``--config FILE`` -> CLI shortcuts
(``--prior ebm``) -> ``key.path=value`` overrides. A component section (``model.prior``,
``data``, ...) names a registered component with ``name:``; its other keys are validated against
that component's own config dataclass. When a later source changes a section's ``name``, the
earlier source's keys for the old component are dropped instead of leaking into the new one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode, StringNode

from mmgen.errors import ConfigError, MMGenError, did_you_mean
from mmgen.registry import Registry

#: Config path of each component section -> registry kind.
COMPONENT_SECTIONS: dict[str, str] = {
    "data": "dataset",
    "model.encoder": "encoder",
    "model.decoder": "decoder",
    "model.aggregator": "aggregator",
    "model.prior": "prior",
    "model.inference": "inference",
    "model.objective": "objective",
}


@dataclass
class LikelihoodConfig:
    """p(x_m | z): family and scale shared by every modality's decoder."""

    family: str = "laplace"
    scale: float = 0.75


@dataclass
class ModelConfig:
    """The multimodal model: latent sizes, distribution families and its components."""

    latent_dim: int = 16
    private_dim: int = 0  # modality-private latents w_m (MMVAE+); 0 = none
    posterior_family: str = "laplace"
    scale_param: str = "softmax"
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)
    encoder: dict[str, Any] = field(default_factory=lambda: {"name": "conv"})
    decoder: dict[str, Any] = field(default_factory=lambda: {"name": "conv"})
    aggregator: dict[str, Any] = field(default_factory=lambda: {"name": "moe"})
    prior: dict[str, Any] = field(default_factory=lambda: {"name": "laplace"})
    inference: dict[str, Any] = field(default_factory=lambda: {"name": "amortized"})
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "elbo"})


@dataclass
class TrainConfig:
    """The training loop. ``max_steps`` > 0 stops early; a step is one optimizer update."""

    epochs: int = 5
    max_steps: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    amsgrad: bool = False
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    log_every: int = 10
    sample_every: int = 0  # steps between sample grids; 0 = at the end of each epoch
    checkpoint_every: int = 200  # steps between checkpoints (and at each epoch end)
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: str = "no"  # no | bf16 | fp16 (accelerate)
    on_nonfinite: str = "stop"  # stop | skip | rollback: what a non-finite loss or gradient does
    rollback_factor: float = 0.5  # rollback: multiply learning rates and Langevin step sizes by this
    max_rollbacks: int = 3
    progress: bool = True
    eval_every: int = 0  # epochs between evaluations written to RUN_DIR/eval.jsonl; 0 = off
    eval_metrics: list[str] = field(default_factory=lambda: ["cross_coherence", "joint_coherence"])
    eval_n: int = 1000  # unconditional samples per periodic evaluation
    eval_n_test: int = 1000  # test tuples per periodic evaluation; 0 = all


@dataclass
class RunConfig:
    """Everything a run needs; ``config.yaml`` in a run directory is this, fully resolved."""

    name: str = "run"
    seed: int = 0
    out: str = ""  # run directory; empty = runs/<name>-<timestamp>
    plugins: list[str] = field(default_factory=list)  # extra plugin modules to import by path
    data: dict[str, Any] = field(default_factory=lambda: {"name": "default"})
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "train.device": ("auto", "cpu", "cuda"),
    "train.mixed_precision": ("no", "bf16", "fp16"),
    "train.on_nonfinite": ("stop", "skip", "rollback"),
    "model.posterior_family": ("gaussian", "laplace"),
    "model.likelihood.family": ("gaussian", "laplace"),
    "model.scale_param": ("softplus", "exp", "softmax"),
}
POSITIVE = ("model.latent_dim", "train.epochs", "train.batch_size", "train.log_every", "train.checkpoint_every",
            "model.likelihood.scale", "train.lr", "train.eval_n")
NONNEGATIVE = ("model.private_dim", "train.max_steps", "train.sample_every",
               "train.grad_clip", "train.weight_decay", "train.max_rollbacks", "train.eval_every",
               "train.eval_n_test")
#: Appended to a range error where the valid range alone would not explain it.
RANGE_HINTS = {"train.epochs": " (train.max_steps only stops a run earlier; it cannot replace the epochs)"}


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------
def config_dirs() -> list[Path]:
    """Where recipes are looked up: ./configs, then the configs/ beside the mmgen package."""
    here = Path(__file__).resolve().parent.parent / "configs"
    dirs = [Path.cwd() / "configs", here]
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def list_recipes() -> list[str]:
    """Names of the recipes found in :func:`config_dirs`."""
    return sorted({p.stem for d in config_dirs() for p in d.glob("*.yaml")})


def find_recipe(recipe: str) -> Path:
    """Resolve a recipe name (``mmvae``) or path to a YAML file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise MMGenError(f"recipe file not found: {recipe} (a recipe is a file path or one of: {', '.join(list_recipes())})")
    for d in config_dirs():
        if (d / f"{recipe}.yaml").is_file():
            return d / f"{recipe}.yaml"
    valid = list_recipes()
    raise MMGenError(f"unknown recipe '{recipe}'{did_you_mean(recipe, valid)}; available recipes: {', '.join(valid)}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, except that a key given twice in one mapping is an error (YAML
    keeps the last silently, so a setting written twice would be half ignored)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a one-line error naming it."""
    path = Path(path)
    if path.is_dir():
        raise MMGenError(f"{what} file {path} is a folder; give a YAML file")
    if not path.is_file():
        raise MMGenError(f"{what} file not found: {path}")
    try:
        with path.open() as stream:  # (a stream, so that an error's position names the file)
            loaded = yaml.load(stream, Loader=_UniqueKeyLoader)  # safe_load's loader, stricter
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MMGenError(f"{what} file {path} is not valid YAML: {' '.join(str(exc).split())[:200]}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise MMGenError(f"{what} file {path} must hold a mapping of keys, not a {type(loaded).__name__}")
    return loaded


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``key.path=value`` strings to a nested dict (values parsed as YAML scalars)."""
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise MMGenError(f"override '{bad[0]}' is not of the form key.path=value")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise MMGenError(f"cannot parse overrides {overrides}: {str(exc).splitlines()[0]}") from None


def _get_path(d: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def merge_sources(sources: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge plain-dict sources in order, dropping a component section's keys when a later
    source names a different component for it."""
    merged: dict[str, Any] = {}
    for source in sources:
        source = dict(source)
        for path in COMPONENT_SECTIONS:
            new = _get_path(source, path)
            old = _get_path(merged, path)
            if isinstance(new, dict) and isinstance(old, dict) and "name" in new and new["name"] != old.get("name"):
                parent, _, key = path.rpartition(".")
                target = _get_path(merged, parent) if parent else merged
                target[key] = {}
        merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(merged), OmegaConf.create(source)))  # type: ignore[assignment]
    return merged


def compose(recipe: str | None = None, config_file: str | None = None,
            shortcuts: dict[str, Any] | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """Merge every source in order into one raw (not yet validated) dict."""
    sources: list[dict[str, Any]] = [dataclasses.asdict(RunConfig())]
    if recipe:
        sources.append(load_yaml(find_recipe(recipe), "recipe"))
    if config_file:
        sources.append(load_yaml(config_file))
    if shortcuts:
        sources.append(parse_overrides([f"{k}={v}" for k, v in shortcuts.items() if v is not None]))
    if overrides:
        sources.append(parse_overrides(list(overrides)))
    return merge_sources(sources)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
# The value type a typed config field expects, as an error message names it.
_NODE_TYPES = {FloatNode: "float", IntegerNode: "int", BooleanNode: "bool", StringNode: "str"}


def _merge_checked(schema: DictConfig, data: Any, path: str, errors: list[str], skip: set[str]) -> None:
    """Copy ``data`` into the typed ``schema`` leaf by leaf, collecting one error per bad key."""
    if not isinstance(data, dict):
        errors.append(f"{path or '<root>'}: expected a mapping of keys, got {data!r}")
        return
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key_path in skip:
            continue
        if key not in schema.keys():  # (`key in schema` is False for a field without a default)
            valid = [str(k) for k in schema.keys()]
            errors.append(f"{key_path}: unknown key{did_you_mean(str(key), valid)}; valid keys: {', '.join(valid)}")
            continue
        node = schema._get_node(key)
        if isinstance(node, DictConfig):
            if isinstance(value, dict):
                _merge_checked(schema[key], value, key_path, errors, skip)
            else:
                errors.append(f"{key_path}: is a section, not a value; set its keys ({key_path}.KEY=VALUE), got {value!r}")
            continue
        if value is None and isinstance(node, StringNode) and not node._is_optional():
            value = ""  # `out=` (YAML reads an empty value as null): the empty text, each field's "not set"
        is_float = isinstance(node, FloatNode)
        if is_float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # `scale=1` means 1.0; OmegaConf warns about the implicit cast
        elif is_float and isinstance(value, str):
            try:  # `lr=nan` or `lr=inf` from an override arrive as text: convert without OmegaConf's warning
                value = float(value)
            except ValueError:
                pass  # not a number: OmegaConf's error below names the expected type
        try:
            schema[key] = value
        except OmegaConfBaseException as exc:
            expected = "list" if isinstance(node, ListConfig) else _NODE_TYPES.get(type(node), type(node).__name__)
            msg = str(exc).splitlines()[0]
            errors.append(f"{key_path}: invalid value {value!r} (expected {expected}): {msg}")


def range_error(name: str, value: Any, positive: bool) -> str | None:
    """``"name: must be > 0, got -1"`` (``>= 0`` unless ``positive``), or None when ``value`` is in
    range. NaN and infinities are out of range (a plain ``value <= 0`` would let NaN through)."""
    if not math.isfinite(value):
        return f"{name}: must be a finite number {'>' if positive else '>='} 0, got {value}"
    if not (value > 0 if positive else value >= 0):
        return f"{name}: must be {'>' if positive else '>='} 0, got {value}"
    return None


def check_positive(cfg: Any, *names: str) -> None:
    """For a component config's ``__post_init__``: each named field must be finite and > 0."""
    for name in names:
        if error := range_error(name, getattr(cfg, name), positive=True):
            raise ValueError(error)


def check_nonnegative(cfg: Any, *names: str) -> None:
    """For a component config's ``__post_init__``: each named field must be finite and >= 0."""
    for name in names:
        if error := range_error(name, getattr(cfg, name), positive=False):
            raise ValueError(error)


def check_finite(cfg: Any, *names: str) -> None:
    """For a component config's ``__post_init__``: each named field must be a finite number."""
    for name in names:
        value = getattr(cfg, name)
        if not math.isfinite(value):
            raise ValueError(f"{name}: must be a finite number, got {value}")


def check_betas(cfg: Any, name: str = "betas") -> None:
    """For a component config's ``__post_init__``: Adam's two decay rates, each in [0, 1)."""
    betas = list(getattr(cfg, name))
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):  # NaN fails 0 <= b
        raise ValueError(f"{name}: must be two numbers in [0, 1), got {betas}")


def _resolve_component(raw: Any, path: str, kind: str, registry: Registry, errors: list[str]) -> dict[str, Any]:
    if isinstance(raw, str) and raw:  # `model.prior=ebm`: the section's name was meant
        errors.append(f"{path}: is a section, not a value; write {path}.name={raw} to choose the {kind}")
        return {}
    if not isinstance(raw, dict) or not raw.get("name"):
        valid = ", ".join(registry.names(kind))
        errors.append(f"{path}.name: missing; choose a registered {kind}: {valid}")
        return {}
    name = raw["name"]
    try:
        component = registry.get(kind, str(name))
    except MMGenError as exc:
        errors.append(f"{path}.name: {exc}")
        return dict(raw)
    params = {k: v for k, v in raw.items() if k != "name"}
    if component.config is None:
        if params:
            errors.append(f"{path}: {kind} '{name}' takes no options, got {', '.join(params)}")
        return {"name": name}
    schema = OmegaConf.structured(component.config)
    OmegaConf.set_struct(schema, True)
    _merge_checked(schema, params, path, errors, set())
    unset = [str(key) for key in schema.keys() if OmegaConf.is_missing(schema, key)]
    named = {e.split(":", 1)[0] for e in errors}  # (a value given but invalid is reported as such)
    errors += [f"{path}.{key}: missing; {kind} '{name}' has no default for it: set {path}.{key}=VALUE"
               for key in unset if f"{path}.{key}" not in named]
    if not unset:  # (the dataclass cannot be built without them)
        errors += [f"{path}.{error}" for error in post_init_errors(component.config, schema)]
    return {"name": name, **OmegaConf.to_container(schema)}  # type: ignore[dict-item]


def post_init_errors(config_class: type, schema: DictConfig) -> list[str]:
    """Every error the dataclass's ``__post_init__`` checks find in ``schema``'s values (which merged:
    a key or type error left its field at the default), not just the first: a check stops at its
    first failure, so each error that names a field ("hidden: must be > 0, got 0") puts that field
    back to its default on a copy and the checks run again, until they pass or an error names no
    field (or one already reported)."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    trial = schema.copy()
    errors: list[str] = []
    while True:
        try:
            OmegaConf.to_object(trial)
            return errors
        except (ValueError, TypeError) as exc:
            errors.append(str(exc))
            name = str(exc).split(":", 1)[0].strip()
            if name not in fields or len(errors) > len(fields):
                return errors
            f = fields[name]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if default is dataclasses.MISSING or trial[name] == default:
                return errors
            trial[name] = default


def _check_ranges(cfg: dict[str, Any], errors: list[str]) -> None:
    """Range checks of the top-level keys, skipping keys that already have an error (a key whose
    value did not merge holds its default)."""
    named = {e.split(":", 1)[0] for e in errors}
    for path, valid in CHOICES.items():
        value = _get_path(cfg, path)
        if path not in named and value not in valid:
            errors.append(f"{path}: invalid value {value!r}; valid: {', '.join(valid)}")
    for path in POSITIVE:
        value = _get_path(cfg, path)
        if path not in named and isinstance(value, (int, float)) and (error := range_error(path, value, True)):
            errors.append(error + RANGE_HINTS.get(path, ""))
    for path in NONNEGATIVE:
        value = _get_path(cfg, path)
        if path not in named and isinstance(value, (int, float)) and (error := range_error(path, value, False)):
            errors.append(error)
    if "train.rollback_factor" not in named and not 0 < (_get_path(cfg, "train.rollback_factor") or 0) < 1:
        errors.append(f"train.rollback_factor: must be in (0, 1), got {_get_path(cfg, 'train.rollback_factor')}")
    if "train.betas" not in named:
        betas = _get_path(cfg, "train.betas") or []
        if len(betas) != 2:
            errors.append("train.betas: must be a list of two floats")
        elif not all(0 <= b < 1 for b in betas):  # Adam's decay rates; NaN fails 0 <= b
            errors.append(f"train.betas: each must be in [0, 1), got {betas}")


def _check_posterior_family(cfg: dict[str, Any], registry: Registry, errors: list[str]) -> None:
    """The aggregator must be able to combine experts of ``model.posterior_family`` (its class's
    ``families``), which build_model would otherwise find only when the model is built."""
    name, family = (cfg["model"].get("aggregator") or {}).get("name"), cfg["model"]["posterior_family"]
    if not name or name not in registry.names("aggregator") or "model.posterior_family" in {e.split(":")[0] for e in errors}:
        return
    families = getattr(registry.get("aggregator", name).factory, "families", None)
    if families is not None and family not in families:
        errors.append(f"model.posterior_family: aggregator '{name}' needs one of {', '.join(families)}, got '{family}' "
                      f"(add model.posterior_family={next(iter(families))})")


def resolve(raw: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """Validate ``raw`` against the schema and every chosen component's config.

    Returns the fully resolved config as plain data. Raises :class:`ConfigError` listing every
    problem found, each naming its key path.
    """
    errors: list[str] = []
    schema = OmegaConf.structured(RunConfig)
    OmegaConf.set_struct(schema, True)
    _merge_checked(schema, raw, "", errors, skip=set(COMPONENT_SECTIONS))
    cfg: dict[str, Any] = OmegaConf.to_container(schema)  # type: ignore[assignment]
    for path, kind in COMPONENT_SECTIONS.items():
        parent, _, key = path.rpartition(".")
        target = _get_path(cfg, parent) if parent else cfg
        target[key] = _resolve_component(_get_path(raw, path), path, kind, registry, errors)
    _check_ranges(cfg, errors)
    _check_posterior_family(cfg, registry, errors)
    if cfg["train"]["eval_every"]:
        from mmgen.evaluation import check_metric_names

        errors += [f"train.eval_metrics: {e}" for e in check_metric_names(registry, cfg["train"]["eval_metrics"])]
    if errors:
        raise ConfigError(errors)
    return cfg


def component_config(registry: Registry, kind: str, section: dict[str, Any]) -> Any:
    """Instantiate a resolved section's config dataclass (``None`` for config-less components)."""
    component = registry.get(kind, section["name"])
    if component.config is None:
        return None
    params = {k: v for k, v in section.items() if k != "name"}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(component.config), params))


def to_yaml(cfg: dict[str, Any]) -> str:
    """YAML text of a plain config."""
    return OmegaConf.to_yaml(OmegaConf.create(cfg))
