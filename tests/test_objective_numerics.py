"""The objectives' numbers, recomputed by hand on a linear model: IWAE's tight and looser bounds and
DReG's weights over several strata, MVAE's scaling when rows are dropped, the ELBO's KL and
reconstruction statistics against closed forms, the fixed-family priors, and mixture sampling.

Every expected value is written here with ``torch.distributions`` and explicit formulas, never by
calling the reduction under test, so a wrong reduction, scaling or weight cannot pass by agreeing
with itself.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Laplace, Normal

from mmgen.data import Batch, ModalitySpec
from mmgen.latent import Posterior
from mmgen.model import MultimodalModel
from mmgen_builtin.objectives.elbo import sample_terms

from .helpers import LinearEncoder, build

FAMILY = {"gaussian": Normal, "laplace": Laplace}
SIGMA = 0.8  # likelihood scale
N = 3  # size of each modality


def linear_model(plugins, aggregator: str, objective: dict, family: str = "gaussian", prior: dict | None = None,
                 modalities: int = 3, d: int = 2) -> MultimodalModel:
    """Linear encoders and decoders around a ``d``-dim latent, Gaussian likelihood with scale SIGMA."""
    torch.manual_seed(0)
    return MultimodalModel(
        [ModalitySpec(f"m{m}", (N,)) for m in range(modalities)],
        [LinearEncoder(N, d) for _ in range(modalities)], [nn.Linear(d, N) for _ in range(modalities)],
        aggregator=build(plugins, "aggregator", modalities, name=aggregator),
        prior=build(plugins, "prior", d, **(prior or {"name": "gaussian"})),
        inference=build(plugins, "inference", name="amortized"),
        objective=build(plugins, "objective", **objective),
        latent_dim=d, posterior_family=family, scale_param="exp", likelihood_family="gaussian", likelihood_scale=SIGMA,
    )


def make_batch(mask: torch.Tensor, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(mask.size(0), N, generator=g) * 2 for _ in range(mask.size(1))]
    return Batch(x, mask, torch.zeros(mask.size(0), dtype=torch.long))


def experts(model, x):
    """Each expert's ``(B, M, D)`` loc and scale, as ``scale_param="exp"`` defines them."""
    loc = torch.stack([enc.loc(x_m) for enc, x_m in zip(model.encoders, x)], 1)
    scale = torch.exp(0.5 * torch.stack([enc.raw(x_m) for enc, x_m in zip(model.encoders, x)], 1)) + 1e-6
    return loc, scale


def prior_scale(model) -> torch.Tensor:
    return model.prior.log_scale.detach().exp()


def hand_log_weights(model, x, mask, z):
    """log p(x_S | z) + log p(z) - log q_MoE(z | x_S) for z ``(K, S, B, D)``; returns ``(K, S, B)``.

    The MoE density is the uniform mixture of the observed experts.
    """
    loc, scale = experts(model, x)
    per = FAMILY[model.posterior_family](loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)  # (K, S, B, M)
    log_q = torch.logsumexp(per.masked_fill(~mask, -math.inf), -1) - mask.sum(-1).log()
    log_p = Normal(0.0, prior_scale(model)).log_prob(z).sum(-1)
    rec = sum(mask[:, m] * Normal(dec(z), SIGMA).log_prob(x_m).sum(-1)
              for m, (dec, x_m) in enumerate(zip(model.decoders, x)))
    return rec + log_p - log_q


def hand_bounds(log_w, weight, k):
    """Per row: the tight bound log sum_c pi_c (1/K) sum_k w_ck and the looser
    sum_c pi_c log (1/K) sum_k w_ck, over the used strata only. ``log_w`` ``(K, S, B)``."""
    tight, looser = [], []
    for b in range(log_w.size(2)):
        used = torch.nonzero(weight[:, b] > 0).flatten().tolist()
        per_stratum = [torch.logsumexp(log_w[:, c, b], 0) - math.log(k) for c in used]
        tight.append(torch.logsumexp(torch.stack([weight[c, b].log() + v for c, v in zip(used, per_stratum)]), 0))
        looser.append(sum(weight[c, b] * v for c, v in zip(used, per_stratum)))
    return torch.stack(tight), torch.stack(looser)


#: Rows observing all three modalities or two of them: 3, 2, 2 and 3 used strata (MoE weights 1/3 or 1/2).
MOE_MASK = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)


# -- IWAE: tight against looser over several strata -------------------------------------------------
@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_iwae_tight_and_looser_bounds_match_the_hand_computed_values(plugins, family):
    k = 4
    batch = make_batch(MOE_MASK)
    model = linear_model(plugins, "moe", {"name": "iwae", "k": k}, family)
    torch.manual_seed(0)
    terms = sample_terms(model, batch.x, batch.mask, k, True)
    z, weight = terms.strata.z.detach(), terms.strata.weight  # (K, S, B, D), (S, B)
    assert z.shape == (k, 3, 4, 2)
    torch.testing.assert_close(weight, torch.tensor([[1 / 3, 0.5, 0.0, 1 / 3], [1 / 3, 0.0, 0.5, 1 / 3],
                                                     [1 / 3, 0.5, 0.5, 1 / 3]]))
    with torch.no_grad():
        log_w = hand_log_weights(model, batch.x, batch.mask, z)
    used = weight > 0
    torch.testing.assert_close(terms.log_weights(1.0).detach()[:, used], log_w[:, used])
    tight, looser = hand_bounds(log_w, weight, k)

    # Jensen, strictly: every row here has at least two strata with different estimates.
    assert (tight - looser > 0.5).all(), (tight, looser)
    for name in ("iwae", "dreg"):  # DReG reports IWAE's value; only its gradients differ
        for is_looser, expected in ((False, tight), (True, looser)):
            model.objective = build(plugins, "objective", name=name, k=k, looser=is_looser)
            torch.manual_seed(0)
            result = model.objective(model, batch)
            torch.testing.assert_close(-result.loss.detach(), expected.mean())
            torch.testing.assert_close(result.stats["bound"], expected.mean())
            torch.testing.assert_close(model.objective.bound(log_w, weight), expected)


def test_iwae_tight_equals_looser_with_one_stratum(plugins):
    """A row observing one modality has one stratum: the two forms agree on it exactly."""
    k = 5
    batch = make_batch(torch.tensor([[1, 0, 0], [0, 0, 1]], dtype=torch.bool))
    model = linear_model(plugins, "moe", {"name": "iwae", "k": k})
    torch.manual_seed(0)
    terms = sample_terms(model, batch.x, batch.mask, k, True)
    with torch.no_grad():
        log_w = hand_log_weights(model, batch.x, batch.mask, terms.strata.z)
    tight, looser = hand_bounds(log_w, terms.strata.weight, k)
    torch.testing.assert_close(tight, looser)
    for is_looser in (False, True):
        model.objective = build(plugins, "objective", name="iwae", k=k, looser=is_looser)
        torch.manual_seed(0)
        torch.testing.assert_close(-model.objective(model, batch).loss.detach(), tight.mean())


# -- DReG over several strata -----------------------------------------------------------------------
def grads(params) -> list[torch.Tensor]:
    """Copies of the parameters' gradients, before the next backward pass accumulates into them."""
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize("looser", [False, True])
def test_dreg_gradients_over_several_strata(plugins, looser):
    """Decoders get IWAE's gradient sum_k w~_k d log w_k; encoders get DReG's
    sum_k w~_k^2 d log w_k / dz_k dz_k / dphi (times pi_c in the looser form), with w~ normalised
    over all strata, stratum weights included (tight) or within each stratum (looser)."""
    k = 3
    batch = make_batch(MOE_MASK)
    model = linear_model(plugins, "moe", {"name": "iwae", "k": k, "looser": looser})
    torch.manual_seed(0)
    model.objective(model, batch).loss.backward()
    iwae_decoder = grads(model.decoders.parameters())
    model.zero_grad()
    model.objective = build(plugins, "objective", name="dreg", k=k, looser=looser)
    torch.manual_seed(0)
    model.objective(model, batch).loss.backward()
    dreg_decoder, dreg_encoder = grads(model.decoders.parameters()), grads(model.encoders.parameters())
    model.zero_grad()
    for got, want in zip(dreg_decoder, iwae_decoder):
        torch.testing.assert_close(got, want)

    torch.manual_seed(0)
    terms = sample_terms(model, batch.x, batch.mask, k, True, stop_q_grad=True)
    z, weight = terms.strata.z, terms.strata.weight
    log_w = terms.log_weights(1.0)  # (K, S, B); encoder parameters reach it through z only
    log_pi = torch.where(weight > 0, weight.log(), torch.tensor(-math.inf))
    if looser:
        wt = log_w.detach().softmax(0)
        coef = weight * wt**2
    else:
        wt = (log_w.detach() + log_pi).flatten(0, 1).softmax(0).view_as(log_w)
        coef = wt**2
    assert (wt[:, weight > 0] > 0.01).sum() > 6  # not a degenerate one-sample weighting
    g_z = torch.autograd.grad(log_w.sum(), z, retain_graph=True)[0]  # each log w_k depends on its own z_k
    surrogate = -(coef.unsqueeze(-1) * g_z.detach() * z).sum() / batch.mask.size(0)
    want = torch.autograd.grad(surrogate, list(model.encoders.parameters()))
    for got, expected in zip(dreg_encoder, want):
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(model.objective.normalized_weights(log_w, weight), wt)


# -- MVAE: dropped rows are scaled by the full batch -----------------------------------------------
def test_mvae_term_sums_kept_rows_and_divides_by_the_batch_size(plugins):
    """Each term is the per-row ELBO summed over the rows that observe one of its modalities,
    divided by the full batch size B (a row without any contributes 0, not a larger share)."""
    mask = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    batch = make_batch(mask)
    model = linear_model(plugins, "poe", {"name": "mvae", "k": 2, "unimodal": True, "random_subsets": 0})
    torch.manual_seed(0)
    result = model.objective(model, batch)

    elbo = build(plugins, "objective", name="elbo", k=2)
    b = mask.size(0)
    torch.manual_seed(0)  # each term draws (K, rows, 1, D) samples in the same order as MVAE's
    total, kept = 0.0, []
    for sub in (None, [0], [1], [2]):
        term_mask = mask.clone()
        if sub is not None:
            term_mask[:, [m for m in range(3) if m not in sub]] = False
        rows = term_mask.any(-1)
        kept.append(int(rows.sum()))
        sub_batch = Batch([x_m[rows] for x_m in batch.x], term_mask[rows], batch.label[rows])
        per_row_sum = -elbo(model, sub_batch).loss.detach() * rows.sum()  # Elbo averages over its rows
        total = total + per_row_sum / b
    assert kept == [4, 2, 2, 4]  # two terms drop half the batch
    torch.testing.assert_close(result.stats["mvae_objective"], total)
    torch.testing.assert_close(-result.loss.detach(), total)


# -- The ELBO's KL and reconstruction statistics against closed forms ------------------------------
def poe_posterior(model, x, mask):
    """Closed-form product of the observed Gaussian experts and the N(0, I) prior expert."""
    loc, scale = experts(model, x)
    precision = 1.0 + (mask.unsqueeze(-1) / scale**2).sum(1)  # (B, D)
    mean = (mask.unsqueeze(-1) * loc / scale**2).sum(1) / precision
    return mean, precision.rsqrt()


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_elbo_kl_and_reconstruction_statistics_match_closed_forms(plugins, beta):
    """PoE with a Gaussian prior N(0, 1.5^2): the ``kl`` statistic is a Monte Carlo estimate of
    KL(q || p), the ``rec`` one of E_q log p(x_S | z) = log N(x; W mu + b, sigma^2) - tr(W S W^T) / 2 sigma^2,
    both within 4 standard errors; the bound is rec - beta * kl."""
    k = 20_000
    mask = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    batch = make_batch(mask)
    model = linear_model(plugins, "poe", {"name": "elbo", "k": k, "beta": beta},
                         prior={"name": "gaussian", "scale": 1.5}, modalities=2)
    torch.manual_seed(0)
    result = model.objective(model, batch)
    torch.manual_seed(0)
    terms = sample_terms(model, batch.x, batch.mask, k, True)  # the same samples, for the errors
    kl_samples = -terms.log_ratio.detach()[:, 0].mean(-1)  # (K,) batch means
    rec_samples = terms.rec.detach()[:, 0].mean(-1)

    with torch.no_grad():
        mean, std = poe_posterior(model, batch.x, mask)
        kl = torch.distributions.kl_divergence(Normal(mean, std), Normal(0.0, 1.5)).sum(-1)  # (B,)
        rec = 0.0
        for m, (dec, x_m) in enumerate(zip(model.decoders, batch.x)):
            spread = (dec.weight**2 @ std.T**2).T.sum(-1)  # tr(W diag(s^2) W^T), (B,)
            rec = rec + mask[:, m] * (Normal(dec(mean), SIGMA).log_prob(x_m).sum(-1) - spread / (2 * SIGMA**2))
    for stat, closed, samples in (("kl", kl.mean(), kl_samples), ("rec", rec.mean(), rec_samples)):
        se = samples.std() / math.sqrt(k)
        assert (result.stats[stat] - closed).abs() < 4 * se, (stat, result.stats[stat], closed, se)
    assert kl.mean() > 0.5  # far from the prior, so a dropped or mis-signed KL cannot pass
    torch.testing.assert_close(-result.loss.detach(), result.stats["rec"] - beta * result.stats["kl"])


# -- Fixed-family priors ----------------------------------------------------------------------------
@pytest.mark.parametrize("family,std_per_scale", [("gaussian", 1.0), ("laplace", math.sqrt(2.0))])
def test_prior_samples_and_log_prob_match_the_scale(plugins, family, std_per_scale):
    scale, n = 1.7, 100_000
    prior = build(plugins, "prior", 3, name=family, scale=scale)
    torch.manual_seed(0)
    z = prior.sample(n)
    assert z.shape == (n, 3)
    want_std = scale * std_per_scale
    assert (z.mean(0).abs() < 4 * want_std / math.sqrt(n)).all(), z.mean(0)
    torch.testing.assert_close(z.std(0), torch.full((3,), want_std), rtol=0.015, atol=0)
    x = torch.randn(2, 5, 3) * 3
    torch.testing.assert_close(prior.log_prob(x), FAMILY[family](0.0, scale).log_prob(x).sum(-1))


@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_learned_prior_scale_gets_the_elbo_gradient_and_a_frozen_one_none(plugins, family):
    """d/d log s of E_q log p(z) is E[z^2/s^2 - 1] (Gaussian) or E[|z|/s - 1] (Laplace) per dim."""
    k, scale = 8, 1.3
    batch = make_batch(MOE_MASK)
    model = linear_model(plugins, "moe", {"name": "elbo", "k": k},
                         prior={"name": family, "scale": scale, "learn_scale": True})
    torch.manual_seed(0)
    model.objective(model, batch).loss.backward()
    torch.manual_seed(0)
    terms = sample_terms(model, batch.x, batch.mask, k, True)
    z, weight = terms.strata.z.detach(), terms.strata.weight  # (K, S, B, D), (S, B)
    score = z**2 / scale**2 - 1 if family == "gaussian" else z.abs() / scale - 1
    want = -(weight.unsqueeze(-1) * score.mean(0)).sum(0).mean(0)  # loss = -bound
    assert model.prior.log_scale.grad is not None
    torch.testing.assert_close(model.prior.log_scale.grad, want)
    assert want.abs().min() > 1e-2

    # frozen: the ELBO's prior term reaches z but not the prior's own parameters.
    model.prior.log_scale.grad = None
    z = torch.randn(5, 2, requires_grad=True)
    model.prior.log_prob(z, frozen=True).sum().backward()
    assert z.grad is not None and model.prior.log_scale.grad is None

    fixed = linear_model(plugins, "moe", {"name": "elbo", "k": k}, prior={"name": family, "scale": scale})
    assert not fixed.prior.log_scale.requires_grad
    fixed.objective(fixed, batch).loss.backward()
    assert fixed.prior.log_scale.grad is None


# -- Mixture sampling ---------------------------------------------------------------------------------
def mixture(weight: torch.Tensor, copies: int) -> Posterior:
    """Component c sits at 10 c with scale 0.1, so a sample names its component."""
    b, c = weight.size(0) * copies, weight.size(1)
    loc = (10.0 * torch.arange(c, dtype=torch.float)).view(1, c, 1).expand(b, c, 2)
    return Posterior(loc, torch.full((b, c, 2), 0.1), weight.repeat_interleave(copies, 0),
                     torch.eye(c, dtype=torch.bool).expand(b, c, c), "gaussian")


def component_of(z: torch.Tensor) -> torch.Tensor:
    return (z[..., 0] / 10).round().long()


WEIGHTS = torch.tensor([[0.2, 0.3, 0.5], [0.7, 0.0, 0.3]])


def test_mixture_sampling_chooses_components_in_proportion_to_their_weights():
    copies = 4000
    post = mixture(WEIGHTS, copies)
    torch.manual_seed(0)
    choice = component_of(post.sample(1)[0]).view(2, copies)
    for row, pi in zip(choice, WEIGHTS):
        counts = torch.bincount(row, minlength=3).float()
        assert counts[pi == 0].sum() == 0
        expected = pi[pi > 0] * copies
        chi2 = ((counts[pi > 0] - expected) ** 2 / expected).sum()
        assert chi2 < 20, (counts, expected)  # df <= 2: p < 5e-5 under the right weights

    # Unstratified strata: each row's K samples share one component, and the cover names it.
    torch.manual_seed(1)
    strata = post.rsample_strata(3, stratified=False)
    assert strata.z.shape == (3, 1, 2 * copies, 2)
    chosen = component_of(strata.z[:, 0])  # (K, B)
    assert (chosen == chosen[0]).all()
    torch.testing.assert_close(strata.weight, torch.ones(1, 2 * copies))
    assert torch.equal(strata.cover[0], torch.nn.functional.one_hot(chosen[0], 3).bool())


def test_posterior_sample_draws_k_independent_mixture_samples():
    post = mixture(torch.tensor([[0.5, 0.5, 0.0]]), 1)
    torch.manual_seed(0)
    chosen = component_of(post.sample(400)[:, 0])  # (K,)
    counts = torch.bincount(chosen, minlength=3)
    assert counts[0] > 150 and counts[1] > 150, counts
