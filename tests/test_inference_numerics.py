"""Posterior Langevin on a real model against the closed-form posterior of each observed subset,
and the EBM prior's closed-form gradient with an energy weight other than 1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmgen.data import Batch, ModalitySpec
from mmgen.langevin import LangevinKernel, run_chain
from mmgen.model import MultimodalModel

from .helpers import build, float_batch, tiny_model

# Two 3-d modalities decoded linearly from a 2-d latent: x_m = W_m z + N(0, SIGMA^2 I).
W = [torch.tensor([[1.0, 0.5], [0.0, 1.0], [1.0, -1.0]]),
     torch.tensor([[0.5, 1.5], [-1.0, 0.5], [0.0, 2.0]])]
X = [torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.5, 1.0, -1.5])]
SIGMA = 0.8
STEP = 0.2  # Langevin noise scale s


def linear_decoder(weight: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.size(1), weight.size(0))
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.zero_()
    return lin


def linear_gaussian_model(plugins, fast_grad: bool, steps: int) -> MultimodalModel:
    """A MultimodalModel with linear decoders, a Gaussian likelihood of scale SIGMA and an EBM
    prior whose output layer is zeroed: f = 0 and sigma0 = 1, so the prior is N(0, I)."""
    prior = build(plugins, "prior", 2, name="ebm", hidden=8, fast_grad=fast_grad)
    nn.init.zeros_(prior.energy.net[-1].weight)
    nn.init.zeros_(prior.energy.net[-1].bias)
    return MultimodalModel(
        [ModalitySpec("m0", (3,)), ModalitySpec("m1", (3,))],
        [nn.Linear(3, 4) for _ in range(2)], [linear_decoder(w) for w in W],
        aggregator=build(plugins, "aggregator", 2, name="poe"), prior=prior,
        inference=build(plugins, "inference", name="langevin", steps=steps, step_size=STEP),
        objective=build(plugins, "objective", name="elbo"), latent_dim=2, posterior_family="gaussian",
        scale_param="exp", likelihood_family="gaussian", likelihood_scale=SIGMA,
    )


def closed_form(subset: tuple[int, ...], step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and the covariance a Langevin chain of noise scale ``step`` settles at.

    The posterior given x_S is N(mean, P^-1), P = I + sum_{m in S} W_m^T W_m / sigma^2 and
    mean = P^-1 sum_{m in S} W_m^T x_m / sigma^2. Unadjusted Langevin on a Gaussian keeps the
    mean exactly and settles at covariance (P - s^2 P^2 / 4)^-1: z' - mean = (I - s^2 P / 2)
    (z - mean) + s eps has stationary covariance s^2 (I - (I - s^2 P / 2)^2)^-1. Here it differs
    from P^-1 by at most 0.012 (s^2 P / 4 <= 0.15), about one standard error of the test's estimates.
    """
    precision = torch.eye(2) + sum(W[m].T @ W[m] for m in subset) / SIGMA**2
    mean = torch.linalg.solve(precision, sum(W[m].T @ X[m] for m in subset) / SIGMA**2)
    return mean, torch.linalg.inv(precision - step**2 * precision @ precision / 4)


@pytest.mark.parametrize("fast_grad", [True, False])  # the fused prior gradient, or autograd of log_prob
def test_posterior_langevin_conditions_on_each_rows_observed_subset(plugins, fast_grad):
    torch.manual_seed(0)
    model = linear_gaussian_model(plugins, fast_grad, steps=150)
    subsets = [(0,), (0, 1), (1,)]
    n = 1500  # chains per row group
    mask = torch.tensor([[m in s for m in range(2)] for s in subsets]).repeat_interleave(n, 0)  # (3n, 2)
    # Complete tuples conditioned on part of them (as the refinement figure does): a modality
    # outside a row's subset holds values far from what its decoder gives near that row's
    # posterior, so a chain that read them would settle elsewhere.
    x = [torch.where(mask[:, m:m + 1], X[m], torch.full((3,), 4.0)) for m in range(2)]
    batch = Batch(x, torch.ones(3 * n, 2, dtype=torch.bool), torch.zeros(3 * n, dtype=torch.long))
    # 150 steps shrink the start's distance by (1 - s^2 lambda_min / 2)^150 < 1e-3 (lambda_min > 2.9).
    z = model.inference.refine(model, torch.randn(3 * n, 2), batch, mask).z
    for g, subset in enumerate(subsets):
        mean, cov = closed_form(subset, STEP)
        got = z[g * n:(g + 1) * n]
        # Each estimate in standard errors: var(mean_i) = C_ii / n, var(cov_ij) = (C_ii C_jj + C_ij^2) / n.
        var = cov.diagonal()
        mean_z = (got.mean(0) - mean) / (var / n).sqrt()
        cov_z = (torch.cov(got.T) - cov) / ((torch.outer(var, var) + cov**2) / n).sqrt()
        assert mean_z.abs().max() < 4.5, (subset, got.mean(0), mean)
        assert cov_z.abs().max() < 4.5, (subset, torch.cov(got.T), cov)


# -- the EBM prior with an energy weight other than 1 ---------------------------------------------
@pytest.mark.parametrize("weight", [0.0, 0.35, 2.5])
@pytest.mark.parametrize("depth", [0, 2])
def test_ebm_log_prob_and_grad_match_autograd_and_ignore_the_energy_weight(plugins, weight, depth):
    prior = build(plugins, "prior", 4, name="ebm", hidden=16, depth=depth, sigma0=1.7, energy_weight=weight)
    z = torch.randn(9, 4, requires_grad=True)
    want = prior.log_prob(z, frozen=True)
    (want_grad,) = torch.autograd.grad(want.sum(), z)
    with torch.no_grad():
        value, grad = prior.log_prob_and_grad(z)
        f = prior.f(z)
    torch.testing.assert_close(value, want.detach())
    torch.testing.assert_close(grad, want_grad)
    # log_prob is f + log N(z; 0, sigma0^2 I), whatever the weight; the weight enters the ELBO's
    # prior term alone.
    base = torch.distributions.Normal(0.0, 1.7).log_prob(z.detach()).sum(-1)
    torch.testing.assert_close(value, f + base)
    torch.testing.assert_close(prior.elbo_log_prob(z).detach(), weight * f + base)
    if weight:  # the ELBO's energy term trains the encoder (through z), never the energy
        prior.elbo_log_prob(z).sum().backward()
        assert z.grad is not None and all(p.grad is None for p in prior.parameters())


@pytest.mark.parametrize("weight", [0.35, 2.5])
def test_posterior_chain_with_energy_weight_matches_autograd_chain(plugins, tiny_overrides, weight):
    extra = ["model.prior.name=ebm", "model.prior.hidden=16", f"model.prior.energy_weight={weight}",
             "model.inference.name=langevin", "model.inference.steps=10"]
    cfg, model, data = tiny_model(plugins, tiny_overrides, extra)
    batch = float_batch(data, 6)
    given = batch.mask.clone()
    given[:3, 1] = False  # rows 0-2 observe m0 only, rows 3-5 both
    z0 = torch.randn(6, cfg["model"]["latent_dim"])
    torch.manual_seed(0)
    fast = model.inference.refine(model, z0, batch, given)
    log_prob, grad_fn = model.inference.target(model, batch, given, None)
    assert grad_fn is not None  # the fused prior gradient is what ran
    torch.manual_seed(0)
    naive = run_chain(LangevinKernel(log_prob, model.inference.cfg.step_size), z0, 10)
    torch.testing.assert_close(fast.z, naive.z, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(fast.z, z0, atol=1e-3)  # the chain moved
