"""The run-config options shared by ``train``, ``config show`` and friends."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

Recipe = Annotated[Optional[str], typer.Option("--recipe", "-r", help="Recipe name in configs/ (e.g. mmvae) or a YAML path.")]
Prior = Annotated[Optional[str], typer.Option(help="Prior on the shared latent (see `mmgen plugins`), e.g. ebm, laplace.")]
Agg = Annotated[Optional[str], typer.Option("--agg", help="Aggregator: moe, poe, mopoe, ...")]
Inference = Annotated[Optional[str], typer.Option(help="Inference method: amortized, langevin, ...")]
Encoder = Annotated[Optional[str], typer.Option(help="Encoder of every modality: conv, mlp, resnet, ...")]
Decoder = Annotated[Optional[str], typer.Option(help="Decoder of every modality: conv, mlp, resnet, ...")]
Data = Annotated[Optional[str], typer.Option(help="Dataset name, optionally NAME:PATH (e.g. polymnist:/data/PolyMNIST).")]
ConfigFile = Annotated[Optional[str], typer.Option("--config", "-c", help="YAML file merged after the recipe.")]
Out = Annotated[Optional[str], typer.Option(help="Run directory (default runs/<name>-<time>).")]
Epochs = Annotated[Optional[int], typer.Option(help="Number of epochs.")]
MaxSteps = Annotated[Optional[int], typer.Option("--max-steps", help="Stop after this many optimizer steps.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Training batch size.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed.")]
Device = Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.")]
Overrides = Annotated[Optional[list[str]], typer.Argument(help="key.path=value overrides, applied last (e.g. model.latent_dim=32).")]


def shortcuts(prior: str | None = None, agg: str | None = None, inference: str | None = None,
              data: str | None = None, out: str | None = None, epochs: int | None = None,
              max_steps: int | None = None, batch_size: int | None = None, seed: int | None = None,
              device: str | None = None, encoder: str | None = None, decoder: str | None = None) -> dict[str, Any]:
    """Map the CLI shortcut options to config paths (only those given)."""
    values: dict[str, Any] = {
        "model.prior.name": prior, "model.aggregator.name": agg, "model.inference.name": inference,
        "model.encoder.name": encoder, "model.decoder.name": decoder,
        "out": out, "train.epochs": epochs, "train.max_steps": max_steps,
        "train.batch_size": batch_size, "seed": seed, "train.device": device,
    }
    if data:
        name, _, path = data.partition(":")
        values["data.name"] = name
        if path:
            values["data.path"] = path
    return {k: v for k, v in values.items() if v is not None}
