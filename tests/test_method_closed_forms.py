"""Closed forms the other numerics tests leave open, each computed here independently of the code
under test (no call to the reduction, kernel or density being checked):

- the prior Langevin chain with sigma0 != 1, against the exact moments of unadjusted Langevin on a
  Gaussian target (both the hand-derived fast path and autograd): the other chain tests compare
  the fast path with ``prior.unnormalized`` at sigma0 = 1 only, where a wrong Gaussian coefficient
  (-1 instead of -1/sigma0^2) or a wrong start (N(0, I) instead of N(0, sigma0^2 I)) cannot show;
- MMVAE+'s log importance weights with private latents: beta on the whole log-ratio, p(w) and
  q(w_m | x_m) only for the modality a stratum covers, the auxiliary prior r_m(w) for the others;
- the encoders' scale maps (log-variance, MMVAE's softmax, softplus);
- SPEC section 1.2's split of one training step's gradients: the energy gets exactly
  grad [mean f(z-) - mean f(z+)], the decoders the objective plus the generator MLE term on z+,
  the encoders the objective alone.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Laplace

from mmgen import distributions as dist
from mmgen.data import ModalitySpec
from mmgen.model import MultimodalModel
from mmgen_builtin.objectives.elbo import sample_terms

from .helpers import LinearEncoder, build, float_batch, tiny_model


# -- prior Langevin with sigma0 != 1 -------------------------------------------------------------
def _linear_energy(prior, depth: int) -> torch.Tensor:
    """Make f_alpha affine in z (f = c . z + const) and return c.

    depth 0: the output layer is the energy. depth >= 1 (LeakyReLU): large positive biases keep
    every pre-activation positive for the z a chain visits (first layer: |W z| << 50; later ones:
    positive weights on positive inputs), where LeakyReLU is the identity, so
    the MLP (and the fused move it drives) computes an affine map.
    """
    torch.manual_seed(1)
    last = len(prior.energy._linears) - 1
    with torch.no_grad():
        for i, lin in enumerate(prior.energy._linears):
            lin.weight.normal_(0.0, 0.3)
            if 0 < i < last:  # inputs positive, weights positive: pre-activations stay positive
                lin.weight.abs_()
            lin.bias.fill_(50.0 if i < last else 0.0)
        c = torch.eye(prior.dim)
        for lin in prior.energy._linears:
            c = c @ lin.weight.T
    return c.squeeze(-1)  # (D,)


@pytest.mark.parametrize("fast_grad", [True, False])
@pytest.mark.parametrize("depth", [0, 2])
def test_prior_chain_moments_follow_the_exact_langevin_recursion_with_sigma0(plugins, fast_grad, depth):
    """Target exp(c . z) N(0, sigma0^2 I) = N(sigma0^2 c, sigma0^2 I). One step of
    z <- z + (s^2/2) (c - z / sigma0^2) + s eps is linear: with a = 1 - s^2 / (2 sigma0^2),
    from z0 ~ N(0, sigma0^2 I) the K-th state is Gaussian with
        mean = sigma0^2 c (1 - a^K),   var = a^(2K) sigma0^2 + s^2 (1 - a^(2K)) / (1 - a^2)."""
    sigma0, s, k, n, d = 1.7, 0.4, 15, 20_000, 3  # few steps: the start still shows (a^(2K) = 0.43)
    prior = build(plugins, "prior", d, name="ebm", hidden=8, depth=depth, activation="leaky_relu", sigma0=sigma0,
                  steps=k, step_size=s, fast_grad=fast_grad, cuda_graph=False)
    c = _linear_energy(prior, depth)
    if fast_grad and depth:
        assert prior.kernel().move_fn is not None  # the fused transition is what runs
    torch.manual_seed(0)
    z = prior.sample(n).double()
    a = 1.0 - s**2 / (2 * sigma0**2)
    mean = sigma0**2 * c.double() * (1 - a**k)
    var = a ** (2 * k) * sigma0**2 + s**2 * (1 - a ** (2 * k)) / (1 - a**2)
    mean_z = (z.mean(0) - mean) / math.sqrt(var / n)
    var_z = (z.var(0) - var) / (var * math.sqrt(2 / (n - 1)))
    assert mean_z.abs().max() < 4.5, (z.mean(0), mean)
    assert var_z.abs().max() < 4.5, (z.var(0), var)
    assert c.abs().max() > 0.05  # the energy's drift is not negligible


# -- MMVAE+'s log weights --------------------------------------------------------------------------
def test_mmvaeplus_log_weights_match_the_hand_computed_bound(plugins):
    """log w for stratum s (MoE over the observed modalities, 4 samples each), beta = 2.5:
    sum_m log Laplace(x_m; dec_m(z, w_m), 0.8)
      + beta [log p(z) - log (1/|S|) sum_{m in S} q_m(z) + log p(w_s) - log q(w_s | x_s)],
    p = Laplace(0, 1); w_m for m != s comes from r_m = Laplace(0, softmax(theta_m) W)."""
    torch.manual_seed(0)
    M, N, D, W, sig, beta, k = 3, 3, 2, 2, 0.8, 2.5, 4
    model = MultimodalModel(
        [ModalitySpec(f"m{m}", (N,)) for m in range(M)],
        [LinearEncoder(N, D + W) for _ in range(M)], [nn.Linear(D + W, N) for _ in range(M)],
        aggregator=build(plugins, "aggregator", M, name="moe"), prior=build(plugins, "prior", D, name="laplace"),
        inference=build(plugins, "inference", name="amortized"),
        objective=build(plugins, "objective", name="iwae", k=k, looser=True, beta=beta),
        latent_dim=D, private_dim=W, posterior_family="laplace", scale_param="softmax",
        likelihood_family="laplace", likelihood_scale=sig)
    with torch.no_grad():
        model.aux_log_scale.normal_()
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    x = [torch.randn(3, N, generator=g) for _ in range(M)]
    torch.manual_seed(0)
    terms = sample_terms(model, x, mask, k, True)
    z, w = terms.strata.z.detach(), terms.w.detach()  # (K, S, B, D), (K, S, B, M, W)

    with torch.no_grad():
        loc = torch.stack([e.loc(x_m) for e, x_m in zip(model.encoders, x)], 1)  # (B, M, D + W)
        raw = torch.stack([e.raw(x_m) for e, x_m in zip(model.encoders, x)], 1)
        scale_z = torch.softmax(raw[..., :D], -1) * D + 1e-6
        scale_w = torch.softmax(raw[..., D:], -1) * W + 1e-6
        per = Laplace(loc[..., :D], scale_z).log_prob(z.unsqueeze(-2)).sum(-1)  # (K, S, B, M)
        log_q = torch.logsumexp(per.masked_fill(~mask, -math.inf), -1) - mask.sum(-1).log()
        ratio = Laplace(0.0, 1.0).log_prob(z).sum(-1) - log_q
        rec = 0.0
        for m in range(M):
            mu = model.decoders[m](torch.cat([z, w[..., m, :]], -1))
            rec = rec + mask[:, m] * Laplace(mu, sig).log_prob(x[m]).sum(-1)
        for s in range(M):  # MoE: stratum s covers modality s alone
            w_s = w[:, s, :, s]  # (K, B, W)
            ratio[:, s] += (Laplace(0.0, 1.0).log_prob(w_s) - Laplace(loc[:, s, D:], scale_w[:, s]).log_prob(w_s)).sum(-1)
        want = rec + beta * ratio
    used = terms.strata.weight > 0
    torch.testing.assert_close(terms.log_weights(beta).detach()[:, used], want[:, used], rtol=1e-5, atol=1e-4)

    # The uncovered modalities' w: Laplace(0, softmax(theta_m) W), std sqrt(2) times the scale.
    r_scale = torch.softmax(model.aux_log_scale.detach(), -1) * W
    torch.testing.assert_close(model.aux_scale().detach(), r_scale, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    aux = sample_terms(model, x, mask, 20_000, True).w.detach()[:, 0, 0, 1]  # stratum 0, row 0, modality 1
    rel = (aux.std(0) / (math.sqrt(2) * r_scale[1]) - 1).abs()
    assert rel.max() < 0.04, (aux.std(0), math.sqrt(2) * r_scale[1])  # Laplace: se of the std ~ 0.9%


# -- scale maps -----------------------------------------------------------------------------------
def test_scale_maps_are_their_closed_forms():
    raw = torch.tensor([[-3.0, 0.0, 0.5, 4.0]])
    eta = 1e-6
    # exp: raw is a log-variance (MVAE, MoPoE-VAE): the scale is the standard deviation
    torch.testing.assert_close(dist.scale_from_raw(raw, "exp"), (raw.exp()) ** 0.5 + eta)
    # softmax: MMVAE's softmax(raw) * D + eta, scales of mean 1
    e = raw.exp()
    torch.testing.assert_close(dist.scale_from_raw(raw, "softmax"), e / e.sum() * 4 + eta)
    torch.testing.assert_close(dist.scale_from_raw(raw, "softmax").mean(), torch.tensor(1.0 + eta))
    torch.testing.assert_close(dist.scale_from_raw(raw, "softplus"), torch.log1p(raw.exp()) + eta)


# -- one training step's gradients (SPEC section 1.2) ---------------------------------------------
def test_ebm_langevin_training_step_splits_its_gradients_as_specified(plugins, tiny_overrides):
    extra = ["model.prior.name=ebm", "model.prior.hidden=16", "model.prior.steps=5", "model.inference.name=langevin",
             "model.inference.steps=5", "model.aggregator.name=moe", "model.likelihood.family=laplace",
             "model.likelihood.scale=0.75"]
    _, model, data = tiny_model(plugins, tiny_overrides, extra)
    batch = float_batch(data, 8)
    batch.mask[1, 0] = False  # one row misses a modality: its likelihood leaves the generator term
    seen: dict[str, torch.Tensor] = {}
    refine, sample = model.inference.refine, model.prior.sample

    def spy_refine(*args, **kwargs):
        out = refine(*args, **kwargs)
        seen["z_pos"] = out.z.detach().clone()
        return out

    def spy_sample(*args, **kwargs):
        out = sample(*args, **kwargs)
        seen["z_neg"] = out.detach().clone()
        return out

    model.inference.refine, model.prior.sample = spy_refine, spy_sample
    torch.manual_seed(0)
    model(batch).loss.backward()
    full = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    # the objective alone (the first consumer of the random stream in a step): same samples
    torch.manual_seed(0)
    model.objective(model, batch).loss.backward()
    elbo = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    assert not any(name.startswith("prior.") for name in elbo)  # the ELBO's energy term is frozen

    z_pos, z_neg = seen["z_pos"], seen["z_neg"]
    assert not torch.allclose(z_pos, z_neg)
    f = model.prior.energy
    ebm = torch.autograd.grad(f(z_neg).mean() - f(z_pos).mean(), list(f.parameters()))
    for (name, _), want in zip(f.named_parameters(), ebm):
        torch.testing.assert_close(full[f"prior.energy.{name}"], want)
    # generator MLE on z+: -mean_b sum_{m observed} log Laplace(x_m; dec_m(z+), 0.75)
    ll = sum(batch.mask[:, m] * Laplace(model.decode(m, z_pos), 0.75).log_prob(x_m).flatten(1).sum(-1)
             for m, x_m in enumerate(batch.x))
    dec_params = list(model.decoders.named_parameters())
    gen = torch.autograd.grad(-ll.mean(), [p for _, p in dec_params])
    for (name, _), g in zip(dec_params, gen):
        torch.testing.assert_close(full[f"decoders.{name}"], elbo[f"decoders.{name}"] + g)
    for name, g in elbo.items():
        if name.startswith("encoders."):
            torch.testing.assert_close(full[name], g)
