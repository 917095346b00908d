"""Fast Langevin paths give the plain autograd loop's results for the same noise stream."""

from __future__ import annotations

import warnings

import pytest
import torch

from mmgen.langevin import GraphedChain, LangevinKernel, run_chain

from .helpers import float_batch, tiny_model


@pytest.mark.parametrize("activation", ["gelu", "leaky_relu", "silu"])
def test_prior_chain_fast_gradient_matches_autograd(plugins, activation):
    comp = plugins.registry.get("prior", "ebm")
    prior = comp.factory(comp.config(activation=activation, hidden=32), 4)
    z0, noise = torch.randn(16, 4), torch.randn(60, 16, 4)
    naive = run_chain(LangevinKernel(prior.unnormalized, 0.4), z0, 60, noise=noise)
    kernel = prior.kernel()
    assert kernel.grad_fn is not None and kernel.move_fn is not None  # the fast path is what runs
    fast = run_chain(kernel, z0, 60, noise=noise)
    assert torch.allclose(naive.z, fast.z, atol=1e-5)
    for key in naive.stats:
        assert torch.allclose(naive.stats[key], fast.stats[key], atol=1e-4), key


@pytest.mark.parametrize("activation", ["gelu", "leaky_relu", "silu"])
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("batch", [7, 1400])  # 1400 x 24 activations: over the ATen/oneDNN switch
def test_energy_gradient_alone_matches_autograd(plugins, activation, depth, batch):
    comp = plugins.registry.get("prior", "ebm")
    prior = comp.factory(comp.config(activation=activation, hidden=24, depth=depth), 5)
    z = torch.randn(batch, 5, requires_grad=True)
    onednn = torch.backends.mkldnn.enabled
    f = prior.energy(z)
    (want,) = torch.autograd.grad(f.sum(), z)
    with torch.no_grad():
        value, grad = prior.energy.value_and_grad(z)
        alone = prior.energy.grad(z)
        bound = prior.energy.score(-0.5)(z)  # what a chain calls
        unnormalized = prior.unnormalized_grad(z)
    torch.testing.assert_close(value, f.detach())
    torch.testing.assert_close(grad, want)
    torch.testing.assert_close(alone, want)
    torch.testing.assert_close(bound, want - 0.5 * z.detach())
    torch.testing.assert_close(unnormalized, want - z.detach() / prior.cfg.sigma0**2)
    assert torch.backends.mkldnn.enabled == onednn  # the kernel switch is put back


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_bound_score_follows_optimizer_updates(plugins, spectral_norm):
    # A chain's kernel binds the energy's weights once; a kernel built before an optimizer step
    # must still give the gradient after it (the Parameters are updated in place).
    comp = plugins.registry.get("prior", "ebm")
    prior = comp.factory(comp.config(hidden=16, spectral_norm=spectral_norm), 3).eval()
    score = prior.kernel().score_fn
    z = torch.randn(9, 3)
    with torch.no_grad():
        before = score(z)
    opt = torch.optim.SGD(prior.parameters(), lr=0.5)
    prior.energy(torch.randn(32, 3)).square().sum().backward()
    opt.step()
    with torch.no_grad():
        after = score(z)
    zr = z.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(prior.unnormalized(zr).sum(), zr)
    torch.testing.assert_close(after, want)
    assert not torch.allclose(before, after)  # the update moved the gradient: the test can fail


@pytest.mark.parametrize("activation", ["gelu", "leaky_relu", "silu"])
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("drift", [0.08, 1.0])  # 1 = sigma0^2: the Gaussian term cancels z exactly
def test_fused_move_is_the_langevin_update(plugins, activation, depth, drift):
    comp = plugins.registry.get("prior", "ebm")
    prior = comp.factory(comp.config(activation=activation, hidden=24, depth=depth), 5)
    kernel = prior.kernel()
    a, b = drift, 0.3
    # The move writes its intermediates into buffers kept per batch shape: a second call reuses
    # them, another shape gets its own; 1400 x 24 activations take oneDNN's kernels on the CPU.
    kept = []
    for n in (11, 11, 3, 1400, 11):
        z, eps = torch.randn(n, 5), torch.randn(n, 5)
        with torch.no_grad():
            want = z + a * prior.unnormalized_grad(z) + b * eps
            got = kernel.move_fn(z, eps, a, b)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(kernel.log_prob(z), prior.unnormalized(z))
        kept.append((got, want))
    for got, want in kept:  # a later call does not overwrite what an earlier one returned
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    zr = z.clone().requires_grad_(True)  # the bound value differentiates into z only
    kernel.log_prob(zr).sum().backward()
    assert zr.grad is not None and all(p.grad is None for p in prior.parameters())


@pytest.mark.parametrize("anneal", [False, True])
@pytest.mark.parametrize("clip_grad", [0.0, 1.5])
def test_chain_through_moves_matches_the_autograd_chain(plugins, anneal, clip_grad):
    # move_fn drives the chain (clip_grad = 0) or is passed over (clipping needs each gradient);
    # either way: the autograd chain's states and diagnostics, every state kept.
    comp = plugins.registry.get("prior", "ebm")
    prior = comp.factory(comp.config(hidden=32, clip_grad=clip_grad), 4)
    z0, noise = torch.randn(16, 4), torch.randn(25, 16, 4)
    naive_kernel = LangevinKernel(prior.unnormalized, prior.cfg.step_size, clip_grad)
    naive = run_chain(naive_kernel, z0, 25, anneal_noise=anneal, keep_chain=True, noise=noise)
    fast = run_chain(prior.kernel(), z0, 25, anneal_noise=anneal, keep_chain=True, noise=noise)
    torch.testing.assert_close(fast.chain, naive.chain, rtol=1e-5, atol=1e-5)
    for key in naive.stats:
        torch.testing.assert_close(fast.stats[key], naive.stats[key], rtol=1e-4, atol=1e-4)
    assert fast.chain.shape == (26, 16, 4)


def test_chain_of_no_steps_reports_its_start():
    kernel = LangevinKernel(lambda z: -0.5 * z.square().sum(-1), 0.3)
    z0 = torch.randn(3, 2)
    result = run_chain(kernel, z0, 0)
    assert torch.equal(result.z, z0) and result.stats["grad_norm"] == 0
    torch.testing.assert_close(result.stats["start_log_prob"], result.stats["end_log_prob"])


def test_spectral_norm_weights_are_computed_once_per_gradient(plugins):
    # Each read of a spectral-normed weight runs a power iteration (and moves its vectors in
    # training mode): a gradient reads each layer's weight once.
    comp = plugins.registry.get("prior", "ebm")
    prior = comp.factory(comp.config(hidden=8, spectral_norm=True), 3).train()
    reads = {"n": 0}

    def counted(forward):
        def wrapper(weight):
            reads["n"] += 1
            return forward(weight)
        return wrapper

    for lin in prior.energy._linears:
        norm = lin.parametrizations.weight[0]
        norm.forward = counted(norm.forward)
    with torch.no_grad():
        prior.energy.grad(torch.randn(4, 3))
        prior.energy.value_and_grad(torch.randn(4, 3))
    assert reads["n"] == 2 * len(prior.energy._linears)


def test_chain_reads_log_density_only_where_it_is_reported():
    calls = {"value": 0, "score": 0}

    def grad_fn(z):
        calls["value"] += 1
        return -0.5 * z.square().sum(-1), -z

    def score_fn(z):
        calls["score"] += 1
        return -z

    z0 = torch.randn(4, 3)
    result = run_chain(LangevinKernel(lambda z: -0.5 * z.square().sum(-1), 0.3, grad_fn=grad_fn, score_fn=score_fn), z0, 10)
    assert calls == {"value": 2, "score": 9}  # start and end; the 9 states between need no value
    assert torch.allclose(result.stats["end_log_prob"], -0.5 * result.z.square().sum(-1).mean())
    with pytest.raises(ValueError, match="noise has 5 steps; the chain runs 10"):
        run_chain(LangevinKernel(lambda z: -0.5 * z.square().sum(-1), 0.3), z0, 10, noise=torch.randn(5, 4, 3))


def test_prior_sample_fast_flag_same_samples(plugins):
    comp = plugins.registry.get("prior", "ebm")
    prior = comp.factory(comp.config(hidden=32, steps=20), 4)
    torch.manual_seed(3)
    fast = prior.sample(32)
    prior.cfg.fast_grad = False
    torch.manual_seed(3)
    naive = prior.sample(32)
    assert torch.allclose(fast, naive, atol=1e-5)


def _failing_capture(*args):
    raise RuntimeError("operation not permitted when stream is capturing")


def test_graphed_chain_falls_back_to_eager_where_it_cannot_capture(plugins):
    comp = plugins.registry.get("prior", "ebm")
    prior = comp.factory(comp.config(hidden=32), 4)
    fast = LangevinKernel(prior.unnormalized, 0.4, grad_fn=prior.unnormalized_and_grad)
    z0, noise = torch.randn(8, 4), torch.randn(30, 8, 4)
    graphed = GraphedChain()
    assert graphed.why_not(fast, z0, keep_chain=False) == "not on a CUDA device"
    want = run_chain(fast, z0, 30, noise=noise)
    # Pretend the chain could be captured and the capture fails (as it does where CUDA graphs are
    # unsupported): it must warn once, remember why, and give the eager chain's samples.
    graphed.why_not = lambda *args: None
    graphed._capture = _failing_capture
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        got = graphed(fast, z0, 30, noise=noise)
    assert graphed.fallback_reason.startswith("CUDA graph capture failed")
    assert torch.equal(got.z, want.z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: the failure is remembered
        assert torch.equal(graphed(fast, z0, 30, noise=noise).z, want.z)
    assert prior.graphed is not None  # the EBM prior goes through it (eager here, on the CPU)
    assert comp.factory(comp.config(hidden=32, spectral_norm=True), 4).graphed is None


def _cuda_prior(plugins):
    comp = plugins.registry.get("prior", "ebm")
    torch.manual_seed(0)
    return comp.factory(comp.config(hidden=64, steps=60), 16).cuda()


@pytest.mark.gpu
def test_graphed_prior_chain_matches_eager_on_cuda(plugins):
    prior = _cuda_prior(plugins)
    noise = torch.randn(60, 128, 16, device="cuda")
    torch.manual_seed(1)
    graphed = prior.chain(128, "cuda", noise=noise)
    assert prior.graphed.fallback_reason is None and prior.graphed._graphs  # it was captured
    torch.manual_seed(1)
    kernel = LangevinKernel(prior.unnormalized, prior.cfg.step_size, grad_fn=prior.unnormalized_and_grad)
    eager = run_chain(kernel, prior.cfg.sigma0 * torch.randn(128, 16, device="cuda"), 60, noise=noise)
    torch.testing.assert_close(graphed.z, eager.z, rtol=1e-4, atol=1e-4)
    for key in eager.stats:
        torch.testing.assert_close(graphed.stats[key], eager.stats[key], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_graphed_prior_chain_sees_optimizer_updates(plugins):
    prior = _cuda_prior(plugins)
    noise = torch.randn(60, 32, 16, device="cuda")
    torch.manual_seed(2)
    before = prior.chain(32, "cuda", noise=noise).z
    with torch.no_grad():  # an in-place update, as an optimizer step makes
        for p in prior.energy.parameters():
            p.add_(0.5 * torch.randn_like(p))
    torch.manual_seed(2)
    after = prior.chain(32, "cuda", noise=noise).z
    prior.graphed = None
    torch.manual_seed(2)
    eager = prior.chain(32, "cuda", noise=noise).z
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, eager, rtol=1e-4, atol=1e-4)


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


def _posterior_setup(plugins, tiny_overrides, device, extra=()):
    extra = ["model.prior.name=ebm", "model.prior.hidden=16", "model.inference.name=langevin",
             "model.inference.steps=10", *extra]
    cfg, model, data = tiny_model(plugins, tiny_overrides, extra)
    model.to(device)
    return cfg, model, data


def test_graphed_posterior_chain_falls_back_to_eager_on_cpu(plugins, tiny_overrides):
    """The posterior chain goes through GraphedChain with its batch as inputs; where capture
    fails (this CPU build) it warns once and gives the eager chain's samples."""
    cfg, model, data = _posterior_setup(plugins, tiny_overrides, "cpu")
    inference = model.inference
    assert inference.graphed is not None
    batch = float_batch(data, 6)
    z0 = torch.randn(6, cfg["model"]["latent_dim"])
    torch.manual_seed(0)
    inference.graphed = None
    want = inference.refine(model, z0, batch, batch.mask)
    inference.graphed = GraphedChain()
    inference.graphed.why_not = lambda *args: None  # pretend it could be captured, and the capture fails
    inference.graphed._capture = _failing_capture
    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        got = inference.refine(model, z0, batch, batch.mask)
    assert torch.equal(got.z, want.z)
    with pytest.raises(ValueError, match="needs rebind"):
        GraphedChain()(LangevinKernel(lambda z: -z.square().sum(-1), 0.1), z0, 3, inputs=(z0,))
    off = _posterior_setup(plugins, tiny_overrides, "cpu", ["model.inference.cuda_graph=false"])[1]
    assert off.inference.graphed is None


def test_graphed_chain_captures_at_most_max_graphs(plugins):
    """Past ``max_graphs`` shapes, new shapes run eagerly and nothing more is captured."""
    comp = plugins.registry.get("prior", "ebm")
    prior = comp.factory(comp.config(hidden=8), 2)
    kernel = LangevinKernel(prior.unnormalized, 0.4, grad_fn=prior.unnormalized_and_grad)
    graphed = GraphedChain(max_graphs=1)
    graphed.why_not = lambda *args: None
    captured = []
    graphed._capture = lambda *args: captured.append(args[1].shape) or (_ for _ in ()).throw(RuntimeError("x"))
    graphed._graphs[("taken",)] = None  # the one slot is full
    z0 = torch.randn(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = graphed(kernel, z0, 5, noise=torch.randn(5, 3, 2))
    assert captured == [] and got.z.shape == (3, 2) and graphed.fallback_reason is None


@pytest.mark.gpu
def test_graphed_posterior_chain_matches_eager_on_cuda(plugins, tiny_overrides):
    cfg, model, data = _posterior_setup(plugins, tiny_overrides, "cuda")
    inference = model.inference
    d = cfg["model"]["latent_dim"]
    for n in (8, 8, 5):  # a second batch replays the graph over new data; a smaller one captures anew
        batch = data.batch(torch.randint(len(data), (n,))).to("cuda")
        z0 = torch.randn(n, d, device="cuda")
        torch.manual_seed(5)
        graphed = inference.refine(model, z0, batch, batch.mask)
        assert inference.graphed.fallback_reason is None
        keep, inference.graphed = inference.graphed, None
        torch.manual_seed(5)
        eager = inference.refine(model, z0, batch, batch.mask)
        inference.graphed = keep
        torch.testing.assert_close(graphed.z, eager.z, rtol=1e-4, atol=1e-4)
        for key in eager.stats:
            torch.testing.assert_close(graphed.stats[key], eager.stats[key], rtol=1e-4, atol=1e-4)
    assert len(inference.graphed._graphs) == 2
    # an in-place weight update (an optimizer step) is seen by the next replay
    with torch.no_grad():
        for p in model.decoders.parameters():
            p.add_(0.3 * torch.randn_like(p))
    torch.manual_seed(6)
    after = inference.refine(model, z0, batch, batch.mask)
    keep, inference.graphed = inference.graphed, None
    torch.manual_seed(6)
    eager = inference.refine(model, z0, batch, batch.mask)
    torch.testing.assert_close(after.z, eager.z, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_moe_ebm_trains_on_cuda_with_both_chains_captured(plugins, tiny_overrides, tmp_path, monkeypatch):
    from mmgen.train import train

    captured = []
    capture = GraphedChain._capture

    def counting(kernel, z0, steps, anneal_noise, inputs, rebind):
        captured.append("posterior" if inputs else "prior")
        return capture(kernel, z0, steps, anneal_noise, inputs, rebind)

    monkeypatch.setattr(GraphedChain, "_capture", staticmethod(counting))
    cfg = tiny_model(plugins, tiny_overrides, ["train.device=cuda", "train.epochs=2", "model.prior.name=ebm",
                                               "model.prior.hidden=16", "model.inference.name=langevin",
                                               "model.aggregator.name=moe"])[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(cfg, plugins, run_dir=tmp_path / "run")
    assert not [w for w in caught if "CUDA graph capture failed" in str(w.message)]
    assert "prior" in captured and "posterior" in captured
    assert (run / "checkpoints" / "last.pt").exists() or any((run / "checkpoints").iterdir())
