"""A test plugin whose components fail on request, as a plugin under development does.

Loaded through a run config's ``plugins: [tests.plugins.faulty_plugin]`` list. Each component's
``fault`` option picks the failure (empty: none): ``raise`` raises in the plugin's own code, other
values break the component's contract (a wrong return type or shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmgen.evaluation import Metric
from mmgen.hookspecs import hookimpl
from mmgen.latent import InferenceResult
from mmgen_builtin.aggregators.poe import PoE, PoEConfig
from mmgen_builtin.datasets.default import DefaultDataConfig, default_dataset
from mmgen_builtin.inference.amortized import Amortized
from mmgen_builtin.objectives.elbo import Elbo, ElboConfig
from mmgen_builtin.priors.gaussian import FixedPriorConfig, GaussianPrior

__version__ = "0.0.1"


@dataclass
class Fault:
    fault: str = ""


@dataclass
class FaultyDataConfig(DefaultDataConfig):
    fault: str = ""


def faulty_dataset(cfg: FaultyDataConfig, split: str):
    if cfg.fault == "raise":
        raise RuntimeError("cannot parse the annotations")
    return default_dataset(DefaultDataConfig(cfg.modalities, cfg.train_size, cfg.test_size, cfg.seed), split)


class FaultyAggregator(PoE):
    def __init__(self, cfg: Fault, num_modalities: int):
        self.fault = cfg.fault
        super().__init__(PoEConfig(), num_modalities)

    def combine(self, loc, scale, experts):
        loc_c, scale_c = super().combine(loc, scale, experts)
        if self.fault == "raise":
            raise RuntimeError("experts disagree")
        if self.fault == "not_tuple":
            return loc_c
        if self.fault == "shape":
            return loc_c[..., :1], scale_c
        return loc_c, scale_c


class FaultyPrior(GaussianPrior):
    def __init__(self, cfg: Fault, dim: int):
        self.fault = cfg.fault
        super().__init__(FixedPriorConfig(), dim)

    def log_prob(self, z, frozen=False):
        if self.fault == "log_prob_shape":
            return super().log_prob(z, frozen).unsqueeze(-1)
        return super().log_prob(z, frozen)

    def sample(self, n, device="cpu"):
        z = super().sample(n, device)
        return z[:, :1] if self.fault == "sample_shape" else z


class FaultyObjective(Elbo):
    def __init__(self, cfg: Fault):
        self.fault = cfg.fault
        super().__init__(ElboConfig())

    def forward(self, model, batch):
        result = super().forward(model, batch)
        if self.fault == "not_result":
            return result.loss
        if self.fault == "loss_shape":
            result.loss = result.loss.expand(3)
        return result


class FaultyInference(Amortized):
    generator_step = True  # so that training refines

    def __init__(self, cfg: Fault):
        self.fault = cfg.fault
        super().__init__()

    def refine(self, model, z, batch, mask, w=None, keep_chain=False):
        if self.fault == "not_result":
            return z
        if self.fault == "shape":
            return InferenceResult(z[:, :1])
        return InferenceResult(z)


class FaultyMetric(Metric):
    requires_classifiers = False

    def __init__(self, cfg: Fault):
        self.cfg = cfg

    def __call__(self, ctx):
        if self.cfg.fault == "raise":
            raise ZeroDivisionError("no test tuples")
        if self.cfg.fault == "not_dict":
            return [1.0]
        return {"value": 1.0}


@hookimpl
def register_datasets(register):
    register("faulty", faulty_dataset, FaultyDataConfig)


@hookimpl
def register_aggregators(register):
    register("faulty", FaultyAggregator, Fault)


@hookimpl
def register_priors(register):
    register("faulty", FaultyPrior, Fault)


@hookimpl
def register_objectives(register):
    register("faulty", FaultyObjective, Fault)


@hookimpl
def register_inferences(register):
    register("faulty", FaultyInference, Fault)


@hookimpl
def register_metrics(register):
    register("faulty", FaultyMetric, Fault)
