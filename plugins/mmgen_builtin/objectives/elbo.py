"""The evidence lower bound for multimodal VAEs, with stratified sampling over mixture components.

For a mixture posterior q(z | x) = sum_c pi_c q_c(z | x) the MMVAE estimator (Shi et al. 2019)
draws K samples from every component (stratum) and weights the per-component bounds by pi_c:

    L = sum_c pi_c E_{z ~ q_c} [ sum_m log p(x_m | z[, w_m]) + beta (log p(z) - log q(z | x)) ]

log q is the mixture's density. With an energy-based prior log p(z) = f(z) - |z|^2/2 up to the
constant log Z, and such a prior is frozen here (it learns from its own loss); a prior with a
learnable scale (``learn_scale``) learns through this bound, as in MMVAE.

:func:`sample_terms` is the one encode-sample-decode pass every estimator in this package shares
(ELBO, IWAE, DReG, MVAE's sub-sampled ELBO); they differ only in how they reduce its log-weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mmgen.config import check_nonnegative, check_positive
from mmgen.latent import Objective, ObjectiveResult, Posterior, PrivatePosterior, Strata


@dataclass
class Terms:
    """The per-sample terms of a bound: ``log w = rec + beta * log_ratio``."""

    rec: Tensor  # (K, S, B): sum over observed modalities of log p(x_m | z[, w_m])
    log_ratio: Tensor  # (K, S, B): log p(z) - log q(z | x) [+ the private latents' terms]
    strata: Strata
    posterior: Posterior
    private: PrivatePosterior | None
    w: Tensor | None  # (K, S, B, M, W) private latents, or None

    def log_weights(self, beta: float) -> Tensor:
        """``(K, S, B)`` log importance weights (beta-weighted, as in MMVAE+)."""
        return self.rec + beta * self.log_ratio


def sample_terms(model, x: list[Tensor], mask: Tensor, k: int, stratified: bool,
                 stop_q_grad: bool = False, modalities: list[int] | None = None) -> Terms:
    """Encode the observed modalities ``mask`` ``(B, M)``, draw ``k`` samples per stratum, decode.

    ``stop_q_grad`` evaluates log q with the variational parameters detached, so the encoder
    learns only through the samples' path (DReG, Tucker et al. 2019). ``modalities``, when the
    caller knows that ``mask`` observes no others, limits decoding to them.
    """
    posterior, private = model.encode(x, mask)
    strata = posterior.rsample_strata(k, stratified)
    z = strata.z  # (K, S, B, D)
    w = model.sample_private(private, strata.cover, k) if private is not None else None
    rec = (model.log_likelihood(x, z, w, modalities) * mask).sum(-1)  # (K, S, B)
    q, q_private = posterior, private
    if stop_q_grad:
        q = Posterior(posterior.loc.detach(), posterior.scale.detach(), posterior.weight, posterior.experts,
                      posterior.family)
        if private is not None:
            q_private = PrivatePosterior(private.loc.detach(), private.scale.detach(), private.family)
    # An energy-based prior learns from its own loss; a fixed-family prior learns through the bound.
    log_ratio = model.prior.elbo_log_prob(z) - q.log_prob(z)
    if private is not None:
        log_ratio = log_ratio + model.private_log_ratio(q_private, w, strata.cover)
    return Terms(rec, log_ratio, strata, posterior, private, w)


def summary_stats(terms: Terms, value: Tensor) -> dict[str, Tensor]:
    """Detached statistics every estimator logs: its bound, and the ELBO's two parts."""
    weight = terms.strata.weight  # (S, B)
    return {
        "bound": value.detach(),
        "rec": (weight * terms.rec.mean(0)).sum(0).mean().detach(),
        "kl": -(weight * terms.log_ratio.mean(0)).sum(0).mean().detach(),
    }


@dataclass
class ElboConfig:
    """beta weights the prior/posterior terms; k samples per component; stratified over components
    (False: one component per datapoint, drawn by weight, as MoPoE-VAE samples)."""

    beta: float = 1.0
    k: int = 1
    stratified: bool = True

    def __post_init__(self):
        check_nonnegative(self, "beta")  # a negative weight would reward a posterior far from the prior
        check_positive(self, "k")


class Elbo(Objective):
    """beta-ELBO, averaged over K samples and over strata by their mixture weights."""

    def __init__(self, cfg: ElboConfig):
        super().__init__()
        self.beta, self.k, self.stratified = cfg.beta, cfg.k, cfg.stratified

    def bound(self, log_w: Tensor, weight: Tensor) -> Tensor:
        """Reduce ``(K, S, B)`` log-weights with stratum weights ``(S, B)`` to ``(B,)``."""
        return (weight * log_w.mean(0)).sum(0)

    def forward(self, model, batch) -> ObjectiveResult:
        terms = sample_terms(model, batch.x, batch.mask, self.k, self.stratified)
        value = self.bound(terms.log_weights(self.beta), terms.strata.weight).mean()
        return ObjectiveResult(-value, terms.posterior, terms.private, summary_stats(terms, value))
