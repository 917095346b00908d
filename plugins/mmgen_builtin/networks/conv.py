"""Convolutional encoder/decoder for PolyMNIST-size images (3 x 28 x 28).

The architecture of the MMVAE/MoPoE/MMVAE+ PolyMNIST experiments (three strided convolutions,
a linear head), with the width configurable so CPU-size and paper-size runs share one module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmgen.config import check_positive


@dataclass
class ConvConfig:
    """Width of the first conv layer (doubled twice) and of the linear layer; ``channels_last``
    runs the convolutions in NHWC layout (faster oneDNN kernels on CPU, tensor cores on GPU)."""

    hidden: int = 32
    fc: int = 128
    channels_last: bool = True

    def __post_init__(self):
        check_positive(self, "hidden", "fc")


def _trunk(channels: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 4, 2, 1), nn.SiLU(),  # 28 -> 14
        nn.Conv2d(hidden, 2 * hidden, 4, 2, 1), nn.SiLU(),  # 14 -> 7
        nn.Conv2d(2 * hidden, 4 * hidden, 3, 2, 1), nn.SiLU(),  # 7 -> 4
    )


def _use_memory_format(convs: nn.Module, cfg: ConvConfig) -> torch.memory_format:
    """Put the conv weights in the layout ``cfg`` asks for; returns it for the inputs.

    The layout is a storage detail: outputs, gradients and checkpoints are the same tensors (up
    to floating-point summation order), and ``load_state_dict`` copies into the existing layout.
    """
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    convs.to(memory_format=fmt)
    return fmt


class ConvEncoder(nn.Module):
    """Image ``(B, C, H, W)`` -> ``(loc, raw_scale)``, each ``(B, out_dim)``."""

    def __init__(self, cfg: ConvConfig, shape: tuple[int, ...], out_dim: int):
        super().__init__()
        self.trunk = _trunk(shape[0], cfg.hidden)
        with torch.no_grad():
            flat = self.trunk(torch.zeros(1, *shape)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, cfg.fc), nn.SiLU(), nn.Linear(cfg.fc, 2 * out_dim))
        self.memory_format = _use_memory_format(self.trunk, cfg)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = self.head(self.trunk(x.contiguous(memory_format=self.memory_format))).chunk(2, dim=-1)
        return loc, raw


class ConvDecoder(nn.Module):
    """Latent ``(N, in_dim)`` -> image location ``(N, C, H, W)`` in [0, 1] (sigmoid)."""

    def __init__(self, cfg: ConvConfig, shape: tuple[int, ...], in_dim: int):
        super().__init__()
        c, h, w = shape
        self.shape = shape
        # The deconvolutions make 8 s - 4 pixels from s (4 -> 28): start at the least s that covers
        # the image, and crop the rest.
        self.start = (4 * cfg.hidden, -(-(h + 4) // 8), -(-(w + 4) // 8))
        self.fc = nn.Sequential(nn.Linear(in_dim, cfg.fc), nn.SiLU(),
                                nn.Linear(cfg.fc, self.start[0] * self.start[1] * self.start[2]), nn.SiLU())
        hid = cfg.hidden
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(4 * hid, 2 * hid, 3, 2, 1), nn.SiLU(),  # 4 -> 7
            nn.ConvTranspose2d(2 * hid, hid, 4, 2, 1), nn.SiLU(),  # 7 -> 14
            nn.ConvTranspose2d(hid, c, 4, 2, 1),  # 14 -> 28
        )
        self.memory_format = _use_memory_format(self.deconv, cfg)

    def forward(self, z: Tensor) -> Tensor:
        out = self.deconv(self.fc(z).view(-1, *self.start).contiguous(memory_format=self.memory_format))
        return torch.sigmoid(out[..., : self.shape[1], : self.shape[2]])
