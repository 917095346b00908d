"""Laplace prior on the shared latent (MMVAE, MMVAE+)."""

from __future__ import annotations

from .gaussian import FamilyPrior


class LaplacePrior(FamilyPrior):
    """Laplace(0, s), factorised."""

    family = "laplace"
