"""Fully connected encoder/decoder for any modality shape: tiny tests and non-image modalities."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmgen.config import check_nonnegative, check_positive


@dataclass
class MLPConfig:
    """Hidden width and number of hidden layers."""

    hidden: int = 128
    depth: int = 2

    def __post_init__(self):
        check_positive(self, "hidden")
        check_nonnegative(self, "depth")


def _mlp(n_in: int, n_out: int, cfg: MLPConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(cfg.depth):
        layers += [nn.Linear(n_in if i == 0 else cfg.hidden, cfg.hidden), nn.SiLU()]
    layers.append(nn.Linear(cfg.hidden if cfg.depth else n_in, n_out))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Flattened sample -> ``(loc, raw_scale)``, each ``(B, out_dim)``."""

    def __init__(self, cfg: MLPConfig, shape: tuple[int, ...], out_dim: int):
        super().__init__()
        self.net = _mlp(math.prod(shape), 2 * out_dim, cfg)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = self.net(x.flatten(1)).chunk(2, dim=-1)
        return loc, raw


class MLPDecoder(nn.Module):
    """Latent ``(N, in_dim)`` -> location ``(N, *shape)`` in [0, 1] (sigmoid)."""

    def __init__(self, cfg: MLPConfig, shape: tuple[int, ...], in_dim: int):
        super().__init__()
        self.shape = tuple(shape)
        self.net = _mlp(in_dim, math.prod(shape), cfg)

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.net(z)).view(-1, *self.shape)
