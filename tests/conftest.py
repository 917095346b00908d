"""Shared fixtures: an isolated dataset cache, a fresh plugin manager, a tiny run config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mmgen.plugins import create_plugin_manager

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

#: A run config small enough to train in about a second on one CPU core.
TINY = [
    "name=tiny",
    "data.name=default", "data.modalities=2", "data.train_size=64", "data.test_size=16",
    "model.latent_dim=4", "model.encoder.name=mlp", "model.encoder.hidden=16", "model.encoder.depth=1",
    "model.decoder.name=mlp", "model.decoder.hidden=16", "model.decoder.depth=1",
    "train.batch_size=8", "train.log_every=1", "train.checkpoint_every=4", "train.progress=false",
    "train.device=cpu",
]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Datasets built during tests go to a temporary cache, never the user's."""
    old = os.environ.get("MMGEN_CACHE")
    os.environ["MMGEN_CACHE"] = str(tmp_path_factory.mktemp("mmgen-cache"))
    yield
    if old is None:
        os.environ.pop("MMGEN_CACHE", None)
    else:
        os.environ["MMGEN_CACHE"] = old


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(1)


@pytest.fixture
def plugins():
    """A fresh plugin manager with every installed plugin loaded."""
    return create_plugin_manager()


@pytest.fixture
def tiny_overrides():
    return list(TINY)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
