"""Registry contracts: strict names, suggestions, plugin attribution."""

from dataclasses import dataclass

import pytest

from mmgen.errors import MMGenError
from mmgen.registry import Registry


@dataclass
class Cfg:
    width: int = 3


def make(cfg, *args):
    """A factory."""


def test_duplicate_name_names_both_plugins():
    reg = Registry()
    reg.make_register("prior", "alpha", "1.0")("ebm", make, Cfg)
    with pytest.raises(MMGenError, match=r"duplicate prior 'ebm'.*'alpha'.*'beta'"):
        reg.make_register("prior", "beta", "2.0")("ebm", make, Cfg)


def test_same_name_in_different_kinds_is_fine():
    reg = Registry()
    reg.make_register("encoder", "p", "1")("conv", make)
    reg.make_register("decoder", "p", "1")("conv", make)
    assert reg.get("encoder", "conv").kind == "encoder"
    assert reg.get("decoder", "conv").kind == "decoder"


def test_unknown_name_lists_valid_names_and_suggests():
    reg = Registry()
    for name in ("gaussian", "laplace", "ebm"):
        reg.make_register("prior", "p", "1")(name, make)
    with pytest.raises(MMGenError) as info:
        reg.get("prior", "gausian")
    msg = str(info.value)
    assert "did you mean 'gaussian'" in msg
    assert "ebm, gaussian, laplace" in msg


def test_unknown_kind_and_non_dataclass_config_rejected():
    reg = Registry()
    with pytest.raises(MMGenError, match="unknown kind 'sampler'"):
        reg.make_register("sampler", "p", "1")("x", make)
    with pytest.raises(MMGenError, match="config must be a dataclass"):
        reg.make_register("prior", "p", "1")("x", make, config=dict)


def test_summary_defaults_to_first_docstring_line_and_defaults():
    reg = Registry()
    reg.make_register("prior", "p", "1.2")("x", make, Cfg)
    c = reg.get("prior", "x")
    assert (c.summary, c.plugin, c.version) == ("A factory.", "p", "1.2")
    assert c.default_config() == {"width": 3}


def test_builtin_components_registered(plugins):
    names = {(c.kind, c.name) for c in plugins.registry}
    for expected in [("dataset", "default"), ("encoder", "conv"), ("decoder", "conv"), ("aggregator", "moe"),
                     ("prior", "gaussian"), ("prior", "laplace"), ("inference", "amortized"), ("objective", "elbo")]:
        assert expected in names
    assert all(c.plugin == "builtin" for c in plugins.registry if c.name in ("moe", "conv"))


def test_registration_order_is_kept_through_a_merge_and_orders_the_default_metrics(plugins):
    """The default metrics were a list of built-in names in the engine; they are now the registered
    ones in the order registered, which a merge (how each plugin's components join) must keep."""
    from mmgen.evaluation import parse_metric_names

    own = Registry()
    register = own.make_register("metric", "p", "1")
    for name in ("zeta", "alpha", "mu"):
        register(name, make)
    merged = Registry()
    merged.merge(own)
    assert merged.registered("metric") == ["zeta", "alpha", "mu"] and merged.names("metric") == ["alpha", "mu", "zeta"]
    # The built-in plugin registers its metrics in the order mmgen evaluate runs and reports them.
    assert parse_metric_names(None, plugins.registry)[:6] == ["cross_coherence", "joint_coherence", "fd", "fid",
                                                              "probe", "nll"]
