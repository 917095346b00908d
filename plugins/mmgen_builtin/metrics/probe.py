"""Latent linear probe: how linearly decodable is the digit from the shared latent?

As in MoPoE-VAE (Sutter et al. 2021) and MMVAE+ (Palumbo et al. 2023): encode the training set,
fit a linear (logistic-regression) classifier of the label on the posterior mean of the shared
latent z, report its accuracy on the encoded test set. One probe uses every modality (the joint
posterior); with ``per_modality`` one more probe per modality uses that modality alone.
Private latents (MMVAE+'s w_m) are left out: the probe measures the *shared* space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmgen.data import MultimodalDataset
from mmgen.evaluation import EvalContext, Metric, MetricSkipped, accuracy


@dataclass
class ProbeConfig:
    """Training tuples for the probe (a random subset when the split is larger), regularisation."""

    max_train: int = 10_000
    per_modality: bool = True
    c: float = 1.0  # inverse L2 strength of the logistic regression
    max_iter: int = 1000


class LatentProbe(Metric):
    """Test accuracy of a logistic-regression probe on the posterior mean of z (amortized encoder)."""

    name = "probe"
    requires_classifiers = False

    def __init__(self, cfg: ProbeConfig | None = None):
        self.cfg = cfg or ProbeConfig()

    def _latents(self, ctx: EvalContext, dataset: MultimodalDataset, index: Tensor, subset: tuple[int, ...] | None,
                 task) -> Tensor:
        """Posterior means ``(N, D)`` of ``dataset[index]`` given ``subset`` (None: every modality)."""
        out = []
        for start in range(0, len(index), ctx.batch_size):
            batch = dataset.batch(index[start:start + ctx.batch_size]).to(ctx.device)
            mask = batch.mask.clone()
            x = batch.x
            if subset is not None:
                keep = torch.zeros_like(mask)
                keep[:, list(subset)] = True
                mask &= keep
                x = [x_m if m in subset else torch.zeros_like(x_m) for m, x_m in enumerate(x)]
            posterior, _ = ctx.model.encode(x, mask)
            out.append(posterior.mean().float().cpu())
            task.advance(len(index[start:start + ctx.batch_size]))
        return torch.cat(out)

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        train_idx = torch.nonzero(ctx.train_set.labels >= 0).squeeze(1)
        if self.cfg.max_train and len(train_idx) > self.cfg.max_train:
            pick = torch.randperm(len(train_idx), generator=ctx.generator)[: self.cfg.max_train]
            train_idx = train_idx[pick.sort().values]
        test_idx = torch.nonzero(ctx.test_set.labels[: ctx.test_size] >= 0).squeeze(1)
        y_train, y_test = ctx.train_set.labels[train_idx], ctx.test_set.labels[test_idx]
        if len(torch.unique(y_train)) < 2 or len(test_idx) == 0:
            raise MetricSkipped("the latent probe needs labelled training tuples of at least two classes and a labelled test set")
        num_classes = int(max(y_train.max(), y_test.max())) + 1
        M = ctx.num_modalities
        subsets: list[tuple[int, ...] | None] = [None]
        if self.cfg.per_modality and M > 1:
            subsets += [(m,) for m in range(M)]
        task = ctx.task("latent probe", len(subsets) * (len(train_idx) + len(test_idx)))
        results = []
        for subset in subsets:
            z_train = self._latents(ctx, ctx.train_set, train_idx, subset, task)
            z_test = self._latents(ctx, ctx.test_set, test_idx, subset, task)
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=self.cfg.c, max_iter=self.cfg.max_iter))
            probe.fit(z_train.numpy(), y_train.numpy())
            pred = torch.from_numpy(probe.predict(z_test.numpy())).long()
            results.append(accuracy(pred, y_test, num_classes))
        out: dict[str, Any] = {"accuracy": results[0][0], "balanced_accuracy": results[0][1]}
        if len(results) > 1:
            out["per_modality"] = [r[0] for r in results[1:]]
            out["per_modality_balanced"] = [r[1] for r in results[1:]]
        out.update({"n_train": len(train_idx), "n_test": len(test_idx)})
        return out
