"""An example mmgen plugin: a learnable Gaussian-mixture prior and one CLI command.

Everything a plugin does goes through hooks: ``register_priors`` receives a ``register``
callable, and the prior's config dataclass makes its options (``components``, ``init_scale``)
valid config keys, e.g. ``mmgen train --prior gmm model.prior.components=20``. Its
``__post_init__`` range-checks them, so ``model.prior.components=0`` is a one-line config error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmgen.config import check_finite, check_positive, range_error
from mmgen.errors import MMGenError
from mmgen.hookspecs import hookimpl
from mmgen.latent import Prior

__version__ = "0.1.0"


@dataclass
class GMMPriorConfig:
    """Number of mixture components and the initial spread of their means."""

    components: int = 10
    init_scale: float = 1.0

    def __post_init__(self):
        check_positive(self, "components")
        check_finite(self, "init_scale")


class GMMPrior(Prior):
    """p(z) = 1/C sum_c N(z; mu_c, diag(s_c^2)), means and scales learned through the ELBO."""

    def __init__(self, cfg: GMMPriorConfig, dim: int):
        super().__init__(dim)
        self.loc = nn.Parameter(torch.randn(cfg.components, dim) * cfg.init_scale)
        self.log_scale = nn.Parameter(torch.zeros(cfg.components, dim))

    def log_prob(self, z: Tensor, frozen: bool = False) -> Tensor:
        loc, log_scale = (self.loc.detach(), self.log_scale.detach()) if frozen else (self.loc, self.log_scale)
        diff = (z.unsqueeze(-2) - loc) / log_scale.exp()  # (..., C, D)
        per = (-0.5 * diff.pow(2) - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(per, -1) - math.log(loc.size(0))

    def sample(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        c = torch.randint(0, self.loc.size(0), (n,), device=device)
        return (self.loc.detach()[c] + self.log_scale.detach()[c].exp() * torch.randn(n, self.dim, device=device))


@hookimpl
def register_priors(register):
    register("gmm", GMMPrior, GMMPriorConfig, "Learnable mixture-of-Gaussians prior (example plugin)")


@hookimpl
def register_commands(cli):
    from mmgen.cli.common import user_errors  # an MMGenError becomes `error: ...`, exit 2, no traceback

    @cli.command("example-prior-info")
    @user_errors
    def example_prior_info(components: int = 10, dim: int = 2) -> None:
        """Print the example GMM prior's parameter count (shows how plugins add commands)."""
        for option, value in (("--components", components), ("--dim", dim)):
            if error := range_error(option, value, positive=True):
                raise MMGenError(error)
        prior = GMMPrior(GMMPriorConfig(components=components), dim)
        print(f"gmm prior: {sum(p.numel() for p in prior.parameters())} parameters")
