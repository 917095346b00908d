"""Mixture of experts (MMVAE, Shi et al. 2019): q(z | x_S) = 1/|S| sum_{m in S} q_m(z | x_m)."""

from __future__ import annotations

from torch import Tensor

from mmgen.latent import Aggregator


class MoE(Aggregator):
    """One mixture component per modality; each component is that modality's expert unchanged."""

    def __init__(self, cfg: None, num_modalities: int):
        super().__init__(num_modalities)

    def subsets(self, num_modalities: int) -> list[tuple[int, ...]]:
        return [(m,) for m in range(num_modalities)]

    def combine(self, loc: Tensor, scale: Tensor, experts: Tensor) -> tuple[Tensor, Tensor]:
        # Component c is expert c: no product, so any family (Laplace included) works.
        return loc, scale
