"""Config composition: merge order, component sections, and errors that name the key path."""

import math

import pytest

from mmgen.config import compose, merge_sources, resolve
from mmgen.errors import ConfigError, MMGenError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_merge_order_defaults_recipe_file_shortcuts_overrides(plugins, tmp_path):
    recipe = write(tmp_path, "r.yaml", "model: {latent_dim: 8}\ntrain: {lr: 0.01, batch_size: 16}\nseed: 1\n")
    cfg_file = write(tmp_path, "c.yaml", "train: {batch_size: 32}\nseed: 2\n")
    raw = compose(recipe, cfg_file, {"seed": 3}, ["seed=4"])
    cfg = resolve(raw, plugins.registry)
    assert cfg["model"]["latent_dim"] == 8  # recipe over defaults
    assert cfg["train"]["lr"] == 0.01  # recipe kept where nothing later sets it
    assert cfg["train"]["batch_size"] == 32  # file over recipe
    assert cfg["seed"] == 4  # override over shortcut over file
    assert cfg["train"]["epochs"] == 5  # default


def test_component_defaults_filled_and_name_change_drops_stale_keys(plugins):
    raw = merge_sources([{"model": {"aggregator": {"name": "poe", "prior_expert": False}}},
                         {"model": {"aggregator": {"name": "moe"}}}])
    assert raw["model"]["aggregator"] == {"name": "moe"}
    cfg = resolve(compose(overrides=["model.aggregator.name=mopoe", "model.posterior_family=gaussian"]), plugins.registry)
    assert cfg["model"]["aggregator"] == {"name": "mopoe", "prior_expert": False}
    assert cfg["model"]["encoder"]["hidden"] == 32


def test_errors_are_all_reported_with_key_paths(plugins):
    raw = compose(overrides=["train.lrr=0.1", "model.latent_dim=abc", "model.prior.name=nosuch",
                             "model.encoder.widht=3", "train.batch_size=-1", "train.device=tpu"])
    with pytest.raises(ConfigError) as info:
        resolve(raw, plugins.registry)
    errors = info.value.errors
    text = "\n".join(errors)
    assert "train.lrr: unknown key (did you mean 'lr'?)" in text
    assert "model.latent_dim: invalid value 'abc'" in text
    assert "model.prior.name: unknown prior 'nosuch'" in text and "laplace" in text
    assert "model.encoder.widht: unknown key" in text
    # Range errors come in the same report as structural ones.
    assert "train.batch_size: must be > 0, got -1" in text
    assert "train.device: invalid value 'tpu'" in text
    assert len(errors) == 6


def test_range_errors_reported_beside_key_and_type_errors(plugins):
    raw = compose(overrides=["model.prior.name=ebm", "model.prior.steps=-3", "model.prior.bogus=1",
                             "model.latent_dim=-1", "train.lr=abc"])
    with pytest.raises(ConfigError) as info:
        resolve(raw, plugins.registry)
    errors = info.value.errors
    assert any(e.startswith("model.prior.bogus: unknown key") for e in errors)
    assert "model.prior.steps: must be >= 0, got -3" in errors  # a component's own range check
    assert "model.latent_dim: must be > 0, got -1" in errors
    # A value that did not merge is reported once, for its type, not again for its range.
    assert [e.split(":")[0] for e in errors].count("train.lr") == 1
    assert len(errors) == 4


def test_a_component_section_set_like_a_value_names_the_fix(plugins):
    with pytest.raises(ConfigError) as info:
        resolve(compose(overrides=["model.prior=ebm"]), plugins.registry)
    assert info.value.errors == ["model.prior: is a section, not a value; write model.prior.name=ebm to choose the prior"]


def test_range_checks(plugins):
    with pytest.raises(ConfigError) as info:
        resolve(compose(overrides=["train.batch_size=-1", "train.device=tpu"]), plugins.registry)
    text = "\n".join(info.value.errors)
    assert "train.batch_size: must be > 0, got -1" in text
    assert "train.device: invalid value 'tpu'; valid: auto, cpu, cuda" in text


def test_recipe_lookup_errors():
    with pytest.raises(MMGenError, match="unknown recipe 'mmvea' \\(did you mean 'mmvae'\\?\\)"):
        compose("mmvea")
    with pytest.raises(MMGenError, match="recipe file not found: configs/nosuch.yaml"):
        compose("configs/nosuch.yaml")


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(MMGenError, match="config file not found"):
        compose(config_file=str(tmp_path / "nope.yaml"))
    bad = write(tmp_path, "bad.yaml", "model: [unclosed\n")
    with pytest.raises(MMGenError, match="not valid YAML"):
        compose(config_file=bad)
    scalar = write(tmp_path, "s.yaml", "42\n")
    with pytest.raises(MMGenError, match="must hold a mapping"):
        compose(config_file=scalar)
    twice = write(tmp_path, "twice.yaml", "train:\n  lr: 1\n  lr: 2\n")  # was: the last one, silently
    with pytest.raises(MMGenError, match=f"config file {twice} is not valid YAML: duplicate key 'lr' in .*line 3"):
        compose(config_file=twice)
    with pytest.raises(MMGenError, match=f"config file {tmp_path} is a folder; give a YAML file"):
        compose(config_file=str(tmp_path))


@pytest.mark.parametrize("overrides, error", [
    (["train=1"], "train: is a section, not a value; set its keys (train.KEY=VALUE), got 1"),  # was OmegaConf's
    (["model.likelihood=2"], "model.likelihood: is a section, not a value; set its keys (model.likelihood.KEY=VALUE), got 2"),
])
def test_a_value_for_a_section_says_so(overrides, error, plugins):
    with pytest.raises(ConfigError) as info:
        resolve(compose(overrides=overrides), plugins.registry)
    assert info.value.errors == [error]


def test_an_empty_text_value_is_the_empty_text(plugins):
    assert resolve(compose(overrides=["out="]), plugins.registry)["out"] == ""  # was: "out: invalid value None"


def test_override_syntax_error():
    with pytest.raises(MMGenError, match="not of the form key.path=value"):
        compose(overrides=["model.latent_dim"])


def errors_of(plugins, *overrides):
    """The config errors of ``overrides`` (empty when they resolve); any warning fails the test,
    since a warning printed before the error line breaks the one-line error."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            resolve(compose(overrides=list(overrides)), plugins.registry)
        except ConfigError as exc:
            return exc.errors
    return []


@pytest.mark.parametrize("override, error", [
    ("train.lr=nan", "train.lr: must be a finite number > 0, got nan"),  # `nan <= 0` is False
    ("train.lr=inf", "train.lr: must be a finite number > 0, got inf"),
    ("train.lr=.nan", "train.lr: must be a finite number > 0, got nan"),  # YAML's own NaN
    ("train.grad_clip=.inf", "train.grad_clip: must be a finite number >= 0, got inf"),
    ("train.weight_decay=nan", "train.weight_decay: must be a finite number >= 0, got nan"),
    ("model.likelihood.scale=nan", "model.likelihood.scale: must be a finite number > 0, got nan"),
    ("train.betas=[0.9,1.5]", "train.betas: each must be in [0, 1), got [0.9, 1.5]"),
    ("train.betas=[.nan,0.5]", "train.betas: each must be in [0, 1), got [nan, 0.5]"),
    ("train.betas=[-0.1,0.5]", "train.betas: each must be in [0, 1), got [-0.1, 0.5]"),
])
def test_nan_inf_and_betas_are_rejected_at_validation(plugins, override, error):
    assert errors_of(plugins, override) == [error]


def test_component_range_checks_are_nan_safe(plugins):
    ebm = "model.prior.name=ebm"
    assert errors_of(plugins, ebm, "model.prior.step_size=nan") == [
        "model.prior.step_size: must be a finite number > 0, got nan"]
    assert errors_of(plugins, ebm, "model.prior.lr=inf") == ["model.prior.lr: must be a finite number > 0, got inf"]
    assert errors_of(plugins, ebm, "model.prior.energy_weight=nan") == [
        "model.prior.energy_weight: must be a finite number, got nan"]
    assert errors_of(plugins, ebm, "model.prior.betas=[1.0,0.5]") == [
        "model.prior.betas: must be two numbers in [0, 1), got [1.0, 0.5]"]
    # sigma0^2 and 1/sigma0^2 must fit in float32 (beyond it torch raised an overflow traceback)
    assert errors_of(plugins, ebm, "model.prior.sigma0=1e-25")[0].startswith("model.prior.sigma0: must be in [1e-19, 1e+19]")
    assert errors_of(plugins, ebm, "model.prior.sigma0=1e200")[0].startswith("model.prior.sigma0: must be in [1e-19, 1e+19]")
    assert errors_of(plugins, "model.inference.name=langevin", "model.inference.step_size=nan") == [
        "model.inference.step_size: must be a finite number > 0, got nan"]
    assert errors_of(plugins, "model.prior.name=gaussian", "model.prior.scale=inf") == [
        "model.prior.scale: must be a finite number > 0, got inf"]


def test_check_helpers_reject_nan_and_infinity():
    from types import SimpleNamespace

    from mmgen.config import check_betas, check_finite, check_nonnegative, check_positive

    for check, value in [(check_positive, math.nan), (check_positive, math.inf), (check_positive, 0),
                         (check_nonnegative, math.nan), (check_nonnegative, -math.inf), (check_nonnegative, -1),
                         (check_finite, math.nan), (check_finite, -math.inf)]:
        with pytest.raises(ValueError, match="^x: must be"):
            check(SimpleNamespace(x=value), "x")
    check_positive(SimpleNamespace(x=1e-9), "x")
    check_nonnegative(SimpleNamespace(x=0), "x")
    with pytest.raises(ValueError, match=r"betas: must be two numbers in \[0, 1\)"):
        check_betas(SimpleNamespace(betas=[0.5, math.nan]))


def test_zero_epochs_is_rejected_even_with_max_steps(plugins):
    # Training stops at min(epochs x batches, max_steps): with 0 epochs it would take no step,
    # write a step-0 final.pt and report `done`.
    for overrides in (["train.epochs=0"], ["train.epochs=0", "train.max_steps=5"]):
        (error,) = errors_of(plugins, *overrides)
        assert error.startswith("train.epochs: must be > 0, got 0") and "max_steps" in error
    assert errors_of(plugins, "train.epochs=1", "train.max_steps=5") == []


@pytest.mark.parametrize("overrides, error", [
    (["model.objective.k=0"], "model.objective.k: must be > 0, got 0"),
    (["model.objective.beta=-1"], "model.objective.beta: must be >= 0, got -1.0"),
    (["model.objective.beta=nan"], "model.objective.beta: must be a finite number >= 0, got nan"),
    (["model.objective.name=iwae", "model.objective.k=0"], "model.objective.k: must be > 0, got 0"),
    (["model.objective.name=dreg", "model.objective.beta=-0.5"], "model.objective.beta: must be >= 0, got -0.5"),
    (["model.objective.name=mvae", "model.objective.random_subsets=-1"],
     "model.objective.random_subsets: must be >= 0, got -1"),
])
def test_objective_options_are_range_checked(plugins, overrides, error):
    assert errors_of(plugins, *overrides) == [error]
    assert errors_of(plugins, "model.objective.beta=0") == []  # no KL weight: a plain autoencoder bound


@pytest.mark.parametrize("section", ["encoder", "decoder"])
@pytest.mark.parametrize("option, error", [
    ("hidden=0", "hidden: must be > 0, got 0"),  # was a traceback from Conv2d when the model was built
    ("hidden=-8", "hidden: must be > 0, got -8"),
    ("max_channels=0", "max_channels: must be > 0, got 0"),
    ("downsamples=-1", "downsamples: must be >= 0, got -1"),  # was an IndexError (no widths) at build time
    ("residual_scale=nan", "residual_scale: must be a finite number, got nan"),
])
def test_resnet_options_are_range_checked(plugins, section, option, error):
    name = f"model.{section}.name=resnet"
    assert errors_of(plugins, name, f"model.{section}.{option}") == [f"model.{section}.{error}"]
    # 0 downsamplings (one resolution) and a zero residual branch still build a network.
    assert errors_of(plugins, name, f"model.{section}.downsamples=0", f"model.{section}.residual_scale=0") == []


def test_every_range_error_of_a_component_is_reported_not_just_the_first(plugins):
    """A __post_init__ stops at its first failed check; validation puts each named field back to its
    default and runs the checks again, so one `mmgen validate` lists them all."""
    assert errors_of(plugins, "model.prior.name=ebm", "model.prior.hidden=0", "model.prior.steps=-2",
                     "model.prior.lr=nan", "model.prior.activation=tanh") == [
        "model.prior.hidden: must be > 0, got 0",
        "model.prior.lr: must be a finite number > 0, got nan",
        "model.prior.steps: must be >= 0, got -2",
        "model.prior.activation: unknown 'tanh'; valid: gelu, leaky_relu, silu",
    ]
    # a check across fields, whose message names no single field, ends the search: reported once
    from dataclasses import dataclass

    from omegaconf import OmegaConf

    from mmgen.config import post_init_errors

    @dataclass
    class Pair:
        low: float = 0.0
        high: float = 1.0

        def __post_init__(self):
            if self.low > self.high:
                raise ValueError(f"low must not exceed high, got {self.low} > {self.high}")

    schema = OmegaConf.structured(Pair)
    schema.low = 3.0
    assert post_init_errors(Pair, schema) == ["low must not exceed high, got 3.0 > 1.0"]
    assert schema.low == 3.0  # the checks ran on a copy
