"""The importance-weighted bound (IWAE, Burda et al. 2016) for mixture posteriors, in the two forms
of MMVAE (Shi et al. 2019).

With K samples from each stratum c of q(z | x) = sum_c pi_c q_c and w = p(x, z) / q(z | x):

- tight (MMVAE's ``m_iwae``): the strata share one log,
  log sum_c pi_c (1/K) sum_k w_ck -- a stratified importance-sampling estimate of p(x);
- looser (``m_iwae_looser``, ``looser: true``): the average over strata sits outside the log,
  sum_c pi_c log (1/K) sum_k w_ck. MMVAE+ (Palumbo et al. 2023) trains with this form.

One objective with a ``looser`` switch (not a second registry name): the forms share sampling and
differ in one reduction, so choosing one is a config change. With K = 1 the looser form equals the
ELBO exactly; so does the tight form when there is a single stratum (PoE, or ``stratified: false``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .elbo import Elbo, ElboConfig


@dataclass
class IwaeConfig(ElboConfig):
    """K > 1 makes the bound differ from the ELBO; ``looser`` averages strata outside the log."""

    k: int = 10
    looser: bool = False


def log_stratum_weight(weight: Tensor) -> Tensor:
    """log pi_c ``(S, B)``; -inf for unused strata, so they drop out of every logsumexp."""
    return torch.where(weight > 0, weight.clamp_min(1e-38).log(), torch.full_like(weight, -math.inf))


class Iwae(Elbo):
    """Importance-weighted bound with K samples per stratum (tight or looser, see the module)."""

    def __init__(self, cfg: IwaeConfig):
        super().__init__(cfg)
        self.looser = cfg.looser

    def bound(self, log_w: Tensor, weight: Tensor) -> Tensor:
        k = log_w.size(0)
        if self.looser:
            per_stratum = torch.logsumexp(log_w, 0) - math.log(k)  # (S, B)
            return (weight * per_stratum).sum(0)
        joint = log_w + log_stratum_weight(weight)  # (K, S, B)
        return torch.logsumexp(joint.flatten(0, 1), 0) - math.log(k)
