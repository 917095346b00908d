"""`mmgen classifiers train` and `mmgen evaluate` end to end on a tiny run; classifier files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from mmgen.classifiers import (
    ClassifierConfig,
    ClassifierMismatchError,
    default_path,
    load_classifiers,
    save_classifiers,
    train_classifiers,
)
from mmgen.cli.main import create_app
from tests.helpers import tiny_model

DATA = ["data.modalities=2", "data.train_size=64", "data.test_size=16"]
QUICK = ["--epochs", "1", "--min-steps", "3", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(create_app(with_plugin_commands=False), [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run trained by the CLI, and classifiers for its dataset trained into the (test) cache."""
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("eval") / "run"
    result = invoke("train", "--max-steps", "4", "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    result = invoke("classifiers", "train", "--data", "default", *QUICK, *DATA)
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    return out


def test_evaluate_writes_eval_json_and_figures(tiny_run, monkeypatch):
    monkeypatch.delenv("MMGEN_INCEPTION_WEIGHTS", raising=False)  # FID is skipped without weights
    result = invoke("evaluate", tiny_run, "--n", "40", "--batch-size", "16", "--no-progress",
                    "nll.k=3", "probe.max_train=32")
    assert result.exit_code == 0, result.output
    report = json.loads((tiny_run / "eval.json").read_text())
    assert set(report["metrics"]) == {"cross_coherence", "joint_coherence", "fd", "fid", "probe", "nll"}
    cross = report["metrics"]["cross_coherence"]
    assert len(cross["matrix_1to1"]) == 2 and cross["matrix_1to1"][0][0] is None
    assert 0.0 <= cross["mean_1to1"] <= 1.0 and len(cross["mean_by_size"]) == 1
    assert 0.0 <= report["metrics"]["joint_coherence"]["coherence"] <= 1.0
    assert report["metrics"]["joint_coherence"]["n"] == 40
    assert len(report["metrics"]["fd"]["unconditional"]) == 2
    assert "skipped" in report["metrics"]["fid"]
    assert 0.0 <= report["metrics"]["probe"]["accuracy"] <= 1.0
    assert report["metrics"]["nll"]["k"] == 3 and report["metrics"]["nll"]["nll"] > 0
    assert report["metric_options"]["nll"]["k"] == 3
    assert len(report["classifiers"]["test_accuracy"]) == 2
    assert report["seed"] == 0 and report["dataset"]["fingerprint"] == report["classifiers"]["fingerprint"]
    assert report["command"].startswith("mmgen evaluate") and "nll.k=3" in report["command"]
    figures = {p.name for p in (tiny_run / "figures").iterdir()}
    assert figures == {"joint.png", "cross.png"}  # amortized inference: no refinement figure
    assert "cross_coherence/mean_1to1" in result.output  # the table


def test_evaluate_json_and_metric_selection(tiny_run, tmp_path):
    result = invoke("evaluate", tiny_run, "--metrics", "joint_coherence", "--n", "10", "--json", "--no-figures",
                    "--no-progress", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report["metrics"]) == ["joint_coherence"] and report["n"] == 10
    assert (tmp_path / "eval.json").is_file() and not (tmp_path / "figures").exists()


def test_evaluate_same_seed_same_numbers(tiny_run, tmp_path):
    args = ["--metrics", "cross_coherence,joint_coherence,fd", "--n", "30", "--json", "--no-figures", "--no-progress"]
    a = json.loads(invoke("evaluate", tiny_run, *args, "--out", tmp_path / "a").stdout)
    b = json.loads(invoke("evaluate", tiny_run, *args, "--out", tmp_path / "b").stdout)
    assert a["metrics"] == b["metrics"]


def test_classifiers_of_another_dataset_are_refused(tiny_run, tmp_path):
    other = tmp_path / "other.pt"
    result = invoke("classifiers", "train", "--data", "default", "--out", other, *QUICK, *DATA, "data.seed=1")
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", tiny_run, "--classifiers", other, "--n", "8", "--no-progress")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: classifiers") and "trained on dataset" in lines[0]
    assert "Traceback" not in result.output


def test_evaluate_user_errors_exit_2(tiny_run, tmp_path):
    result = invoke("evaluate", tiny_run, "--metrics", "joint_coherense", "--no-progress")
    assert result.exit_code == 2 and "did you mean 'joint_coherence'" in result.output
    for empty in ("", " , "):  # ran every metric, for as long as that takes
        result = invoke("evaluate", tiny_run, "--metrics", empty, "--no-progress")
        assert result.exit_code == 2 and "--metrics: no metric named in" in result.output, result.output
    result = invoke("evaluate", tiny_run, "--metrics", "nll", "nll.kk=3", "--no-progress")
    assert result.exit_code == 2 and "nll.kk: unknown option" in result.output
    result = invoke("evaluate", tmp_path / "nothing", "--no-progress")
    assert result.exit_code == 2 and "no checkpoint" in result.output
    result = invoke("evaluate", tiny_run, "--metrics", "fid", "--inception-weights", tmp_path / "missing.pt",
                    "--no-progress", "--no-figures")
    assert result.exit_code == 2 and "Inception weights file not found" in result.output
    result = invoke("evaluate", tiny_run, "--classifiers", tmp_path / "typo.pt", "--no-progress", "--no-figures")
    assert result.exit_code == 2 and "typo.pt: file not found" in " ".join(result.output.split())
    assert not (tmp_path / "typo.pt").exists()  # nothing was trained into the mistyped path
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for command in (["evaluate", tiny_run, "--metrics", "joint_coherence", "--n", "4"], ["sample", tiny_run]):
        result = invoke(*command, "--out", blocker / "out")
        assert result.exit_code == 2 and "Not a directory" in result.output and "Traceback" not in result.output
    poisoned = tmp_path / "poisoned.pt"
    ckpt = torch.load(tiny_run / "checkpoints" / "final.pt", weights_only=False)
    name = next(iter(ckpt["model"]))
    ckpt["model"][name] = torch.full_like(ckpt["model"][name], float("nan"))
    torch.save(ckpt, poisoned)
    for command in ("sample", "evaluate"):
        result = invoke(command, poisoned, "--out", tmp_path / "p")
        assert result.exit_code == 2 and f"non-finite weights ({name})" in " ".join(result.output.split())
    unfinished = tmp_path / "unfinished"
    shutil.copytree(tiny_run / "checkpoints", unfinished / "checkpoints")
    (unfinished / "checkpoints" / "final.pt").unlink()
    result = invoke("sample", unfinished, "--n", "2")
    assert result.exit_code == 0, result.output
    assert f"{unfinished} has not finished; using {unfinished / 'checkpoints' / 'latest.pt'}" in " ".join(result.output.split())
    result = invoke("sample", tiny_run, "--n", "2", "--out", tmp_path / "s", "--chain")
    assert "has not finished" not in result.output
    assert "--chain drew nothing" in " ".join(result.output.split())  # the tiny run: Laplace prior, amortized
    for given, said in [("", "no modality"), (" , ", "no modality"), ("m0,m9", "unknown m9"), ("m1,m0", "every modality"),
                        ("1,m0", "every modality"), ("2", "unknown 2")]:  # indices too, as bench files give them
        result = invoke("sample", tiny_run, "--given", given)  # "" drew the default figures
        assert result.exit_code == 2
        assert result.output.strip() == f"error: --given '{given}': {said}; choose a proper subset of m0, m1"
    result = invoke("sample", tiny_run, "--n", "2", "--given", "1", "--out", tmp_path / "by-index")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "by-index").iterdir() if p.name.startswith("cross")) == ["cross.png"]
    result = invoke("sample", tiny_run, "--device", "tpu")
    assert result.exit_code == 2 and "--device: invalid value 'tpu'; valid: auto, cpu, cuda" in result.output


def test_evaluate_on_another_dataset_with_same_modalities(tiny_run):
    # data.seed is not settable through --data NAME, so use a same-named dataset: options carry over.
    result = invoke("evaluate", tiny_run, "--data", "default", "--metrics", "joint_coherence", "--n", "8",
                    "--no-progress", "--no-figures", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"]["config"]["modalities"] == 2
    assert (tiny_run / f"eval-{report['dataset']['fingerprint']}" / "eval.json").is_file()
    result = invoke("evaluate", tiny_run, "--data", "polymnist:/no/such/folder", "--no-progress")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# Classifier files and periodic evaluation
# ----------------------------------------------------------------------------------------------
def test_classifier_round_trip_and_mismatch(plugins, tiny_overrides, tmp_path):
    from mmgen.train import load_datasets
    from tests.helpers import tiny_config

    cfg = tiny_config(plugins, tiny_overrides)
    train_set, test_set = load_datasets(cfg, plugins)
    clf = train_classifiers(train_set, test_set, ClassifierConfig(epochs=1, min_steps=2), progress=False)
    path = save_classifiers(clf, tmp_path / "c.pt")
    back = load_classifiers(path, train_set)
    x = test_set.batch(torch.arange(4)).to("cpu").x[0]
    assert torch.equal(clf.classify(0, x)[0], back.classify(0, x)[0])
    assert back.meta["test_accuracy"] == clf.meta["test_accuracy"]
    other, _ = load_datasets(tiny_config(plugins, tiny_overrides, ["data.seed=5"]), plugins)
    with pytest.raises(ClassifierMismatchError, match="trained on dataset"):
        load_classifiers(path, other)


def test_evaluate_during_training_leaves_rng_and_mode(plugins, tiny_overrides, tmp_path):
    from mmgen.evaluation import evaluate_during_training
    from mmgen.train import load_datasets

    cfg, model, train_set = tiny_model(plugins, tiny_overrides)
    _, test_set = load_datasets(cfg, plugins)
    path = default_path(train_set)
    if not path.is_file():
        save_classifiers(train_classifiers(train_set, test_set, ClassifierConfig(epochs=1, min_steps=2),
                                           progress=False), path)
    model.train()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    record = evaluate_during_training(model, train_set, test_set, plugins.registry, tmp_path, step=8, epoch=1, n=20)
    assert torch.equal(torch.get_rng_state(), before) and model.training
    assert record["step"] == 8 and "joint_coherence/coherence" in record
    line = json.loads((tmp_path / "eval.jsonl").read_text().splitlines()[0])
    assert line["cross_coherence/mean_1to1"] == record["cross_coherence/mean_1to1"]


def test_metric_option_out_of_range_is_one_line_and_outputs_are_declared(tiny_run, tmp_path):
    for option in ("nll.k=0", "nll.k=-1"):  # was exit 1 with a torch.cat() traceback
        result = invoke("evaluate", tiny_run, "--metrics", "nll", option, "--no-progress", "--no-figures")
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert result.output.strip().splitlines() == [f"error: nll.k: must be > 0, got {option.split('=')[1]}"]
    result = invoke("evaluate", tiny_run, "--metrics", "probe,nll", "--n", "8", "--json", "--no-figures",
                    "--no-progress", "--out", tmp_path, "nll.k=2", "nll.max_test=8", "probe.max_train=32")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    from mmgen.plugins import create_plugin_manager

    registry = create_plugin_manager().registry
    for name in ("probe", "nll"):  # bench columns are checked against these declarations
        assert set(report["metrics"][name]) <= set(registry.get("metric", name).factory.outputs), name


@pytest.mark.parametrize("lr", ["-1", "0", "nan", "inf"])
def test_classifiers_train_rejects_a_bad_lr_before_loading_data(lr):
    result = invoke("classifiers", "train", "--data", "polymnist:/nonexistent", "--lr", lr, "--no-progress")
    assert result.exit_code == 2 and "Traceback" not in result.output  # -1 and nan were Adam's tracebacks
    assert result.output.strip().splitlines() == [f"error: --lr: must be a finite number > 0, got {float(lr)}"]


def test_a_run_whose_data_moved_samples_with_data(tmp_path):
    from tests.conftest import TINY
    from tests.test_data_readers import write_pt_dataset

    root = tmp_path / "poly"
    write_pt_dataset(root, 2, "train", n=16)
    write_pt_dataset(root, 2, "test", n=8)
    model = [o for o in TINY if not o.startswith("data.")]
    run = tmp_path / "run"
    result = invoke("train", "--data", f"polymnist:{root}", "--max-steps", "2", "--out", run, *model)
    assert result.exit_code == 0, result.output
    moved = root.rename(tmp_path / "moved")
    result = invoke("sample", run, "--n", "2")
    assert result.exit_code == 2 and str(root) in result.output  # names the folder it looked for, and the way out
    assert "if the run's data moved, give its new folder: --data polymnist:NEW_FOLDER" in " ".join(result.output.split())
    result = invoke("train", "--resume", run, "--max-steps", "3")
    assert result.exit_code == 2 and "resume with its new folder: --data polymnist:NEW_FOLDER" in " ".join(result.output.split())
    three = write_pt_dataset(tmp_path / "three", 3, "train", n=16)
    write_pt_dataset(three, 3, "test", n=8)
    result = invoke("sample", run, "--n", "2", "--data", f"polymnist:{three}")  # was: weights do not fit (...)
    assert result.exit_code == 2
    assert "data polymnist: not the modalities the run was trained on: m2 is in the data only" in result.output
    result = invoke("sample", run, "--n", "2", "--data", f"polymnist:{moved}", "--out", tmp_path / "fig")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fig" / "cross.png").is_file()
    # Training resumes from the moved folder, and refuses a folder holding other data.
    result = invoke("train", "--resume", run, "--max-steps", "3", "--data", f"polymnist:{moved}")
    assert result.exit_code == 0, result.output  # --data NAME:PATH is data.path=PATH here
    result = invoke("train", "--resume", run, "--max-steps", "4", f"data.path={moved}")
    assert result.exit_code == 0, result.output
    result = invoke("train", "--resume", run, "--max-steps", "5", "--data", "default")
    assert result.exit_code == 2 and "--data may only give its new folder: --data polymnist:NEW_FOLDER" in result.output
    other = write_pt_dataset(tmp_path / "other", 2, "train", n=17)
    write_pt_dataset(other, 2, "test", n=8)
    result = invoke("train", "--resume", run, "--max-steps", "6", f"data.path={other}")
    assert result.exit_code == 2 and "is not what the run trained on" in " ".join(result.output.split())
