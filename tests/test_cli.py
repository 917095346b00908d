"""CLI behaviour: help, exit codes, one-line errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mmgen.cli.main import create_app


@pytest.fixture(scope="module")
def app():
    return create_app()


def invoke(app, *args):
    return CliRunner().invoke(app, list(args))


def test_help_lists_commands(app):
    result = invoke(app, "--help")
    assert result.exit_code == 0
    for cmd in ("train", "plugins", "validate", "config"):
        assert cmd in result.output
    assert "--prior" in invoke(app, "train", "--help").output


def test_help_paragraphs_are_reflowed_not_broken_where_the_source_wraps(app, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    text = invoke(app, "sample", "--help").output
    lines = [line.strip() for line in text.splitlines()]
    # One paragraph of the docstring, wrapped over three source lines: one line on a wide terminal.
    assert any(line.startswith("Rows of cross.png:") and line.endswith("Langevin inference.") for line in lines), text

    from types import SimpleNamespace

    from mmgen.cli.common import reflow_help

    command = SimpleNamespace(help="First line\nwraps here.\n\nList:\n- one\n- two\n  indented\nlast")
    reflow_help(command)
    assert command.help == "First line wraps here.\n\nList:\n- one\n- two\n  indented last"


def test_narrow_terminal_help_is_plain_and_cuts_nothing(app, monkeypatch):
    """At 80 columns Typer's Rich table cut option names and words with an ellipsis
    (`--inception-weig…`, `MMGEN_INCEPTION_W…`): there the help is Click's plain, wrapped text."""
    monkeypatch.setenv("COLUMNS", "80")
    for args in (("evaluate", "--help"), ("classifiers", "train", "--help"), ("--help",), ()):
        result = invoke(app, *args)
        assert result.exit_code == (2 if not args else 0), result.output
        assert "Usage: mmgen" in result.output and "…" not in result.output and "╭" not in result.output, result.output
        assert max(len(line) for line in result.output.splitlines()) <= 80, result.output
    text = invoke(app, "evaluate", "--help").output
    assert "--inception-weights" in text and "MMGEN_INCEPTION_WEIGHTS" in text, text
    monkeypatch.setenv("COLUMNS", "120")  # wide enough: Typer's Rich panels
    assert "╭" in invoke(app, "evaluate", "--help").output


def test_unknown_prior_exits_2_and_lists_priors(app):
    result = invoke(app, "train", "--prior", "nosuch")
    assert result.exit_code == 2
    assert "unknown prior 'nosuch'" in result.output
    assert "gaussian" in result.output and "laplace" in result.output
    assert "Traceback" not in result.output


def test_unknown_recipe_and_bad_override_exit_2(app):
    assert invoke(app, "train", "--recipe", "nope").exit_code == 2
    result = invoke(app, "train", "model.latent_dim=zero")
    assert result.exit_code == 2 and "model.latent_dim" in result.output
    result = invoke(app, "train", "train.nosuch=1")
    assert result.exit_code == 2 and "train.nosuch: unknown key" in result.output


def test_bad_option_type_exits_2(app):
    assert invoke(app, "train", "--epochs", "many").exit_code == 2


@pytest.mark.parametrize("args, expected", [
    (("evaluate", "--n", "0", "run"), "error: Invalid value for '--n' / '-n': Input should be greater than or "
                                      "equal to 1; see 'mmgen evaluate --help'"),
    (("bench", "--jobs", "0", "x.yaml"), "'--jobs' / '-j': Input should be greater than or equal to 1; "
                                         "see 'mmgen bench --help'"),
    (("classifiers", "train", "--epochs", "0", "d"), "see 'mmgen classifiers train --help'"),
    (("train", "--prio", "ebm"), "error: No such option: --prio (did you mean '--prior'?); see 'mmgen train --help'"),
    (("train", "--nosuchopt"), "error: No such option: --nosuchopt; see 'mmgen train --help'"),  # drew "--out"
    (("classifiers", "train", "--epoch", "3", "d"), "error: No such option: --epoch (did you mean '--epochs'?); "
                                                    "see 'mmgen classifiers train --help'"),
    (("nosuch",), "error: No such command 'nosuch'; see 'mmgen --help'"),
    (("evaluate",), "error: Missing argument 'run_dir'; see 'mmgen evaluate --help'"),
    (("data", "inspect", "--examples", "100", "d"), "less than or equal to 64; see 'mmgen data inspect --help'"),
])
def test_usage_errors_are_one_line(app, args, expected):
    """A bad option value, an unknown option or command, a missing argument: one line naming what is
    wrong (and the closest option, compared without dashes), exit 2, no usage box -- in built-in
    commands, nested groups and plugin commands alike."""
    result = invoke(app, *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert expected in " ".join(lines), result.output


def test_help_without_arguments_still_shows_help(app):
    for args in ((), ("config",)):
        result = invoke(app, *args)
        assert "Usage: mmgen" in result.output, result.output
        assert not any(line.startswith("error:") for line in result.output.splitlines())


def test_config_show_prints_resolved_yaml(app):
    result = invoke(app, "config", "show", "--recipe", "mmvae", "--agg", "mopoe", "model.posterior_family=gaussian")
    assert result.exit_code == 0, result.output
    assert "name: mopoe" in result.output and "prior_expert: false" in result.output


def test_encoder_and_decoder_shortcuts_choose_every_modalitys_networks(app, tmp_path):
    import yaml

    result = invoke(app, "config", "show", "--encoder", "resnet", "--decoder", "mlp", "model.decoder.depth=1")
    assert result.exit_code == 0, result.output
    model = yaml.safe_load(result.output)["model"]
    assert model["encoder"]["name"] == "resnet" and "downsamples" in model["encoder"]  # the resnet's own defaults
    assert model["decoder"] == {**model["decoder"], "name": "mlp", "depth": 1}
    result = invoke(app, "train", "--resume", str(tmp_path), "--encoder", "mlp")  # a resumed run keeps its networks
    assert result.exit_code == 2 and "--resume continues a run with its own config" in result.output


def test_validate_reports_every_error(app, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  latent_dim: -3\n  prior: {name: laplace, scale: big}\ntrain: {epoch: 3}\n")
    result = invoke(app, "validate", str(bad))
    assert result.exit_code == 2
    assert "model.prior.scale" in result.output and "train.epoch: unknown key" in result.output
    good = tmp_path / "good.yaml"
    good.write_text("model: {latent_dim: 8}\n")
    assert invoke(app, "validate", str(good)).exit_code == 0


def test_missing_dataset_path_exits_2(app, tmp_path):
    result = invoke(app, "train", "--data", f"polymnist:{tmp_path / 'nowhere'}", "--max-steps", "1")
    assert result.exit_code == 2
    assert "dataset folder not found" in result.output


def test_resume_rejects_missing_run(app, tmp_path):
    result = invoke(app, "train", "--resume", str(tmp_path))
    assert result.exit_code == 2 and "checkpoint not found" in result.output


def test_validate_and_config_show_reject_nan_lr_and_betas_in_one_line(app, tmp_path):
    bad = tmp_path / "nan.yaml"
    bad.write_text("train: {lr: .nan, betas: [0.9, 1.5], epochs: 0}\n")
    result = invoke(app, "validate", str(bad))  # was "ok", then a traceback from Adam in train
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "train.lr: must be a finite number > 0, got nan" in result.output
    assert "train.betas: each must be in [0, 1), got [0.9, 1.5]" in result.output
    assert "train.epochs: must be > 0, got 0" in result.output
    result = invoke(app, "config", "show", "--recipe", "mopoe", "train.lr=nan")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: config: train.lr: must be a finite number > 0, got nan"]


def test_validate_refuses_a_resnet_without_channels_in_one_line(app, tmp_path):
    bad = tmp_path / "resnet.yaml"
    bad.write_text("model:\n  encoder: {name: resnet, hidden: 0}\n")
    result = invoke(app, "validate", str(bad))  # was "ok", then a traceback from Conv2d in train
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == ["error: config: model.encoder.hidden: must be > 0, got 0"]


@pytest.mark.parametrize("section", ["encoder", "decoder"])
def test_resnet_downsamples_beyond_the_image_size_is_one_line(app, tmp_path, monkeypatch, section):
    """Only the data's shape tells how many halvings a network can make: the component raises a
    ValueError when it is built, and the model builder names its section. 6 on 28 x 28 used to
    build a decoder that upsampled to 64 x 64 and cropped."""
    monkeypatch.setenv("MMGEN_CACHE", str(tmp_path / "cache"))
    args = ["train", "--out", str(tmp_path / "run"), "--max-steps", "1", "data.train_size=64",
            "data.test_size=32", "model.encoder.name=resnet", "model.decoder.name=resnet",
            "model.encoder.hidden=4", "model.decoder.hidden=4"]
    result = invoke(app, *args, f"model.{section}.downsamples=6")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: model.{section}: downsamples: 28 x 28 images can be halved at most 5 times "
        "(28 -> 14 -> 7 -> 4 -> 2 -> 1), got 6")
    assert not (tmp_path / "run" / "checkpoints").exists()
    # the largest valid count builds and trains
    result = invoke(app, *args, "model.encoder.downsamples=5", "model.decoder.downsamples=5")
    assert result.exit_code == 0, result.output


def test_another_process_exits_quietly_after_leaving_rank0_time_to_say_the_error(monkeypatch, capsys):
    """In a multi-process launch only rank 0 prints an error all processes meet; the others exit
    with its code, but not at once: torchrun stops every process when one exits, which could cut
    rank 0 off before it printed (then nobody said what was wrong)."""
    import typer

    from mmgen.cli import common
    from mmgen.errors import ConfigError

    slept = []
    monkeypatch.setattr(common.time, "sleep", slept.append)

    @common.user_errors
    def command():
        raise ConfigError(["train.nosuch: unknown key"])

    for rank, quiet in (("1", True), ("0", False)):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        slept.clear()
        with pytest.raises(typer.Exit) as exit_:
            command()
        assert exit_.value.exit_code == 2
        said = capsys.readouterr().err
        assert ("train.nosuch: unknown key" not in said) == quiet
        assert slept == ([common.RANK0_GRACE_S] if quiet else [])
