"""Evaluation metrics against hand-made models whose outputs are known, and numerics against scipy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from mmgen.classifiers import ClassifierSet
from mmgen.data import ModalitySpec, MultimodalDataset
from mmgen.evaluation import (
    Moments,
    build_metrics,
    coherence_pairs,
    conditioning_subsets,
    evaluate,
    frechet_distance,
    moments_distance,
)

SHAPE = (1, 2, 2)


# ----------------------------------------------------------------------------------------------
# A hand-made world: the digit is written in pixel (0, 0, 0); the "classifier" reads it back.
# ----------------------------------------------------------------------------------------------
def images(labels: torch.Tensor) -> torch.Tensor:
    """``(B, *SHAPE)`` floats whose first pixel stores the label (as uint8 / 255)."""
    x = torch.zeros(len(labels), *SHAPE)
    x[:, 0, 0, 0] = labels.float() / 255.0
    return x


def read_label(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 0, 0, 0] * 255).round().long()


class PixelReader(nn.Module):
    """A perfect classifier for this world: logits one-hot on the stored label, features = pixels."""

    def forward(self, x):
        return nn.functional.one_hot(read_label(x).clamp(0, 9), 10).float() * 10, x.flatten(1)


def reader_set(M: int) -> ClassifierSet:
    return ClassifierSet([PixelReader() for _ in range(M)], {"num_classes": 10, "fingerprint": "hand-made"})


def dataset(labels: torch.Tensor, M: int) -> MultimodalDataset:
    x = (images(labels) * 255).round().to(torch.uint8)
    return MultimodalDataset([ModalitySpec(f"m{m}", SHAPE) for m in range(M)], [x.clone() for _ in range(M)], labels)


class HandMadeModel(nn.Module):
    """perfect: copies the given digit; shuffle: a uniformly random digit; constant: always 3."""

    def __init__(self, M: int, mode: str):
        super().__init__()
        self.M, self.mode = M, mode

    @property
    def num_modalities(self):
        return self.M

    def conditional_latents(self, batch, given, refine=True):
        # The evaluation must hide the targets and the labels from the model.
        assert bool((batch.label == -1).all())
        for m in range(self.M):
            assert bool((batch.x[m][~given[:, m]] == 0).all())
        first = given.float().argmax(1)  # (B,) the first given modality
        stored = torch.stack([read_label(x) for x in batch.x], 1)  # (B, M)
        return stored.gather(1, first[:, None]).float(), None  # z (B, 1) = the given digit

    def _labels(self, z):
        if self.mode == "perfect":
            return z[:, 0].long()
        if self.mode == "shuffle":
            return torch.randint(0, 10, (z.size(0),))
        return torch.full((z.size(0),), 3)

    def decode(self, m, z, w=None):
        return images(self._labels(z))

    def generate(self, n, device="cpu"):
        z = torch.randint(0, 10, (n, 1)).float()
        return [images(self._labels(z)) for _ in range(self.M)]


def run(mode: str, labels: torch.Tensor, M: int = 3, n: int = 2000):
    data = dataset(labels, M)
    metrics = build_metrics(_registry(), ["cross_coherence", "joint_coherence"])
    return evaluate(HandMadeModel(M, mode), data, data, metrics, classifiers=reader_set(M), n=n,
                    batch_size=256, progress=False).metrics


def _registry():
    from mmgen.plugins import create_plugin_manager

    return create_plugin_manager().registry


BALANCED = torch.arange(1000) % 10
# Class 3 on a quarter of the tuples, so plain and class-balanced accuracy differ.
SKEWED = torch.where(torch.arange(1000) % 4 == 0, torch.tensor(3), torch.arange(1000) % 9 + (torch.arange(1000) % 9 >= 3).long())


def test_perfect_model_scores_one():
    out = run("perfect", BALANCED)
    cross, joint = out["cross_coherence"], out["joint_coherence"]
    assert cross["mean_1to1"] == 1.0 and cross["mean_1to1_balanced"] == 1.0
    assert cross["mean_by_size"] == [1.0, 1.0]
    assert all(v == 1.0 for row in cross["matrix_1to1"] for v in row if v is not None)
    assert [cross["matrix_1to1"][i][i] for i in range(3)] == [None, None, None]
    assert len(cross["pairs"]) == 9
    assert joint["coherence"] == 1.0


def test_shuffling_model_scores_chance():
    torch.manual_seed(0)
    out = run("shuffle", BALANCED)
    cross, joint = out["cross_coherence"], out["joint_coherence"]
    assert abs(cross["mean_1to1"] - 0.1) < 0.03
    assert all(abs(v - 0.1) < 0.03 for v in cross["mean_by_size"])
    assert abs(cross["mean_1to1_balanced"] - 0.1) < 0.03
    assert joint["coherence"] < 0.03  # three independent digits agree with probability 0.01


def test_constant_model_scores_exactly_its_class_frequency():
    assert abs(float((SKEWED == 3).float().mean()) - 0.25) < 1e-9
    out = run("constant", SKEWED)
    cross, joint = out["cross_coherence"], out["joint_coherence"]
    assert cross["mean_1to1"] == pytest.approx(0.25, abs=1e-9)  # right exactly when the digit is 3
    assert cross["mean_1to1_balanced"] == pytest.approx(0.1, abs=1e-9)  # recall 1 on class 3, 0 on nine others
    assert cross["mean_by_size"] == pytest.approx([0.25, 0.25])
    # Joint coherence cannot see a constant model: every sample agrees, all on digit 3.
    assert joint["coherence"] == 1.0
    assert joint["agreed_class_counts"][3] == 2000 and sum(joint["agreed_class_counts"]) == 2000


def test_results_do_not_depend_on_metric_order():
    data = dataset(BALANCED[:200], 2)
    reg = _registry()
    a = evaluate(HandMadeModel(2, "shuffle"), data, data, build_metrics(reg, ["cross_coherence", "joint_coherence"]),
                 classifiers=reader_set(2), n=300, progress=False, seed=3).metrics
    b = evaluate(HandMadeModel(2, "shuffle"), data, data, build_metrics(reg, ["joint_coherence", "cross_coherence"]),
                 classifiers=reader_set(2), n=300, progress=False, seed=3).metrics
    assert a == b


# ----------------------------------------------------------------------------------------------
# Subsets
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("M, n_subsets, n_pairs, per_size", [(2, 2, 2, [2]), (3, 6, 9, [6, 3]),
                                                              (5, 30, 75, [20, 30, 20, 5])])
def test_subset_enumeration(M, n_subsets, n_pairs, per_size):
    subsets = conditioning_subsets(M)
    assert len(subsets) == n_subsets == 2**M - 2
    assert len(set(subsets)) == len(subsets)
    expected = {s for r in range(1, M) for s in itertools.combinations(range(M), r)}
    assert set(subsets) == expected  # every proper non-empty subset, nothing else
    pairs = coherence_pairs(M)
    assert len(pairs) == n_pairs
    assert all(t not in s for s, t in pairs)
    assert [sum(len(s) == k for s, _ in pairs) for k in range(1, M)] == per_size
    if M == 2:
        assert pairs == [((0,), 1), ((1,), 0)]


# ----------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------
def _scipy_fd(mu1, c1, mu2, c2):
    from scipy import linalg

    root = linalg.sqrtm(c1 @ c2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(root.real))


@pytest.mark.parametrize("dim", [1, 3, 8])
def test_frechet_distance_matches_scipy(dim):
    g = np.random.default_rng(dim)
    a, b = g.normal(size=(dim, dim)), g.normal(size=(dim, dim))
    c1, c2 = a @ a.T + 0.1 * np.eye(dim), b @ b.T + 0.1 * np.eye(dim)
    mu1, mu2 = g.normal(size=dim), g.normal(size=dim)
    ours = frechet_distance(*(torch.from_numpy(v) for v in (mu1, c1, mu2, c2)))
    assert ours == pytest.approx(_scipy_fd(mu1, c1, mu2, c2), rel=1e-6, abs=1e-8)


def test_fd_of_sample_sets_and_equal_sets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 4, generator=g, dtype=torch.float64) + 5
    y = torch.randn(400, 4, generator=g, dtype=torch.float64) * 2
    mx, my = Moments(), Moments()
    for chunk in x.split(64):
        mx.update(chunk)
    my.update(y)
    assert torch.allclose(mx.mean(), x.mean(0)) and torch.allclose(mx.cov(), torch.cov(x.T))
    ref = _scipy_fd(x.mean(0).numpy(), torch.cov(x.T).numpy(), y.mean(0).numpy(), torch.cov(y.T).numpy())
    assert moments_distance(mx, my) == pytest.approx(ref, rel=1e-6)
    same = Moments()
    same.update(x)
    assert moments_distance(mx, same) == pytest.approx(0.0, abs=1e-9)


def test_fd_metric_on_hand_made_model():
    data = dataset(BALANCED[:200], 2)
    reg = _registry()
    perfect = evaluate(HandMadeModel(2, "perfect"), data, data, build_metrics(reg, ["fd"]),
                       classifiers=reader_set(2), n=1000, progress=False).metrics["fd"]
    constant = evaluate(HandMadeModel(2, "constant"), data, data, build_metrics(reg, ["fd"]),
                        classifiers=reader_set(2), n=1000, progress=False).metrics["fd"]
    # Copying the given digit reproduces the test features exactly; a constant digit cannot.
    assert perfect["conditional"] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert perfect["unconditional_mean"] < 1e-5  # uniform random digits vs a balanced test set
    assert constant["conditional_mean"] > 1e-4 and constant["unconditional_mean"] > 1e-4


# ----------------------------------------------------------------------------------------------
# FID: skipped without weights; runs with an Inception-v3 state dict (random here).
# ----------------------------------------------------------------------------------------------
def test_fid_skips_without_weights(monkeypatch):
    monkeypatch.delenv("MMGEN_INCEPTION_WEIGHTS", raising=False)
    data = dataset(BALANCED[:20], 2)
    out = evaluate(HandMadeModel(2, "perfect"), data, data, build_metrics(_registry(), ["fid"]), n=4,
                   progress=False).metrics["fid"]
    assert "skipped" in out and "--inception-weights" in out["skipped"]


def test_fid_runs_with_a_weights_file(tmp_path):
    from mmgen_builtin.metrics.fid import InceptionV3

    torch.manual_seed(0)
    state = InceptionV3(tf=True).state_dict()
    state["fc.weight"] = torch.zeros(1008, 2048)  # marks pytorch-fid's TF network
    path = tmp_path / "inception.pt"
    torch.save(state, path)
    # One modality keeps this to one 2048-d Fréchet distance (two eigendecompositions, seconds).
    data = dataset(BALANCED[:2], 1)
    metrics = build_metrics(_registry(), ["fid"], {"fid": {"weights": str(path), "max_samples": 2}})
    from mmgen.errors import MMGenWarning

    with pytest.warns(MMGenWarning, match="fid: 2 samples for 2048 features"):  # said, as for FD
        out = evaluate(HandMadeModel(1, "perfect"), data, data, metrics, n=2, progress=False).metrics["fid"]
    assert out["network"].startswith("pytorch-fid")
    assert len(out["unconditional"]) == 1 and np.isfinite(out["unconditional"][0])
    assert "conditional" not in out  # nothing to condition on with one modality


def test_memoized_encoders_change_nothing_but_speed(plugins, tiny_overrides, monkeypatch):
    import contextlib

    import mmgen.evaluation.context as ev  # where EvalContext.cross looks memoized_encoders up
    from mmgen.train import load_datasets
    from tests.helpers import tiny_model

    cfg, model, train_set = tiny_model(plugins, tiny_overrides, ["data.modalities=3"])
    _, test_set = load_datasets(cfg, plugins)
    encoders = model.encoders
    clf = reader_set(3)
    clf.nets = nn.ModuleList([_Argmax() for _ in range(3)])

    def cross():
        ctx = ev.EvalContext(model.eval(), train_set, test_set, clf, n=8, batch_size=8, seed=1)
        with torch.no_grad():
            return ctx.cross()

    fast = cross()
    assert model.encoders is encoders  # restored
    monkeypatch.setattr(ev, "memoized_encoders", lambda m: contextlib.nullcontext())
    slow = cross()
    assert fast.preds.keys() == slow.preds.keys()
    for key in fast.preds:
        assert torch.equal(fast.preds[key], slow.preds[key]), key
        assert torch.allclose(fast.moments[key].mean(), slow.moments[key].mean())


class _Argmax(nn.Module):
    """A 'classifier' whose answer depends on every pixel (any change in the images shows)."""

    def forward(self, x):
        feats = x.flatten(1)[:, :10]
        return feats, feats


def test_probe_logistic_regression_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mmgen_builtin.metrics.probe import fit_logistic

    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = torch.randn(300, 4, generator=g) + 1.5 * nn.functional.one_hot(y, 4).float()  # overlapping blobs
    ours = fit_logistic(x, y, 3, c=1.0)(x)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(x.numpy(), y.numpy())
    theirs = torch.from_numpy(ref.predict(x.numpy()))
    assert (ours == theirs).float().mean() >= 0.99
    assert 0.6 < (ours == y).float().mean() < 1.0


# ----------------------------------------------------------------------------------------------
# Metric options: range-checked when the metrics are built (before any evaluation runs)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, option, error", [
    ("nll", "k=0", "nll.k: must be > 0, got 0"),  # was torch.cat() of an empty list, after loading the run
    ("nll", "k=-1", "nll.k: must be > 0, got -1"),
    ("nll", "max_test=-1", "nll.max_test: must be >= 0, got -1"),
    ("nll", "log_z_samples=0", "nll.log_z_samples: must be > 0, got 0"),
    ("probe", "max_train=-5", "probe.max_train: must be >= 0, got -5"),  # was a negative slice, silently
    ("probe", "c=nan", "probe.c: must be a finite number > 0, got nan"),
    ("probe", "max_iter=0", "probe.max_iter: must be > 0, got 0"),
    ("fid", "max_samples=0", "fid.max_samples: must be > 0, got 0"),
    ("fid", "batch_size=-2", "fid.batch_size: must be > 0, got -2"),
])
def test_metric_option_ranges_are_one_line_errors(name, option, error):
    from mmgen.config import parse_overrides
    from mmgen.errors import MMGenError

    with pytest.raises(MMGenError) as info:
        build_metrics(_registry(), [name], parse_overrides([f"{name}.{option}"]))
    assert str(info.value) == error
    build_metrics(_registry(), ["nll", "probe"], {"nll": {"max_test": 0}, "probe": {"max_train": 0}})  # 0 = all


def test_declared_outputs_cover_what_the_metrics_report():
    # A bench file's columns are checked against Metric.outputs before anything runs; a key a
    # metric reports but does not declare would be refused there.
    data = dataset(BALANCED[:40], 3)
    reg = _registry()
    names = ["cross_coherence", "joint_coherence", "fd"]
    out = evaluate(HandMadeModel(3, "shuffle"), data, data, build_metrics(reg, names), classifiers=reader_set(3),
                   n=20, progress=False).metrics
    for name in names:
        declared = reg.get("metric", name).factory.outputs
        assert declared and set(out[name]) <= set(declared), name
    assert set(out["fd"]) == set(reg.get("metric", "fd").factory.outputs)  # conditional FD on


def _shape(value) -> tuple[int, ...]:
    """The lengths of a (nested) list per level, down to its first non-list entry."""
    return (len(value), *_shape(value[0])) if isinstance(value, list) and value else ()


@pytest.mark.parametrize("M", [2, 3])
def test_declared_output_shapes_match_what_the_metrics_report(M):
    # A bench column's index into a list output (cross_coherence/mean_by_size/1) is checked
    # against Metric.output_shapes before anything runs; a wrong declaration would refuse a valid one.
    data = dataset(BALANCED[:40], M)
    reg = _registry()
    names = ["cross_coherence", "fd"]  # probe's: tests/test_metric_numerics.py (it needs an encoder)
    out = evaluate(HandMadeModel(M, "shuffle"), data, data, build_metrics(reg, names), classifiers=reader_set(M),
                   n=20, progress=False).metrics
    for name in names:
        shapes = reg.get("metric", name).factory.output_shapes(M)
        assert shapes and set(shapes) <= set(reg.get("metric", name).factory.outputs), name
        lists = {k for k, v in out[name].items() if isinstance(v, list)}
        assert set(shapes) == lists, name  # every list output is declared, and nothing else
        for key, shape in shapes.items():
            assert _shape(out[name][key])[:len(shape)] == shape, (name, key)


def test_a_frechet_distance_over_fewer_samples_than_features_warns():
    """Below as many samples as features the covariances are singular and FD is biased upward:
    numbers then compare only at the same sample counts, which a table pasted into a paper hides."""
    import warnings

    from mmgen.errors import MMGenWarning
    from mmgen.evaluation import warn_if_few_samples

    def moments(n: int) -> Moments:
        m = Moments()
        m.update(torch.randn(n, 8))
        return m

    with pytest.warns(MMGenWarning, match=r"fd: 5 samples for 8 features: the covariances are singular"):
        warn_if_few_samples("fd", [moments(50), moments(5)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_few_samples("fd", [moments(50), moments(9)])
        warn_if_few_samples("fd", [Moments()])  # nothing accumulated: nothing to say
