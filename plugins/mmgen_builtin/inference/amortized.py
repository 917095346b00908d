"""Amortized inference: the encoder's samples are the posterior samples (every standard VAE)."""

from __future__ import annotations

from torch import Tensor

from mmgen.latent import Inference, InferenceResult


class Amortized(Inference):
    """Returns the aggregator's samples unchanged."""

    def __init__(self, cfg: None = None):
        super().__init__()

    def refine(self, model, z: Tensor, batch, mask, w=None, keep_chain: bool = False) -> InferenceResult:
        return InferenceResult(z)
