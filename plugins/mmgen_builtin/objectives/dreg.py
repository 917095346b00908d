"""Doubly reparameterised gradients for the IWAE bound (DReG, Tucker et al. 2019), applied per
stratum as in MMVAE (Shi et al. 2019, ``m_dreg`` / ``m_dreg_looser``).

The IWAE gradient for the encoder has a score-function part, E[sum_k w~_k d/dphi log q_phi(z_k)],
whose variance grows with K. DReG rewrites it through the samples' path: evaluate log q with the
variational parameters detached, and scale the gradient that reaches each sample z_k by its
normalised importance weight w~_k once more, so the encoder receives sum_k w~_k^2 d log w_k / dz_k
dz_k / dphi. Decoder and prior parameters keep the plain IWAE gradient sum_k w~_k d log w_k.

The value reported as the loss is the IWAE bound itself; only the gradients differ.

For a single-component posterior (PoE, or ``stratified: false`` with MoE) the estimator is exactly
unbiased for the IWAE gradient. For a stratified mixture it is MMVAE's estimator: log q is the
mixture density while each sample comes from its own component, and the DReG identity holds per
component, so it is an approximation there (as in MMVAE and MMVAE+).
"""

from __future__ import annotations

from torch import Tensor

from mmgen.latent import ObjectiveResult

from .elbo import sample_terms, summary_stats
from .iwae import Iwae, log_stratum_weight


class Dreg(Iwae):
    """IWAE bound with DReG encoder gradients (tight or looser, like :class:`Iwae`)."""

    def normalized_weights(self, log_w: Tensor, weight: Tensor) -> Tensor:
        """w~ ``(K, S, B)``: over the K samples of each stratum (looser) or over all of them,
        stratum weights included (tight). Detached."""
        log_w = log_w.detach()
        if self.looser:
            return log_w.softmax(0)
        joint = log_w + log_stratum_weight(weight)  # (K, S, B)
        return joint.flatten(0, 1).softmax(0).view_as(joint)

    def forward(self, model, batch) -> ObjectiveResult:
        terms = sample_terms(model, batch.x, batch.mask, self.k, self.stratified, stop_q_grad=True)
        weight = terms.strata.weight  # (S, B)
        log_w = terms.log_weights(self.beta)  # (K, S, B)
        wt = self.normalized_weights(log_w, weight)

        # The second w~ factor: only on the encoder's samples. Private latents of modalities a
        # stratum does not cover come from the auxiliary prior r(w), whose density is not in
        # log w, so their gradient is the plain reparameterised one.
        z = terms.strata.z  # (K, S, B, D)
        if z.requires_grad:
            z.register_hook(lambda g: g * wt.unsqueeze(-1).to(g.dtype))
        if terms.w is not None and terms.w.requires_grad:
            own = terms.strata.cover.unsqueeze(0).unsqueeze(-1)  # (1, S, B, M, 1)
            factor = wt[..., None, None].where(own, wt.new_ones(()))  # (K, S, B, M, 1)
            terms.w.register_hook(lambda g: g * factor.to(g.dtype))

        if self.looser:
            surrogate = (weight * (wt * log_w).sum(0)).sum(0)  # (B,)
        else:
            surrogate = (wt * log_w).sum((0, 1))
        value = self.bound(log_w.detach(), weight).mean()
        surrogate = surrogate.mean()
        loss = -(value + surrogate - surrogate.detach())  # IWAE's value, DReG's gradient
        return ObjectiveResult(loss, terms.posterior, terms.private, summary_stats(terms, value))
