"""Mixture of products of experts (MoPoE-VAE, Sutter et al. 2021): a uniform mixture over the
PoE of every non-empty subset of the observed modalities."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mmgen.latent import Aggregator, nonempty_subsets

from .poe import gaussian_product


@dataclass
class MoPoEConfig:
    """Whether each subset's product includes the N(0, I) prior expert."""

    prior_expert: bool = False


class MoPoE(Aggregator):
    """2^M - 1 components, one product of experts per non-empty subset."""

    families = ("gaussian",)

    def __init__(self, cfg: MoPoEConfig, num_modalities: int):
        self.prior_expert = cfg.prior_expert
        super().__init__(num_modalities)

    def subsets(self, num_modalities: int) -> list[tuple[int, ...]]:
        return nonempty_subsets(num_modalities)

    def combine(self, loc: Tensor, scale: Tensor, experts: Tensor) -> tuple[Tensor, Tensor]:
        return gaussian_product(loc, scale, experts, self.prior_expert)
