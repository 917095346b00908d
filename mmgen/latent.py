"""The latent-space vocabulary shared by every component: posteriors, and the base classes of
aggregators, priors, inference methods and objectives.

Shapes: B batch, M modalities, C mixture components (subsets of modalities), S strata sampled
by an objective (C when stratified, else 1), K samples per datapoint, D shared-latent size.
"""

from __future__ import annotations

import abc
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mmgen import distributions as dist

if TYPE_CHECKING:  # pragma: no cover
    from mmgen.data import Batch
    from mmgen.model import MultimodalModel


# ----------------------------------------------------------------------------------------------
# Subsets and masks: one implementation for every aggregator.
# ----------------------------------------------------------------------------------------------
def nonempty_subsets(num_modalities: int, max_size: int | None = None) -> list[tuple[int, ...]]:
    """All non-empty subsets of ``range(M)``, by size then lexicographically."""
    top = num_modalities if max_size is None else max_size
    return [s for r in range(1, top + 1) for s in itertools.combinations(range(num_modalities), r)]


def subsets_to_mask(subsets: list[tuple[int, ...]], num_modalities: int) -> Tensor:
    """``(C, M)`` bool matrix, row c marking the modalities of subset c."""
    mask = torch.zeros(len(subsets), num_modalities, dtype=torch.bool)
    for c, subset in enumerate(subsets):
        mask[c, list(subset)] = True
    return mask


def component_weights(experts: Tensor) -> Tensor:
    """Mixture weights over components given which experts each one uses for each datapoint.

    ``experts`` is ``(B, C, M)``: component c's subset restricted to datapoint b's observed
    modalities. A component gets weight when it uses at least one expert and no earlier component
    uses exactly the same experts, so with missing modalities every aggregator becomes its own
    definition applied to the observed set (MoPoE: the distinct non-empty observed subsets).
    """
    bits = (2 ** torch.arange(experts.size(-1), device=experts.device)).to(torch.long)
    code = (experts.long() * bits).sum(-1)  # (B, C)
    same = code[:, :, None] == code[:, None, :]  # (B, C, C)
    earlier = torch.ones(code.size(1), code.size(1), dtype=torch.bool, device=code.device).tril(-1)
    duplicate = (same & earlier).any(-1)
    keep = (code > 0) & ~duplicate
    weight = keep.to(torch.get_default_dtype())
    return weight / weight.sum(-1, keepdim=True).clamp_min(1.0)


# ----------------------------------------------------------------------------------------------
# The joint posterior.
# ----------------------------------------------------------------------------------------------
@dataclass
class Strata:
    """Samples drawn per mixture component (stratified) or from the mixture as a whole."""

    z: Tensor  # (K, S, B, D)
    weight: Tensor  # (S, B), columns sum to 1
    cover: Tensor  # (S, B, M) bool: the experts behind each stratum


@dataclass
class Posterior:
    """q(z | x_S) as a weighted mixture of C components (PoE: C = 1, MoE: C = M, MoPoE: 2^M - 1)."""

    loc: Tensor  # (B, C, D)
    scale: Tensor  # (B, C, D)
    weight: Tensor  # (B, C), rows sum to 1; 0 for unused components
    experts: Tensor  # (B, C, M) bool
    family: str

    def log_prob(self, z: Tensor) -> Tensor:
        """Mixture log-density of ``z`` with shape ``(..., B, D)``; returns ``(..., B)``."""
        per = dist.log_prob(self.family, z.unsqueeze(-2), self.loc, self.scale).sum(-1)  # (..., B, C)
        return torch.logsumexp(per + torch.log(self.weight), dim=-1)

    def rsample_strata(self, k: int, stratified: bool = True) -> Strata:
        """Reparameterised samples: ``k`` from every used component (stratified, as in MMVAE) or
        ``k`` from one component per datapoint drawn by weight."""
        if stratified:
            z = dist.rsample(self.family, self.loc, self.scale, k)  # (K, B, C, D)
            return Strata(z.transpose(1, 2), self.weight.T, self.experts.transpose(0, 1))
        choice = torch.multinomial(self.weight, 1)  # (B, 1)
        loc = self.loc.gather(1, choice[..., None].expand(-1, -1, self.loc.size(-1)))
        scale = self.scale.gather(1, choice[..., None].expand(-1, -1, self.scale.size(-1)))
        cover = self.experts.gather(1, choice[..., None].expand(-1, -1, self.experts.size(-1)))
        z = dist.rsample(self.family, loc, scale, k)  # (K, B, 1, D)
        ones = torch.ones_like(choice, dtype=loc.dtype)
        return Strata(z.transpose(1, 2), ones.T, cover.transpose(0, 1))

    def sample(self, k: int = 1) -> Tensor:
        """``k`` independent samples from the mixture, ``(K, B, D)``: each draws its own component
        (importance sampling over q, as the NLL metric does, needs that; ``rsample_strata`` with
        ``stratified=False`` draws all ``k`` from one component per row)."""
        choice = torch.multinomial(self.weight, k, replacement=True)  # (B, K)
        index = choice[..., None].expand(-1, -1, self.loc.size(-1))
        loc, scale = self.loc.gather(1, index), self.scale.gather(1, index)  # (B, K, D)
        return dist.rsample(self.family, loc, scale, 1)[0].transpose(0, 1)

    def mean(self) -> Tensor:
        """The mixture mean, ``(B, D)``."""
        return (self.weight.unsqueeze(-1) * self.loc).sum(1)


@dataclass
class PrivatePosterior:
    """q(w_m | x_m) for modality-private latents (MMVAE+), one factor per modality."""

    loc: Tensor  # (B, M, W)
    scale: Tensor  # (B, M, W)
    family: str


# ----------------------------------------------------------------------------------------------
# Component base classes.
# ----------------------------------------------------------------------------------------------
class Stabilizable:
    """Components with step sizes (Langevin chains) shrink them when training diverges."""

    def stabilize(self, factor: float) -> list[str]:
        """Multiply step sizes by ``factor`` < 1; return a description of each change."""
        return []


class Aggregator(Stabilizable, nn.Module, abc.ABC):
    """Combines per-modality experts into a joint posterior over the shared latent.

    Subclasses choose the components (:meth:`subsets`) and how the experts of one component are
    combined (:meth:`combine`); masking and weighting are shared.
    """

    #: Posterior families the combination is exact for (a product of Laplace experts is not Laplace).
    families: tuple[str, ...] = ("gaussian", "laplace")

    def __init__(self, num_modalities: int):
        super().__init__()
        self.num_modalities = num_modalities
        self.register_buffer("cover", subsets_to_mask(self.subsets(num_modalities), num_modalities), persistent=False)

    @abc.abstractmethod
    def subsets(self, num_modalities: int) -> list[tuple[int, ...]]:
        """The modality subsets that form the mixture's components."""
        ...

    @abc.abstractmethod
    def combine(self, loc: Tensor, scale: Tensor, experts: Tensor) -> tuple[Tensor, Tensor]:
        """Combine experts ``(B, M, D)`` under ``experts`` ``(B, C, M)`` into ``(B, C, D)`` each."""
        ...

    def forward(self, loc: Tensor, scale: Tensor, mask: Tensor, family: str) -> Posterior:
        """``loc``/``scale`` ``(B, M, D)`` of every expert, ``mask`` ``(B, M)`` of observed ones."""
        experts = self.cover.unsqueeze(0) & mask.unsqueeze(1)  # (B, C, M)
        weight = component_weights(experts)
        c_loc, c_scale = self.combine(loc, scale, experts)
        # Unused components must stay finite: a NaN times a zero weight is still NaN.
        used = weight.unsqueeze(-1) > 0
        c_loc = torch.where(used, c_loc, torch.zeros_like(c_loc))
        c_scale = torch.where(used, c_scale, torch.ones_like(c_scale))
        return Posterior(c_loc, c_scale, weight.to(loc.dtype), experts, family)


class Prior(Stabilizable, nn.Module, abc.ABC):
    """A prior over the shared latent. ``log_prob`` may be unnormalised (energy-based priors)."""

    #: True when the prior learns from posterior (positive) and prior (negative) samples.
    learns_from_samples: bool = False

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    @abc.abstractmethod
    def log_prob(self, z: Tensor, frozen: bool = False) -> Tensor:
        """log p(z) summed over the last dim. ``frozen`` stops gradients into the prior's own
        parameters (the ELBO's energy term trains the encoder, never the prior)."""
        ...

    @abc.abstractmethod
    def sample(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """``n`` samples, ``(n, D)``."""
        ...

    def elbo_log_prob(self, z: Tensor) -> Tensor:
        """The prior term of the encoder/decoder objective: :meth:`log_prob`, frozen when the prior
        learns from its own loss. A prior may weight parts of it here (the EBM's ``energy_weight``)
        without changing the density it samples from, refines with and is scored by."""
        return self.log_prob(z, frozen=self.learns_from_samples)

    def log_prob_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(log_prob(z), grad_z log_prob(z))`` without autograd, or ``None`` when the prior has
        no closed form (Langevin then differentiates :meth:`log_prob`)."""
        return None

    def sample_chain(self, n: int, device: torch.device | str = "cpu") -> Tensor | None:
        """The states of the sampler's chain ``(K + 1, n, D)``; ``None`` for direct samplers."""
        return None

    def loss(self, z_pos: Tensor, z_neg: Tensor) -> Tensor:
        """The prior's own learning loss from positive and negative samples (EBMs)."""
        return z_pos.new_zeros(())

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups for the prior (own learning rate, betas, ...)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    def diagnostics(self) -> dict[str, Tensor]:
        """Statistics of the last sampling or loss call, for metrics.jsonl."""
        return {}


@dataclass
class InferenceResult:
    """Posterior samples used for learning the prior and for generation."""

    z: Tensor  # (B, D)
    stats: dict[str, Tensor] = field(default_factory=dict)
    chain: Tensor | None = None  # (K + 1, B, D) when the method was asked to keep it


class Inference(Stabilizable, nn.Module, abc.ABC):
    """Turns amortized posterior samples into the samples the model learns from and generates with."""

    #: True when the model should take a generator MLE step on the refined samples.
    generator_step: bool = False

    @abc.abstractmethod
    def refine(self, model: MultimodalModel, z: Tensor, batch: Batch, mask: Tensor,
               w: Tensor | None = None, keep_chain: bool = False) -> InferenceResult:
        """Refine ``z`` ``(B, D)`` given the modalities ``mask`` ``(B, M)`` of ``batch`` (and the
        private latents ``w`` ``(B, M, W)`` when the model has them). ``keep_chain`` asks an
        iterative method to return its states too."""
        ...


@dataclass
class ObjectiveResult:
    """A training objective's loss, the posterior it encoded, and statistics to log."""

    loss: Tensor
    posterior: Posterior
    private: PrivatePosterior | None = None
    stats: dict[str, Tensor] = field(default_factory=dict)


class Objective(Stabilizable, nn.Module, abc.ABC):
    """A training objective over a batch (ELBO, IWAE, DReG, ...)."""

    @abc.abstractmethod
    def forward(self, model: MultimodalModel, batch: Batch) -> ObjectiveResult:
        ...
