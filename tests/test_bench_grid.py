"""`mmgen bench`: a run entry with lists (component choices, ``grid:``) stands for one run per combination."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmgen.bench import load_spec, make_plan
from mmgen.cli.main import create_app
from mmgen.errors import ConfigError

GRID_BENCH = """budget: {max_steps: 1}
data: {name: default, modalities: 2, train_size: 16, test_size: 8}
overrides: [model.latent_dim=2, train.batch_size=8]
runs:
  - {name: "{agg}-{prior}", agg: [poe, moe], prior: [gaussian, ebm], overrides: [model.posterior_family=gaussian]}
  - {name: "ebm-k{steps}-lr{model.prior.lr}", recipe: ebm-mmvae, overrides: [model.prior.steps=60],
     grid: {model.prior.steps: [5, 10], model.prior.lr: [0.001]}}
  - {name: mvae, recipe: mvae, seeds: [3]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "b.yaml"
    path.write_text(text)
    return path


def spec_errors(tmp_path: Path, runs: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_spec(write(tmp_path, f"budget: {{epochs: 1}}\nruns:\n{runs}"))
    return [e.split(": ", 1)[1] for e in err.value.errors]  # without the file name


def test_lists_of_components_and_grid_values_stand_for_one_run_per_combination(tmp_path):
    spec = load_spec(write(tmp_path, GRID_BENCH))
    assert [r.name for r in spec.runs] == ["poe-gaussian", "poe-ebm", "moe-gaussian", "moe-ebm",
                                           "ebm-k5-lr0.001", "ebm-k10-lr0.001", "mvae"]
    assert [r.index for r in spec.runs] == [0, 0, 0, 0, 1, 1, 2]
    moe_ebm = spec.runs[3]
    assert moe_ebm.choices == {"model.aggregator.name": "moe", "model.prior.name": "ebm"} and moe_ebm.recipe is None
    # The grid's values come after the entry's own overrides, so they win.
    assert spec.runs[5].overrides == ["model.prior.steps=60", "model.prior.steps=10", "model.prior.lr=0.001"]
    assert spec.runs[6].seeds == [3]

    plan = make_plan(spec, tmp_path / "out")
    cfg = {(p.run, p.seed): p.config for p in plan.runs}
    assert cfg["moe-ebm", 0]["model"]["aggregator"]["name"] == "moe"
    assert cfg["moe-ebm", 0]["model"]["prior"]["name"] == "ebm"
    assert cfg["poe-gaussian", 0]["model"]["prior"]["name"] == "gaussian"
    assert [cfg[f"ebm-k{k}-lr0.001", 0]["model"]["prior"]["steps"] for k in (5, 10)] == [5, 10]
    assert cfg["ebm-k5-lr0.001", 0]["model"]["prior"]["lr"] == 0.001
    assert len({p.config_hash for p in plan.runs}) == len(plan.runs)


def test_a_grid_bench_dry_runs_and_selects_expanded_runs_by_glob(tmp_path):
    bench = write(tmp_path, GRID_BENCH)
    result = CliRunner().invoke(create_app(with_plugin_commands=False),
                                ["bench", str(bench), "--dry-run", "--out", str(tmp_path / "out"), "--only", "moe-*"])
    assert result.exit_code == 0, result.output
    assert "runs/moe-ebm-s0" in result.output and "runs/moe-gaussian-s0" in result.output
    plan = make_plan(load_spec(bench), tmp_path / "out", only=["*-ebm"])
    assert sorted(p.run for p in plan.todo) == ["moe-ebm", "poe-ebm"]


def test_a_name_must_tell_the_combinations_apart(tmp_path):
    assert spec_errors(tmp_path, "  - {name: m, recipe: mmvae, agg: [poe, moe], grid: {model.prior.steps: [1, 2]}}\n") == [
        "runs[0].name: 'm' would give its 4 runs the same name; put {agg}-{steps} in it, e.g. 'm-{agg}-{steps}'"]
    # A list of one value needs no placeholder.
    assert [r.name for r in load_spec(write(tmp_path, "budget: {epochs: 1}\nruns: [{name: m, agg: [moe]}]\n")).runs] == ["m"]
    assert spec_errors(tmp_path, "  - {name: 'm-{aggregator}-{steps}', agg: [poe, moe]}\n") == [
        "runs[0].name: '{aggregator}' names none of this run's lists; placeholders: {agg}",
        "runs[0].name: '{steps}' names none of this run's lists; placeholders: {agg}"]
    assert spec_errors(tmp_path, "  - {name: 'm-{agg}', recipe: mmvae}\n") == [
        "runs[0].name: 'm-{agg}' has placeholders but the run has no lists to fill them; e.g. {name: "
        "'mmvae-{agg}-{prior}', recipe: mmvae, agg: [poe, moe], grid: {model.prior.steps: [10, 30]}}"]
    # Two paths ending alike are told apart by their full paths.
    two = "  - {name: 'm-{steps}', grid: {model.prior.steps: [1, 2], model.inference.steps: [3]}}\n"
    assert spec_errors(tmp_path, two)[0].startswith(
        "runs[0].name: '{steps}' names none of this run's lists; placeholders: {model.prior.steps}, {model.inference.steps}")
    ok = two.replace("{steps}", "{model.prior.steps}")
    assert [r.name for r in load_spec(write(tmp_path, f"budget: {{epochs: 1}}\nruns:\n{ok}")).runs] == ["m-1", "m-2"]
    # Combinations that collide with each other or with another run are caught as any duplicate name.
    assert spec_errors(tmp_path, "  - {name: '{agg}', agg: [poe, moe]}\n  - {name: moe}\n") == [
        "runs[1] (moe).name: 'moe' is used by another run; run names must be unique"]
    assert spec_errors(tmp_path, "  - {name: 'x{flag}', grid: {model.flag: ['a/b']}}\n") == [
        "runs[0].name: expected a folder-safe name (letters, digits, . _ -), got 'xa/b'"]


def test_malformed_lists_and_grids_are_one_line_errors(tmp_path):
    assert spec_errors(tmp_path, "  - {name: '{agg}', agg: []}\n") == [
        "runs[0].agg: expected a name or a non-empty list of names, got []"]
    assert spec_errors(tmp_path, "  - {name: '{prior}', prior: [ebm, 3]}\n") == [
        "runs[0].prior: expected a name or a non-empty list of names, got ['ebm', 3]"]
    assert spec_errors(tmp_path, "  - {name: m, grid: [model.prior.steps]}\n") == [
        "runs[0].grid: expected a mapping of config paths to lists of values, e.g. {name: 'mmvae-{agg}-{prior}', "
        "recipe: mmvae, agg: [poe, moe], grid: {model.prior.steps: [10, 30]}}; got ['model.prior.steps']"]
    assert spec_errors(tmp_path, "  - {name: 'm{steps}', grid: {model.prior.steps: 5}}\n") == [
        "runs[0].grid.model.prior.steps: expected a non-empty list of values (numbers, strings, true/false), got 5"]
    assert spec_errors(tmp_path, "  - {name: 'm{epochs}', grid: {train.epochs: [1, 2]}}\n") == [
        "runs[0].grid.train.epochs: sets train.epochs, which the benchmark sets for every run "
        "(use data:, budget: or seeds:)"]


def test_a_grid_path_the_config_does_not_have_names_the_expanded_run(tmp_path):
    spec = load_spec(write(tmp_path, GRID_BENCH.replace("model.prior.lr: [0.001]", "model.prior.lrr: [0.001]")
                           .replace("lr{model.prior.lr}", "lr{lrr}")))
    with pytest.raises(ConfigError) as err:
        make_plan(spec, tmp_path / "out")
    (first, *_) = [e.split(": ", 1)[1] for e in err.value.errors]
    assert first.startswith("runs[1] (ebm-k5-lr0.001): model.prior.lrr: unknown key (did you mean 'lr'?)")
