"""Latent linear probe: how linearly decodable is the digit from the shared latent?

As in MoPoE-VAE (Sutter et al. 2021) and MMVAE+ (Palumbo et al. 2023): encode the training set,
fit a linear (multinomial logistic-regression) classifier of the label on the posterior mean of the shared
latent z, report its accuracy on the encoded test set. One probe uses every modality (the joint
posterior); with ``per_modality`` one more probe per modality uses that modality alone.
Private latents (MMVAE+'s w_m) are left out: the probe measures the *shared* space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from mmgen.config import check_nonnegative, check_positive
from mmgen.data import MultimodalDataset
from mmgen.evaluation import EvalContext, Metric, MetricSkipped, accuracy, memoized_encoders


@dataclass
class ProbeConfig:
    """Training tuples for the probe (a random subset when the split is larger), regularisation."""

    max_train: int = 10_000
    per_modality: bool = True
    c: float = 1.0  # inverse L2 strength, as scikit-learn's C
    max_iter: int = 200  # L-BFGS iterations

    def __post_init__(self):
        check_nonnegative(self, "max_train")  # 0 = every labelled training tuple
        check_positive(self, "c", "max_iter")


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, c: float = 1.0, max_iter: int = 1000):
    """Multinomial logistic regression on standardised inputs, L2 penalty ``|W|^2 / (2 C)``.

    The objective of scikit-learn's ``LogisticRegression(C=c)`` (sum of losses + |W|^2 / (2C)),
    minimised by full-batch L-BFGS in float64. Written in torch because scikit-learn's OpenMP
    loss kernels slowed to a crawl (minutes for 5,000 x 16) on a loaded 2-core machine.
    Returns ``predict(x) -> (N,)`` labels.
    """
    x = x.double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-8)
    xs = (x - mu) / sd  # (N, D)
    weight = torch.zeros(x.size(1), num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-6,
                            tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        # The mean loss with the penalty divided by N: the same minimiser, better-scaled steps.
        loss = F.cross_entropy(xs @ weight + bias, y) + weight.pow(2).sum() / (2 * c * len(y))
        loss.backward()
        return loss

    with torch.enable_grad():  # evaluation runs under no_grad
        opt.step(closure)
    weight, bias = weight.detach(), bias.detach()
    return lambda z: (((z.double() - mu) / sd) @ weight + bias).argmax(-1)


class LatentProbe(Metric):
    """Test accuracy of a logistic-regression probe on the posterior mean of z (amortized encoder)."""

    name = "probe"
    headlines = (("accuracy", "latent probe"),)
    outputs = ("accuracy", "balanced_accuracy", "per_modality", "per_modality_balanced", "n_train", "n_test")
    requires_classifiers = False

    @classmethod
    def output_shapes(cls, num_modalities: int) -> dict[str, tuple[int, ...]]:
        return {"per_modality": (num_modalities,), "per_modality_balanced": (num_modalities,)}

    def __init__(self, cfg: ProbeConfig | None = None):
        self.cfg = cfg or ProbeConfig()

    def _latents(self, ctx: EvalContext, dataset: MultimodalDataset, index: Tensor,
                 subsets: list[tuple[int, ...]], task) -> list[Tensor]:
        """Posterior means ``(N, D)`` of ``dataset[index]`` given each subset of modalities."""
        out: list[list[Tensor]] = [[] for _ in subsets]
        with memoized_encoders(ctx.model):  # each batch is encoded once, not once per subset
            for start in range(0, len(index), ctx.batch_size):
                batch = dataset.batch(index[start:start + ctx.batch_size]).to(ctx.device)
                blanks = [torch.zeros_like(x) for x in batch.x]
                for i, subset in enumerate(subsets):
                    hidden = ctx.hide(batch, subset, blanks)
                    posterior, _ = ctx.model.encode(hidden.x, hidden.mask)
                    out[i].append(posterior.mean().float().cpu())
                task.advance(len(batch) * len(subsets))
        return [torch.cat(o) for o in out]

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
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
        subsets = [tuple(range(M))]
        if self.cfg.per_modality and M > 1:
            subsets += [(m,) for m in range(M)]
        task = ctx.task("latent probe", len(subsets) * (len(train_idx) + len(test_idx)))
        z_train = self._latents(ctx, ctx.train_set, train_idx, subsets, task)
        z_test = self._latents(ctx, ctx.test_set, test_idx, subsets, task)
        results = []
        for zi_train, zi_test in zip(z_train, z_test):
            predict = fit_logistic(zi_train, y_train, num_classes, self.cfg.c, self.cfg.max_iter)
            results.append(accuracy(predict(zi_test), y_test, num_classes))
        out: dict[str, Any] = {"accuracy": results[0][0], "balanced_accuracy": results[0][1]}
        if len(results) > 1:
            out["per_modality"] = [r[0] for r in results[1:]]
            out["per_modality_balanced"] = [r[1] for r in results[1:]]
        out.update({"n_train": len(train_idx), "n_test": len(test_idx)})
        return out
