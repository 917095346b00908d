"""Reliability: kill and resume, divergence policies, hostile inputs, safe loading (multi-process: test_distributed.py)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mmgen.checkpoint import FORMAT, load_checkpoint
from mmgen.cli.main import create_app
from mmgen.errors import CheckpointError

from .conftest import REPO
from .helpers import float_batch, tiny_model


def cli(*args):
    return CliRunner().invoke(create_app(with_plugin_commands=False), list(args))


def final_params(run_dir: Path, name: str = "final.pt"):
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------------
# Kill and resume
# ------------------------------------------------------------------------------------------------
# Slow enough per step (a 256-wide MLP on 2 x 3 x 28 x 28) that a kill lands mid-epoch.
KILL_CFG = ["data.modalities=2", "data.train_size=160", "data.test_size=16", "model.latent_dim=4",
            "model.encoder.name=mlp", "model.encoder.hidden=128", "model.decoder.name=mlp", "model.decoder.hidden=128",
            "train.batch_size=8", "train.log_every=1", "train.checkpoint_every=5", "train.progress=false",
            "train.device=cpu", "train.epochs=2"]

# Runs `mmgen train` in a child; with MMGEN_TEST_STALL_CKPT=N it stalls forever inside the N-th
# write of latest.pt, after the temp file is written and before the rename, and with
# MMGEN_TEST_STALL_STEP=N inside the N-th optimizer step (until the file MMGEN_TEST_RELEASE exists);
# either announces the stall by a file.
CHILD = r"""
import os, sys, time
stall_step = int(os.environ.get("MMGEN_TEST_STALL_STEP", "0"))
if stall_step:
    import torch
    real_step, steps = torch.optim.Adam.step, {"n": 0}
    def step(self, *args, **kwargs):
        steps["n"] += 1
        if steps["n"] == stall_step:
            open(os.environ["MMGEN_TEST_MARKER"], "w").close()
            release = os.environ.get("MMGEN_TEST_RELEASE")
            deadline = time.time() + 600
            while time.time() < deadline and not (release and os.path.exists(release)):
                time.sleep(0.05)
        return real_step(self, *args, **kwargs)
    torch.optim.Adam.step = step
stall = int(os.environ.get("MMGEN_TEST_STALL_CKPT", "0"))
if stall:
    real, seen = os.fsync, {"n": 0}
    def fsync(fd):
        real(fd)
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        if ".latest.pt." in path:
            seen["n"] += 1
            if seen["n"] == stall:
                open(os.environ["MMGEN_TEST_MARKER"], "w").close()
                time.sleep(600)
    os.fsync = fsync
import torch
torch.set_num_threads(1)
from mmgen.cli.main import main
sys.argv = ["mmgen", *sys.argv[1:]]
main()
"""


def start_child(args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-c", CHILD, "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)


def wait_for(predicate, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.stdout.read().decode()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out waiting for the child")


def logged_steps(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except ValueError:
        return 0


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted run of 2 epochs (40 steps)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert cli("train", "--out", str(out), *KILL_CFG).exit_code == 0
    return out


def killed_in_step(tmp_path: Path, step: int) -> Path:
    """A run SIGKILLed inside its optimizer step ``step``; its run directory."""
    out, marker = tmp_path / "run", tmp_path / "stalled"
    proc = start_child(["--out", str(out), *KILL_CFG], {"MMGEN_TEST_STALL_STEP": str(step), "MMGEN_TEST_MARKER": str(marker)})
    wait_for(marker.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return out


def assert_resumes_to_the_reference(out: Path, reference_run: Path) -> None:
    """``--resume`` ends with the uninterrupted run's weights and one metrics line per step."""
    result = cli("train", "--resume", str(out))
    assert result.exit_code == 0, result.output
    assert_same_params(final_params(out), final_params(reference_run))
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))  # lines logged after the checkpoint were dropped, then redone


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path, reference_run):
    # Killed in step 14: past the step-10 checkpoint, with steps 11-13 logged after it, mid-epoch 0.
    out = killed_in_step(tmp_path, 14)
    assert logged_steps(out) == 13
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["progress"]["step"] == 10
    assert_resumes_to_the_reference(out, reference_run)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_there_and_resume_is_bitwise_identical(tmp_path, reference_run, signum):
    out, marker, release = tmp_path / "run", tmp_path / "stalled", tmp_path / "release"
    # The signal lands inside step 14 (past the step-10 checkpoint, mid-epoch 0): that step ends,
    # the run saves at step 14 and stops. Was: an exit at once, steps 11-14 lost.
    proc = start_child(["--out", str(out), *KILL_CFG], {"MMGEN_TEST_STALL_STEP": "14", "MMGEN_TEST_MARKER": str(marker),
                                                       "MMGEN_TEST_RELEASE": str(release)})
    wait_for(marker.exists, proc)
    proc.send_signal(signum)
    time.sleep(0.5)
    release.touch()
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 128 + signum, output
    name = signal.Signals(signum).name
    assert f"error: interrupted by {name} at step 14 of 40; the run is saved there: mmgen train --resume {out}" in output
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["progress"]["step"] == 14
    assert logged_steps(out) == 14
    assert_resumes_to_the_reference(out, reference_run)


@pytest.mark.slow
def test_resume_from_the_first_checkpoint_is_bitwise_identical(tmp_path, reference_run):
    out = killed_in_step(tmp_path, 1)
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["progress"]["step"] == 0
    # Was not identical: the resumed run ran the sanity pass again, drawing from the restored stream.
    assert_resumes_to_the_reference(out, reference_run)


@pytest.mark.slow
def test_sigkill_while_writing_checkpoint_keeps_last_good_one(tmp_path, reference_run):
    out, marker = tmp_path / "run", tmp_path / "stalled"
    # Write 1 is the step-0 checkpoint, 2 the step-5 one; stall inside write 3 (step 10).
    proc = start_child(["--out", str(out), *KILL_CFG],
                       {"MMGEN_TEST_STALL_CKPT": "3", "MMGEN_TEST_MARKER": str(marker)})
    wait_for(marker.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    temps = list((out / "checkpoints").glob(".latest.pt.*.tmp"))
    assert temps, "the kill should have left the half-finished temp file"
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["progress"]["step"] == 5
    result = cli("train", "--resume", str(out))
    assert result.exit_code == 0, result.output
    assert not list((out / "checkpoints").glob(".*.tmp"))
    assert_same_params(final_params(out), final_params(reference_run))


# ------------------------------------------------------------------------------------------------
# Divergence policies, with a NaN injected by a test plugin
# ------------------------------------------------------------------------------------------------
NAN_CFG = ["plugins=[tests.plugins.nan_plugin]", "--prior", "nan-ebm", "model.prior.steps=3",
           "model.prior.hidden=8"]


def test_nan_policy_stop_names_step_component_and_statistic(tmp_path, tiny_overrides):
    result = cli("train", "--out", str(tmp_path / "r"), "--max-steps", "6", *tiny_overrides, *NAN_CFG,
                 "model.prior.nan_at=[3]")
    assert result.exit_code == 2
    msg = " ".join(result.output.split())
    assert "non-finite value at step 3 (epoch 0)" in msg
    # A third-party plugin's component is named with its plugin (the built-in ones without).
    assert "prior 'nan-ebm' (plugin 'tests.plugins.nan_plugin'): prior/f_neg=nan" in msg and "Traceback" not in msg


def test_nan_policy_skip_stops_when_a_whole_epoch_is_skipped(tmp_path, tiny_overrides):
    result = cli("train", "--out", str(tmp_path / "r"), "--epochs", "3", *tiny_overrides, *NAN_CFG,
                 f"model.prior.nan_at={list(range(1, 100))}", "train.on_nonfinite=skip")
    assert result.exit_code == 2
    msg = " ".join(result.output.split())
    assert "every batch of epoch 0 was non-finite and skipped" in msg and "Traceback" not in msg


def test_nan_policy_skip_continues_without_the_batch(tmp_path, tiny_overrides):
    out = tmp_path / "r"
    result = cli("train", "--out", str(out), "--max-steps", "6", *tiny_overrides, *NAN_CFG,
                 "model.prior.nan_at=[3]", "train.on_nonfinite=skip")
    assert result.exit_code == 0, result.output
    assert "step 3 (epoch 0): skipped a batch" in " ".join(result.output.split())
    ckpt = load_checkpoint(out / "checkpoints" / "final.pt")
    assert ckpt["progress"]["step"] == 6 and ckpt["progress"]["batch"] == 7  # one batch consumed, no step
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_nan_steps_are_reported_at_the_next_sync_with_their_own_numbers(tmp_path, tiny_overrides):
    """With logging and checkpoints far apart the loop syncs only at the end, yet the skipped
    batches are numbered as a loop that synced every step would number them."""
    out = tmp_path / "r"
    result = cli("train", "--out", str(out), "--max-steps", "5", *tiny_overrides, *NAN_CFG,
                 "model.prior.nan_at=[2,3]", "train.on_nonfinite=skip", "train.log_every=50",
                 "train.checkpoint_every=50")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert text.count("step 2 (epoch 0): skipped a batch with non-finite prior 'nan-ebm'") == 2
    assert "step 3 (epoch 0)" not in text and "prior/f_neg=nan" in text
    ckpt = load_checkpoint(out / "checkpoints" / "final.pt")
    assert ckpt["progress"]["step"] == 5 and ckpt["progress"]["batch"] == 7


def test_finite_guard_skips_a_nan_step_on_the_device(tiny_overrides, plugins):
    """The optimizer leaves weights, moments and its step count untouched for a flagged step."""
    from mmgen.model import StepOutput
    from mmgen.finite import FiniteGuard
    from mmgen.train import make_optimizer

    _, model, train_set = tiny_model(plugins, tiny_overrides)
    batch = float_batch(train_set, 8)
    optimizer = make_optimizer(model, {"lr": 1e-3, "betas": [0.9, 0.999], "amsgrad": True, "weight_decay": 0.0})
    guard = FiniteGuard(optimizer)

    def step(poison: bool) -> None:
        out = model(batch)
        loss = out.loss * float("nan") if poison else out.loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
        guard.guard(model, 1, 0, StepOutput(loss, out.stats), grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(False)
    assert guard.settle(model) == ([], False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v.clone() for k, v in optimizer.state[next(model.parameters())].items()}
    step(True)
    skipped, latest_bad = guard.settle(model)
    assert latest_bad and skipped == [("step 1 (epoch 0)", "gradient norm=nan in decoders, encoders")]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(moments[k], v) for k, v in optimizer.state[next(model.parameters())].items())
    step(False)
    assert guard.settle(model) == ([], False)
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nan_policy_rollback_restores_and_lowers_step_sizes(tmp_path, tiny_overrides):
    out = tmp_path / "r"
    result = cli("train", "--out", str(out), "--max-steps", "8", *tiny_overrides, *NAN_CFG,
                 "model.prior.nan_at=[6]", "train.on_nonfinite=rollback", "train.checkpoint_every=4",
                 "model.prior.step_size=0.4", "train.log_every=1")
    assert result.exit_code == 0, result.output
    # Steps 5 and 6 ran twice; metrics.jsonl has each step once (it kept the first tries' lines too).
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9)), steps
    text = " ".join(result.output.split())
    assert "rolling back to the last checkpoint" in text
    assert "rollback 1/3 to step 4" in text and "prior Langevin step size 0.4 -> 0.2" in text
    ckpt = load_checkpoint(out / "checkpoints" / "final.pt")
    assert ckpt["progress"]["step"] == 8 and ckpt["progress"]["rollbacks"] == 1
    assert ckpt["progress"]["damping"] == 0.5
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.5e-3)


def test_nan_policy_rollback_gives_up_after_max_rollbacks(tmp_path, tiny_overrides):
    result = cli("train", "--out", str(tmp_path / "r"), "--max-steps", "8", *tiny_overrides, *NAN_CFG,
                 "model.prior.nan_at=[2,3,4,5]", "train.on_nonfinite=rollback", "train.max_rollbacks=2")
    assert result.exit_code == 2
    assert "rollbacks exhausted" in " ".join(result.output.split())


# ------------------------------------------------------------------------------------------------
# Hostile config overrides (property-based)
# ------------------------------------------------------------------------------------------------
POSITIVE_INT = ["model.latent_dim", "train.batch_size", "train.log_every", "train.checkpoint_every",
                "data.train_size", "model.encoder.hidden"]
NONNEG_INT = ["train.epochs", "train.max_steps", "model.private_dim"]
TYPED = POSITIVE_INT + NONNEG_INT + ["train.lr", "seed", "train.amsgrad", "model.likelihood.scale"]
identifier = st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True)


@st.composite
def hostile_override(draw):
    kind = draw(st.sampled_from(["unknown", "type", "negative", "choice", "modalities"]))
    if kind == "unknown":
        section = draw(st.sampled_from(["", "train.", "model.", "model.prior.", "data.", "model.likelihood."]))
        key = section + "zz" + draw(identifier)
        return f"{key}=1", key
    if kind == "type":
        key = draw(st.sampled_from(TYPED))
        value = draw(st.sampled_from(["abc", "[1,2]", "{a: 1}", "'x y'"]))
        return f"{key}={value}", key
    if kind == "negative":
        key = draw(st.sampled_from(POSITIVE_INT + NONNEG_INT))
        return f"{key}={draw(st.integers(-10_000, -1))}", key
    if kind == "choice":
        key = draw(st.sampled_from(["train.device", "train.mixed_precision", "train.on_nonfinite",
                                    "model.posterior_family", "model.likelihood.family"]))
        return f"{key}=zz{draw(identifier)}", key
    value = draw(st.sampled_from(["0", "1", "-2"]))  # a multimodal dataset needs >= 2 modalities
    return f"data.modalities={value}", "data.modalities"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=hostile_override())
def test_hostile_overrides_are_rejected_with_key_path(case):
    override, key = case
    result = cli("config", "show", override)
    assert result.exit_code == 2, (override, result.output)
    assert key in result.output, (override, result.output)
    assert "Traceback" not in result.output


def test_empty_modality_list_from_disk_rejected(tmp_path):
    (tmp_path / "train").mkdir()
    result = cli("train", "--data", f"polymnist:{tmp_path}", "--max-steps", "1")
    assert result.exit_code == 2 and "no modality entries" in result.output


# ------------------------------------------------------------------------------------------------
# Safe loading
# ------------------------------------------------------------------------------------------------
class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mmgen-pwned-by-checkpoint",))


def test_checkpoint_loading_never_executes_code(tmp_path):
    target = Path("/tmp/mmgen-pwned-by-checkpoint")
    target.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "model": Exploit()}, path)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    assert not target.exists()


def test_unreadable_checkpoints_say_why_in_a_few_words(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"format": FORMAT, "model": {"w": torch.ones(3)}}, good)
    cases = {"truncated.pt": good.read_bytes()[:200], "random.pt": bytes(range(256)) * 4, "empty.pt": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(tmp_path / name)
        message = str(err.value)
        assert message.startswith(f"checkpoint {tmp_path / name} is corrupt or truncated (") and "\n" not in message
        assert "weights_only" not in message and "If you are seeing this error" not in message  # torch's advice
    with pytest.raises(CheckpointError, match=r"truncated.pt is corrupt or truncated \(not a complete PyTorch zip archive"):
        load_checkpoint(tmp_path / "truncated.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt is corrupt or truncated \(not a PyTorch file of tensors"):
        torch.save({"format": FORMAT, "model": Exploit()}, tmp_path / "evil.pt")
        load_checkpoint(tmp_path / "evil.pt")


def test_checkpoint_from_other_format_or_missing_plugin(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    assert cli("train", "--out", str(out), "--max-steps", "2", *tiny_overrides).exit_code == 0
    ckpt = load_checkpoint(out / "checkpoints" / "latest.pt")
    ckpt["extra"]["components"]["model.prior"] = {"kind": "prior", "name": "vamp", "plugin": "mmgen-vampprior"}
    torch.save(ckpt, out / "checkpoints" / "latest.pt")
    result = cli("train", "--resume", str(out))
    assert result.exit_code == 2
    assert "prior 'vamp' from plugin 'mmgen-vampprior', which is not installed" in " ".join(result.output.split())
    ckpt["format"] = "mmgen-checkpoint-v0"
    torch.save(ckpt, out / "checkpoints" / "latest.pt")
    result = cli("train", "--resume", str(out))
    assert result.exit_code == 2 and "not an mmgen checkpoint" in result.output


def test_a_huge_langevin_step_size_is_a_one_line_error_naming_the_component(tmp_path, tiny_overrides):
    result = cli("train", "--out", str(tmp_path / "r"), "--max-steps", "2", "--prior", "ebm", *tiny_overrides,
                 "model.prior.hidden=8", "model.prior.steps=3", "model.prior.step_size=1e30")
    assert result.exit_code == 2, result.output  # was exit 1: an overflow traceback from inside the chain
    msg = " ".join(result.output.split())
    assert msg.startswith("error: sanity check: the initial loss on 4 training tuples is not finite")
    assert "prior 'ebm': prior/loss=nan" in msg and "Traceback" not in msg


def test_a_rollback_right_after_a_resume_with_another_number_of_processes_reshards_again(tmp_path, tiny_overrides):
    """A rollback before the resumed run's first checkpoint loads the checkpoint it resumed from, of
    the other number of processes: its position was taken as is (the epoch's batches 2 and 3 trained
    twice), and its `processes` went on into the next checkpoints."""
    out = tmp_path / "r"
    nan = [*NAN_CFG, "model.prior.nan_at=[3]", "train.on_nonfinite=rollback"]
    assert cli("train", "--out", str(out), "--max-steps", "2", *tiny_overrides, *nan).exit_code == 0
    latest = out / "checkpoints" / "latest.pt"
    ckpt = load_checkpoint(latest)
    # As a 2-process run leaves it after 2 steps: the epoch's first 4 of 8 batches taken.
    ckpt["progress"].update(step=2, epoch=0, batch=2, processes=2)
    torch.save(ckpt, latest)
    (out / "checkpoints" / "final.pt").unlink()
    # The third step after the resume is non-finite (the plugin counts this process's steps), before any checkpoint.
    result = cli("train", "--resume", str(out), "--max-steps", "8", "train.checkpoint_every=100")
    assert result.exit_code == 0, result.output
    assert "rollback 1/3 to step 2" in " ".join(result.output.split())
    progress = load_checkpoint(out / "checkpoints" / "final.pt")["progress"]
    # Batches 4-7 of epoch 0 (steps 3-6), then 0-1 of epoch 1; was (1, 0, 2): batches 2-7, the processes kept.
    assert (progress["epoch"], progress["batch"], progress["processes"]) == (1, 2, 1)
    assert progress["step"] == 8 and progress["offset"] == -2
