"""A test plugin that injects non-finite values: a prior whose energy turns NaN on chosen calls.

Loaded through a run config's ``plugins: [tests.plugins.nan_plugin]`` list, exactly as a user's
own module would be.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mmgen.hookspecs import hookimpl
from mmgen_builtin.priors.ebm import EBMConfig, EBMPrior

__version__ = "0.0.1"


@dataclass
class NaNEBMConfig(EBMConfig):
    """The EBM's options plus the training steps' loss calls (1-based) on which f(z-) becomes NaN."""

    nan_at: list[int] = field(default_factory=lambda: [3])


class NaNEBM(EBMPrior):
    """An EBM prior whose negative-sample energy is NaN on the listed calls of ``loss``."""

    def __init__(self, cfg: NaNEBMConfig, dim: int):
        super().__init__(cfg, dim)
        self.calls = 0

    def loss(self, z_pos, z_neg):
        if torch.is_grad_enabled():  # training steps only: the no-grad sanity pass is not counted
            self.calls += 1
        out = super().loss(z_pos, z_neg)
        if self.calls in self.cfg.nan_at:
            self._diagnostics["f_neg"] = out.new_tensor(float("nan"))
            out = out * float("nan")
        return out


@hookimpl
def register_priors(register):
    register("nan-ebm", NaNEBM, NaNEBMConfig, "EBM prior that injects NaNs (tests only)")
