"""Config composition: merge order, component sections, and errors that name the key path."""

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


def test_range_checks(plugins):
    with pytest.raises(ConfigError) as info:
        resolve(compose(overrides=["train.batch_size=-1", "train.device=tpu"]), plugins.registry)
    text = "\n".join(info.value.errors)
    assert "train.batch_size: must be > 0, got -1" in text
    assert "train.device: invalid value 'tpu'; valid: auto, cpu, cuda" in text


def test_recipe_lookup_errors():
    with pytest.raises(MMGenError, match="unknown recipe 'mmvea' \\(did you mean 'mmvae'\\?\\)"):
        compose("mmvea")


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(MMGenError, match="config file not found"):
        compose(config_file=str(tmp_path / "nope.yaml"))
    bad = write(tmp_path, "bad.yaml", "model: [unclosed\n")
    with pytest.raises(MMGenError, match="not valid YAML"):
        compose(config_file=bad)
    scalar = write(tmp_path, "s.yaml", "42\n")
    with pytest.raises(MMGenError, match="must hold a mapping"):
        compose(config_file=scalar)


def test_override_syntax_error():
    with pytest.raises(MMGenError, match="not of the form key.path=value"):
        compose(overrides=["model.latent_dim"])
