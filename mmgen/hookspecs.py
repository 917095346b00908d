"""Hook specifications: what a plugin may contribute.

One hook per component kind, shaped ``register_<kind>s(register)``. ``register`` takes
``(name, factory, config=None, summary=None)``: ``factory`` builds the component (see
docs/plugins.md for each kind's constructor signature) and ``config`` is its dataclass.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("mmgen")
hookimpl = pluggy.HookimplMarker("mmgen")


# -- data ------------------------------------------------------------------------------------
@hookspec
def register_datasets(register):
    """Register multimodal datasets: ``factory(cfg, split) -> MultimodalDataset``."""


# -- networks --------------------------------------------------------------------------------
@hookspec
def register_encoders(register):
    """Register per-modality encoders: ``factory(cfg, shape, out_dim) -> nn.Module``.

    The module maps ``(B, *shape)`` images in [0, 1] to ``(loc, raw_scale)``, each ``(B, out_dim)``.
    """


@hookspec
def register_decoders(register):
    """Register per-modality decoders: ``factory(cfg, shape, in_dim) -> nn.Module``.

    The module maps latents ``(..., in_dim)`` to the likelihood's location ``(..., *shape)``.
    """


# -- latent space ----------------------------------------------------------------------------
@hookspec
def register_aggregators(register):
    """Register aggregators: ``factory(cfg, num_modalities) -> Aggregator`` (mmgen.latent)."""


@hookspec
def register_priors(register):
    """Register priors on the shared latent: ``factory(cfg, dim) -> Prior`` (mmgen.latent)."""


@hookspec
def register_inferences(register):
    """Register inference methods: ``factory(cfg) -> Inference`` (mmgen.latent)."""


# -- learning and evaluation -----------------------------------------------------------------
@hookspec
def register_objectives(register):
    """Register training objectives: ``factory(cfg) -> Objective`` (mmgen.latent)."""


@hookspec
def register_metrics(register):
    """Register evaluation metrics: ``factory(cfg) -> Metric``."""


# -- command line ----------------------------------------------------------------------------
@hookspec
def register_commands(cli):
    """Add commands to the ``mmgen`` Typer app ``cli`` (e.g. ``cli.command()(fn)``)."""
