"""Cross and joint coherence: do generated samples show the right digit? (SPEC section 3)

Coherence is the protocol of MMVAE (Shi et al. 2019), MoPoE-VAE (Sutter et al. 2021) and MMVAE+
(Palumbo et al. 2023): a pretrained per-modality digit classifier judges generated samples.
Both plain accuracy and class-balanced accuracy (mean per-class recall, what MultiVae reports)
are given for cross coherence.
"""

from __future__ import annotations

from typing import Any

import torch

from mmgen.evaluation import EvalContext, Metric, MetricSkipped, coherence_pairs, nanmean


class CrossCoherence(Metric):
    """Accuracy of x_t generated from x_S, for every proper subset S and target t not in S.

    Reports the M x M one-to-one matrix (row: the given modality, column: the target; the
    diagonal is null), its mean, and the mean over all (S, t) with |S| = k for k = 1..M-1.
    """

    name = "cross_coherence"
    headlines = (("mean_1to1", "cross coherence 1→1"),)
    outputs = ("mean_1to1", "mean_1to1_balanced", "mean_by_size", "mean_by_size_balanced", "matrix_1to1",
               "matrix_1to1_balanced", "pairs", "n_test")

    @classmethod
    def output_shapes(cls, num_modalities: int) -> dict[str, tuple[int, ...]]:
        m = num_modalities
        pairs = m * (2 ** (m - 1) - 1)  # len(coherence_pairs(m)): each target, each non-empty subset of the others
        return {"mean_by_size": (m - 1,), "mean_by_size_balanced": (m - 1,), "matrix_1to1": (m, m),
                "matrix_1to1_balanced": (m, m), "pairs": (pairs,)}

    def __init__(self, cfg: None = None):
        self.cfg = cfg

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        M = ctx.num_modalities
        if M < 2:
            raise MetricSkipped("cross coherence needs at least two modalities")
        cross = ctx.cross()
        K = ctx.require_classifiers().num_classes
        matrix: list[list[float | None]] = [[None] * M for _ in range(M)]
        matrix_bal: list[list[float | None]] = [[None] * M for _ in range(M)]
        by_size: dict[int, list[float]] = {k: [] for k in range(1, M)}
        by_size_bal: dict[int, list[float]] = {k: [] for k in range(1, M)}
        pairs = []
        for s, t in coherence_pairs(M):
            acc, bal = cross.accuracy(s, t, K)
            if len(s) == 1:
                matrix[s[0]][t], matrix_bal[s[0]][t] = acc, bal
            by_size[len(s)].append(acc)
            by_size_bal[len(s)].append(bal)
            pairs.append({"given": [ctx.names[m] for m in s], "target": ctx.names[t],
                          "accuracy": acc, "balanced_accuracy": bal})
        return {
            "mean_1to1": nanmean(by_size[1]),
            "mean_1to1_balanced": nanmean(by_size_bal[1]),
            "mean_by_size": [nanmean(by_size[k]) for k in range(1, M)],
            "mean_by_size_balanced": [nanmean(by_size_bal[k]) for k in range(1, M)],
            "matrix_1to1": matrix,
            "matrix_1to1_balanced": matrix_bal,
            "pairs": pairs,
            "n_test": int((cross.labels >= 0).sum()),
        }


class JointCoherence(Metric):
    """Fraction of N unconditional samples on which all M classifiers predict the same digit.

    ``agreed_class_counts`` shows which digits the coherent samples show: a model that always
    draws the same digit is perfectly coherent, and this histogram is where that becomes visible.
    """

    name = "joint_coherence"
    headlines = (("coherence", "joint coherence"),)
    outputs = ("coherence", "n", "agreed_class_counts")

    def __init__(self, cfg: None = None):
        self.cfg = cfg

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        joint = ctx.joint()
        preds = joint.preds  # (N, M)
        agree = (preds == preds[:, :1]).all(1)  # (N,)
        counts = torch.bincount(preds[agree, 0], minlength=ctx.require_classifiers().num_classes)
        return {"coherence": float(agree.double().mean()), "n": int(preds.size(0)),
                "agreed_class_counts": counts.tolist()}
