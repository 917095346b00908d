"""The baselines' objectives: IWAE against the ELBO, DReG's unbiasedness, MVAE's sub-sampled terms
and MMVAE+'s private latents."""

from __future__ import annotations

import torch
from torch import nn

from mmgen.config import component_config
from mmgen.data import Batch, ModalitySpec
from mmgen.model import MultimodalModel
from tests.helpers import LinearEncoder, float_batch, tiny_model


def loss_with_seed(model, batch, seed=0):
    torch.manual_seed(seed)
    return model.objective(model, batch).loss.detach()


def swap_objective(plugins, model, name, **options):
    reg = plugins.registry
    model.objective = reg.get("objective", name).factory(component_config(reg, "objective", {"name": name, **options}))
    return model


# -- IWAE and the ELBO ----------------------------------------------------------------------------
def test_iwae_with_one_sample_equals_the_elbo(plugins, tiny_overrides):
    _, model, data = tiny_model(plugins, tiny_overrides, ["model.private_dim=2"])
    batch = float_batch(data)
    elbo = loss_with_seed(swap_objective(plugins, model, "elbo", beta=1.5), batch)
    # Looser: strata average outside the log, so K = 1 is the ELBO for any posterior.
    looser = loss_with_seed(swap_objective(plugins, model, "iwae", k=1, beta=1.5, looser=True), batch)
    assert torch.equal(looser, elbo)
    # Tight: one stratum (samples drawn from the mixture as a whole) is the ELBO too.
    elbo_mix = loss_with_seed(swap_objective(plugins, model, "elbo", stratified=False), batch)
    tight_mix = loss_with_seed(swap_objective(plugins, model, "iwae", k=1, stratified=False), batch)
    assert torch.equal(tight_mix, elbo_mix)


def test_tight_iwae_is_at_least_the_looser_bound(plugins, tiny_overrides):
    _, model, data = tiny_model(plugins, tiny_overrides)
    batch = float_batch(data)
    for k in (1, 4):
        tight = loss_with_seed(swap_objective(plugins, model, "iwae", k=k), batch)
        looser = loss_with_seed(swap_objective(plugins, model, "iwae", k=k, looser=True), batch)
        assert tight <= looser + 1e-3  # losses are negated bounds


def test_dreg_reports_the_iwae_value(plugins, tiny_overrides):
    _, model, data = tiny_model(plugins, tiny_overrides)
    batch = float_batch(data)
    for looser in (False, True):
        iwae = loss_with_seed(swap_objective(plugins, model, "iwae", k=3, looser=looser), batch)
        dreg = loss_with_seed(swap_objective(plugins, model, "dreg", k=3, looser=looser), batch)
        torch.testing.assert_close(dreg, iwae)


# -- DReG is unbiased for the IWAE gradient -----------------------------------------------------------
def linear_gaussian_model(plugins, objective: str, k: int) -> MultimodalModel:
    """Two 3-d modalities, linear encoders/decoders, a PoE posterior (one Gaussian component, where
    DReG is exactly unbiased), Gaussian prior and likelihood."""
    reg = plugins.registry

    def build(kind, *args, **section):
        return reg.get(kind, section["name"]).factory(component_config(reg, kind, section), *args)

    torch.manual_seed(0)
    d, n = 2, 3
    return MultimodalModel(
        [ModalitySpec("m0", (n,)), ModalitySpec("m1", (n,))],
        [LinearEncoder(n, d) for _ in range(2)], [nn.Linear(d, n) for _ in range(2)],
        aggregator=build("aggregator", 2, name="poe"), prior=build("prior", d, name="gaussian"),
        inference=build("inference", name="amortized"), objective=build("objective", name=objective, k=k),
        latent_dim=d, posterior_family="gaussian", scale_param="exp", likelihood_family="gaussian", likelihood_scale=1.0,
    )


def encoder_gradients(model, batch, repeats: int) -> torch.Tensor:
    """``(repeats, P)``: independent estimates of the encoders' gradient."""
    torch.manual_seed(123)
    out = []
    for _ in range(repeats):
        model.zero_grad()
        model(batch).loss.backward()
        out.append(torch.cat([p.grad.flatten() for p in model.encoders.parameters()]))
    return torch.stack(out)


def test_dreg_gradients_are_unbiased_for_the_iwae_gradient(plugins):
    g = torch.Generator().manual_seed(1)
    x = [torch.randn(4, 3, generator=g) * 2 for _ in range(2)]
    copies = 64  # each row draws its own samples, so one batch averages 256 estimates
    batch = Batch([x_m.repeat(copies, 1) for x_m in x], torch.ones(4 * copies, 2, dtype=torch.bool),
                  torch.zeros(4 * copies, dtype=torch.long))
    repeats = 200
    iwae = encoder_gradients(linear_gaussian_model(plugins, "iwae", k=5), batch, repeats)
    dreg = encoder_gradients(linear_gaussian_model(plugins, "dreg", k=5), batch, repeats)
    se = (iwae.var(0) / repeats + dreg.var(0) / repeats).sqrt()
    z = (dreg.mean(0) - iwae.mean(0)) / se
    assert z.abs().max() < 4.5, z  # max over 24 parameters; a biased estimator scores > 100 here
    # DReG's point: a lower-variance encoder gradient.
    assert (dreg.std(0) / iwae.std(0)).median() < 0.7


# -- MVAE's sub-sampled ELBO -------------------------------------------------------------------------
def test_mvae_is_the_sum_of_joint_and_unimodal_elbos(plugins, tiny_overrides):
    _, model, data = tiny_model(plugins, tiny_overrides, ["model.aggregator.name=poe", "model.posterior_family=gaussian"])
    batch = float_batch(data)
    mvae = loss_with_seed(swap_objective(plugins, model, "mvae"), batch)
    swap_objective(plugins, model, "elbo")
    torch.manual_seed(0)
    total = 0.0
    for sub in (None, torch.tensor([True, False]), torch.tensor([False, True])):
        mask = batch.mask if sub is None else batch.mask & sub
        total = total + model.objective(model, Batch(batch.x, mask, batch.label)).loss.detach()
    torch.testing.assert_close(mvae, total)


def three_modality_mvae(plugins, tiny_overrides, random_subsets: int):
    """A PoE MVAE on three tiny modalities and a float batch of it."""
    _, model, data = tiny_model(plugins, tiny_overrides + ["data.modalities=3"],
                                ["model.aggregator.name=poe", "model.posterior_family=gaussian",
                                 "model.objective.name=mvae", f"model.objective.random_subsets={random_subsets}"])
    return model, float_batch(data)


def test_mvae_drops_rows_that_miss_a_terms_modalities(plugins, tiny_overrides):
    model, batch = three_modality_mvae(plugins, tiny_overrides, 3)
    batch.mask[0, 1] = False
    batch.mask[2, 0] = False
    out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# -- MMVAE+'s private latents ------------------------------------------------------------------------
def test_mmvaeplus_auxiliary_prior_starts_at_the_prior_scale(plugins, tiny_overrides):
    _, model, _ = tiny_model(plugins, tiny_overrides, ["model.private_dim=3"])
    assert model.scale_param == "softmax"
    torch.testing.assert_close(model.aux_scale(), torch.ones(2, 3), atol=1e-5, rtol=0)  # one r_m per modality


def test_mmvaeplus_private_latents_come_from_the_encoder_only_where_covered(plugins, tiny_overrides):
    _, model, data = tiny_model(plugins, tiny_overrides, ["model.private_dim=3"])
    posterior, private = model.encode(float_batch(data).x, torch.ones(4, 2, dtype=torch.bool))
    private.loc = torch.full_like(private.loc, 100.0)
    private.scale = torch.full_like(private.scale, 1e-3)
    cover = torch.eye(2, dtype=torch.bool).unsqueeze(1).expand(2, 4, 2)  # stratum s covers modality s
    w = model.sample_private(private, cover, k=5)  # (K, S, B, M, W)
    assert w.shape == (5, 2, 4, 2, 3)
    assert torch.allclose(w[:, 0, :, 0], torch.tensor(100.0), atol=0.1)
    assert torch.allclose(w[:, 1, :, 1], torch.tensor(100.0), atol=0.1)
    assert w[:, 0, :, 1].abs().max() < 50 and w[:, 1, :, 0].abs().max() < 50  # from r(w) = Laplace(0, 1)
    # Only covered modalities enter the bound's private terms.
    ratio = model.private_log_ratio(private, w, cover)
    assert ratio.shape == (5, 2, 4) and torch.isfinite(ratio).all()
    none = model.private_log_ratio(private, w, torch.zeros_like(cover))
    assert torch.equal(none, torch.zeros_like(none))


def test_mmvaeplus_auxiliary_scale_learns_from_cross_reconstruction(plugins, tiny_overrides):
    for objective in ("iwae", "dreg"):
        _, model, data = tiny_model(plugins, tiny_overrides, ["model.private_dim=3", f"model.objective.name={objective}",
                                                              "model.objective.looser=true", "model.objective.k=2"])
        model(float_batch(data)).loss.backward()
        grad = model.aux_log_scale.grad  # (M, W): every modality's r_m learns from its own cross-reconstructions
        assert grad is not None and torch.isfinite(grad).all() and (grad.abs().sum(-1) > 0).all()


def test_mvae_decodes_only_each_terms_modalities_with_the_same_loss(plugins, tiny_overrides):
    """A unimodal term's other likelihoods are masked out: skipping their decoders changes nothing."""
    _, model, data = tiny_model(plugins, tiny_overrides, ["model.aggregator.name=poe", "model.posterior_family=gaussian",
                                                         "model.objective.name=mvae"])
    batch = float_batch(data)
    calls, full = [], model.log_likelihood

    def counting(x, z, w=None, modalities=None):
        calls.append(modalities)
        return full(x, z, w, modalities)

    def decode_all(x, z, w=None, modalities=None):
        return full(x, z, w, None)

    model.log_likelihood = counting
    torch.manual_seed(1)
    fast = model(batch).loss
    model.log_likelihood = decode_all
    torch.manual_seed(1)
    slow = model(batch).loss
    assert calls == [None, [0], [1]]  # the joint term decodes all, each unimodal term its own
    torch.testing.assert_close(fast, slow)


def test_mvae_reads_which_rows_to_keep_from_the_host_mask(plugins, tiny_overrides):
    """The host copy of the mask decides row selection without a device sync; same loss as without it."""
    model, batch = three_modality_mvae(plugins, tiny_overrides, 2)
    batch.mask = batch.mask.clone()
    batch.mask[0, 1] = False
    batch.mask[2, :2] = False
    losses = []
    for host in (batch.mask.clone(), None):
        torch.manual_seed(5)
        losses.append(model(Batch(batch.x, batch.mask, batch.label, host)).loss)
    torch.testing.assert_close(losses[0], losses[1])


def test_batch_keeps_the_host_mask_and_reads_observed_modalities_from_it():
    x = [torch.zeros(3, 1, dtype=torch.uint8), torch.zeros(3, 1, dtype=torch.uint8)]
    mask = torch.tensor([[True, False], [True, False], [False, False]])
    moved = Batch(x, mask, torch.zeros(3, dtype=torch.long)).to("cpu")
    assert moved.host_mask is mask and moved.observed() == [0]
    assert moved.observed(torch.ones(3, 2, dtype=torch.bool)) == [0, 1]  # another mask: read from it
    stale = Batch(moved.x, torch.ones(3, 2, dtype=torch.bool), moved.label, mask)
    assert stale.observed() == [0]  # the batch's own mask: the host copy decides
