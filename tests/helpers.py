"""Helpers for tests: build a tiny model, batch and config without the CLI."""

from __future__ import annotations

import torch
from torch import nn

from mmgen.config import component_config, compose, resolve
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


def build(plugins, kind, *args, **section):
    """A registered component from its config section (``name`` plus options)."""
    reg = plugins.registry
    return reg.get(kind, section["name"]).factory(component_config(reg, kind, section), *args)


class LinearEncoder(nn.Module):
    """An encoder whose loc and raw scale are each affine in x."""

    def __init__(self, n: int, d: int):
        super().__init__()
        self.loc, self.raw = nn.Linear(n, d), nn.Linear(n, d)

    def forward(self, x):
        return self.loc(x), self.raw(x)
