"""A test plugin with a metric where a smaller number is better (an error, like a distance).

Loaded through a run config's ``plugins: [tests.plugins.metric_plugin]`` list.
"""

from __future__ import annotations

from mmgen.evaluation import Metric
from mmgen.hookspecs import hookimpl

__version__ = "0.0.1"


class ReconstructionError(Metric):
    """A fixed 'error' per modality; smaller is better."""

    requires_classifiers = False
    better = "lower"
    headlines = (("mean", "rec. error"),)
    outputs = ("mean", "per_modality")

    def __init__(self, cfg=None):
        pass

    def __call__(self, ctx):
        per = [0.1 * (m + 1) for m in range(ctx.num_modalities)]
        return {"mean": sum(per) / len(per), "per_modality": per}


class Unordered(Metric):
    """Declares neither headlines nor a direction: every number, higher is better."""

    requires_classifiers = False

    def __init__(self, cfg=None):
        pass

    def __call__(self, ctx):
        return {"value": 1.0}


@hookimpl
def register_metrics(register):
    register("test_rec_error", ReconstructionError)
    register("test_unordered", Unordered)
