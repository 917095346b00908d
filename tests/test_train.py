"""The training engine end to end on a tiny config: run directory, resume, determinism, guards."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmgen.checkpoint import load_checkpoint
from mmgen.cli.main import create_app


def run(*args):
    return CliRunner().invoke(create_app(with_plugin_commands=False), ["train", *args])


def params(run_dir, name="final.pt"):
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]


def test_run_directory_contents(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    result = run("--max-steps", "6", "--out", str(out), *tiny_overrides)
    assert result.exit_code == 0, result.output
    assert (out / "config.yaml").is_file() and "plugin_versions" in (out / "config.yaml").read_text()
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"latest.pt", "final.pt"}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert all(k in lines[0] for k in ("loss", "objective/bound", "grad_norm", "steps_per_s"))
    assert (out / "samples" / "final.png").is_file()
    ckpt = load_checkpoint(out / "checkpoints" / "final.pt")
    assert ckpt["progress"]["step"] == 6 and ckpt["config"]["model"]["latent_dim"] == 4


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomically_written_files_get_the_usual_permissions(tmp_path, tiny_overrides, umask, mode):
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        assert run("--max-steps", "2", "--out", str(out), *tiny_overrides).exit_code == 0
    finally:
        os.umask(old)
    for path in (out / "config.yaml", out / "checkpoints" / "latest.pt", out / "checkpoints" / "final.pt"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path  # was 0600 whatever the umask (mkstemp's)


def test_resume_matches_uninterrupted_run(tmp_path, tiny_overrides):
    # 64 tuples / batch 8 = 8 steps per epoch: stop mid-epoch 2 and resume to step 20.
    full, part = tmp_path / "full", tmp_path / "part"
    assert run("--max-steps", "20", "--out", str(full), *tiny_overrides).exit_code == 0
    assert run("--max-steps", "12", "--out", str(part), *tiny_overrides).exit_code == 0
    result = run("--resume", str(part), "--max-steps", "20")
    assert result.exit_code == 0, result.output
    a, b = params(full), params(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(x)["step"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))


def test_same_seed_is_bitwise_deterministic(tmp_path, tiny_overrides):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 0), (b, 0), (c, 1)):
        assert run("--max-steps", "5", "--seed", str(seed), "--out", str(out), *tiny_overrides).exit_code == 0
    pa, pb, pc = params(a), params(b), params(c)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


def test_resume_refuses_model_changes(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    assert run("--max-steps", "2", "--out", str(out), *tiny_overrides).exit_code == 0
    result = run("--resume", str(out), "model.latent_dim=8")
    assert result.exit_code == 2 and "only train.* settings and data.path may change" in result.output


def test_resume_applies_changed_train_settings(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    assert run("--max-steps", "2", "--out", str(out), *tiny_overrides, "train.lr=0.001").exit_code == 0
    result = run("--resume", str(out), "--max-steps", "4", "train.lr=0.0003", "train.betas=[0.8,0.99]")
    assert result.exit_code == 0, result.output
    groups = load_checkpoint(out / "checkpoints" / "final.pt")["optimizer"]["param_groups"]
    assert groups[0]["lr"] == 0.0003 and tuple(groups[0]["betas"]) == (0.8, 0.99)  # not the checkpoint's 1e-3
    assert "lr: 0.0003" in (out / "config.yaml").read_text()


def test_resume_refuses_to_change_train_amsgrad(tmp_path, tiny_overrides):
    """The optimizer's AMSGrad setting comes back from the checkpoint (its state has another
    layout), so a changed train.amsgrad was accepted, written to config.yaml and silently ignored."""
    out = tmp_path / "run"
    assert run("--max-steps", "2", "--out", str(out), *tiny_overrides, "train.amsgrad=false").exit_code == 0
    result = run("--resume", str(out), "--max-steps", "4", "train.amsgrad=true")
    assert result.exit_code == 2 and "train.amsgrad cannot change (the run trains with amsgrad=false" in result.output
    assert "amsgrad: false" in (out / "config.yaml").read_text()
    assert load_checkpoint(out / "checkpoints" / "final.pt")["progress"]["step"] == 2  # nothing trained
    assert run("--resume", str(out), "--max-steps", "4", "train.amsgrad=false").exit_code == 0  # unchanged: fine


def test_a_new_run_never_writes_over_an_existing_one(tmp_path, tiny_overrides, monkeypatch):
    out = tmp_path / "run"
    assert run("--max-steps", "2", "--out", str(out), *tiny_overrides).exit_code == 0
    before = (out / "checkpoints" / "final.pt").read_bytes()
    result = run("--max-steps", "2", "--out", str(out), *tiny_overrides)
    assert result.exit_code == 2
    assert f"--out {out} already holds a run" in " ".join(result.output.split()) and "--resume" in result.output
    assert (out / "checkpoints" / "final.pt").read_bytes() == before
    # Default folders are named by the second: a second run in the same second gets its own.
    import datetime

    import mmgen.train

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 24, 10, 15, 0)

    monkeypatch.setattr(mmgen.train, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    first = mmgen.train.default_run_dir({"name": "x"})
    assert first == Path("runs/x-20261124-101500")
    first.mkdir(parents=True)
    assert mmgen.train.default_run_dir({"name": "x"}) == Path("runs/x-20261124-101500-2")


def test_corrupt_checkpoint_is_one_line_error(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    assert run("--max-steps", "2", "--out", str(out), *tiny_overrides).exit_code == 0
    latest = out / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:100])
    result = run("--resume", str(out))
    assert result.exit_code == 2 and "corrupt or truncated" in result.output


def test_periodic_evaluation_writes_eval_jsonl(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    result = run("--epochs", "2", "--out", str(out), *tiny_overrides, "train.eval_every=1",
                 "train.eval_metrics=[joint_coherence]", "train.eval_n=16", "train.eval_n_test=8")
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert any("joint_coherence" in k for k in records[0])
    bad = run("--max-steps", "1", *tiny_overrides, "train.eval_every=1", "train.eval_metrics=[cohrence]")
    assert bad.exit_code == 2 and "train.eval_metrics: unknown metric 'cohrence'" in bad.output


def test_out_naming_a_file_is_a_one_line_error(tmp_path, tiny_overrides):
    (tmp_path / "notes.txt").write_text("mine")
    result = run("--max-steps", "1", "--out", str(tmp_path / "notes.txt"), *tiny_overrides)
    assert result.exit_code == 2  # was "error: .../notes.txt: File exists"
    assert result.output.strip().splitlines() == [f"error: --out {tmp_path / 'notes.txt'} is a file; choose a folder for the run"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
