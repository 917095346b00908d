"""Product of experts (MVAE, Wu & Goodman 2018): q(z | x_S) ∝ p(z) prod_{m in S} q_m(z | x_m)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmgen.latent import Aggregator


@dataclass
class PoEConfig:
    """Whether the N(0, I) prior expert joins the product (MVAE: yes)."""

    prior_expert: bool = True


def gaussian_product(loc: Tensor, scale: Tensor, experts: Tensor, prior_expert: bool) -> tuple[Tensor, Tensor]:
    """Product of the Gaussian experts selected by ``experts`` ``(B, C, M)``.

    Precisions add and the mean is precision-weighted: for experts (mu_m, s_m),
    1/s^2 = sum 1/s_m^2 (+ 1 for the prior expert), mu = s^2 * sum mu_m / s_m^2.
    """
    use = experts.unsqueeze(-1)  # (B, C, M, 1)
    # where, not a product: a missing modality's expert (any value, even NaN) must not leak in.
    precision = torch.where(use, scale.pow(-2).unsqueeze(1), torch.zeros((), dtype=scale.dtype, device=scale.device))
    weighted = torch.where(use, precision * loc.unsqueeze(1), torch.zeros((), dtype=loc.dtype, device=loc.device))
    total = precision.sum(2) + (1.0 if prior_expert else 0.0)  # (B, C, D)
    total = total.clamp_min(torch.finfo(total.dtype).tiny)  # a component with no expert stays finite
    loc_out = weighted.sum(2) / total
    return loc_out, total.rsqrt()


class PoE(Aggregator):
    """A single component: the product of all observed experts (Gaussian family)."""

    families = ("gaussian",)

    def __init__(self, cfg: PoEConfig, num_modalities: int):
        self.prior_expert = cfg.prior_expert
        super().__init__(num_modalities)

    def subsets(self, num_modalities: int) -> list[tuple[int, ...]]:
        return [tuple(range(num_modalities))]

    def combine(self, loc: Tensor, scale: Tensor, experts: Tensor) -> tuple[Tensor, Tensor]:
        return gaussian_product(loc, scale, experts, self.prior_expert)
