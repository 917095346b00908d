"""Residual encoder/decoder of MMVAE+ on PolyMNIST (Palumbo et al. 2023; the ``Enc``/``Dec`` of
epalu/mmvaeplus, packaged in MultiVae as ``EncoderResnetMMNIST``/``DecoderResnetMMNIST``).

Encoder: 3x3 conv to ``hidden`` channels, a residual block, then ``downsamples`` times (3x3
average pool with stride 2, residual block doubling the channels), a linear head. Decoder: the
mirror image with nearest-neighbour upsampling. The defaults are the paper's sizes (64 filters,
28 -> 14 -> 7); ``hidden: 8`` gives a CPU-size network with the same structure.

Differences from the published networks: MMVAE+ encodes w and z with two independent trunks; here
one trunk feeds one linear head for all of ``out_dim`` (an encoder does not know how the model
splits its output). The decoder ends in a sigmoid so its location lies in [0, 1] like every mmgen
decoder (MMVAE+'s output is unbounded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmgen.config import check_finite, check_nonnegative, check_positive


@dataclass
class ResNetConfig:
    """Channels after the first conv (doubled at each downsampling, capped at ``max_channels``),
    the number of 2x down/upsamplings, and the residual branch's scale (0.1 in MMVAE+)."""

    hidden: int = 64
    max_channels: int = 512
    downsamples: int = 2
    residual_scale: float = 0.1

    def __post_init__(self):
        check_positive(self, "hidden", "max_channels")
        check_nonnegative(self, "downsamples")  # 0: one resolution, no pooling or upsampling
        check_finite(self, "residual_scale")


class ResidualBlock(nn.Module):
    """x -> shortcut(x) + s * conv(act(conv(act(x)))), LeakyReLU(0.2) pre-activations (MMVAE+)."""

    def __init__(self, c_in: int, c_out: int, scale: float):
        super().__init__()
        hidden = min(c_in, c_out)
        self.scale = scale
        self.body = nn.Sequential(
            nn.LeakyReLU(0.2), nn.Conv2d(c_in, hidden, 3, padding=1),
            nn.LeakyReLU(0.2), nn.Conv2d(hidden, c_out, 3, padding=1),
        )
        # A 1x1 projection only where the channel count changes.
        self.shortcut = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.scale * self.body(x)


def check_downsamples(cfg: ResNetConfig, shape: tuple[int, ...]) -> None:
    """A ValueError unless each of the ``downsamples`` halvings still has more than one pixel to
    halve (28 x 28: at most 5, 28 -> 14 -> 7 -> 4 -> 2 -> 1); beyond that the encoder pools 1 x 1
    maps and the decoder upsamples far past the image only to crop it."""
    side = min(shape[-2:])
    sizes = [side]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] - 1) // 2 + 1)  # 3x3 average pool, stride 2, padding 1
    if cfg.downsamples > len(sizes) - 1:
        raise ValueError(f"downsamples: {shape[-2]} x {shape[-1]} images can be halved at most {len(sizes) - 1} "
                         f"times ({' -> '.join(map(str, sizes))}), got {cfg.downsamples}")


def _widths(cfg: ResNetConfig) -> list[int]:
    """Channels at each resolution, finest first: hidden, 2 hidden, 4 hidden, ... (capped)."""
    return [min(cfg.hidden * 2**i, cfg.max_channels) for i in range(cfg.downsamples + 1)]


class ResNetEncoder(nn.Module):
    """Image ``(B, C, H, W)`` -> ``(loc, raw_scale)``, each ``(B, out_dim)``."""

    def __init__(self, cfg: ResNetConfig, shape: tuple[int, ...], out_dim: int):
        super().__init__()
        check_downsamples(cfg, shape)
        widths = _widths(cfg)
        layers: list[nn.Module] = [nn.Conv2d(shape[0], widths[0], 3, padding=1),
                                   ResidualBlock(widths[0], widths[0], cfg.residual_scale)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.AvgPool2d(3, stride=2, padding=1), ResidualBlock(c_in, c_out, cfg.residual_scale)]
        self.trunk = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.trunk(torch.zeros(1, *shape)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 2 * out_dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = self.head(self.trunk(x)).chunk(2, dim=-1)
        return loc, raw


class ResNetDecoder(nn.Module):
    """Latent ``(N, in_dim)`` -> image location ``(N, C, H, W)`` in [0, 1] (sigmoid)."""

    def __init__(self, cfg: ResNetConfig, shape: tuple[int, ...], in_dim: int):
        super().__init__()
        check_downsamples(cfg, shape)
        c, h, w = shape
        widths = _widths(cfg)[::-1]  # coarsest first
        factor = 2**cfg.downsamples
        self.shape = tuple(shape)
        self.start = (widths[0], -(-h // factor), -(-w // factor))  # 7 x 7 for 28 x 28
        self.fc = nn.Linear(in_dim, self.start[0] * self.start[1] * self.start[2])
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [ResidualBlock(c_in, c_out, cfg.residual_scale), nn.Upsample(scale_factor=2)]
        layers += [ResidualBlock(widths[-1], widths[-1], cfg.residual_scale),
                   nn.LeakyReLU(0.2), nn.Conv2d(widths[-1], c, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        out = self.body(self.fc(z).view(-1, *self.start))
        return torch.sigmoid(out[..., : self.shape[1], : self.shape[2]])
