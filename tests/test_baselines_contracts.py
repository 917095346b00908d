"""One contract per component kind, parametrized over every registered name.

The names come from a fresh plugin manager at collection time, so a newly registered encoder,
decoder, aggregator, prior, objective or inference method (built-in or third-party) is tested
the moment it registers.
"""

from __future__ import annotations

import pytest
import torch

from mmgen.config import component_config
from mmgen.latent import InferenceResult, ObjectiveResult, Posterior
from mmgen.plugins import create_plugin_manager
from tests.helpers import float_batch, tiny_model

REGISTRY = create_plugin_manager().registry
SHAPE = (3, 28, 28)
FAMILIES = ("gaussian", "laplace")


def names(kind: str) -> list[str]:
    return REGISTRY.names(kind)


def build(plugins, kind: str, name: str, *args):
    """A component with its default config, through the registry (as build_model does)."""
    reg = plugins.registry
    return reg.get(kind, name).factory(component_config(reg, kind, {"name": name}), *args)


def random_masks(b: int, m: int, seed: int = 0) -> torch.Tensor:
    """``(B, M)`` random observed-modality masks, each row with at least one modality."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, m, generator=g) < 0.5
    mask[torch.arange(b), torch.randint(0, m, (b,), generator=g)] = True
    return mask


# -- networks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", names("encoder"))
def test_encoder_contract(plugins, name):
    torch.manual_seed(0)
    encoder = build(plugins, "encoder", name, SHAPE, 6)
    loc, raw = encoder(torch.rand(2, *SHAPE))
    assert loc.shape == (2, 6) and raw.shape == (2, 6)
    assert torch.isfinite(loc).all() and torch.isfinite(raw).all()
    (loc.sum() + raw.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


@pytest.mark.parametrize("name", names("decoder"))
def test_decoder_contract(plugins, name):
    torch.manual_seed(0)
    decoder = build(plugins, "decoder", name, SHAPE, 6)
    for n in (1, 3):
        out = decoder(torch.randn(n, 6))
        assert out.shape == (n, *SHAPE)
        assert out.min() >= 0 and out.max() <= 1


def test_conv_channels_last_changes_layout_not_values(plugins):
    """NHWC is a storage detail: same weights, same outputs and gradients, loadable either way."""
    reg = plugins.registry
    x, z = torch.rand(4, *SHAPE), torch.randn(5, 6)
    outs = {}
    for channels_last in (False, True):
        cfg = component_config(reg, "encoder", {"name": "conv", "channels_last": channels_last})
        torch.manual_seed(0)
        enc = reg.get("encoder", "conv").factory(cfg, SHAPE, 6)
        torch.manual_seed(0)
        dec = reg.get("decoder", "conv").factory(cfg, SHAPE, 6)
        conv_weight = enc.trunk[0].weight
        assert conv_weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        if outs:  # a state dict saved in one layout loads into the other
            enc.load_state_dict(outs["enc"].state_dict())
            dec.load_state_dict(outs["dec"].state_dict())
        loc, raw = enc(x)
        img = dec(z)
        (loc.square().sum() + raw.sum() + img.sum()).backward()
        got = (loc, raw, img, conv_weight.grad, dec.deconv[0].weight.grad)
        if outs:
            for a, b in zip(outs["values"], got):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        outs = {"enc": enc, "dec": dec, "values": got}


# -- aggregators -------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_modalities", [1, 2, 3])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", names("aggregator"))
def test_aggregator_contract(plugins, name, family, num_modalities):
    agg = build(plugins, "aggregator", name, num_modalities)
    if family not in agg.families:
        pytest.skip(f"aggregator '{name}' does not support the {family} family")
    b, d = 6, 3
    loc = torch.randn(b, num_modalities, d, requires_grad=True)
    scale = (torch.rand(b, num_modalities, d) + 0.2).requires_grad_()
    mask = random_masks(b, num_modalities)
    post = agg(loc, scale, mask, family)
    assert isinstance(post, Posterior)
    c = post.weight.size(1)
    assert post.loc.shape == post.scale.shape == (b, c, d)
    assert post.experts.shape == (b, c, num_modalities)
    torch.testing.assert_close(post.weight.sum(-1), torch.ones(b))
    # Weight only on components that use observed experts.
    assert not (post.experts & ~mask.unsqueeze(1)).any()
    assert post.experts[post.weight > 0].any(-1).all()
    z = torch.randn(4, b, d)
    log_prob = post.log_prob(z)
    assert log_prob.shape == (4, b) and torch.isfinite(log_prob).all()
    strata = post.rsample_strata(2)
    assert strata.z.shape == (2, c, b, d) and torch.isfinite(strata.z).all()
    (log_prob.sum() + strata.z.sum()).backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()


# -- priors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", names("prior"))
def test_prior_contract(plugins, name):
    torch.manual_seed(0)
    d = 3
    prior = build(plugins, "prior", name, d)
    for lead in [(5,), (2, 5)]:
        log_prob = prior.log_prob(torch.randn(*lead, d))
        assert log_prob.shape == lead and torch.isfinite(log_prob).all()
    samples = prior.sample(7)
    assert samples.shape == (7, d) and torch.isfinite(samples).all()
    # frozen: gradients reach z, never the prior's own parameters.
    z = torch.randn(5, d, requires_grad=True)
    prior.log_prob(z, frozen=True).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert all(p.grad is None or not p.grad.any() for p in prior.parameters())


# -- objectives --------------------------------------------------------------------------------------
@pytest.mark.parametrize("private_dim", [0, 2])
@pytest.mark.parametrize("name", names("objective"))
def test_objective_contract(plugins, tiny_overrides, name, private_dim):
    _, model, data = tiny_model(plugins, tiny_overrides, [f"model.objective.name={name}", f"model.private_dim={private_dim}"])
    batch = float_batch(data)
    torch.manual_seed(0)
    result = model.objective(model, batch)
    assert isinstance(result, ObjectiveResult) and isinstance(result.posterior, Posterior)
    assert result.loss.shape == () and torch.isfinite(result.loss)
    result.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    for p in model.encoders.parameters():  # every objective trains the encoders
        assert p.grad is not None


# -- inference ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", names("inference"))
def test_inference_contract(plugins, tiny_overrides, name):
    cfg, model, data = tiny_model(plugins, tiny_overrides, [f"model.inference.name={name}"])
    batch = float_batch(data)
    d = cfg["model"]["latent_dim"]
    posterior, _ = model.encode(batch.x, batch.mask)
    z0 = posterior.sample(1)[0].detach()
    for mask in (batch.mask, random_masks(len(batch), batch.mask.size(1))):
        result = model.inference.refine(model, z0, batch, mask)
        assert isinstance(result, InferenceResult)
        assert result.z.shape == (len(batch), d) and torch.isfinite(result.z).all()
