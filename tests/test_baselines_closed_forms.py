"""The baselines' latent-space numerics against closed forms: PoE of Gaussians, the MoE mixture
density, MoPoE's subsets and weights under missing modalities, and KL against Monte Carlo."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmgen import distributions as dist
from mmgen.config import component_config
from mmgen.latent import nonempty_subsets


def aggregator(plugins, name, num_modalities, **options):
    """An aggregator built through the registry, as the model builds it."""
    reg = plugins.registry
    return reg.get("aggregator", name).factory(component_config(reg, "aggregator", {"name": name, **options}), num_modalities)


def experts(b=4, m=3, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(b, m, d, generator=g) * 2
    scale = torch.rand(b, m, d, generator=g) + 0.3
    return loc, scale


# -- product of experts ----------------------------------------------------------------------------
@pytest.mark.parametrize("prior_expert", [True, False])
def test_poe_of_gaussians_is_the_analytic_product(plugins, prior_expert):
    loc, scale = experts()
    mask = torch.ones(4, 3, dtype=torch.bool)
    post = aggregator(plugins, "poe", 3, prior_expert=prior_expert)(loc, scale, mask, "gaussian")
    precision = scale.pow(-2).sum(1) + (1.0 if prior_expert else 0.0)
    mean = (loc * scale.pow(-2)).sum(1) / precision
    torch.testing.assert_close(post.loc[:, 0], mean)
    torch.testing.assert_close(post.scale[:, 0], precision.rsqrt())
    # And independently of the formula: the product density differs from the normalised posterior
    # only by a constant in z.
    z = torch.randn(50, 4, 2) * 3
    log_product = dist.log_prob("gaussian", z.unsqueeze(-2), loc, scale).sum((-1, -2))
    if prior_expert:
        log_product = log_product + dist.log_prob("gaussian", z, torch.zeros(()), torch.ones(())).sum(-1)
    gap = post.log_prob(z) - log_product  # (50, 4)
    torch.testing.assert_close(gap, gap[:1].expand_as(gap), atol=1e-4, rtol=1e-5)


def test_poe_single_expert_without_prior_expert_is_the_identity(plugins):
    loc, scale = experts()
    mask = torch.tensor([[True, False, False]] * 4)
    post = aggregator(plugins, "poe", 3, prior_expert=False)(loc, scale, mask, "gaussian")
    torch.testing.assert_close(post.loc[:, 0], loc[:, 0])
    torch.testing.assert_close(post.scale[:, 0], scale[:, 0])


def test_poe_ignores_missing_experts_even_when_they_are_not_finite(plugins):
    loc, scale = experts()
    mask = torch.tensor([[True, True, False]] * 4)
    loc_bad, scale_bad = loc.clone(), scale.clone()
    loc_bad[:, 2], scale_bad[:, 2] = float("nan"), 0.0
    agg = aggregator(plugins, "poe", 3)
    good, bad = agg(loc, scale, mask, "gaussian"), agg(loc_bad, scale_bad, mask, "gaussian")
    torch.testing.assert_close(bad.loc, good.loc)
    torch.testing.assert_close(bad.scale, good.scale)


# -- mixture of experts ----------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_moe_log_density_is_log_mean_exp_of_the_observed_experts(plugins, family):
    loc, scale = experts()
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.bool)
    post = aggregator(plugins, "moe", 3)(loc, scale, mask, family)
    z = torch.randn(7, 4, 2)
    cls = {"gaussian": torch.distributions.Normal, "laplace": torch.distributions.Laplace}[family]
    per = cls(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)  # (7, 4, 3)
    expected = torch.stack([
        torch.logsumexp(per[:, b, mask[b]], -1) - math.log(int(mask[b].sum())) for b in range(4)
    ], -1)
    torch.testing.assert_close(post.log_prob(z), expected)


# -- mixture of products of experts ------------------------------------------------------------------
def test_mopoe_with_one_modality_is_that_expert(plugins):
    loc, scale = experts()
    z = torch.randn(5, 4, 2)
    expert = dist.log_prob("gaussian", z, loc[:, 1], scale[:, 1]).sum(-1)
    observed_one = torch.tensor([[False, True, False]] * 4)
    post = aggregator(plugins, "mopoe", 3)(loc, scale, observed_one, "gaussian")
    torch.testing.assert_close(post.log_prob(z), expert)
    single = aggregator(plugins, "mopoe", 1)(loc[:, 1:2], scale[:, 1:2], torch.ones(4, 1, dtype=torch.bool), "gaussian")
    torch.testing.assert_close(single.log_prob(z), expert)


@pytest.mark.parametrize("num_modalities", [2, 3, 5])
def test_subset_enumeration(num_modalities):
    subsets = nonempty_subsets(num_modalities)
    assert len(subsets) == 2**num_modalities - 1
    assert len(set(subsets)) == len(subsets)
    assert [len(s) for s in subsets] == sorted(len(s) for s in subsets)


def _observed_sets(num_modalities):
    """Every non-empty set of observed modalities."""
    return [set(s) for s in nonempty_subsets(num_modalities)]


@pytest.mark.parametrize("num_modalities", [2, 3, 5])
@pytest.mark.parametrize("name", ["poe", "moe", "mopoe"])
def test_weights_with_missing_modalities(plugins, name, num_modalities):
    observed = _observed_sets(num_modalities)
    mask = torch.zeros(len(observed), num_modalities, dtype=torch.bool)
    for b, obs in enumerate(observed):
        mask[b, list(obs)] = True
    loc, scale = experts(len(observed), num_modalities)
    post = aggregator(plugins, name, num_modalities)(loc, scale, mask, "gaussian")
    torch.testing.assert_close(post.weight.sum(-1), torch.ones(len(observed)))
    for b, obs in enumerate(observed):
        used = post.weight[b] > 0
        components = {frozenset(torch.nonzero(post.experts[b, c]).flatten().tolist()) for c in torch.nonzero(used).flatten().tolist()}
        expected = {
            "poe": {frozenset(obs)},
            "moe": {frozenset([m]) for m in obs},
            "mopoe": {frozenset(s) for r in range(1, len(obs) + 1) for s in itertools.combinations(sorted(obs), r)},
        }[name]
        assert components == expected
        assert int(used.sum()) == len(expected)  # each distinct subset once
        torch.testing.assert_close(post.weight[b, used], torch.full((len(expected),), 1 / len(expected)))


# -- KL ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_kl_matches_monte_carlo(family):
    g = torch.Generator().manual_seed(0)
    loc_q, scale_q = torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5
    loc_p, scale_p = torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5
    torch.manual_seed(0)
    z = dist.rsample(family, loc_q, scale_q, 200_000)  # (N, 3)
    log_ratio = dist.log_prob(family, z, loc_q, scale_q) - dist.log_prob(family, z, loc_p, scale_p)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(z.size(0))
    closed = dist.kl(family, loc_q, scale_q, loc_p, scale_p)
    assert torch.all((mc - closed).abs() < 4 * se + 1e-4), (mc, closed, se)


# -- likelihood --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_summed_likelihood_with_a_fixed_scale_matches_torch_distributions(family):
    """The factored per-sample sum equals torch.distributions' elementwise log-density, summed,
    and so does its gradient (checked in float64 by finite differences)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64)
    loc = torch.rand(2, 4, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    want = dist.make(family, loc, torch.tensor(0.75, dtype=torch.float64)).log_prob(x).sum((-3, -2, -1))
    got = dist.log_prob_sum(family, x, loc, 0.75, 3)
    assert got.shape == (2, 4)
    torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lambda l: dist.log_prob_sum(family, x, l, 0.75, 3), (loc,))
    with pytest.raises(Exception, match="unknown distribution family 'cauchy'"):
        dist.log_prob_sum("cauchy", x, loc, 0.75, 3)
