"""The evidence lower bound for multimodal VAEs, with stratified sampling over mixture components.

For a mixture posterior q(z | x) = sum_c pi_c q_c(z | x) the MMVAE estimator (Shi et al. 2019)
draws K samples from every component and weights the per-component bounds by pi_c:

    L = sum_c pi_c E_{z ~ q_c} [ sum_m log p(x_m | z[, w_m]) + beta (log p(z) - log q(z | x)) ]

log q is the mixture's density. With an energy-based prior log p(z) = f(z) - |z|^2/2 up to the
constant log Z, and the prior is frozen here (it learns from its own loss). IWAE (Burda et al.
2016) replaces the mean over K by log-mean-exp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmgen.latent import Objective, ObjectiveResult


@dataclass
class ElboConfig:
    """beta weights the prior/posterior terms; k samples per component; stratified over components."""

    beta: float = 1.0
    k: int = 1
    stratified: bool = True


class Elbo(Objective):
    """beta-ELBO, averaged over K samples."""

    def __init__(self, cfg: ElboConfig):
        super().__init__()
        self.beta, self.k, self.stratified = cfg.beta, cfg.k, cfg.stratified

    def log_weights(self, model, batch):
        """Per-sample log importance weights ``(K, S, B)``, the strata, and the posteriors."""
        posterior, private = model.encode(batch.x, batch.mask)
        strata = posterior.rsample_strata(self.k, self.stratified)
        z = strata.z  # (K, S, B, D)
        w = model.sample_private(private, strata.cover, self.k) if private is not None else None
        rec = (model.log_likelihood(batch.x, z, w) * batch.mask).sum(-1)  # (K, S, B)
        log_ratio = model.prior.log_prob(z, frozen=True) - posterior.log_prob(z)
        if private is not None:
            log_ratio = log_ratio + model.private_log_ratio(private, w, strata.cover)
        return rec, log_ratio, strata, posterior, private

    def reduce(self, log_w: torch.Tensor) -> torch.Tensor:
        """Reduce over the K samples: mean (ELBO)."""
        return log_w.mean(0)

    def forward(self, model, batch) -> ObjectiveResult:
        rec, log_ratio, strata, posterior, private = self.log_weights(model, batch)
        bound = self.reduce(rec + self.beta * log_ratio)  # (S, B)
        value = (strata.weight * bound).sum(0).mean()
        stats = {
            "bound": value.detach(),
            "rec": (strata.weight * rec.mean(0)).sum(0).mean().detach(),
            "kl": -(strata.weight * log_ratio.mean(0)).sum(0).mean().detach(),
        }
        return ObjectiveResult(-value, posterior, private, stats)


@dataclass
class IwaeConfig(ElboConfig):
    """IWAE needs K > 1 to differ from the ELBO."""

    k: int = 10


class Iwae(Elbo):
    """Importance-weighted bound: log (1/K) sum_k w_k per component."""

    def reduce(self, log_w: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(log_w, 0) - math.log(log_w.size(0))
