"""Gaussian prior N(0, s^2 I) on the shared latent (MVAE, MoPoE-VAE); optionally learned scale."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmgen.config import check_positive
from mmgen import distributions as dist
from mmgen.latent import Prior


@dataclass
class FixedPriorConfig:
    """Prior scale, and whether it is learned (MMVAE learns it through the ELBO)."""

    scale: float = 1.0
    learn_scale: bool = False

    def __post_init__(self):
        check_positive(self, "scale")


class FamilyPrior(Prior):
    """A factorised zero-mean prior of one distribution family."""

    family = "gaussian"

    def __init__(self, cfg: FixedPriorConfig, dim: int):
        super().__init__(dim)
        raw = torch.full((dim,), float(cfg.scale)).log()
        self.log_scale = nn.Parameter(raw, requires_grad=cfg.learn_scale)

    def log_prob(self, z: Tensor, frozen: bool = False) -> Tensor:
        log_scale = self.log_scale.detach() if frozen else self.log_scale
        return dist.log_prob(self.family, z, torch.zeros_like(z), log_scale.exp()).sum(-1)

    def log_prob_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        scale = self.log_scale.detach().exp()
        grad = -z / scale**2 if self.family == "gaussian" else -torch.sign(z) / scale
        return self.log_prob(z, frozen=True), grad

    def sample(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        scale = self.log_scale.detach().exp().to(device)
        return dist.make(self.family, torch.zeros(n, self.dim, device=device), scale.expand(n, -1)).sample()


class GaussianPrior(FamilyPrior):
    """N(0, s^2 I)."""

    family = "gaussian"
