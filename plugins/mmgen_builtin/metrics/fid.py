"""True FID (Heusel et al. 2017) with Inception-v3, from a weights file the user supplies.

No weights can be downloaded here, so the metric runs only when given a local file
(``--inception-weights PATH``, ``fid.weights=PATH`` or ``$MMGEN_INCEPTION_WEIGHTS``) and is
skipped with a clear reason otherwise. Two files are understood, both plain state dicts:

- pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (the TensorFlow FID network ported;
  recognised by its 1008-way ``fc``): the network of published FIDs, with its pooling quirks;
- torchvision's ``inception_v3_google-0cc3c7bd.pth`` (ImageNet weights, 1000-way ``fc``): close
  to, but not the same numbers as, published FIDs.

The network is written out here (no torchvision dependency); its parameter names match both files.
Images (28 x 28) are resized bilinearly to 299 x 299 and scaled to [-1, 1], as pytorch-fid does;
features are the 2048-d pool3 activations. Inception on a CPU is slow (about 0.1 s per image), so
``max_samples`` caps each set (default 1000; published FIDs use 10,000 and a GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmgen.checkpoint import safe_load
from mmgen.config import check_positive
from mmgen.errors import MMGenError
from mmgen.evaluation import EvalContext, Metric, MetricSkipped, Moments, moments_distance, nanmean, warn_if_few_samples

WEIGHTS_ENV = "MMGEN_INCEPTION_WEIGHTS"


@dataclass
class FIDConfig:
    """The weights file (else ``$MMGEN_INCEPTION_WEIGHTS``), samples per set, Inception batch size."""

    weights: str = ""
    max_samples: int = 1000
    conditional: bool = True  # also x_t generated from all other modalities
    batch_size: int = 50

    def __post_init__(self):
        check_positive(self, "max_samples", "batch_size")


# ----------------------------------------------------------------------------------------------
# Inception-v3 (Szegedy et al. 2016), parameter names as in torchvision and pytorch-fid.
# ----------------------------------------------------------------------------------------------
class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, **kwargs: Any):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg(x: Tensor, tf: bool) -> Tensor:
    # The TF FID graph averages without counting the zero padding; torchvision's port counts it.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=not tf)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int, tf: bool):
        super().__init__()
        self.tf = tf
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg(x, self.tf))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, tf: bool):
        super().__init__()
        self.tf = tf
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x, self.tf))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, tf_pool: str | None):
        super().__init__()
        self.tf_pool = tf_pool  # None (torchvision), "avg" (TF Mixed_7b) or "max" (TF Mixed_7c)
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        # The TF graph's last block max-pools here (a bug in the original, kept for comparability).
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.tf_pool == "max" else _avg(x, self.tf_pool == "avg")
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)


class InceptionV3(nn.Module):
    """Inception-v3 up to pool3: ``(B, 3, 299, 299)`` in [-1, 1] -> ``(B, 2048)``.

    ``tf=True`` builds the TensorFlow FID variant (pytorch-fid's ``FIDInception*`` blocks).
    """

    def __init__(self, tf: bool = True):
        super().__init__()
        self.tf = tf
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32, tf)
        self.Mixed_5c = InceptionA(256, 64, tf)
        self.Mixed_5d = InceptionA(288, 64, tf)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128, tf)
        self.Mixed_6c = InceptionC(768, 160, tf)
        self.Mixed_6d = InceptionC(768, 160, tf)
        self.Mixed_6e = InceptionC(768, 192, tf)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg" if tf else None)
        self.Mixed_7c = InceptionE(2048, "max" if tf else None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 2048)


def load_inception(path: str | Path) -> tuple[InceptionV3, str]:
    """Build Inception-v3 from a state-dict file; returns the network and which variant it is."""
    path = Path(path)
    state = safe_load(path, "Inception weights file", "cannot be read as a state dict")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MMGenError(f"Inception weights {path} are not a state dict")
    fc = state.get("fc.weight")
    tf = fc is None or fc.size(0) == 1008  # pytorch-fid's TF port keeps TF's 1008 classes
    net = InceptionV3(tf=tf)
    missing, _ = net.load_state_dict(state, strict=False)  # AuxLogits and fc are not needed
    if missing:
        raise MMGenError(f"{path} is not an Inception-v3 state dict ({len(missing)} tensors missing, e.g. {missing[0]})")
    return net.eval(), ("pytorch-fid (TF FID network)" if tf else "torchvision ImageNet")


def inception_input(x: Tensor) -> Tensor:
    """Images ``(B, C, H, W)`` in [0, 1] -> ``(B, 3, 299, 299)`` in [-1, 1], as pytorch-fid."""
    if x.size(1) == 1:
        x = x.expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return 2 * x - 1


# ----------------------------------------------------------------------------------------------
# The metric
# ----------------------------------------------------------------------------------------------
class InceptionFID(Metric):
    """FID per image modality: N joint samples, and x_t from all other modalities, vs the test set."""

    name = "fid"
    requires_classifiers = False
    better = "lower"
    headlines = (("unconditional_mean", "FID joint"), ("conditional_mean", "FID cross"))
    outputs = ("unconditional", "unconditional_mean", "conditional", "conditional_mean", "n_generated", "n_real",
               "network")

    @classmethod
    def output_shapes(cls, num_modalities: int) -> dict[str, tuple[int, ...]]:
        return {"unconditional": (num_modalities,), "conditional": (num_modalities,)}

    def __init__(self, cfg: FIDConfig | None = None):
        self.cfg = cfg or FIDConfig()

    def _update(self, net: nn.Module, moments: Moments, x: Tensor) -> None:
        for start in range(0, x.size(0), self.cfg.batch_size):
            moments.update(net(inception_input(x[start:start + self.cfg.batch_size])))

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        weights = self.cfg.weights or os.environ.get(WEIGHTS_ENV, "")
        if not weights:
            raise MetricSkipped(f"no Inception-v3 weights (pass --inception-weights PATH or set {WEIGHTS_ENV}; "
                                "none can be downloaded here); see FD for a classifier-feature distance")
        net, variant = load_inception(weights)
        net.to(ctx.device)
        M = ctx.num_modalities
        images = [m for m, spec in enumerate(ctx.test_set.modalities)
                  if len(spec.shape) == 3 and spec.shape[0] in (1, 3)]
        if not images:
            raise MetricSkipped("FID needs image modalities with 1 or 3 channels")
        n_real = min(self.cfg.max_samples, ctx.test_size)
        n_gen = min(self.cfg.max_samples, ctx.n)
        conditional = self.cfg.conditional and M >= 2
        task = ctx.task("FID (Inception-v3)", len(images) * (n_real + n_gen + (n_real if conditional else 0)))
        real = {m: Moments() for m in images}
        cond = {m: Moments() for m in images}
        ctx.reseed(6)
        for batch in ctx.test_batches(limit=n_real):
            for m in images:
                self._update(net, real[m], batch.x[m][batch.mask[:, m]])
                if conditional:
                    others = tuple(i for i in range(M) if i != m)
                    part = ctx.observing(batch, others)  # as FD: rows that observe every other modality
                    if part is not None:
                        self._update(net, cond[m], ctx.generate_targets(part, others, [m])[m])
            task.advance(len(images) * len(batch) * (2 if conditional else 1))
        joint = {m: Moments() for m in images}
        ctx.reseed(5)
        for start in range(0, n_gen, ctx.batch_size):
            b = min(ctx.batch_size, n_gen - start)
            xs = ctx.model.generate(b, ctx.device)
            for m in images:
                self._update(net, joint[m], xs[m])
            task.advance(len(images) * b)
        unconditional = [moments_distance(joint[m], real[m]) if m in images else None for m in range(M)]
        out: dict[str, Any] = {"unconditional": unconditional, "unconditional_mean": nanmean(unconditional)}
        if conditional:
            per_target = [moments_distance(cond[m], real[m]) if m in images else None for m in range(M)]
            out.update({"conditional": per_target, "conditional_mean": nanmean(per_target)})
        out.update({"n_generated": n_gen, "n_real": n_real, "network": variant})
        warn_if_few_samples("fid", [*joint.values(), *real.values(), *(cond.values() if conditional else [])])
        return out
