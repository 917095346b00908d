"""`mmgen bench`: the bench file, checked before anything runs (structure, every run's config, metrics, columns,
curves), and run entries with lists (component choices, ``grid:``) that stand for one run per combination."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmgen.bench import load_spec, make_plan
from mmgen.cli.main import create_app
from mmgen.errors import ConfigError, MMGenError
from tests.conftest import REPO

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


def invoke(*args):
    return CliRunner().invoke(create_app(with_plugin_commands=False), [str(a) for a in args])


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


def test_a_run_config_path_is_relative_to_the_bench_file(tmp_path, monkeypatch):
    (tmp_path / "benches").mkdir()
    (tmp_path / "benches" / "m.yaml").write_text("model: {latent_dim: 7}\n")
    (tmp_path / "m.yaml").write_text("model: {latent_dim: 9}\n")  # same name in the working directory
    bench = tmp_path / "benches" / "b.yaml"
    bench.write_text("budget: {epochs: 1}\nruns: [{name: a, config: m.yaml}, {name: b, config: n.yaml}]\n")
    (tmp_path / "n.yaml").write_text("model: {latent_dim: 5}\n")  # only in the working directory
    monkeypatch.chdir(tmp_path)
    runs = load_spec(bench).runs
    assert Path(runs[0].config) == tmp_path / "benches" / "m.yaml"
    assert Path(runs[1].config).resolve() == tmp_path / "n.yaml"


def test_a_name_with_a_trailing_newline_is_not_folder_safe(tmp_path):
    """The name pattern's "$" matched before a final newline: "t\\n" made a folder bench/t<newline>
    and ended results.tex's comment line, putting its rest into the document."""
    with pytest.raises(ConfigError) as err:
        load_spec(write(tmp_path, 'name: "t\\n"\nbudget: {epochs: 1}\nruns: [{name: "a\\n", recipe: mmvae}]\n'))
    assert [e.split(": ", 1)[1] for e in err.value.errors] == [
        "name: expected a folder-safe name (letters, digits, . _ -), got 't\\n'",
        "runs[0].name: expected a folder-safe name (letters, digits, . _ -), got 'a\\n'"]


def test_spec_errors_name_their_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_spec(write(tmp_path, "seed: [0]\nruns: [{name: a, recipe: mvea, overrides: [train.epochs=3]}]\n"))
    text = "\n".join(err.value.errors)
    assert "seed: unknown key (did you mean 'seeds'?)" in text
    assert "budget: missing" in text
    assert "runs[0] (a).recipe: unknown recipe 'mvea' (did you mean 'mvae'?)" in text
    assert "runs[0] (a).overrides: 'train.epochs=3' sets train.epochs" in text

    spec = load_spec(write(tmp_path, "budget: {epochs: 1}\nevaluate: {metrics: [cross_coherense]}\n"
                                     "runs: [{name: a, recipe: mmvae, overrides: [model.latent_dim=-1]}]\n"))
    with pytest.raises(ConfigError) as err:
        make_plan(spec, tmp_path / "out")
    text = "\n".join(err.value.errors)
    assert "runs[0] (a): model.latent_dim: must be > 0, got -1" in text
    assert "evaluate.metrics: unknown metric 'cross_coherense' (did you mean 'cross_coherence'?)" in text
    assert not (tmp_path / "out").exists()

    for runs, problem in (("[]", "runs: empty"), ("{name: a, recipe: mmvae}", "runs: expected a list of runs, got a dict")):
        with pytest.raises(ConfigError, match=problem):
            load_spec(write(tmp_path, f"budget: {{epochs: 1}}\nruns: {runs}\n"))
    result = invoke("bench", write(tmp_path, "budget: {steps: 3}\nruns: [{name: a, recipe: mmvae}]\n"))
    assert result.exit_code == 2 and "budget.steps: unknown key (did you mean 'max_steps'?)" in result.output
    spec = load_spec(write(tmp_path, "budget: {epochs: 1}\nruns: [{name: a, recipe: mmvae}]\n"))
    with pytest.raises(MMGenError, match="--only b: no such run"):
        make_plan(spec, tmp_path / "out", only=["b"])


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs" / "bench").glob("*.yaml")))
def test_every_bench_file_validates_in_a_dry_run(name, tmp_path):
    result = invoke("bench", REPO / "configs" / "bench" / f"{name}.yaml", "--dry-run", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "run configs valid" in result.output and "mmgen train --config" in result.output
    assert not (tmp_path / "out").exists()


def test_dry_run_notes_a_data_folder_that_does_not_exist(tmp_path):
    """A dry run reads no data; it said "valid" and every run then stopped at the data."""
    for folder, noted in ((tmp_path / "nowhere", True), (tmp_path, False)):
        bench = write(tmp_path, f"budget: {{epochs: 1}}\ndata: polymnist:{folder}\nruns: [{{name: a, recipe: mmvae}}]\n")
        result = invoke("bench", bench, "--dry-run", "--out", tmp_path / "out")
        assert result.exit_code == 0, result.output
        assert (f"note: data.path {folder} does not exist here" in result.output) == noted, result.output


TINY_BENCH = """budget: {max_steps: 2}
data: {name: default, modalities: 2, train_size: 64, test_size: 32}
evaluate: {metrics: [cross_coherence, nll]%s}
report: %s
runs: [{name: a, recipe: mmvae%s}]
"""


def plan_errors(tmp_path: Path, evaluate: str = "", report: str = "{}", run: str = "") -> list[str]:
    """The errors ``make_plan`` reports for a tiny bench file (empty when it plans)."""
    spec = load_spec(write(tmp_path, TINY_BENCH % (evaluate, report, run)))
    try:
        make_plan(spec, tmp_path / "out")
    except ConfigError as exc:
        return [e.split(": ", 1)[1] for e in exc.errors]  # without the file name
    return []


def test_columns_curves_cross_given_and_metric_options_are_checked_before_anything_runs(tmp_path):
    errors = plan_errors(tmp_path, ", options: [nll.k=-1], columns: [cross_coherence/nosuch, nll/nll]",
                         "{curves: [loss, objective/kl, nosuchstat], cross_given: [0, 7]}")
    assert errors == [
        "evaluate.options: nll.k: must be > 0, got -1",
        "evaluate.columns[0]: 'cross_coherence/nosuch': metric 'cross_coherence' reports no 'nosuch'; it reports: "
        "mean_1to1, mean_1to1_balanced, mean_by_size, mean_by_size_balanced, matrix_1to1, matrix_1to1_balanced, pairs, n_test",
        "report.curves[2]: 'nosuchstat' is not a logged statistic; valid: loss, grad_norm, steps_per_s, time, "
        "objective/<statistic>, prior/<statistic>, inference/<statistic>, or metric/key once the runs evaluate "
        "during training (train.eval_every)",
        "report.cross_given: modality 7 does not exist (the data has 2 modalities; valid: 0..1)",
    ]
    assert not (tmp_path / "out").exists()
    result = invoke("bench", write(tmp_path, TINY_BENCH % ("", "{cross_given: 2}", "")), "--dry-run")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "report.cross_given: modality 2 does not exist" in result.output
    # What is valid still plans: list indices, every number of a metric, model statistics.
    assert plan_errors(tmp_path, ", columns: [cross_coherence/mean_by_size/0, nll/*]",
                       "{curves: [grad_norm, prior/loss, inference/chain/displacement], cross_given: [1]}") == []


def test_a_plugin_metric_says_which_way_is_better_and_which_numbers_head_the_table(tmp_path):
    # The engine knows no metric by name: a plugin metric's Metric.better and Metric.headlines make
    # its default columns and arrows, as the built-in fd's and nll's do (smaller is better).
    (tmp_path / "run.yaml").write_text("plugins: [tests.plugins.metric_plugin]\n")
    bench = write(tmp_path, """budget: {max_steps: 2}
data: {name: default, modalities: 2, train_size: 64, test_size: 32}
evaluate: {metrics: [test_rec_error, test_unordered, fd, nll, cross_coherence]}
runs: [{name: a, recipe: mmvae, config: run.yaml}]
""")
    plan = make_plan(load_spec(bench), tmp_path / "out")
    assert [(c.key, c.label, c.better) for c in plan.columns] == [
        ("test_rec_error/mean", "rec. error", "lower"),
        ("test_unordered/*", "test_unordered", "higher"),
        ("fd/unconditional_mean", "FD joint", "lower"), ("fd/conditional_mean", "FD cross", "lower"),
        ("nll/nll", "NLL", "lower"),
        ("cross_coherence/mean_1to1", "cross coherence 1→1", "higher"),
    ]
    # A column the file names takes the metric's direction unless it says otherwise.
    text = bench.read_text().replace("cross_coherence]}", "cross_coherence], columns: [test_rec_error/per_modality/1, "
                                     "{key: test_rec_error/mean, better: higher}]}")
    plan = make_plan(load_spec(write(tmp_path, text)), tmp_path / "out")
    assert [(c.key, c.better) for c in plan.columns] == [("test_rec_error/per_modality/1", "lower"),
                                                         ("test_rec_error/mean", "higher")]


def test_a_plugin_metrics_malformed_headlines_are_one_line_errors_before_anything_runs(monkeypatch):
    """headlines = ("accuracy", "acc") (one pair, not a tuple of pairs) was a traceback (too many values
    to unpack) from the bench's plan; a headline key the metric never reports, a column empty in every
    run, found only after training."""
    from mmgen.evaluation import Metric, metric_presentation
    from mmgen.registry import Registry

    class Acc(Metric):
        outputs = ("accuracy",)
        headlines = ("accuracy", "acc")

    registry = Registry()
    registry.make_register("metric", "mine", "1.0")("acc", Acc)
    with pytest.raises(MMGenError, match=r"metric 'acc' \(plugin 'mine'\): headlines must be \(key, label\) pairs"):
        metric_presentation(registry, "acc")
    monkeypatch.setattr(Acc, "headlines", (("acuracy", "acc"),))
    with pytest.raises(MMGenError, match="headline 'acuracy' names no output \\(did you mean 'accuracy'\\?\\); "
                                         "it reports: accuracy"):
        metric_presentation(registry, "acc")
    monkeypatch.setattr(Acc, "headlines", (("accuracy", "acc"),))
    assert metric_presentation(registry, "acc") == ((("accuracy", "acc"),), "higher")


def test_column_indices_are_checked_against_the_number_of_modalities(tmp_path):
    # The tiny bench has 2 modalities: mean_by_size has one entry (|S| = 1), the matrix is 2 x 2.
    columns = ("cross_coherence/mean_by_size/0, cross_coherence/mean_by_size/7, cross_coherence/matrix_1to1/1/0, "
               "cross_coherence/matrix_1to1/0/2, {key: cross_coherence/mean_by_size, label: by size}, nll/nll")
    assert plan_errors(tmp_path, f", columns: [{columns}]") == [  # were empty columns, found after training
        "evaluate.columns[1]: 'cross_coherence/mean_by_size/7': index 7 is out of range; "
        "mean_by_size has 1 entry with 2 modalities (valid: 0..0)",
        "evaluate.columns[3]: 'cross_coherence/matrix_1to1/0/2': index 2 is out of range; "
        "matrix_1to1 is 2 x 2 with 2 modalities (valid: 0..1)",
        "evaluate.columns[4]: 'cross_coherence/mean_by_size' is a list, not a number (mean_by_size has 1 entry "
        "with 2 modalities); pick an entry: cross_coherence/mean_by_size/<0..0>",
    ]
    bench = write(tmp_path, TINY_BENCH % (", columns: [cross_coherence/mean_by_size/7]", "{}", ""))
    result = invoke("bench", bench, "--dry-run")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"error: config: {bench}: evaluate.columns[0]: 'cross_coherence/mean_by_size/7': index 7 is out of range; "
        "mean_by_size has 1 entry with 2 modalities (valid: 0..0)"]
    assert not (tmp_path / "out").exists()


def test_a_metric_or_column_listed_twice_is_an_error(tmp_path):
    """Both used to be accepted: the table then had every such column twice."""
    with pytest.raises(ConfigError) as err:
        load_spec(write(tmp_path, TINY_BENCH.replace("[cross_coherence, nll]", "[cross_coherence, nll, cross_coherence]")
                        % ("", "{}", "")))
    assert any("evaluate.metrics: 'cross_coherence' is listed twice" in e for e in err.value.errors)
    assert plan_errors(tmp_path, ", columns: [nll/nll, cross_coherence/mean_1to1, nll/nll]") == [
        "evaluate.columns[2]: 'nll/nll' is already a column; each column once"]


def test_metric_curves_need_a_periodic_evaluation_of_that_metric(tmp_path):
    periodic = ", overrides: [train.eval_every=1, 'train.eval_metrics=[joint_coherence]']"
    assert plan_errors(tmp_path, report="{curves: [joint_coherence/coherence]}", run=periodic) == []
    assert plan_errors(tmp_path, report="{curves: [joint_coherence/coherenc]}", run=periodic) == [
        "report.curves[0]: 'joint_coherence/coherenc': metric 'joint_coherence' reports no 'coherenc' "
        "(did you mean 'coherence'?); it reports: coherence, n, agreed_class_counts"]
    (error,) = plan_errors(tmp_path, report="{curves: [cross_coherence/mean_1to1]}", run=periodic)
    assert error.startswith("report.curves[0]: 'cross_coherence/mean_1to1' is not a logged statistic")
    assert error.endswith("or metric/key of a metric evaluated during training (joint_coherence)")


def test_classifier_lr_must_be_finite(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_spec(write(tmp_path, "budget: {epochs: 1}\nevaluate: {classifiers: {lr: .inf}}\nruns: [{name: a}]\n"))
    assert "evaluate.classifiers.lr: invalid value inf (expected a finite positive number)" in err.value.errors[0]
