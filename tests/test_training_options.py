"""Options no other test sets: train.grad_clip, train.mixed_precision=bf16 (with a NaN injected),
private latents (model.private_dim) through `mmgen evaluate` and `mmgen sample`, the epoch
batches' sharding and resumption, and the default dataset's train/test split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import mmgen.train
from mmgen.checkpoint import load_checkpoint
from mmgen.cli.main import create_app
from mmgen.data import EpochBatches, ModalitySpec, MultimodalDataset
from mmgen.evaluation import EvalContext
from mmgen.run import load_run
from mmgen.finite import FiniteGuard
from mmgen.train import train

from .helpers import tiny_config


def invoke(*args):
    return CliRunner().invoke(create_app(with_plugin_commands=False), [str(a) for a in args])


def record_guarded_steps(monkeypatch, limit: int = 40) -> list[dict]:
    """Record, at each training step after clipping and before the optimizer step: the norm the
    loop's clip returned (the norm before clipping), the gradients' norm now, and the weights."""
    steps: list[dict] = []
    real = FiniteGuard.guard

    def guard(self, model, step, epoch, out, grad_norm):
        if len(steps) >= limit:  # a guard that lets NaN weights through would loop for ever
            raise RuntimeError(f"more than {limit} training steps")
        norms = torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
        steps.append({"returned": float(grad_norm), "now": float(norms.norm()),
                      "params": [p.detach().clone() for p in model.parameters()]})
        real(self, model, step, epoch, out, grad_norm)

    monkeypatch.setattr(FiniteGuard, "guard", guard)
    return steps


# -- train.grad_clip --------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_grad_clip_caps_the_gradient_the_optimizer_sees(plugins, tiny_overrides, tmp_path, monkeypatch, clip):
    steps = record_guarded_steps(monkeypatch)
    cfg = tiny_config(plugins, tiny_overrides, ["train.max_steps=3", f"train.grad_clip={clip}"])
    train(cfg, plugins, tmp_path / "run")
    assert len(steps) == 3
    logged = [json.loads(line)["grad_norm"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for step, norm in zip(steps, logged):
        assert step["returned"] > 50  # a Laplace likelihood over 4704 pixels: far above the clip
        assert norm == pytest.approx(step["returned"])  # metrics.jsonl logs the norm before clipping
        # clip_grad_norm_ scales by clip / (norm + 1e-6): the clipped norm is the clip itself.
        assert step["now"] == pytest.approx(clip if clip else step["returned"], rel=1e-4)


# -- train.mixed_precision=bf16 on the CPU ------------------------------------------------------------
# accelerate keeps one precision per process; train() starts its state afresh when a run asks for
# another, so this test and those after it (in float32) run in one process.
def test_bf16_on_cpu_trains_and_skips_an_injected_nan_step(tmp_path, tiny_overrides, monkeypatch):
    steps = record_guarded_steps(monkeypatch)
    dtypes = []
    real_build = mmgen.train.build_model

    def build_model(*args, **kwargs):  # watch what precision the decoders compute in
        model = real_build(*args, **kwargs)
        model.decoders[0].register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
        return model

    monkeypatch.setattr(mmgen.train, "build_model", build_model)
    out = tmp_path / "r"
    result = invoke("train", "--out", out, "--max-steps", "6", *tiny_overrides, "train.mixed_precision=bf16",
                    "plugins=[tests.plugins.nan_plugin]", "--prior", "nan-ebm", "model.prior.steps=3",
                    "model.prior.hidden=8", "model.prior.nan_at=[3]", "train.on_nonfinite=skip")
    assert result.exit_code == 0, result.output
    assert "step 3 (epoch 0): skipped a batch with non-finite prior 'nan-ebm'" in " ".join(result.output.split())
    assert torch.bfloat16 in dtypes  # autocast was on in the training steps
    # Seven batches, the third poisoned: its update is skipped, every other one moves the weights.
    assert len(steps) == 7
    for i in range(6):
        same = all(torch.equal(a, b) for a, b in zip(steps[i]["params"], steps[i + 1]["params"]))
        assert same == (i == 2), i
    ckpt = load_checkpoint(out / "checkpoints" / "final.pt")
    assert ckpt["progress"]["step"] == 6 and ckpt["progress"]["batch"] == 7
    assert all(v.dtype != torch.bfloat16 and torch.isfinite(v).all() for v in ckpt["model"].values())
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(np.isfinite(losses))

    # The same process trains in float32 next (accelerate's state is renewed), and refuses fp16
    # on the CPU, which accelerate would silently run in float32.
    result = invoke("train", "--out", tmp_path / "f32", "--max-steps", "1", *tiny_overrides)
    assert result.exit_code == 0, result.output
    result = invoke("train", "--out", tmp_path / "f16", "--max-steps", "1", *tiny_overrides,
                    "train.mixed_precision=fp16", "train.device=cpu")
    assert result.exit_code == 2 and "fp16 needs a CUDA device" in " ".join(result.output.split())


# -- private latents (MMVAE+) through evaluate and sample ------------------------------------------
@pytest.fixture(scope="module")
def mmvaeplus_run(tmp_path_factory):
    """A tiny MMVAE+ run (2-d private latents per modality) and classifiers for its dataset."""
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("mmvaeplus") / "run"
    result = invoke("train", "--recipe", "mmvaeplus", "--max-steps", "4", "--out", out, *TINY, "model.private_dim=2")
    assert result.exit_code == 0, result.output
    result = invoke("classifiers", "train", "--data", "default", "--epochs", "1", "--min-steps", "3", "--no-progress",
                    "data.modalities=2", "data.train_size=64", "data.test_size=16")
    assert result.exit_code == 0, result.output
    return out


def test_mmvaeplus_evaluate_and_sample(mmvaeplus_run, tmp_path, monkeypatch):
    monkeypatch.delenv("MMGEN_INCEPTION_WEIGHTS", raising=False)
    result = invoke("evaluate", mmvaeplus_run, "--n", "40", "--batch-size", "16", "--no-progress", "--out", tmp_path,
                    "nll.k=3", "probe.max_train=32")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    cross = metrics["cross_coherence"]
    assert cross["matrix_1to1"][0][0] is None and cross["matrix_1to1"][1][1] is None
    assert cross["n_test"] == 16 and [p["given"] for p in cross["pairs"]] == [["m0"], ["m1"]]
    assert metrics["joint_coherence"]["n"] == 40
    fd = metrics["fd"]
    assert fd["n_generated"] == 40 and fd["n_real"] == 16
    assert all(np.isfinite(v) and v > 0 for v in fd["unconditional"] + fd["conditional"])
    assert metrics["probe"]["n_train"] == 32 and len(metrics["probe"]["per_modality"]) == 2
    nll = metrics["nll"]
    assert nll["k"] == 3 and nll["n_test"] == 16 and nll["normalized"] and nll["log_z"] == 0.0
    # -log p(x | z, w) under a Laplace likelihood of scale 0.75, 2 x 3 x 28 x 28 pixels in [0, 1],
    # decoded means in [0, 1]: between 4704 log 1.5 = 1907 and 4704 (1/0.75 + log 1.5) = 8179 nats.
    # The latent terms of a 4 + 2 x 2-dimensional posterior four steps into training move it little.
    assert 1800 < nll["nll"] < 8300 and 0 < nll["nll_sem"] < 200

    result = invoke("sample", mmvaeplus_run, "--n", "3", "--chain", "--out", tmp_path / "figures")
    assert result.exit_code == 0, result.output
    figures = {p.name: Image.open(p).size for p in (tmp_path / "figures").iterdir()}
    # amortized inference and a Laplace prior: no refinement figure and no chains to draw. Images
    # are 28 px with 2 px padding, upscaled x2, after a margin of row labels; cross.png has a block
    # per source (given + 2 generated rows), the blocks 2 x 8 px apart.
    assert set(figures) == {"joint.png", "cross.png"}
    assert figures["joint.png"][1] == 2 * (2 * 30 + 2) and figures["cross.png"][1] == 2 * 2 * (3 * 30 + 2) + 16
    assert all(width > 2 * (3 * 30 + 2) for width, _ in figures.values())  # the grid and its labels


def test_cross_generation_draws_targets_private_latents_from_the_prior(mmvaeplus_run):
    """Given modalities keep their encoded w_m; a target's w comes from p(w) = Laplace(0, 1)."""
    run = load_run(mmvaeplus_run)
    model = run.model
    d, W = model.latent_dim, model.private_dim
    for encoder in model.encoders:  # push every encoded w far from the prior's
        encoder.net[-1].bias.data[d:d + W] += 6.0
    latents, decoded = [], {}
    conditional_latents, decode = model.conditional_latents, model.decode

    def record_latents(*args, **kwargs):
        latents.append(conditional_latents(*args, **kwargs))
        return latents[-1]

    def record_decode(m, z, w=None):
        decoded[m] = w
        return decode(m, z, w)

    model.conditional_latents, model.decode = record_latents, record_decode
    ctx = EvalContext(model, run.train_set, run.test_set, None)
    torch.manual_seed(0)
    batch = run.test_set.batch(torch.arange(16).repeat(100)).to("cpu")  # (1600,) rows
    for given, target in [(0, 1), (1, 0)]:
        ctx.generate_targets(batch, (given,), [target])
        _, w = latents[-1]  # (B, M, W)
        assert torch.equal(decoded[target], w[:, target])  # the target is decoded with its own w
        # Laplace(0, 1): mean 0 and E|w| = 1 (standard errors 0.035 and 0.025).
        assert w[:, target].mean(0).abs().max() < 0.2
        assert (w[:, target].abs().mean(0) - 1).abs().max() < 0.12
        _, private = model.encode(batch.x, batch.mask)
        loc, scale = private.loc[:, given], private.scale[:, given]
        assert loc.mean() > 4  # the shifted encoder
        standard = (w[:, given] - loc) / scale  # Laplace(0, 1) if w_given ~ q(w | x_given)
        assert standard.mean(0).abs().max() < 0.2 and (standard.abs().mean(0) - 1).abs().max() < 0.12


# -- EpochBatches ---------------------------------------------------------------------------------------
def indexed_dataset(n: int) -> MultimodalDataset:
    """Tuples whose label is their index."""
    return MultimodalDataset([ModalitySpec("m0", (1,))], [torch.zeros(n, 1, dtype=torch.uint8)], torch.arange(n))


@pytest.mark.parametrize("world", [1, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_epoch_batches_shard_the_epoch_order(world, drop_last):
    data, bs = indexed_dataset(53), 4
    shards = [EpochBatches(data, bs, seed=7, epoch=2, drop_last=drop_last, rank=r, world=world) for r in range(world)]
    order = shards[0].order()
    assert sorted(order.tolist()) == list(range(53)) and not torch.equal(order, torch.arange(53))
    full = 53 // bs if drop_last else 14  # 13 full batches and a last one of 1
    per_rank = full // world
    assert all(len(s) == per_rank for s in shards)
    seen = []
    for rank, shard in enumerate(shards):
        batches = [b.label for b in shard]
        assert len(batches) == per_rank
        for i, labels in enumerate(batches):  # rank r takes batches r, r + world, r + 2 world, ...
            j = i * world + rank
            assert torch.equal(labels, order[j * bs:(j + 1) * bs])
        seen += [x for b in batches for x in b.tolist()]
    assert len(seen) == len(set(seen))  # the ranks' index sets are disjoint
    assert sorted(seen) == sorted(order[:min(per_rank * world * bs, 53)].tolist())  # a prefix of the order


def test_epoch_batches_resume_and_reshuffle():
    data = indexed_dataset(40)
    batches = EpochBatches(data, 4, seed=3, epoch=1, rank=1, world=2)
    everything = [b.label for b in batches]
    resumed = [b.label for b in batches.iterate(3)]
    assert len(everything) == 5 and len(resumed) == 2
    assert all(torch.equal(a, b) for a, b in zip(resumed, everything[3:]))
    assert list(batches.iterate(5)) == []
    again = EpochBatches(data, 4, seed=3, epoch=1, rank=1, world=2).order()
    assert torch.equal(again, batches.order())  # the order depends on (seed, epoch) only
    assert not torch.equal(EpochBatches(data, 4, seed=3, epoch=2).order(), batches.order())
    assert torch.equal(EpochBatches(data, 4, seed=3, epoch=1, shuffle=False).order(), torch.arange(40))


# -- the default dataset -------------------------------------------------------------------------------
def test_default_dataset_test_digits_are_never_trained_on(tmp_path, monkeypatch):
    from mmgen_builtin.datasets import default

    real_digits, real_compose = default.sklearn_digits, default.compose

    def tagged_digits():  # write each digit's index into its (empty) top-left corner
        digits, labels = real_digits()
        digits = digits.copy()
        assert not digits[:, 0, :2].any()
        n = np.arange(len(digits))
        digits[:, 0, 0], digits[:, 0, 1] = n // 256, n % 256
        return digits, labels

    used = []

    def compose(digits, labels, *args, **kwargs):
        used.append(digits[:, 0, 0].astype(int) * 256 + digits[:, 0, 1])
        return real_compose(digits, labels, *args, **kwargs)

    monkeypatch.setattr(default, "sklearn_digits", tagged_digits)
    monkeypatch.setattr(default, "compose", compose)
    default.build(default.DefaultDataConfig(modalities=2, train_size=30, test_size=10), tmp_path / "data")
    train_idx, test_idx = (set(u.tolist()) for u in used)
    n = len(real_digits()[1])
    assert len(used[0]) == len(train_idx) and len(used[1]) == len(test_idx)  # each digit once per split
    assert len(test_idx) == n // 5 and not train_idx & test_idx
    assert train_idx | test_idx == set(range(n))
