"""Test-set negative log-likelihood by importance sampling (Burda et al. 2016):

    log p(x) ~= logsumexp_k [log p(x | z_k, w_k) + log p(z_k) + log p(w_k) - log q(z_k, w_k | x)] - log K

with z_k, w_k ~ q(z, w | x), the encoder's joint posterior given every observed modality (MoE:
the mixture, whose density is exact). The estimate is a stochastic lower bound on log p(x), so
the reported NLL is an upper bound in expectation that tightens as K grows; MMVAE reports it with
K = 1000. Units: nats per test tuple, under the model's continuous likelihood on [0, 1] pixels.

An energy-based prior is unnormalised: its log Z(alpha) = log E_{p0}[exp(f(z))] (f unweighted,
as in ``prior.log_prob``) is estimated by simple Monte Carlo from the Gaussian reference p0 (fine
in a 16-32 dimensional latent with a smooth energy; ``log_z`` is reported so the correction can be
judged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mmgen import distributions as dist
from mmgen.config import check_nonnegative, check_positive
from mmgen.evaluation import EvalContext, Metric


LATENTS_PER_DECODE = 1024


@dataclass
class NLLConfig:
    """Importance samples per tuple, test tuples scored (0 = all), samples for an EBM's log Z."""

    k: int = 50  # MMVAE reports K = 1000; 50 keeps a CPU evaluation within minutes
    max_test: int = 1000
    log_z_samples: int = 100_000

    def __post_init__(self):
        check_positive(self, "k", "log_z_samples")
        check_nonnegative(self, "max_test")


def log_normalizer(prior, samples: int, device) -> tuple[float, bool]:
    """(log Z, whether ``prior.log_prob - log Z`` is a normalised density).

    A prior may offer ``log_normalizer()``; mmgen's EBM prior gets the Monte Carlo estimate; any
    other prior that learns from samples is assumed unnormalised and reported as such.
    """
    from mmgen_builtin.priors.ebm import EBMPrior

    own = getattr(prior, "log_normalizer", None)
    if callable(own):
        return float(own()), True
    if isinstance(prior, EBMPrior):
        values = []
        for start in range(0, samples, 10_000):
            z0 = prior.cfg.sigma0 * torch.randn(min(10_000, samples - start), prior.dim, device=device)
            values.append(prior.f(z0, frozen=True).double())
        v = torch.cat(values)
        return float(torch.logsumexp(v, 0) - math.log(v.numel())), True
    return 0.0, not prior.learns_from_samples


class ImportanceSampledNLL(Metric):
    """Mean over test tuples of -log p(x_1..x_M), K importance samples from q(z, w | x)."""

    name = "nll"
    better = "lower"
    headlines = (("nll", "NLL"),)
    outputs = ("nll", "nll_sem", "k", "n_test", "log_z", "normalized")
    requires_classifiers = False

    def __init__(self, cfg: NLLConfig | None = None):
        self.cfg = cfg or NLLConfig()

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        model, K = ctx.model, self.cfg.k
        ctx.reseed(4)
        log_z, normalized = log_normalizer(model.prior, self.cfg.log_z_samples, ctx.device)
        n_test = min(self.cfg.max_test or ctx.test_size, ctx.test_size)
        # Decode about LATENTS_PER_DECODE latents at once: K x B images of every modality would not fit.
        chunk = max(1, LATENTS_PER_DECODE // ctx.batch_size)
        task = ctx.task("importance-sampled NLL", n_test)
        nll = []
        for batch in ctx.test_batches(limit=n_test):
            posterior, private = model.encode(batch.x, batch.mask)
            log_w = []
            for start in range(0, K, chunk):
                k = min(chunk, K - start)
                z = posterior.sample(k)  # (k, B, D)
                terms = model.prior.log_prob(z) - log_z - posterior.log_prob(z)  # (k, B)
                w = None
                if private is not None:
                    w = dist.rsample(private.family, private.loc, private.scale, k)  # (k, B, M, W)
                    log_p = dist.log_prob(private.family, w, torch.zeros_like(w), torch.ones_like(w)).sum(-1)
                    log_q = dist.log_prob(private.family, w, private.loc, private.scale).sum(-1)  # (k, B, M)
                    terms = terms + ((log_p - log_q) * batch.mask).sum(-1)
                ll = (model.log_likelihood(batch.x, z, w) * batch.mask).sum(-1)  # (k, B)
                log_w.append((terms + ll).double())
            log_px = torch.logsumexp(torch.cat(log_w), 0) - math.log(K)  # (B,)
            nll.append(-log_px.cpu())
            task.advance(len(batch))
        values = torch.cat(nll)
        return {"nll": float(values.mean()), "nll_sem": float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan"),
                "k": K, "n_test": len(values), "log_z": log_z, "normalized": normalized}
