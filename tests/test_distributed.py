"""Multi-process training (two CPU processes through torchrun + accelerate): replicas in sync, per-process
random streams, agreed non-finite policies, resuming with another number of processes, errors said once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from mmgen.checkpoint import load_checkpoint
from mmgen.cli.main import create_app

from .conftest import REPO


def cli(*args):
    return CliRunner().invoke(create_app(with_plugin_commands=False), list(args))


@pytest.mark.slow
def test_two_processes_stay_in_sync_and_only_rank0_writes(tmp_path):
    out = tmp_path / "run"
    tiny = ["data.modalities=2", "data.train_size=64", "data.test_size=16", "model.latent_dim=4",
            "model.encoder.name=mlp", "model.encoder.hidden=16", "model.decoder.name=mlp", "model.decoder.hidden=16",
            "model.prior.name=ebm", "model.prior.hidden=8", "model.prior.steps=3",
            "train.batch_size=8", "train.log_every=1", "train.progress=false", "train.device=cpu"]

    def launch(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "mmgen.cli.main", "train", *args]
        # Two CPU processes, on a machine with or without a GPU (with one GPU, torch.distributed's
        # barrier used to ask for CUDA device 1 on rank 1: mmgen.train.wait_for_everyone).
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=240,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    proc = launch("--out", str(out), "--max-steps", "6", *tiny)
    # Parameters were compared across processes at the end (an error otherwise); only rank 0 wrote.
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert proc.stderr.count("done: run directory") == 1

    # Each process draws its own noise (was: the same seed everywhere, so the same reparameterisation
    # samples and prior Langevin negatives on every process), and the checkpoint keeps every stream:
    # stopped at step 3 and resumed, two processes end exactly where the uninterrupted run did.
    final = load_checkpoint(out / "checkpoints" / "final.pt")
    streams = final["rng_per_process"]
    assert len(streams) == 2 and not torch.equal(streams[0]["torch"], streams[1]["torch"])
    assert torch.equal(streams[0]["torch"], final["rng"]["torch"])
    launch("--out", str(tmp_path / "resumed"), "--max-steps", "3", *tiny)
    launch("--resume", str(tmp_path / "resumed"), "--max-steps", "6")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "final.pt")
    for name, value in final["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


class TwoReplicas:
    """An accelerator stand-in whose gather stacks this process's signature with a second replica's."""

    num_processes, device = 2, torch.device("cpu")

    def __init__(self, other: torch.nn.Module):
        self.other = other

    def gather(self, tensor):
        from mmgen.train import parameter_signature

        return torch.cat([tensor, parameter_signature(self.other)])


def test_replica_comparison_sees_moved_weights_whose_sums_agree():
    from mmgen.errors import MMGenError
    from mmgen.train import _check_in_sync

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    same = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    same.load_state_dict(model.state_dict())
    _check_in_sync(TwoReplicas(same), model)  # equal replicas pass
    swapped = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    swapped.load_state_dict(model.state_dict())
    with torch.no_grad():
        swapped[1].weight.copy_(swapped[1].weight.flip(1))  # same sum, same norm, other places
    assert torch.isclose(swapped[1].weight.sum(), model[1].weight.sum())
    with pytest.raises(MMGenError, match=r"different parameters \(first at 1\.weight\)"):
        _check_in_sync(TwoReplicas(swapped), model)


# A non-finite loss on rank 1 only, at its N-th training step, with finite gradients (a term that
# no parameter reaches): the processes must agree to skip or roll back that step together.
NAN_ON_RANK1 = r"""
import os, sys, torch
from mmgen.model import MultimodalModel
real, calls = MultimodalModel.forward, {"n": 0}
def forward(self, batch, *args, **kwargs):
    out = real(self, batch, *args, **kwargs)
    if torch.is_grad_enabled() and os.environ["RANK"] == "1":
        calls["n"] += 1
        if calls["n"] == int(os.environ["MMGEN_TEST_NAN_STEP"]):
            out.loss = out.loss + float("nan")
    return out
MultimodalModel.forward = forward
from mmgen.cli.main import main
sys.argv[0] = "mmgen"
main()
"""


@pytest.mark.slow
def test_two_processes_roll_back_together_when_one_has_a_nonfinite_loss(tmp_path):
    out, script = tmp_path / "run", tmp_path / "nan_on_rank1.py"
    script.write_text(NAN_ON_RANK1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           "train", "--out", str(out), "--max-steps", "6", *[
               "data.modalities=2", "data.train_size=64", "data.test_size=16", "model.latent_dim=4",
               "model.encoder.name=mlp", "model.encoder.hidden=16", "model.decoder.name=mlp",
               "model.decoder.hidden=16", "train.batch_size=8", "train.log_every=1", "train.progress=false",
               "train.device=cpu", "train.on_nonfinite=rollback"]]
    env = dict(os.environ, OMP_NUM_THREADS="1", MMGEN_TEST_NAN_STEP="3", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240)
    # Was: rank 1 alone rolled back, loading the checkpoint into the DDP wrapper ("does not match the
    # configured model"); with train.on_nonfinite=skip rank 1 alone skipped, and both waited forever.
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.count("rollback 1/3 to step 0") == 1  # said once, by rank 0
    assert "step 3 (epoch 0): non-finite values on another process" in " ".join(proc.stderr.split())
    assert load_checkpoint(out / "checkpoints" / "final.pt")["progress"]["rollbacks"] == 1


def test_reshard_continues_the_epoch_after_the_batches_all_processes_took():
    from mmgen.train import TrainState, reshard

    # 2 processes took 2 batches each of epoch 1 (8 whole batches, 4 per process): 1 process goes
    # on at batch 4 (was: at its own batch 2, seeing batches 2 and 3 of the epoch twice).
    state, note = reshard(TrainState(step=6, epoch=1, batch=2, processes=2), full=8, processes=1)
    assert (state.batch, state.processes) == (4, 1)
    assert note == "resuming a run of 2 processes with 1: epoch 1 goes on after batch 4 of 8"
    # The epochs end where they did: 4 steps left in epoch 1, then 8 a epoch (was: epochs x 8 steps).
    assert 5 * 8 + state.offset == 6 + 4 + 3 * 8
    # 1 process took 3 batches: 2 processes go on at global batch 4, skipping batch 3, not repeating it.
    state, note = reshard(TrainState(step=11, epoch=1, batch=3), full=8, processes=2)
    assert state.batch == 2 and note.endswith("after batch 3 of 8 (1 skipped)")
    assert 5 * 4 + state.offset == 11 + 2 + 3 * 4
    same = TrainState(step=6, epoch=1, batch=2, processes=2)
    assert reshard(same, full=8, processes=2) == (same, "")


@pytest.mark.slow
def test_a_one_process_run_resumed_with_two_trains_the_remaining_epochs(tmp_path):
    out = tmp_path / "run"
    tiny = ["data.modalities=2", "data.train_size=64", "data.test_size=16", "model.latent_dim=4",
            "model.encoder.name=mlp", "model.encoder.hidden=16", "model.decoder.name=mlp",
            "model.decoder.hidden=16", "train.batch_size=8", "train.log_every=1", "train.progress=false",
            "train.device=cpu", "train.epochs=3"]
    # Stopped at step 12 of 24, in the middle of epoch 1 (8 batches an epoch on 1 process).
    assert cli("train", "--out", str(out), "--max-steps", "12", *tiny).exit_code == 0
    (out / "checkpoints" / "final.pt").unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mmgen.cli.main", "train", "--resume", str(out), "train.max_steps=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=240,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming a run of 1 process with 2: epoch 1 goes on after batch 4 of 8" in proc.stderr
    # Was: 2 processes make 4 steps an epoch, so 3 epochs were 12 steps, reached already: it stopped.
    progress = load_checkpoint(out / "checkpoints" / "final.pt")["progress"]
    assert (progress["epoch"], progress["batch"], progress["step"]) == (3, 0, 12 + 2 + 4)


@pytest.mark.slow
def test_two_processes_say_a_config_error_once(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mmgen.cli.main", "train", "--out", str(tmp_path / "run"), "train.device=cpu", "train.nosuch=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=240,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode != 0
    # Was: the same line from each process (the launcher's own failure report follows it).
    assert proc.stderr.count("error: config: train.nosuch: unknown key; valid keys: epochs") == 1, proc.stderr
    assert "failed (exitcode: 2)" in proc.stderr


@pytest.mark.slow
def test_two_processes_with_one_batch_between_them_say_so(tmp_path):
    """8 tuples in batches of 8: one batch, two processes. It said the batch was larger than the
    training set, which it is not."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mmgen.cli.main", "train", "--out", str(tmp_path / "run"), "train.device=cpu", "data.modalities=2",
           "data.train_size=8", "data.test_size=8", "train.batch_size=8", "model.encoder.name=mlp", "model.decoder.name=mlp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=240,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode != 0
    said = " ".join(proc.stderr.split())
    assert said.count("error: config: train.batch_size: 8 x 2 processes is more than the training set (8 tuples) holds") == 1, said


@pytest.mark.slow
def test_two_processes_say_once_that_out_holds_a_run(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest.pt").write_bytes(b"")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mmgen.cli.main", "train", "--out", str(out), "train.device=cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=240,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode != 0
    assert " ".join(proc.stderr.split()).count(f"error: --out {out} already holds a run") == 1, proc.stderr
