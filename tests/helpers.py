"""Helpers for tests: build a tiny model, batch and config without the CLI."""

from __future__ import annotations

import torch

from mmgen.config import compose, resolve
from mmgen.data import Batch
from mmgen.model import build_model
from mmgen.train import load_datasets


def tiny_config(plugins, overrides, extra=()):
    """Resolve the tiny config plus ``extra`` overrides."""
    return resolve(compose(overrides=list(overrides) + list(extra)), plugins.registry)


def tiny_model(plugins, overrides, extra=()):
    """(config, model, train_set) for the tiny config."""
    cfg = tiny_config(plugins, overrides, extra)
    train_set, _ = load_datasets(cfg, plugins)
    torch.manual_seed(0)
    return cfg, build_model(cfg, plugins.registry, train_set.modalities), train_set


def float_batch(dataset, n=4) -> Batch:
    return dataset.batch(torch.arange(n)).to("cpu")
