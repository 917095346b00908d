"""The multimodal model, assembled from registered components.

One class serves every variant in the paper's comparison: MVAE, MMVAE, MoPoE-VAE and MMVAE+ differ
in the aggregator, prior, objective and whether private latents exist; the paper's model swaps in
an energy-based prior and Langevin inference. The model owns its loss (SPEC section 1.2) and its
optimizer parameter groups; the training loop only reads ``.loss``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mmgen import distributions as dist
from mmgen.config import component_config
from mmgen.data import Batch, ModalitySpec, format_shape
from mmgen.errors import MMGenError, PluginError
from mmgen.latent import (Aggregator, Inference, InferenceResult, Objective, ObjectiveResult, Posterior, Prior,
                          PrivatePosterior)
from mmgen.plugins import BUILTIN
from mmgen.registry import Registry


@dataclass
class StepOutput:
    """What one training step computed: the total loss and detached statistics."""

    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class MultimodalModel(nn.Module):
    """Per-modality encoders and decoders around a shared latent z (and optional private w_m)."""

    def __init__(self, modalities: list[ModalitySpec], encoders: list[nn.Module], decoders: list[nn.Module],
                 aggregator: Aggregator, prior: Prior, inference: Inference, objective: Objective,
                 latent_dim: int, private_dim: int = 0, posterior_family: str = "laplace",
                 scale_param: str = "softmax", likelihood_family: str = "laplace", likelihood_scale: float = 0.75):
        super().__init__()
        self.modalities = modalities
        self.encoders = nn.ModuleList(encoders)
        self.decoders = nn.ModuleList(decoders)
        self.aggregator, self.prior, self.inference, self.objective = aggregator, prior, inference, objective
        self.latent_dim, self.private_dim = latent_dim, private_dim
        self.posterior_family, self.scale_param = posterior_family, scale_param
        self.likelihood_family, self.likelihood_scale = likelihood_family, likelihood_scale
        if private_dim:
            # MMVAE+'s auxiliary priors r_m(w): one learnable scale per modality, used for
            # cross-modal reconstruction.
            self.aux_log_scale = nn.Parameter(torch.zeros(len(modalities), private_dim))

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    # -- encoding --------------------------------------------------------------------------------
    def encode(self, x: list[Tensor], mask: Tensor) -> tuple[Posterior, PrivatePosterior | None]:
        """The joint posterior of z given the observed modalities (and each q(w_m | x_m))."""
        d = self.latent_dim
        locs, raws = zip(*(enc(x_m) for enc, x_m in zip(self.encoders, x)))
        loc, raw = torch.stack(locs, 1), torch.stack(raws, 1)  # (B, M, D + W)
        scale_z = dist.scale_from_raw(raw[..., :d], self.scale_param)
        posterior = self.aggregator(loc[..., :d], scale_z, mask, self.posterior_family)
        private = None
        if self.private_dim:
            scale_w = dist.scale_from_raw(raw[..., d:], self.scale_param)
            private = PrivatePosterior(loc[..., d:], scale_w, self.posterior_family)
        return posterior, private

    # -- private latents (MMVAE+) -----------------------------------------------------------------
    def sample_private(self, private: PrivatePosterior, cover: Tensor, k: int) -> Tensor:
        """w ``(K, S, B, M, W)``: from q(w_m | x_m) where a stratum covers m, else from r(w).

        MMVAE+ (Palumbo et al. 2023): a stratum reconstructs its own modalities with their encoded
        w_m and every other modality with w drawn (reparameterised, so r's scale learns from the
        cross-modal reconstructions) from the auxiliary prior r(w). ``cover`` is ``(S, B, M)``.
        """
        own = dist.rsample(private.family, private.loc, private.scale, k)  # (K, B, M, W)
        aux = dist.rsample(private.family, torch.zeros_like(private.loc), self.aux_scale().expand_as(private.loc), k)
        return torch.where(cover.unsqueeze(-1).unsqueeze(0), own.unsqueeze(1), aux.unsqueeze(1))

    def aux_scale(self) -> Tensor:
        """Scales ``(M, W)`` of the auxiliary priors r_m(w) = family(0, scale_m), one per modality.

        The raw parameter goes through the encoders' own scale map (``model.scale_param``), as in
        MMVAE+ (softmax(raw) * W with its recipe), so r starts at the prior p(w)'s scale 1 there.
        """
        if not self.private_dim:
            return torch.ones(self.num_modalities, 0)
        return dist.scale_from_raw(self.aux_log_scale, self.scale_param)

    def private_log_ratio(self, private: PrivatePosterior, w: Tensor, cover: Tensor) -> Tensor:
        """Sum over covered modalities of log p(w_m) - log q(w_m | x_m), p(w) = family(0, 1); ``(K, S, B)``.

        Uncovered modalities' w come from r(w) and enter no density (MMVAE+'s bound).
        """
        fam = private.family
        log_p = dist.log_prob(fam, w, torch.zeros_like(w), torch.ones_like(w)).sum(-1)
        log_q = dist.log_prob(fam, w, private.loc, private.scale).sum(-1)  # (K, S, B, M)
        # where, not a product: a far-off auxiliary sample must not turn 0 * inf into NaN.
        return torch.where(cover, log_p - log_q, torch.zeros_like(log_q)).sum(-1)

    # -- decoding --------------------------------------------------------------------------------
    def decode(self, m: int, z: Tensor, w: Tensor | None = None) -> Tensor:
        """Decoder m's location for latents ``(..., D)`` (and ``(..., W)``): ``(..., *shape_m)``."""
        h = z if w is None else torch.cat([z, w], -1)
        lead = h.shape[:-1]
        out = self.decoders[m](h.reshape(-1, h.size(-1)))
        return out.reshape(*lead, *out.shape[1:])

    def log_likelihood(self, x: list[Tensor], z: Tensor, w: Tensor | None = None,
                       modalities: list[int] | None = None) -> Tensor:
        """log p(x_m | z[, w_m]) for every modality: z ``(..., B, D)`` -> ``(..., B, M)``.

        ``modalities`` limits decoding to those listed (the others are 0): a conditional chain
        need not pay for decoders whose modality it does not observe.
        """
        out = []
        for m, x_m in enumerate(x):
            if modalities is not None and m not in modalities:
                out.append(z.new_zeros(z.shape[:-1]))
                continue
            loc = self.decode(m, z, None if w is None else w[..., m, :])
            out.append(dist.log_prob_sum(self.likelihood_family, x_m, loc, self.likelihood_scale, x_m.dim() - 1))
        return torch.stack(out, -1)

    # -- learning --------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> StepOutput:
        """The training loss of SPEC section 1.2 on one (device, float) batch.

        Sums the objective's loss (encoder/decoder step, prior frozen), the prior's own loss on
        posterior vs prior samples, and the generator's MLE loss on refined samples. The terms
        touch disjoint parameters or detached samples, so one backward pass equals separate steps.
        """
        result = self.objective(self, batch)
        loss = result.loss
        # Statistics are namespaced by component kind so a report can name the culprit.
        stats = {f"objective/{k}": v for k, v in result.stats.items()}
        if self.prior.learns_from_samples or self.inference.generator_step:
            z0 = result.posterior.sample(1)[0].detach()  # (B, D)
            w = None
            if result.private is not None:
                w = dist.rsample(result.private.family, result.private.loc, result.private.scale, 1)[0].detach()
            refined = self.inference.refine(self, z0, batch, batch.mask, w)
            stats.update({f"inference/{k}": v for k, v in refined.stats.items()})
            z_pos = refined.z.detach()
            if self.prior.learns_from_samples:
                z_neg = self.prior.sample(z_pos.size(0), z_pos.device).detach()
                prior_loss = self.prior.loss(z_pos, z_neg)
                loss = loss + prior_loss
                stats["prior/loss"] = prior_loss.detach()
                stats.update({f"prior/{k}": v for k, v in self.prior.diagnostics().items()})
            if self.inference.generator_step:
                ll = (self.log_likelihood(batch.x, z_pos, w) * batch.mask).sum(-1).mean()
                loss = loss - ll
                stats["inference/generator_ll"] = ll.detach()
        stats["loss"] = loss.detach()
        return StepOutput(loss, stats)

    def stabilize(self, factor: float) -> list[str]:
        """Ask every component to take smaller steps (after a divergence); returns what changed."""
        changes = []
        for kind in ("prior", "inference", "objective", "aggregator"):
            changes += [f"{kind}: {c}" for c in getattr(self, kind).stabilize(factor)]
        return changes

    def component_name(self, kind: str) -> str:
        """The registry name a component was built from (for reports)."""
        return getattr(getattr(self, kind, None), "registry_name", kind)

    def component_label(self, kind: str) -> str:
        """How messages name a component: ``prior 'ebm'``, and ``prior 'vamp' (plugin 'mmgen-vamp')``
        for a third-party plugin's, whose author is the one to tell."""
        plugin = getattr(getattr(self, kind, None), "registry_plugin", None)
        return f"{kind} '{self.component_name(kind)}'" + (f" (plugin '{plugin}')" if plugin not in (None, BUILTIN) else "")

    def param_groups(self) -> list[dict[str, Any]]:
        """The prior's own groups (own learning rate, betas) and one group for the rest."""
        prior_groups = self.prior.param_groups()
        prior_ids = {id(p) for g in prior_groups for p in g["params"]}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in prior_ids]
        return [{"params": rest}, *prior_groups]

    # -- generation ------------------------------------------------------------------------------
    def sample_latents(self, n: int, device: torch.device | str) -> tuple[Tensor, Tensor | None]:
        """z from the prior (Langevin for an EBM) and w from the private prior."""
        z = self.prior.sample(n, device)
        w = None
        if self.private_dim:
            shape = (n, self.num_modalities, self.private_dim)
            w = dist.rsample(self.posterior_family, torch.zeros(shape, device=device),
                             torch.ones(shape, device=device), 1)[0]
        return z, w

    def decode_all(self, z: Tensor, w: Tensor | None = None) -> list[Tensor]:
        """Decoded means of every modality for z ``(N, D)``, clamped to [0, 1]."""
        return [self.decode(m, z, None if w is None else w[:, m]).clamp(0, 1) for m in range(self.num_modalities)]

    @torch.no_grad()
    def generate(self, n: int, device: torch.device | str = "cpu") -> list[Tensor]:
        """Unconditional joint samples: M tensors ``(n, *shape_m)``."""
        z, w = self.sample_latents(n, device)
        return self.decode_all(z, w)

    @torch.no_grad()
    def conditional_latents(self, batch: Batch, given: Tensor, refine: bool = True) -> tuple[Tensor, Tensor | None]:
        """z (and w) for cross-modal generation from the modalities in ``given`` ``(B, M)``.

        With ``refine`` the inference method revises the amortized sample (Langevin "LD refinement").
        Given modalities' private latents come from their encoders; the targets' from the prior
        p(w) = family(0, 1), as MMVAE+ generates at test time (r_m(w) only serves training; it is
        MultiVae's ``reconstruction_option="joint_prior"``, the article's choice).
        """
        posterior, private = self.encode(batch.x, given)
        z = posterior.sample(1)[0]
        w = None
        if private is not None:
            own = dist.rsample(private.family, private.loc, private.scale, 1)[0]
            prior = dist.rsample(private.family, torch.zeros_like(private.loc), torch.ones_like(private.loc), 1)[0]
            w = torch.where(given.unsqueeze(-1), own, prior)
        if refine:
            z = self.inference.refine(self, z, batch, given, w).z
        return z, w

    @torch.no_grad()
    def cross_generate(self, batch: Batch, given: Tensor, refine: bool = True) -> list[Tensor]:
        """Every modality generated from the modalities in ``given`` ``(B, M)``."""
        return self.decode_all(*self.conditional_latents(batch, given, refine))


@torch.no_grad()
def check_network_shapes(spec: ModalitySpec, encoder: nn.Module, decoder: nn.Module, dim: int) -> None:
    """One sample through a modality's encoder and decoder, so that a network that cannot take
    the data's shape (a fixed-size architecture and images of another size) is reported when the
    model is built, naming both shapes, not as a tensor error in the first step's loss."""
    where = f"modality {spec.name}'s {format_shape(spec.shape)} samples"
    out = _probe(encoder, torch.zeros(1, *spec.shape), f"model.encoder: encoder '{encoder.registry_name}' cannot read {where}")
    got = [tuple(t.shape) for t in out] if isinstance(out, (tuple, list)) and len(out) == 2 else None
    if got != [(1, dim), (1, dim)]:
        raise MMGenError(f"model.encoder: encoder '{encoder.registry_name}' must return (loc, raw_scale), {dim} numbers "
                         f"each per sample, for {where}; got {got or type(out).__name__}")
    out = _probe(decoder, torch.zeros(1, dim), f"model.decoder: decoder '{decoder.registry_name}' cannot make {where}")
    if tuple(out.shape[1:]) != tuple(spec.shape):
        raise MMGenError(f"model.decoder: decoder '{decoder.registry_name}' makes {format_shape(tuple(out.shape[1:]))} samples "
                         f"for modality {spec.name}, whose data is {format_shape(spec.shape)}")


def _probe(net: nn.Module, x: Tensor, failure: str) -> Any:
    was_training = net.training
    net.eval()  # (batch norm cannot train on one sample)
    try:
        return net(x)
    except RuntimeError as exc:
        raise MMGenError(f"{failure}: {str(exc).splitlines()[0]}") from None
    finally:
        net.train(was_training)


def _describe(value: Any) -> str:
    """What a component returned, for a contract message: ``a tensor of shape 4 x 3``, ``a list``, ..."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {format_shape(tuple(value.shape)) or '() (a scalar)'}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: ({', '.join(_describe(v) for v in value)})"
    return f"a {type(value).__name__}"


def _is_tensor(value: Any, shape: tuple[int, ...]) -> bool:
    return isinstance(value, Tensor) and tuple(value.shape) == shape


def check_component_outputs(model: MultimodalModel, batch: Batch) -> None:
    """Call the aggregator, prior, objective and inference method once on ``batch`` (on the
    device, floats) and check what each returns against its kind's contract (docs/plugins.md), so
    that a component returning the wrong type or shape is reported as one line naming it and its
    plugin, not as a tensor error deep in another component or in the training loop. Consumes
    random numbers: callers that must not perturb a run's stream fork it."""
    b, d, m = len(batch), model.latent_dim, model.num_modalities

    def who(kind: str) -> str:
        return f"model.{kind}: {model.component_label(kind)}"

    agg = model.aggregator
    c = agg.cover.size(0)
    like = batch.x[0]
    loc = torch.zeros(b, m, d, device=like.device, dtype=like.dtype)
    experts = agg.cover.unsqueeze(0) & batch.mask.unsqueeze(1)
    out = agg.combine(loc, torch.ones_like(loc), experts)
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(_is_tensor(t, (b, c, d)) for t in out)):
        raise PluginError(f"{who('aggregator')}: combine must return (loc, scale), each {b} x {c} x {d} (batch x "
                          f"components x latent) for {b} samples, {c} component{'s' if c != 1 else ''} and latent_dim {d}; got {_describe(out)}")
    prior = model.prior
    z = prior.sample(b, like.device)
    if not _is_tensor(z, (b, d)):
        raise PluginError(f"{who('prior')}: sample({b}) must return a {b} x {d} tensor (latent_dim {d}); got {_describe(z)}")
    for lead in ((b,), (2, b)):
        log_prob = prior.log_prob(z.expand(*lead, d))
        if not _is_tensor(log_prob, lead):
            raise PluginError(f"{who('prior')}: log_prob of {format_shape((*lead, d))} latents must return "
                              f"{format_shape(lead)} values (summed over the last dim); got {_describe(log_prob)}")
    result = model.objective(model, batch)
    if not isinstance(result, ObjectiveResult):
        raise PluginError(f"{who('objective')}: forward must return an mmgen.latent.ObjectiveResult; got {_describe(result)}")
    if not _is_tensor(result.loss, ()):
        raise PluginError(f"{who('objective')}: ObjectiveResult.loss must be a scalar tensor; got {_describe(result.loss)}")
    if not isinstance(result.posterior, Posterior):
        raise PluginError(f"{who('objective')}: ObjectiveResult.posterior must be the mmgen.latent.Posterior it encoded "
                          f"(model.encode gives it); got {_describe(result.posterior)}")
    w = None
    if result.private is not None:
        w = dist.rsample(result.private.family, result.private.loc, result.private.scale, 1)[0]
    refined = model.inference.refine(model, result.posterior.sample(1)[0], batch, batch.mask, w)
    if not isinstance(refined, InferenceResult):
        raise PluginError(f"{who('inference')}: refine must return an mmgen.latent.InferenceResult; got {_describe(refined)}")
    if not _is_tensor(refined.z, (b, d)):
        raise PluginError(f"{who('inference')}: InferenceResult.z must be {b} x {d} (batch x latent); got {_describe(refined.z)}")


def build_model(cfg: dict[str, Any], registry: Registry, modalities: list[ModalitySpec]) -> MultimodalModel:
    """Assemble the model a resolved config describes; builders receive their collaborators."""
    mcfg = cfg["model"]
    d, w = mcfg["latent_dim"], mcfg["private_dim"]
    M = len(modalities)

    def build(kind: str, section: str, *args: Any) -> Any:
        sec = mcfg[section]
        component = registry.get(kind, sec["name"])
        try:
            built = component.factory(component_config(registry, kind, sec), *args)
        except ValueError as exc:  # what a config alone cannot tell, e.g. a setting too large for the data's shape
            raise MMGenError(f"model.{section}: {exc}") from exc
        built.registry_name = sec["name"]  # reports name the component as the config does
        built.registry_plugin = component.plugin
        return built

    encoders = [build("encoder", "encoder", spec.shape, d + w) for spec in modalities]
    decoders = [build("decoder", "decoder", spec.shape, d + w) for spec in modalities]
    for spec, encoder, decoder in zip(modalities, encoders, decoders):
        check_network_shapes(spec, encoder, decoder, d + w)
    aggregator = build("aggregator", "aggregator", M)
    if mcfg["posterior_family"] not in aggregator.families:
        raise MMGenError(
            f"model.posterior_family: aggregator '{mcfg['aggregator']['name']}' needs one of "
            f"{', '.join(aggregator.families)}, got '{mcfg['posterior_family']}'"
        )
    return MultimodalModel(
        modalities, encoders, decoders,
        aggregator=aggregator,
        prior=build("prior", "prior", d),
        inference=build("inference", "inference"),
        objective=build("objective", "objective"),
        latent_dim=d, private_dim=w,
        posterior_family=mcfg["posterior_family"], scale_param=mcfg["scale_param"],
        likelihood_family=mcfg["likelihood"]["family"], likelihood_scale=mcfg["likelihood"]["scale"],
    )
