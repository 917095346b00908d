"""The Langevin kernel, the EBM prior and Langevin inference against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mmgen.cli.main import create_app
from mmgen.langevin import LangevinKernel, run_chain, value_and_grad


def test_kernel_recovers_gaussian_mean_and_variance():
    torch.manual_seed(0)
    mu, sigma = torch.tensor([1.5, -2.0]), torch.tensor([0.5, 2.0])

    def log_prob(z):
        return (-0.5 * ((z - mu) / sigma) ** 2).sum(-1)

    result = run_chain(LangevinKernel(log_prob, step_size=0.3), torch.zeros(4000, 2), steps=1000)
    z = result.z
    assert torch.allclose(z.mean(0), mu, atol=0.1)
    # Unadjusted Langevin has an O(s^2) bias in the variance (+5% in std for the narrow axis here).
    assert torch.allclose(z.std(0), sigma, rtol=0.1)
    assert result.stats["nonfinite"] == 0
    assert result.stats["end_log_prob"] > result.stats["start_log_prob"]


def test_kernel_mixture_mode_weights():
    torch.manual_seed(0)
    w, centres = 0.3, torch.tensor([-1.5, 1.5])

    def log_prob(z):
        comps = torch.stack([math.log(w) - 0.5 * (z[:, 0] - centres[0]) ** 2,
                             math.log(1 - w) - 0.5 * (z[:, 0] - centres[1]) ** 2], -1)
        return torch.logsumexp(comps, -1)

    z = run_chain(LangevinKernel(log_prob, step_size=0.5), torch.randn(6000, 1), steps=1000).z
    frac_left = (z[:, 0] < 0).float().mean().item()
    phi = 0.5 * (1 + math.erf(1.5 / math.sqrt(2)))  # P(N(-1.5, 1) < 0)
    expected = w * phi + (1 - w) * (1 - phi)
    assert abs(frac_left - expected) < 0.04


def test_kernel_no_graph_into_parameters_and_fixed_noise_reproducible():
    net = nn.Linear(3, 1)
    kernel = LangevinKernel(lambda z: net(z).squeeze(-1) - 0.5 * z.pow(2).sum(-1), 0.1)
    noise = torch.randn(5, 8, 3)
    a = run_chain(kernel, torch.zeros(8, 3), 5, noise=noise)
    b = run_chain(kernel, torch.zeros(8, 3), 5, noise=noise, keep_chain=True)
    assert torch.equal(a.z, b.z) and b.chain.shape == (6, 8, 3)
    assert not a.z.requires_grad and a.z.grad_fn is None
    assert all(p.grad is None for p in net.parameters())


def test_update_rule_convention():
    """z <- z + s^2/2 grad + s eps, with s the noise scale (not z + s grad + sqrt(2 s) eps)."""
    kernel = LangevinKernel(lambda z: (2.0 * z).sum(-1), step_size=0.5)  # grad = 2
    state = kernel.step(kernel.init(torch.zeros(1, 1)), noise=torch.ones(1, 1))
    assert state.z.item() == pytest.approx(0.5 * 0.25 * 2 + 0.5 * 1)


def test_gradient_clipping_caps_per_chain_norm():
    kernel = LangevinKernel(lambda z: (100.0 * z).sum(-1), step_size=1.0, clip_grad=1.0)
    state = kernel.step(kernel.init(torch.zeros(2, 4)), noise=torch.zeros(2, 4))
    assert torch.allclose(state.z.norm(dim=-1), torch.full((2,), 0.5))


class Quadratic(nn.Module):
    """f(z) = -a/2 |z|^2 + b.z."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), nn.Parameter(b)

    def forward(self, z):
        return -0.5 * self.a * z.pow(2).sum(-1) + z @ self.b


def make_ebm(plugins, dim=3, **cfg):
    comp = plugins.registry.get("prior", "ebm")
    return comp.factory(comp.config(**cfg), dim)


def test_ebm_gradient_matches_analytic_for_quadratic_energy(plugins):
    prior = make_ebm(plugins, sigma0=2.0)
    b = torch.tensor([0.5, -1.0, 2.0])
    prior.energy = Quadratic(0.7, b)
    z = torch.randn(10, 3)
    _, grad = value_and_grad(prior.unnormalized, z)
    expected = -0.7 * z + b - z / 4.0
    assert torch.allclose(grad, expected, atol=1e-5)
    # And prior Langevin samples the tilted Gaussian N(b / (a + 1/s0^2), 1 / (a + 1/s0^2)).
    torch.manual_seed(0)
    prior.cfg.steps, prior.cfg.step_size = 300, 0.3
    samples = prior.sample(4000)
    precision = 0.7 + 0.25
    assert torch.allclose(samples.mean(0), b / precision, atol=0.1)
    assert torch.allclose(samples.var(0), torch.full((3,), 1 / precision), rtol=0.15)


def test_frozen_log_prob_gives_no_parameter_gradient(plugins):
    prior = make_ebm(plugins)
    z = torch.randn(4, 3, requires_grad=True)
    prior.log_prob(z, frozen=True).sum().backward()
    assert z.grad is not None and all(p.grad is None for p in prior.parameters())
    prior.log_prob(z).sum().backward()
    assert all(p.grad is not None for p in prior.parameters())


def test_ebm_loss_raises_f_on_positive_and_lowers_on_negative(plugins):
    torch.manual_seed(0)
    prior = make_ebm(plugins, lr=1e-2)
    z_pos, z_neg = torch.randn(64, 3) + 2.0, torch.randn(64, 3) - 2.0
    opt = torch.optim.Adam(prior.param_groups())
    with torch.no_grad():
        f_pos0, f_neg0 = prior.f(z_pos).mean(), prior.f(z_neg).mean()
    for _ in range(5):
        opt.zero_grad()
        prior.loss(z_pos, z_neg).backward()
        opt.step()
    with torch.no_grad():
        assert prior.f(z_pos).mean() > f_pos0
        assert prior.f(z_neg).mean() < f_neg0
    group = prior.param_groups()[0]
    assert group["lr"] == 1e-2 and group["betas"] == (0.5, 0.999)


class LinearGaussianModel:
    """x = W z + N(0, sigma^2): the posterior under N(0, I) is Gaussian in closed form."""

    def __init__(self, prior, W, sigma):
        self.prior, self.W, self.sigma = prior, W, sigma
        self.latent_dim = W.size(1)

    def log_likelihood(self, x, z, w=None, modalities=None):
        loc = z @ self.W.T
        return (-0.5 * ((x[0] - loc) / self.sigma) ** 2).sum(-1, keepdim=True)  # (..., B, 1)


def test_langevin_inference_converges_to_linear_gaussian_posterior(plugins):
    torch.manual_seed(0)
    prior = make_ebm(plugins, dim=2)
    nn.init.zeros_(prior.energy.net[-1].weight)
    nn.init.zeros_(prior.energy.net[-1].bias)  # f = 0: the prior is N(0, I)
    W, sigma = torch.tensor([[1.0, 0.5], [0.0, 1.0], [1.0, -1.0]]), 0.8
    x = torch.tensor([1.0, -0.5, 2.0])
    cov = torch.linalg.inv(torch.eye(2) + W.T @ W / sigma**2)
    mean = cov @ W.T @ x / sigma**2
    comp = plugins.registry.get("inference", "langevin")
    inference = comp.factory(comp.config(steps=600, step_size=0.15))
    n = 4000
    from mmgen.data import Batch
    batch = Batch([x.expand(n, 3)], torch.ones(n, 1, dtype=torch.bool), torch.zeros(n, dtype=torch.long))
    z = inference.refine(LinearGaussianModel(prior, W, sigma), torch.randn(n, 2), batch, batch.mask).z
    assert torch.allclose(z.mean(0), mean, atol=0.05)
    assert torch.allclose(torch.cov(z.T), cov, atol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("agg", ["poe", "moe", "mopoe"])
@pytest.mark.parametrize("inference", ["amortized", "langevin"])
def test_ebm_prior_with_every_aggregator_and_inference(tmp_path, tiny_overrides, agg, inference):
    out = tmp_path / "run"
    args = ["train", "--prior", "ebm", "--agg", agg, "--inference", inference, "--max-steps", "3",
            "--out", str(out), *tiny_overrides, "model.posterior_family=gaussian",
            "model.prior.steps=5", "model.prior.hidden=16"]
    if inference == "langevin":
        args.append("model.inference.steps=3")
    result = CliRunner().invoke(create_app(with_plugin_commands=False), args)
    assert result.exit_code == 0, result.output
    text = (out / "metrics.jsonl").read_text()
    assert "prior/f_pos" in text and "prior/chain/displacement" in text
    if inference == "langevin":
        assert "inference/chain/end_log_prob" in text and "inference/generator_ll" in text
    result = CliRunner().invoke(create_app(with_plugin_commands=False), ["sample", str(out), "--chain", "--n", "3"])
    assert result.exit_code == 0, result.output
    figures = {p.name for p in (out / "figures").iterdir()}
    expected = {"joint.png", "cross.png", "chain-prior.png"}
    if inference == "langevin":
        expected |= {"refinement.png", "chain-posterior.png"}
    assert figures == expected  # amortized inference has no refinement or posterior chain to draw


def test_a_huge_step_size_gives_non_finite_samples_not_an_overflow_error():
    """s^2 / 2 beyond float32's range used to reach torch as a Python scalar it refuses to convert
    (RuntimeError: value cannot be converted to type float without overflow); as float32 holds
    it, it is inf, so the chain diverges and training's non-finite guard reports it."""
    from mmgen_builtin.priors.ebm import EBMConfig, EBMPrior

    torch.manual_seed(0)
    kernel = LangevinKernel(lambda z: -0.5 * z.pow(2).sum(-1), step_size=1e30)
    assert run_chain(kernel, torch.randn(4, 2), steps=3).stats["nonfinite"] > 0
    for fast in (True, False):  # the fused move (an addmm with beta = 1 - s^2/2 / sigma0^2) and autograd
        prior = EBMPrior(EBMConfig(hidden=8, steps=3, step_size=1e30, fast_grad=fast, cuda_graph=False), 2)
        assert not torch.isfinite(prior.sample(4)).all()


def test_the_ebm_trains_with_plain_adam_whatever_train_amsgrad_says(plugins, tiny_overrides):
    """SPEC 1.2: the EBM has its own Adam (lr 2e-5, betas (0.5, 0.999)). train.amsgrad, on in the
    MMVAE-based EBM recipes, reached its group too: every group took the optimizer's default."""
    from mmgen.train import make_optimizer

    from .helpers import tiny_model

    for extra, ebm_amsgrad in (([], False), (["model.prior.amsgrad=true"], True)):
        cfg, model, _ = tiny_model(plugins, tiny_overrides, ["model.prior.name=ebm", "train.amsgrad=true", *extra])
        groups = make_optimizer(model, cfg["train"]).param_groups
        ebm = [g for g in groups if any(p is q for p in g["params"] for q in model.prior.energy.parameters())]
        assert len(ebm) == 1 and ebm[0]["amsgrad"] is ebm_amsgrad
        assert (ebm[0]["lr"], tuple(ebm[0]["betas"])) == (2e-5, (0.5, 0.999))
        assert all(g["amsgrad"] for g in groups if g is not ebm[0])  # the encoders and decoders: train.amsgrad
