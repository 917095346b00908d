"""Command-line options the other CLI tests leave alone: `mmgen sample` (--given, --every, --out,
--seed), `mmgen evaluate` (--no-refine, --n-test, --seed), `mmgen bench` (--only, resuming an
interrupted run), the aggregator/posterior-family check and `mmgen config recipes`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from mmgen.cli.main import create_app
from mmgen.errors import ConfigError, MMGenError
from mmgen.figures import GAP
from mmgen.model import MultimodalModel, build_model
from tests.conftest import REPO, TINY
from tests.helpers import tiny_config

M = 3  # --given needs a proper subset of more than one modality
DATA = [f"data.modalities={M}", "data.train_size=64", "data.test_size=16"]
#: An EBM prior (so chain-prior.png exists) and Langevin inference (so refinement changes something).
LANGEVIN = ["model.prior.name=ebm", "model.prior.hidden=16", "model.prior.steps=10",
            "model.inference.name=langevin", "model.inference.steps=3"]
PRIOR_STEPS, POSTERIOR_STEPS = 10, 3
PAD, SCALE = 2, 2  # mmgen.figures.grid's and save_labelled_grid's defaults
EVAL = ["--metrics", "cross_coherence,joint_coherence,fd", "--n", "30", "--json", "--no-figures", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(create_app(with_plugin_commands=False), [str(a) for a in args])


def one_line_error(result) -> str:
    """The single ``error: ...`` line of a failed command (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny three-modality run with an EBM prior and Langevin inference, trained by the CLI."""
    out = tmp_path_factory.mktemp("options") / "run"
    result = invoke("train", "--max-steps", "3", "--out", out, *TINY, *DATA, *LANGEVIN)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def test_images(run):
    """The run's test tuples as the figures show them: per modality, ``(n, H, W, 3)`` uint8."""
    from mmgen.run import load_run

    test_set = load_run(run, "cpu").test_set
    batch = test_set.batch(torch.arange(8)).to("cpu")
    images = []
    for x in batch.x:
        x = x.expand(-1, 3, -1, -1) if x.size(1) == 1 else x
        images.append((x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
    return images


@pytest.fixture(scope="module")
def classifiers(run):
    """Digit classifiers for the run's dataset, trained quickly into the (test) cache."""
    result = invoke("classifiers", "train", "--data", "default", "--epochs", "1", "--min-steps", "3",
                    "--no-progress", *DATA)
    assert result.exit_code == 0, result.output


def grid_size(rows: int, cols: int, side: int = 28) -> tuple[int, int]:
    """(width, height) in pixels of a save_grid PNG of ``rows`` x ``cols`` images of ``side`` pixels."""
    return (cols * (side + PAD) + PAD) * SCALE, (rows * (side + PAD) + PAD) * SCALE


def blocks(path: Path, rows: list[int], cols: int, side: int = 28) -> list[np.ndarray]:
    """The image blocks of a labelled figure (save_labelled_grid) of ``rows[i]`` rows each and
    ``cols`` columns, each at its original size as :func:`mmgen.figures.grid` drew it; the figure
    must be exactly these blocks, :data:`GAP` apart, plus the label margins left of and above them."""
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    width, heights = grid_size(1, cols, side)[0], [grid_size(r, cols, side)[1] for r in rows]
    left = pixels.shape[1] - width
    top = pixels.shape[0] - sum(heights) - GAP * SCALE * (len(rows) - 1)
    assert 0 < left < 200 and 0 <= top < 60, (left, top)
    out, y = [], top
    for h in heights:
        out.append(pixels[y:y + h, left:][::SCALE, ::SCALE])
        y += h + GAP * SCALE
    return out


def tile(block: np.ndarray, row: int, col: int, side: int = 28) -> np.ndarray:
    """The image at (row, col) of a block of :func:`blocks`, ``(side, side, 3)``."""
    y, x = PAD + row * (side + PAD), PAD + col * (side + PAD)
    return block[y:y + side, x:x + side]


# ----------------------------------------------------------------------------------------------
# mmgen sample
# ----------------------------------------------------------------------------------------------
def chain_columns(states: int, every: int) -> int:
    """States decoded from a chain of ``states`` states: every k-th one, and always the last."""
    return len(range(0, states, every)) + ((states - 1) % every != 0)


def test_sample_given_writes_the_chosen_inputs_then_every_modality(run, test_images, tmp_path):
    out = tmp_path / "figures"
    result = invoke("sample", run, "--given", "m0,m2", "--chain", "--every", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"joint.png", "cross.png", "refinement.png", "chain-prior.png",
                                               "chain-posterior.png"}
    assert not (run / "figures").exists()  # --out, not RUN_DIR/figures
    # cross.png: the inputs m0 and m2 of the first 8 test tuples, then m0, m1, m2 generated from them.
    (cross,) = blocks(out / "cross.png", [2 + M], 8)
    for col in (0, 7):
        assert np.array_equal(tile(cross, 0, col), test_images[0][col])
        assert np.array_equal(tile(cross, 1, col), test_images[2][col])
    # refinement.png: the inputs, the target m1 before, then after Langevin refinement.
    inputs, _, _ = blocks(out / "refinement.png", [2, 1, 1], 8)
    assert np.array_equal(tile(inputs, 1, 3), test_images[2][3])
    # One column per decoded chain state, one row per modality.
    blocks(out / "chain-prior.png", [M], chain_columns(PRIOR_STEPS + 1, 2))
    blocks(out / "chain-posterior.png", [M], chain_columns(POSTERIOR_STEPS + 1, max(1, 2 // 3)))


def test_sample_given_counts_a_repeated_name_once(run, test_images, tmp_path):
    # {m0, m1} is a proper subset of three modalities, however often m1 is named; m1's input row
    # appears once in cross.png.
    result = invoke("sample", run, "--given", "m0,m1,m1", "--n", "4", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    (cross,) = blocks(tmp_path / "cross.png", [2 + M], 4)
    assert np.array_equal(tile(cross, 1, 0), test_images[1][0])


def test_sample_without_given_conditions_on_each_modality_in_turn(run, test_images, tmp_path):
    result = invoke("sample", run, "--n", "4", "--chain", "--every", "6", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    # For each modality a block: its input row, then every modality generated from it.
    for m, block in enumerate(blocks(tmp_path / "cross.png", [1 + M] * M, 4)):
        assert np.array_equal(tile(block, 0, 3), test_images[m][3])
    blocks(tmp_path / "joint.png", [M], 4)
    # --every changes the number of chain columns (11 prior states: 0, 6, 10; 4 posterior: 0, 2, 3).
    blocks(tmp_path / "chain-prior.png", [M], 3)
    blocks(tmp_path / "chain-posterior.png", [M], 3)


def test_sample_labels_every_row_and_each_chain_column_with_its_step(run, tmp_path):
    result = invoke("sample", run, "--n", "2", "--chain", "--every", "5", "--out", tmp_path)
    assert result.exit_code == 0, result.output

    def margins(name: str, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        """The figure's left label margin and its header above the grid, as dark-pixel masks."""
        with Image.open(tmp_path / name) as img:
            dark = np.asarray(img.convert("L")) < 128
        width, height = grid_size(rows, cols)
        return dark[-height:, :-width], dark[:-height, -width:]

    pitch = (28 + PAD) * SCALE
    for name, cols in (("joint.png", 2), ("chain-prior.png", 3), ("chain-posterior.png", 4)):
        left, header = margins(name, M, cols)
        # Text in each modality's row band of the margin, and none between the bands.
        assert all(left[PAD * SCALE + i * pitch:(i + 1) * pitch].any() for i in range(M)), name
        assert not left[:PAD * SCALE].any() and not left[M * pitch:].any(), name
        if name == "joint.png":
            assert header.size == 0  # no column labels
        else:  # the step above each decoded state: 0, 5, 10 of the prior's 11 states; all 4 of the posterior's
            assert all(header[:, PAD * SCALE + j * pitch:(j + 1) * pitch].any() for j in range(cols)), name


@pytest.mark.parametrize("given, why", [("m5", "unknown m5"), ("m0,m1,m2", "every modality"), ("m0, m9,m1", "unknown m9"),
                                        ("\u00b2", "unknown \u00b2")])  # '²'.isdigit(), but int('²') raised ValueError
def test_sample_given_must_be_a_proper_subset(run, tmp_path, given, why):
    line = one_line_error(invoke("sample", run, "--given", given, "--out", tmp_path / "f"))
    assert line == f"error: --given '{given}': {why}; choose a proper subset of m0, m1, m2"
    assert not (tmp_path / "f").exists()


def test_sample_every_and_n_must_be_positive(run, tmp_path):
    for option in ("--every", "--n"):
        line = one_line_error(invoke("sample", run, option, "0", "--out", tmp_path / "f"))
        assert line == f"error: {option}: must be >= 1, got 0"
    line = one_line_error(invoke("sample", run, "--n", "100000", "--out", tmp_path / "f"))  # ran for minutes
    assert line == "error: --n: at most 256 columns a grid (a wider figure is unreadable), got 100000"
    assert not (tmp_path / "f").exists()


def test_sample_seed_changes_the_samples_and_reproduces_them(run, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        result = invoke("sample", run, "--n", "4", "--seed", seed, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
    same = (tmp_path / "a" / "joint.png").read_bytes()
    assert (tmp_path / "b" / "joint.png").read_bytes() == same
    assert (tmp_path / "b" / "cross.png").read_bytes() == (tmp_path / "a" / "cross.png").read_bytes()
    assert (tmp_path / "c" / "joint.png").read_bytes() != same


# ----------------------------------------------------------------------------------------------
# mmgen evaluate
# ----------------------------------------------------------------------------------------------
def evaluate(run, out: Path, *args):
    """``mmgen evaluate`` with :data:`EVAL`; returns (eval.json, the cross-generation latents).

    The latents are what ``conditional_latents`` returned for each (batch, subset) of the cross
    pass, with the ``refine`` flag and the batch size it was called with."""
    calls = []
    original = MultimodalModel.conditional_latents

    def spy(self, batch, given, refine=True):
        z, w = original(self, batch, given, refine)
        calls.append({"refine": refine, "rows": len(batch), "z": z.detach().clone()})
        return z, w

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MultimodalModel, "conditional_latents", spy)
        result = invoke("evaluate", run, *EVAL, "--out", out, *args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads((out / "eval.json").read_text())
    return report, calls


@pytest.fixture(scope="module")
def default_eval(run, classifiers, tmp_path_factory):
    return evaluate(run, tmp_path_factory.mktemp("eval-default"))


def test_no_refine_skips_langevin_in_cross_generation(run, default_eval, tmp_path):
    refined, refined_calls = default_eval
    plain, plain_calls = evaluate(run, tmp_path, "--no-refine")
    assert refined["refine"] is True and plain["refine"] is False
    assert "--no-refine" in plain["command"].split()
    assert not {"--refine", "--no-refine"} & set(refined["command"].split())  # the default: not echoed
    subsets = 2 ** M - 2  # every proper non-empty subset, one batch of 16
    assert len(refined_calls) == len(plain_calls) == subsets
    assert all(c["refine"] for c in refined_calls) and not any(c["refine"] for c in plain_calls)
    # The same seed draws the same amortized latents; only refinement moves them.
    assert not torch.allclose(refined_calls[0]["z"], plain_calls[0]["z"])


def test_n_test_limits_the_test_tuples(run, default_eval, tmp_path):
    full, full_calls = default_eval
    assert full["n_test"] == 16 and full["metrics"]["cross_coherence"]["n_test"] == 16
    assert {c["rows"] for c in full_calls} == {16}
    part, part_calls = evaluate(run, tmp_path, "--n-test", "5", "--metrics", "cross_coherence")
    assert part["n_test"] == 5 and part["metrics"]["cross_coherence"]["n_test"] == 5
    assert {c["rows"] for c in part_calls} == {5} and len(part_calls) == 2 ** M - 2
    assert part["dataset"]["test_size"] == 16  # the limit is on what is used, not the dataset
    assert "--n-test 5" in part["command"]


def test_evaluate_seed_changes_the_numbers_and_reproduces_them(run, default_eval, tmp_path):
    a, _ = default_eval
    b, _ = evaluate(run, tmp_path / "b")
    c, _ = evaluate(run, tmp_path / "c", "--seed", "1")
    assert b["metrics"] == a["metrics"]
    assert c["seed"] == 1 and a["seed"] == 0
    assert (c["metrics"]["joint_coherence"] != a["metrics"]["joint_coherence"]
            or c["metrics"]["fd"] != a["metrics"]["fd"])


# ----------------------------------------------------------------------------------------------
# mmgen bench
# ----------------------------------------------------------------------------------------------
BENCH = {
    "name": "options", "seeds": [0], "budget": {"max_steps": 2},
    # The data of the `run` fixture, whose classifiers are in the cache: preparing only loads them.
    "data": {"name": "default", "modalities": M, "train_size": 64, "test_size": 16},
    "overrides": ["model.latent_dim=4", "model.encoder.name=mlp", "model.encoder.hidden=16", "model.encoder.depth=1",
                  "model.decoder.name=mlp", "model.decoder.hidden=16", "model.decoder.depth=1",
                  "train.batch_size=8", "train.log_every=1"],
    "evaluate": {"metrics": ["joint_coherence"], "n": 8, "batch_size": 16, "figures": False},
    "report": {"curves": ["loss"], "cross_given": [0], "cross_n": 2},
    "runs": [{"name": "a", "recipe": "mmvae"}, {"name": "b", "recipe": "mmvae"}],
}


def test_bench_only_trains_that_run_and_resumes_an_interrupted_one(classifiers, tmp_path):
    spec = tmp_path / "options.yaml"
    spec.write_text(yaml.safe_dump(BENCH))
    out = tmp_path / "out"
    result = invoke("bench", spec, "--only", "a", "--out", out)
    assert result.exit_code == 0, result.output
    a = out / "runs" / "a-s0"
    assert (a / "checkpoints" / "final.pt").is_file() and (a / "eval.json").is_file()
    assert not (out / "runs" / "b-s0").exists()
    assert "started a-s0" in result.output and "b-s0" not in result.output.replace("(not selected)", "")
    report = json.loads((out / "results.json").read_text())
    assert {e["run"]: e["finished"] for e in report["summary"]} == {"a": 1, "b": 0}  # the report covers both

    (a / "checkpoints" / "final.pt").unlink()  # as if stopped after its last checkpoint
    result = invoke("bench", spec, "--dry-run", "--out", out)
    assert result.exit_code == 0, result.output
    commands = [line for line in result.output.splitlines() if line.startswith("mmgen ")]
    assert f"mmgen train --resume {a.resolve()}" in commands
    assert f"mmgen train --config {(out / 'runs' / 'b-s0' / 'bench-config.yaml').resolve()} " \
           f"--out {(out / 'runs' / 'b-s0').resolve()}" in commands
    assert "resume" in result.output and "dry run: 2 run configs valid; 2 would run" in result.output
    assert not (a / "checkpoints" / "final.pt").exists()

    result = invoke("bench", spec, "--only", "a*", "--out", out)
    assert result.exit_code == 0, result.output
    state = json.loads((a / "bench.json").read_text())
    assert state["status"] == "finished" and state["job"]["action"] == "resume" and state["attempts"] == 2
    assert (a / "checkpoints" / "final.pt").is_file() and json.loads((a / "eval.json").read_text())["step"] == 2
    log = (a / "bench.log").read_text()  # the same directory, first trained then resumed
    assert "mmgen bench: train a-s0 (attempt 1" in log and "mmgen bench: resume a-s0 (attempt 2" in log
    assert not (out / "runs" / "b-s0").exists()


# ----------------------------------------------------------------------------------------------
# Aggregator and posterior family; recipes
# ----------------------------------------------------------------------------------------------
def test_an_aggregator_refuses_a_posterior_family_it_cannot_combine(plugins, tmp_path):
    from mmgen.train import load_datasets

    mismatch = ["model.aggregator.name=poe", "model.posterior_family=laplace"]
    with pytest.raises(ConfigError, match=r"model\.posterior_family: aggregator 'poe' needs one of gaussian, "
                                          r"got 'laplace'"):
        tiny_config(plugins, TINY, mismatch)  # found when the config is resolved
    ok = tiny_config(plugins, TINY, ["model.aggregator.name=poe", "model.posterior_family=gaussian"])
    train_set, _ = load_datasets(ok, plugins)
    assert build_model(ok, plugins.registry, train_set.modalities).posterior_family == "gaussian"
    # build_model keeps its own check for configs assembled in code.
    with pytest.raises(MMGenError, match=r"^model\.posterior_family: aggregator 'poe' needs one of gaussian"):
        build_model({**ok, "model": {**ok["model"], "posterior_family": "laplace"}}, plugins.registry, train_set.modalities)

    line = one_line_error(invoke("train", "--max-steps", "1", "--out", tmp_path / "run", *TINY, *mismatch))
    assert line == ("error: config: model.posterior_family: aggregator 'poe' needs one of gaussian, got 'laplace' "
                    "(add model.posterior_family=gaussian)")
    assert not (tmp_path / "run").exists()


def test_validate_reports_an_aggregator_family_mismatch(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  aggregator: {name: poe}\n  posterior_family: laplace\n")
    assert "needs one of" in one_line_error(invoke("validate", path))


def test_config_recipes_lists_every_recipe_file(tmp_path, monkeypatch):
    on_disk = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert len(on_disk) >= 7
    monkeypatch.chdir(tmp_path)  # no ./configs: only the configs/ beside the package
    result = invoke("config", "recipes")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == on_disk
    (tmp_path / "configs").mkdir()  # a project's own recipes are listed too, each name once
    for name in ("aaa-local", on_disk[0]):
        shutil.copy(REPO / "configs" / f"{on_disk[0]}.yaml", tmp_path / "configs" / f"{name}.yaml")
    result = invoke("config", "recipes")
    assert result.output.splitlines() == ["aaa-local", *on_disk]
