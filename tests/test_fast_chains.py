"""Fast Langevin paths give the plain autograd loop's results for the same noise stream."""

from __future__ import annotations

import pytest
import torch

from mmgen.langevin import LangevinKernel, run_chain

from .helpers import float_batch, tiny_model


@pytest.mark.parametrize("activation", ["gelu", "leaky_relu", "silu"])
def test_prior_chain_fast_gradient_matches_autograd(plugins, activation):
    comp = plugins.registry.get("prior", "ebm")
    prior = comp.factory(comp.config(activation=activation, hidden=32), 4)
    z0, noise = torch.randn(16, 4), torch.randn(60, 16, 4)
    naive = run_chain(LangevinKernel(prior.unnormalized, 0.4), z0, 60, noise=noise)
    fast = run_chain(LangevinKernel(prior.unnormalized, 0.4, grad_fn=prior.unnormalized_and_grad), z0, 60, noise=noise)
    assert torch.allclose(naive.z, fast.z, atol=1e-5)
    for key in naive.stats:
        assert torch.allclose(naive.stats[key], fast.stats[key], atol=1e-4), key


def test_prior_sample_fast_flag_same_samples(plugins):
    comp = plugins.registry.get("prior", "ebm")
    prior = comp.factory(comp.config(hidden=32, steps=20), 4)
    torch.manual_seed(3)
    fast = prior.sample(32)
    prior.cfg.fast_grad = False
    torch.manual_seed(3)
    naive = prior.sample(32)
    assert torch.allclose(fast, naive, atol=1e-5)


@pytest.mark.parametrize("prior", ["ebm", "gaussian", "laplace"])
def test_posterior_chain_fused_prior_gradient_matches_autograd(plugins, tiny_overrides, prior):
    extra = [f"model.prior.name={prior}", "model.inference.name=langevin", "model.inference.steps=10"]
    if prior == "ebm":
        extra.append("model.prior.hidden=16")
    cfg, model, data = tiny_model(plugins, tiny_overrides, extra)
    batch = float_batch(data, 6)
    given = batch.mask.clone()
    given[:, 1] = False  # condition on modality 0 only: modality 1's decoder is skipped
    z0 = torch.randn(6, cfg["model"]["latent_dim"])
    torch.manual_seed(0)
    fast = model.inference.refine(model, z0, batch, given)
    log_prob, grad_fn = model.inference.target(model, batch, given, None)
    assert grad_fn is not None
    torch.manual_seed(0)
    naive = run_chain(LangevinKernel(log_prob, model.inference.cfg.step_size), z0, 10)
    assert torch.allclose(fast.z, naive.z, atol=1e-4)
    assert torch.allclose(fast.stats["chain/end_log_prob"], naive.stats["end_log_prob"], rtol=1e-5)
