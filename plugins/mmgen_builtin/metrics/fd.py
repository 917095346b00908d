"""Fréchet distance on mmgen's own classifier features ("FD", deliberately not "FID").

The Fréchet distance between Gaussians fitted to features of real and generated images (Heusel
et al. 2017), with the penultimate layer of the project's digit classifier as the feature map
instead of Inception-v3's pool3. The numbers are comparable between models evaluated with the
same classifiers (same dataset fingerprint), never with published FIDs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmgen.evaluation import EvalContext, Metric, coherence_pairs, moments_distance, nanmean, warn_if_few_samples


@dataclass
class FDConfig:
    """Whether to also score cross-generated samples (conditional FD)."""

    conditional: bool = True


class FrechetDistance(Metric):
    """FD per modality of unconditional samples and of cross-generated targets vs the test set.

    ``unconditional[m]``: N joint samples of modality m vs the test images of m.
    ``conditional[t]``: x_t generated from each subset S not containing t (over the test tuples),
    averaged over those subsets; ``conditional_by_size[k-1]``: averaged over all (S, t), |S| = k.
    """

    name = "fd"
    better = "lower"
    headlines = (("unconditional_mean", "FD joint"), ("conditional_mean", "FD cross"))
    outputs = ("unconditional", "unconditional_mean", "conditional", "conditional_mean", "conditional_by_size",
               "n_generated", "n_real")

    @classmethod
    def output_shapes(cls, num_modalities: int) -> dict[str, tuple[int, ...]]:
        m = num_modalities
        return {"unconditional": (m,), "conditional": (m,), "conditional_by_size": (m - 1,)}

    def __init__(self, cfg: FDConfig | None = None):
        self.cfg = cfg or FDConfig()

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        M = ctx.num_modalities
        real = ctx.real()
        joint = ctx.joint()
        unconditional = [moments_distance(joint.moments[m], real[m]) for m in range(M)]
        out: dict[str, Any] = {"unconditional": unconditional, "unconditional_mean": nanmean(unconditional)}
        if self.cfg.conditional and M >= 2:
            cross = ctx.cross()
            per_target: dict[int, list[float]] = {t: [] for t in range(M)}
            per_size: dict[int, list[float]] = {k: [] for k in range(1, M)}
            for s, t in coherence_pairs(M):
                d = moments_distance(cross.moments[(s, t)], real[t])
                per_target[t].append(d)
                per_size[len(s)].append(d)
            conditional = [nanmean(per_target[t]) for t in range(M)]
            out.update({"conditional": conditional, "conditional_mean": nanmean(conditional),
                        "conditional_by_size": [nanmean(per_size[k]) for k in range(1, M)]})
        out.update({"n_generated": ctx.n, "n_real": real[0].n})
        warn_if_few_samples("fd", [*joint.moments, *real, *(cross.moments.values() if "conditional" in out else [])])
        return out
