"""``mmgen config show`` and ``mmgen validate``: the resolved config, without training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmgen.cli import options as o
from mmgen.cli.common import out_console, resolved_config, user_errors
from mmgen.config import list_recipes, to_yaml

config_app = typer.Typer(help="Inspect run configurations.", no_args_is_help=True)


@config_app.command("show")
@user_errors
def show(
    recipe: o.Recipe = None, prior: o.Prior = None, agg: o.Agg = None, inference: o.Inference = None,
    encoder: o.Encoder = None, decoder: o.Decoder = None, data: o.Data = None, config: o.ConfigFile = None,
    out: o.Out = None, epochs: o.Epochs = None,
    max_steps: o.MaxSteps = None, batch_size: o.BatchSize = None, seed: o.Seed = None, device: o.Device = None,
    overrides: o.Overrides = None,
) -> None:
    """Print the fully resolved config that `mmgen train` with the same options would run."""
    short = o.shortcuts(prior, agg, inference, data, out, epochs, max_steps, batch_size, seed, device, encoder, decoder)
    cfg, _ = resolved_config(recipe, config, short, overrides)
    typer.echo(to_yaml(cfg), nl=False)


@config_app.command("recipes")
def recipes() -> None:
    """List the recipes found in configs/."""
    for name in list_recipes():
        typer.echo(name)


@user_errors
def validate(file: Annotated[Path, typer.Argument(help="A run config or recipe YAML.")]) -> None:
    """Check a config file against the schema and every chosen component; report all errors at once."""
    resolved_config(None, str(file), {}, [])
    out_console.print(f"[green]ok:[/] {file} is a valid mmgen config")
