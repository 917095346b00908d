"""Evaluation metrics against closed forms.

- NLL: a linear-Gaussian model whose encoders give the exact posterior, so every importance
  weight equals p(x) and the estimate is -log p(x) for any K; a deliberately wrong posterior,
  where K = 1 gives -ELBO = -log p(x) + KL and a large K closes the gap; a mixture (MoE)
  posterior, which a large K also brings to -log p(x); an EBM's log Z.
- Latent probe: a hand-made encoder whose posterior mean is the one-hot label, next to noise.
- FD: a constant model, whose distance to the test features is a mean gap plus a variance.
- FID: a copying model scores 0, and the metric equals a Fréchet distance computed by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal
from torch.nn import functional as F

from mmgen.classifiers import ClassifierSet
from mmgen.data import ModalitySpec, MultimodalDataset
from mmgen.evaluation import build_metrics, evaluate
from mmgen.latent import Posterior
from mmgen.model import MultimodalModel

from .helpers import LinearEncoder, build

N_DIM, LATENT, SIGMA = 3, 2, 0.5  # each modality's size, the shared latent's, the likelihood scale
ETA = 1e-6  # scale_from_raw adds it to every scale


# ----------------------------------------------------------------------------------------------
# NLL on a linear-Gaussian model: z ~ N(0, I), w_m ~ N(0, I), x_m = W_m z + V_m w_m + b_m + N(0, SIGMA^2 I).
# ----------------------------------------------------------------------------------------------
def linear_gaussian(plugins, private_dim=0, prior=None, inflate=1.0, shift=0.0, aggregator="poe",
                    lengths=((1.5, 0.8, 1.2), (1.5, 0.8, 1.2))):
    """(model, loadings): the model and each modality's ``(A_m = [W_m | V_m], b_m)`` in float64.

    A_m has orthogonal columns, so the true posterior factorises over coordinates and over z and
    each w_m: with c_j = |A_m[:, j]|^2, modality m's PoE expert for z_j is
    N(A_m[:, j]^T (x_m - b_m) / c_j, SIGMA^2 / c_j) (the PoE's prior expert completes it), and
    q(w_m | x_m) is N(A_m[:, j]^T (x_m - b_m) / (c_j + SIGMA^2), SIGMA^2 / (c_j + SIGMA^2)). The
    encoders emit exactly these; ``inflate`` and ``shift`` spoil them (scales times ``inflate``,
    means plus ``shift``). Under ``aggregator="moe"`` the z experts are the unimodal posteriors
    p(z | x_m), of the same form as q(w_m | x_m). ``lengths[m]`` are A_m's column lengths.
    """
    g = torch.Generator().manual_seed(0)
    d, n, w = LATENT, N_DIM, private_dim
    encoders, decoders, loadings = [], [], []
    # 1 where the expert must carry the N(0, 1) prior itself: w's coordinates, and z's under MoE.
    own_prior = torch.tensor([float(aggregator == "moe")] * d + [1.0] * w, dtype=torch.float64)
    for length in lengths:
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        A = q[:, :d + w] * torch.tensor(length, dtype=torch.float64)[:d + w]
        b = 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
        denom = A.pow(2).sum(0) + own_prior * SIGMA**2  # (d + w,)
        gain = A.T / denom[:, None]  # (d + w, n)
        enc, dec = LinearEncoder(n, d + w), nn.Linear(d + w, n)
        with torch.no_grad():
            dec.weight.copy_(A)
            dec.bias.copy_(b)
            enc.loc.weight.copy_(gain)
            enc.loc.bias.copy_(-gain @ b + shift)
            enc.raw.weight.zero_()
            # scale_param "exp": scale = exp(raw / 2) + ETA
            enc.raw.bias.copy_(2 * torch.log(inflate * SIGMA / denom.sqrt() - ETA))
        encoders.append(enc)
        decoders.append(dec)
        loadings.append((A, b))
    model = MultimodalModel(
        [ModalitySpec(f"m{m}", (n,)) for m in range(2)], encoders, decoders,
        aggregator=build(plugins, "aggregator", 2, name=aggregator),
        prior=prior if prior is not None else build(plugins, "prior", d, name="gaussian"),
        inference=build(plugins, "inference", name="amortized"), objective=build(plugins, "objective", name="elbo"),
        latent_dim=d, private_dim=w, posterior_family="gaussian", scale_param="exp",
        likelihood_family="gaussian", likelihood_scale=SIGMA,
    )
    return model, loadings


def marginal(loadings):
    """Mean ``(2n,)`` and covariance ``(2n, 2n)`` of (x_0, x_1): shared z couples the modalities."""
    d, eye = LATENT, torch.eye(N_DIM, dtype=torch.float64)
    blocks = [[A[:, :d] @ B[:, :d].T + ((A[:, d:] @ A[:, d:].T + SIGMA**2 * eye) if i == j else 0)
               for j, (B, _) in enumerate(loadings)] for i, (A, _) in enumerate(loadings)]
    return torch.cat([b for _, b in loadings]), torch.cat([torch.cat(row, 1) for row in blocks])


def log_marginal(loadings, x, mask):
    """log p(x_S) ``(N,)`` of each row's observed modalities S, in float64."""
    mean, cov = marginal(loadings)
    rows = torch.cat(x, 1).double()  # (N, 2n)
    out = []
    for row, observed in zip(rows, mask):
        keep = observed.repeat_interleave(N_DIM)
        out.append(MultivariateNormal(mean[keep], cov[keep][:, keep]).log_prob(row[keep]))
    return torch.stack(out)


def linear_gaussian_data(loadings, rows=16):
    """Tuples drawn from the model; a quarter miss m0, a quarter miss m1 (filled with junk)."""
    mean, cov = marginal(loadings)
    g = torch.Generator().manual_seed(1)
    x = (mean + torch.randn(rows, 2 * N_DIM, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T).float()
    mask = torch.ones(rows, 2, dtype=torch.bool)
    mask[1::4, 1] = False
    mask[2::4, 0] = False
    xs = [x[:, :N_DIM].clone(), x[:, N_DIM:].clone()]
    for m in range(2):
        xs[m][~mask[:, m]] = 50.0  # a missing modality must not reach the estimate
    data = MultimodalDataset([ModalitySpec(f"m{m}", (N_DIM,)) for m in range(2)], xs, torch.zeros(rows), mask)
    return data, xs, mask


def repeated_tuple(rows, seed=2):
    """(x, dataset): one random tuple repeated ``rows`` times, so the spread between the rows'
    estimates is the estimator's own."""
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(1, N_DIM, generator=g).repeat(rows, 1) for _ in range(2)]
    return x, MultimodalDataset([ModalitySpec(f"m{m}", (N_DIM,)) for m in range(2)], x, torch.zeros(rows))


def nll(plugins, model, data, batch_size=256, **options):
    """The registered NLL metric's output on ``data`` (``options``: its config)."""
    metrics = build_metrics(plugins.registry, ["nll"], {"nll": options})
    return evaluate(model, data, data, metrics, n=1, batch_size=batch_size, progress=False).metrics["nll"]


@pytest.mark.parametrize("private_dim, k, batch_size, max_test", [
    (0, 7, 256, 0),  # K = 7 spans two chunks of 1024 // 256 = 4 latents
    (1, 7, 256, 0),  # MMVAE+'s private latents, exact too
    (1, 1, 4, 10),   # several test batches, only the first 10 tuples
])
def test_nll_with_the_exact_posterior_is_minus_log_p_x_for_any_k(plugins, private_dim, k, batch_size, max_test):
    model, loadings = linear_gaussian(plugins, private_dim)
    data, xs, mask = linear_gaussian_data(loadings)
    out = nll(plugins, model, data, batch_size, k=k, max_test=max_test)
    n = max_test or len(data)
    expected = -log_marginal(loadings, xs, mask)[:n]
    assert out["k"] == k and out["n_test"] == n and out["log_z"] == 0.0 and out["normalized"] is True
    # Every importance weight is p(x) itself: no Monte Carlo error, only float32 rounding.
    assert out["nll"] == pytest.approx(float(expected.mean()), abs=2e-4)
    assert out["nll_sem"] == pytest.approx(float(expected.std() / math.sqrt(n)), rel=1e-3)


def gaussian_kl(mu_q, s_q, mu_p, s_p):
    """KL(N(mu_q, s_q^2) || N(mu_p, s_p^2)) summed over the last dim."""
    return (torch.log(s_p / s_q) + (s_q**2 + (mu_q - mu_p) ** 2) / (2 * s_p**2) - 0.5).sum(-1)


def test_nll_with_a_wrong_posterior_is_minus_elbo_at_k1_and_tightens_with_k(plugins):
    inflate, shift = 1.6, 0.4
    model, loadings = linear_gaussian(plugins, inflate=inflate, shift=shift)
    x, data = repeated_tuple(400)
    log_p = float(log_marginal(loadings, [x_m[:1] for x_m in x], torch.ones(1, 2, dtype=torch.bool)))
    # The true posterior and the spoiled PoE q, coordinate by coordinate (diagonal by construction).
    precision_p, precision_q = torch.ones(LATENT, dtype=torch.float64), torch.ones(LATENT, dtype=torch.float64)
    pull_p, pull_q = torch.zeros_like(precision_p), torch.zeros_like(precision_q)
    for (A, b), x_m in zip(loadings, x):
        c = A.pow(2).sum(0)  # (D,)
        expert_precision = c / (inflate * SIGMA) ** 2
        precision_p += c / SIGMA**2
        pull_p += A.T @ (x_m[0].double() - b) / SIGMA**2
        precision_q += expert_precision
        pull_q += expert_precision * (A.T @ (x_m[0].double() - b) / c + shift)
    kl = float(gaussian_kl(pull_q / precision_q, precision_q.rsqrt(), pull_p / precision_p, precision_p.rsqrt()))
    assert kl > 1.0  # the spoiled posterior leaves a visible gap

    one = nll(plugins, model, data, k=1, max_test=0)
    many = nll(plugins, model, data, k=256, max_test=0)
    # K = 1 is the ELBO: E[-log w] = -log p(x) + KL(q || p(z | x)).
    assert abs(one["nll"] - (-log_p + kl)) < 4 * one["nll_sem"]
    assert 4 * one["nll_sem"] < kl / 2  # so the check above tells -ELBO from -log p(x)
    # K = 256 leaves a bias of about chi^2(p || q) / 2K, ~0.005 nats here, and a standard error of ~0.005.
    assert abs(many["nll"] - (-log_p)) < 0.03


def test_nll_with_a_mixture_posterior_converges_to_minus_log_p_x(plugins):
    """MoE: q = (p(z | x_0) + p(z | x_1)) / 2 with an informative and a vague modality."""
    model, loadings = linear_gaussian(plugins, aggregator="moe", lengths=((3.0, 2.5), (0.4, 0.3)))
    x, data = repeated_tuple(200)
    log_p = float(log_marginal(loadings, [x_m[:1] for x_m in x], torch.ones(1, 2, dtype=torch.bool)))
    # Batches of 4 decode 1024 // 4 = 256 latents at once: all K = 250 samples come from one
    # posterior.sample(K) call, which must draw each sample's component on its own. Drawing one
    # component for all K lands whole rows on the vague expert and costs about a nat on average.
    out = nll(plugins, model, data, batch_size=4, k=250, max_test=0)
    # The weights p / q <= 2 p(z | x) / p(z | x_0) are bounded: bias ~0.01 nats, standard error ~0.005.
    assert abs(out["nll"] - (-log_p)) < 0.05


# -- EBM prior: log Z = log E_{p0}[exp(w f(z))] ----------------------------------------------------
def ebm_prior(plugins, dim, **options):
    """A small registered EBM prior (``options``: its config)."""
    return build(plugins, "prior", dim, name="ebm", hidden=8, **options)


def constant_energy(prior, c):
    """f(z) = c: the output layer's weight zeroed, its bias c (log p_alpha = w f + log p0 - log Z)."""
    with torch.no_grad():
        out = prior.energy.net[-1]
        out.weight.zero_()
        out.bias.fill_(c)
    return prior


def test_ebm_log_normalizer_of_a_constant_energy_is_the_constant(plugins):
    from mmgen_builtin.metrics.nll import log_normalizer

    # energy_weight weights the ELBO's energy term only, not the prior's density.
    prior = constant_energy(ebm_prior(plugins, 3, depth=1, sigma0=1.5, energy_weight=2.0), 1.25)
    torch.manual_seed(0)
    log_z, normalized = log_normalizer(prior, 25_000, "cpu")  # three chunks of up to 10,000
    assert normalized is True
    assert log_z == pytest.approx(1.25, abs=1e-9)  # Z = E[exp(1.25)]


def test_ebm_log_normalizer_of_a_linear_energy_matches_the_gaussian_mgf(plugins):
    from mmgen_builtin.metrics.nll import log_normalizer

    sigma0, weight = 2.0, 1.5
    prior = ebm_prior(plugins, 3, depth=0, sigma0=sigma0)  # f(z) = weight * (a . z + c)
    a, c = torch.tensor([0.1, -0.2, 0.05]), 0.4
    with torch.no_grad():
        prior.energy.net[-1].weight.copy_(weight * a[None])
        prior.energy.net[-1].bias.fill_(weight * c)
    # z ~ N(0, sigma0^2 I): log E[exp(w (a . z + c))] = w c + w^2 |a|^2 sigma0^2 / 2.
    expected = weight * c + weight**2 * float(a.pow(2).sum()) * sigma0**2 / 2
    torch.manual_seed(0)
    log_z, _ = log_normalizer(prior, 100_000, "cpu")
    # Monte Carlo error: sqrt((exp(s^2) - 1) / N) = 0.0025 nats for s = w |a| sigma0 = 0.69.
    assert log_z == pytest.approx(expected, abs=0.015)


def test_nll_subtracts_the_ebm_log_normalizer(plugins):
    # With f = 3 and sigma0 = 1 the normalised EBM prior is N(0, I): the exact-posterior NLL again.
    prior = constant_energy(ebm_prior(plugins, LATENT, depth=1, sigma0=1.0), 3.0)
    model, loadings = linear_gaussian(plugins, prior=prior)
    data, xs, mask = linear_gaussian_data(loadings)
    out = nll(plugins, model, data, k=3, max_test=0, log_z_samples=2000)
    assert out["log_z"] == pytest.approx(3.0, abs=1e-9) and out["normalized"] is True
    assert out["nll"] == pytest.approx(float(-log_marginal(loadings, xs, mask).mean()), abs=2e-4)


# ----------------------------------------------------------------------------------------------
# Latent probe: the label written in modality 0's first pixel, noise in modality 1.
# ----------------------------------------------------------------------------------------------
SHAPE = (1, 2, 2)


def digit_images(labels):
    """``(N, *SHAPE)`` floats whose first pixel stores the digit (as uint8 / 255)."""
    x = torch.zeros(len(labels), *SHAPE)
    x[:, 0, 0, 0] = labels.float() / 255.0
    return x


def read_digit(x):
    return (x[:, 0, 0, 0] * 255).round().long()


class OneHotEncoderModel(nn.Module):
    """Posterior mean ``[one_hot(digit in x_0), pixels of x_1]`` ``(B, 14)``: a perfect label code
    from modality 0 and four numbers of noise from modality 1."""

    def encode(self, x, mask):
        for m, x_m in enumerate(x):  # the probe must blank what it hides
            assert bool((x_m[~mask[:, m]] == 0).all())
        mean = torch.cat([F.one_hot(read_digit(x[0]), 10).float(), x[1].flatten(1)], 1)
        B, D = mean.shape
        return Posterior(mean[:, None], torch.ones(B, 1, D), torch.ones(B, 1), mask[:, None], "gaussian"), None


def probe_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    noise = torch.rand(n, *SHAPE, generator=g)
    return MultimodalDataset([ModalitySpec("label", SHAPE), ModalitySpec("noise", SHAPE)],
                             [digit_images(labels), noise], labels)


def test_probe_reads_a_one_hot_latent_perfectly_and_noise_at_chance(plugins):
    train, test = probe_data(1000, 0), probe_data(400, 1)
    metrics = build_metrics(plugins.registry, ["probe"], {"probe": {"max_train": 300}})
    out = evaluate(OneHotEncoderModel(), train, test, metrics, n=1, progress=False).metrics["probe"]
    assert out["n_train"] == 300 and out["n_test"] == 400
    assert out["accuracy"] == 1.0 and out["balanced_accuracy"] == 1.0  # all modalities: the label is there
    label_alone, noise_alone = out["per_modality"]
    declared = plugins.registry.get("metric", "probe").factory.output_shapes(2)  # checks bench columns' indices
    assert declared == {k: (len(v),) for k, v in out.items() if isinstance(v, list)}
    assert label_alone == 1.0 and out["per_modality_balanced"][0] == 1.0
    # Modality 1 alone: the label code is blanked, four noise pixels remain. Chance is 0.1
    # (standard error 0.015 on 400 tuples).
    assert abs(noise_alone - 0.1) < 0.06 and abs(out["per_modality_balanced"][1] - 0.1) < 0.06


# ----------------------------------------------------------------------------------------------
# FD: a model that always writes digit c_m into modality m, read by a pixel "classifier".
# ----------------------------------------------------------------------------------------------
class PixelReader(nn.Module):
    """Logits one-hot on the stored digit; features the pixels themselves."""

    def forward(self, x):
        return F.one_hot(read_digit(x).clamp(0, 9), 10).float(), x.flatten(1)


class ConstantModel(nn.Module):
    """Writes digit ``digits[m]`` into modality m, unconditionally and given anything."""

    def __init__(self, digits):
        super().__init__()
        self.digits = digits

    def conditional_latents(self, batch, given, refine=True):
        return torch.zeros(len(batch), 1), None

    def decode(self, m, z, w=None):
        return digit_images(torch.full((z.size(0),), self.digits[m]))

    def generate(self, n, device="cpu"):
        return [self.decode(m, torch.zeros(n, 1)) for m in range(len(self.digits))]


def test_fd_of_a_constant_model_is_its_mean_gap_plus_the_test_variance(plugins):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (300,), generator=g)
    stored = [labels, (labels * 3) % 7, labels.clamp(max=4)]  # a different digit distribution per modality
    mask = torch.ones(300, 3, dtype=torch.bool)
    mask[::5, 1] = False  # unobserved images (digit 0 stored) must not enter the reference
    data = MultimodalDataset([ModalitySpec(f"m{m}", SHAPE) for m in range(3)],
                             [(digit_images(d) * 255).round().to(torch.uint8) for d in stored], labels, mask)
    digits = [3, 8, 1]
    classifiers = ClassifierSet([PixelReader() for _ in range(3)], {"num_classes": 10, "fingerprint": "pixels"})
    out = evaluate(ConstantModel(digits), data, data, build_metrics(plugins.registry, ["fd"]),
                   classifiers=classifiers, n=500, batch_size=128, progress=False).metrics["fd"]
    # Generated features are one point (zero covariance), so FD = |c - mean|^2 + tr(cov), all in the
    # first pixel, with the unbiased variance as Moments.cov uses.
    expected = []
    for m, d in enumerate(stored):
        seen = d[mask[:, m]].double()
        expected.append(((digits[m] - seen.mean()) / 255) ** 2 + seen.var(unbiased=True) / 255**2)
    expected = [float(e) for e in expected]
    assert len(set(round(e, 12) for e in expected)) == 3  # distinct, so a modality mix-up shows
    assert out["unconditional"] == pytest.approx(expected, rel=1e-6)
    assert out["unconditional_mean"] == pytest.approx(sum(expected) / 3, rel=1e-6)
    # Each target from every subset without it is the same constant, hence the same distance.
    assert out["conditional"] == pytest.approx(expected, rel=1e-6)
    assert out["conditional_by_size"] == pytest.approx([sum(expected) / 3] * 2, rel=1e-6)
    assert out["n_generated"] == 500 and out["n_real"] == 300


# ----------------------------------------------------------------------------------------------
# FID: the metric around a cheap stand-in network (Inception itself takes ~15 s per run on a CPU).
# ----------------------------------------------------------------------------------------------
class PooledFeatures(nn.Module):
    """Inception's place: (B, 3, 299, 299) -> (B, 6), pooled to 4 x 4, a fixed random projection, tanh."""

    def __init__(self):
        super().__init__()
        self.proj = torch.randn(48, 6, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        assert x.shape[1:] == (3, 299, 299)
        return torch.tanh(4 * F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.proj)


class CopyingModel(nn.Module):
    """Image modality 0 copies the test set (and is generated from modality 1 by undoing 1 - x);
    image modality 1 (3 channels) is something else unconditionally and 1 - x_0 given x_0; a
    vector modality 2 that FID must skip."""

    def __init__(self, x0, other1):
        super().__init__()
        self.x0, self.other1 = x0, other1

    def conditional_latents(self, batch, given, refine=True):
        from_1 = 1 - batch.x[1][:, :1]
        return torch.where(given[:, 0, None, None, None], batch.x[0], from_1), None  # z: x_0 recovered

    def decode(self, m, z, w=None):
        return z if m == 0 else (1 - z).expand(-1, 3, -1, -1)

    def generate(self, n, device="cpu"):
        return [self.x0[:n], self.other1[:n], torch.zeros(n, 4)]


def features_fd(a, b):
    """Fréchet distance of two feature sets in closed form: with centred rows A, B,
    tr((C_a C_b)^(1/2)) is the nuclear norm of A B^T over sqrt((n_a - 1)(n_b - 1))."""
    a, b = a.double(), b.double()
    ca, cb = a - a.mean(0), b - b.mean(0)
    na, nb = len(a), len(b)
    cross = torch.linalg.svdvals(ca @ cb.T).sum() / math.sqrt((na - 1) * (nb - 1))
    gap = a.mean(0) - b.mean(0)
    return float(gap @ gap + ca.pow(2).sum() / (na - 1) + cb.pow(2).sum() / (nb - 1) - 2 * cross)


def test_fid_is_zero_for_a_copy_and_matches_a_hand_computed_distance(plugins, monkeypatch):
    import mmgen_builtin.metrics.fid as fid

    net = PooledFeatures()
    monkeypatch.setattr(fid, "load_inception", lambda path: (net, "stand-in"))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(14, 1, 8, 8, generator=g)
    x1 = (1 - x0).expand(-1, 3, -1, -1).contiguous()
    other1 = torch.rand(14, 3, 8, 8, generator=g).pow(2)
    data = MultimodalDataset([ModalitySpec("a", (1, 8, 8)), ModalitySpec("b", (3, 8, 8)), ModalitySpec("v", (4,))],
                             [x0, x1, torch.rand(14, 4, generator=g)], torch.zeros(14))
    metrics = build_metrics(plugins.registry, ["fid"], {"fid": {"weights": "unused", "max_samples": 10, "batch_size": 4}})
    out = evaluate(CopyingModel(x0, other1), data, data, metrics, n=12, progress=False).metrics["fid"]
    assert out["network"] == "stand-in" and out["n_real"] == 10 and out["n_generated"] == 10
    expected = features_fd(net(fid.inception_input(other1[:10])), net(fid.inception_input(x1[:10])))
    assert expected > 0.1
    copy, other, vector = out["unconditional"]
    assert copy == pytest.approx(0.0, abs=1e-9) and vector is None
    assert other == pytest.approx(expected, rel=1e-6)
    assert out["conditional"][:2] == pytest.approx([0.0, 0.0], abs=1e-9) and out["conditional"][2] is None


def test_inception_input_scales_to_minus_one_one_and_resizes():
    from mmgen_builtin.metrics.fid import inception_input

    grey = torch.full((2, 1, 28, 28), 0.25)
    out = inception_input(grey)
    assert out.shape == (2, 3, 299, 299)
    assert torch.allclose(out, torch.tensor(-0.5))  # 2 * 0.25 - 1
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = inception_input(x)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])  # grey to RGB
    assert -1 <= float(out.min()) and float(out.max()) <= 1
    # Bilinear, align_corners=False: output column c samples input column (c + 1/2) 28/299 - 1/2
    # (clamped to the image), so a linear ramp stays that exact ramp.
    ramp = torch.arange(28.0).div(27).expand(1, 1, 28, 28)
    src = ((torch.arange(299.0) + 0.5) * 28 / 299 - 0.5).clamp(0, 27)
    torch.testing.assert_close(inception_input(ramp)[0, 0], (2 * src / 27 - 1).expand(299, 299))
    rgb = torch.rand(1, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(inception_input(rgb)[:, 0], inception_input(rgb)[:, 1])


class ZeroReader(nn.Module):
    """Calls every input digit 0; features the vector itself."""

    def forward(self, x):
        return F.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float(), x.flatten(1)


def test_cross_generation_scores_only_rows_that_observe_the_conditioning_set(plugins):
    # Under MoE a row that observes none of the given modalities has no posterior (all mixture
    # weights 0): it must be left out, not sampled from (torch.multinomial raised on such rows).
    model, loadings = linear_gaussian(plugins, aggregator="moe")
    data, _, mask = linear_gaussian_data(loadings)
    data.labels = torch.zeros(len(data), dtype=torch.long)  # what ZeroReader says: scored rows are all right
    classifiers = ClassifierSet([ZeroReader(), ZeroReader()], {"num_classes": 10, "fingerprint": "zeros"})
    out = evaluate(model, data, data, build_metrics(plugins.registry, ["cross_coherence", "fd"]),
                   classifiers=classifiers, n=16, batch_size=8, progress=False).metrics
    # An unscored row counted as a miss (its prediction is -1) would pull these below 1.
    assert out["cross_coherence"]["matrix_1to1"] == [[None, 1.0], [1.0, None]]
    assert out["cross_coherence"]["mean_1to1"] == 1.0
    assert all(math.isfinite(v) for v in out["fd"]["conditional"])
    assert not mask.all(1).all() and (~mask).any(0).all()  # both modalities miss somewhere
