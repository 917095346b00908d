"""MVAE's sub-sampled training objective (Wu & Goodman 2018).

A product-of-experts posterior trained only on the full set of modalities never learns to infer
from fewer of them, so MVAE sums ELBO terms over several sets of observed modalities:

    L = ELBO(x_1..M) + sum_m ELBO(x_m) + sum_{j=1..k} ELBO(x_{S_j}),  S_j random subsets,

where ELBO(x_S) = E_{q(z | x_S)} [sum_{m in S} log p(x_m | z)] - beta KL(q(z | x_S) || p(z)).
A subset is just a narrower mask handed to the aggregator (missing modalities are a mask), so the
objective works with any aggregator; each term is the stratified ELBO of :mod:`.elbo`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmgen.config import check_nonnegative
from mmgen.latent import ObjectiveResult

from .elbo import Elbo, ElboConfig, Terms, sample_terms, summary_stats


@dataclass
class MvaeConfig(ElboConfig):
    """``unimodal``: add each single modality's ELBO; ``random_subsets``: add k ELBOs on random
    subsets of size 2..M-1 (MVAE's sub-sampling for many modalities), drawn per batch."""

    unimodal: bool = True
    random_subsets: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_nonnegative(self, "random_subsets")


class Mvae(Elbo):
    """Sum of the joint ELBO, the unimodal ELBOs and k random-subset ELBOs."""

    def __init__(self, cfg: MvaeConfig):
        super().__init__(cfg)
        self.unimodal, self.random_subsets = cfg.unimodal, cfg.random_subsets

    def subsets(self, num_modalities: int) -> list[list[int] | None]:
        """The modalities of each term (drawn on the host); None stands for the batch's own mask."""
        subsets: list[list[int] | None] = [None]
        if self.unimodal and num_modalities > 1:
            subsets += [[m] for m in range(num_modalities)]
        if num_modalities > 2:
            for _ in range(self.random_subsets):
                size = int(torch.randint(2, num_modalities, ()))
                subsets.append(sorted(torch.randperm(num_modalities)[:size].tolist()))
        return subsets

    def term(self, model, x: list[Tensor], mask: Tensor, modalities: list[int] | None,
             host_rows: Tensor | None = None) -> tuple[Tensor, Terms | None]:
        """One ELBO term summed over the batch rows that observe at least one of its modalities,
        divided by the batch size (rows without any contribute zero, never a NaN). Only the term's
        ``modalities`` are decoded (the others' likelihoods would be masked out anyway).
        ``host_rows``, the rows that observe one, known on the host, saves a device sync."""
        rows = mask.any(-1)
        known = host_rows if host_rows is not None else rows
        if not bool(known.any()):
            return x[0].new_zeros(()), None
        if not bool(known.all()):
            x, mask = [x_m[rows] for x_m in x], mask[rows]
        terms = sample_terms(model, x, mask, self.k, self.stratified, modalities=modalities)
        per_row = self.bound(terms.log_weights(self.beta), terms.strata.weight)  # (B',)
        return per_row.sum() / rows.numel(), terms

    def forward(self, model, batch) -> ObjectiveResult:
        total, joint = None, None
        num_modalities = batch.mask.size(1)
        host = batch.host_mask
        for sub in self.subsets(num_modalities):
            mask, host_rows = batch.mask, None if host is None else host.any(-1)
            if sub is not None:
                keep = torch.zeros(num_modalities, dtype=torch.bool)
                keep[sub] = True
                mask = mask & keep.to(mask.device, non_blocking=True)
                host_rows = None if host is None else host[:, sub].any(-1)
            value, terms = self.term(model, batch.x, mask, sub, host_rows)
            total = value if total is None else total + value
            if joint is None:
                joint = (value, terms)
        stats = summary_stats(joint[1], joint[0])  # the joint term, comparable with other objectives
        stats["mvae_objective"] = total.detach()
        return ObjectiveResult(-total, joint[1].posterior, joint[1].private, stats)
