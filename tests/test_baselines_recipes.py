"""Every recipe in configs/ trains from the CLI on a CPU, and its loss falls on a short run.

Each recipe keeps its own components (aggregator, prior, inference, objective, networks); only
sizes shrink: 2 modalities, 64 tuples, batch 8, latent 4, narrow networks.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from mmgen.cli.main import create_app
from mmgen.config import load_yaml
from mmgen.plugins import create_plugin_manager
from tests.conftest import REPO

RECIPES = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
STEPS = 40

#: Narrow settings for whichever option a network's config dataclass has.
NETWORK_SIZES = {"hidden": 8, "fc": 32, "depth": 1}


def recipe_overrides(recipe: str) -> list[str]:
    """Tiny data, sizes and logging; the recipe's component choices stay as they are."""
    raw = load_yaml(REPO / "configs" / f"{recipe}.yaml")
    model = raw.get("model", {})
    registry = create_plugin_manager().registry
    out = [
        "data.name=default", "data.modalities=2", "data.train_size=64", "data.test_size=16",
        "model.latent_dim=4", "train.batch_size=8", "train.epochs=100", "train.log_every=1",
        "train.checkpoint_every=1000", "train.sample_every=0", "train.progress=false", "train.device=cpu",
    ]
    if model.get("private_dim"):
        out.append("model.private_dim=2")
    for section in ("encoder", "decoder"):
        name = model.get(section, {}).get("name", "conv")
        config = registry.get(section, name).config
        fields = {f.name for f in dataclasses.fields(config)} if config else set()
        out += [f"model.{section}.{key}={value}" for key, value in NETWORK_SIZES.items() if key in fields]
    return out


def test_every_recipe_starts_with_the_command_that_runs_it():
    assert {"mmvae", "mvae", "mopoe", "mmvaeplus"} <= set(RECIPES)
    for recipe in RECIPES:
        first = (REPO / "configs" / f"{recipe}.yaml").read_text().splitlines()[0]
        assert first == f"# mmgen train --recipe {recipe}", first


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_from_the_cli_and_its_loss_falls(recipe, tmp_path):
    run_dir = tmp_path / recipe
    args = ["train", "--recipe", recipe, "--max-steps", str(STEPS), "--out", str(run_dir), *recipe_overrides(recipe)]
    result = CliRunner().invoke(create_app(with_plugin_commands=False), args)
    assert result.exit_code == 0, result.output
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == STEPS
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, f"{recipe}: loss {first:.1f} -> {last:.1f}"
    assert (run_dir / "checkpoints" / "final.pt").is_file()
