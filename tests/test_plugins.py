"""Plugin discovery through real entry points: the example plugin, a broken plugin, disabling."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmgen.cli.main import create_app
from mmgen.plugins import PluginWarning, create_plugin_manager

from .conftest import REPO


def fake_distribution(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str] = {}) -> None:
    """Install a minimal distribution (dist-info with entry points) into ``site``, as pip would."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[mmgen]\n{lines}\n")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


def console_script(site: Path, *args: str) -> subprocess.CompletedProcess:
    """``mmgen ARGS`` in a fresh process that sees the distributions installed into ``site``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "mmgen.cli.main", *args], capture_output=True, text=True, env=env)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A temporary site directory on sys.path (its distributions are discovered by importlib.metadata)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("mmgen_testplugin")]:
        del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture
def example_installed(site, monkeypatch):
    """The example plugin, through its entry point: installed by pip, or registered here if not."""
    eps = {ep.name for ep in importlib.metadata.entry_points(group="mmgen")}
    if "example" not in eps:
        monkeypatch.syspath_prepend(str(REPO / "plugins" / "example"))
        fake_distribution(site, "mmgen-example", {"example": "mmgen_example"})


def test_example_plugin_discovered_and_usable_in_config(example_installed, tmp_path, tiny_overrides):
    plugins = create_plugin_manager()
    gmm = plugins.registry.get("prior", "gmm")
    assert gmm.plugin == "example"
    result = CliRunner().invoke(create_app(), ["plugins", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)["components"]
    assert {"kind": "prior", "name": "gmm", "plugin": "example"}.items() <= next(r for r in rows if r["name"] == "gmm").items()
    out = tmp_path / "run"
    result = CliRunner().invoke(create_app(), ["train", "--prior", "gmm", "--max-steps", "3", "--out", str(out),
                                               *tiny_overrides, "model.prior.components=3"])
    assert result.exit_code == 0, result.output
    assert "name: gmm" in (out / "config.yaml").read_text()
    assert "components: 3" in (out / "config.yaml").read_text()


def test_plugin_commands_are_added(example_installed):
    result = CliRunner().invoke(create_app(), ["example-prior-info", "--components", "4", "--dim", "3"])
    assert result.exit_code == 0, result.output
    assert "gmm prior: 24 parameters" in result.output
    # `mmgen plugins` lists the commands plugins add, with their plugin (it listed components only).
    listed = json.loads(CliRunner().invoke(create_app(), ["plugins", "--json"]).output)["components"]
    commands = {(r["name"], r["plugin"]): r["summary"] for r in listed if r["kind"] == "command"}
    assert commands[("example-prior-info", "example")].startswith("Print the example GMM prior's parameter count")
    assert ("data", "builtin") in commands


@pytest.mark.parametrize("args, error", [
    (["--dim", "-3"], "error: --dim: must be > 0, got -3"),  # was torch's negative-dimension traceback
    (["--dim", "0"], "error: --dim: must be > 0, got 0"),
    (["--components", "0"], "error: --components: must be > 0, got 0"),
])
def test_plugin_command_refuses_bad_sizes_in_one_line(example_installed, args, error):
    result = CliRunner().invoke(create_app(), ["example-prior-info", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [error]


def test_example_prior_options_are_range_checked(example_installed):
    from mmgen.config import compose, resolve
    from mmgen.errors import ConfigError

    registry = create_plugin_manager().registry
    for option, error in [("components=0", "model.prior.components: must be > 0, got 0"),  # was math.log(0) in training
                          ("init_scale=nan", "model.prior.init_scale: must be a finite number, got nan")]:
        with pytest.raises(ConfigError) as info:
            resolve(compose(overrides=["model.prior.name=gmm", f"model.prior.{option}"]), registry)
        assert info.value.errors == [error]


def test_broken_plugin_warns_once_and_everything_else_works(site):
    fake_distribution(site, "mmgen-testplugin-broken", {"broken": "mmgen_testplugin_broken"},
                      {"mmgen_testplugin_broken": "raise ImportError('needs libfoo')\n"})
    with pytest.warns(PluginWarning, match="mmgen plugin 'broken'.*ImportError: needs libfoo") as record:
        plugins = create_plugin_manager()
    assert len([w for w in record if issubclass(w.category, PluginWarning)]) == 1
    assert plugins.broken == {"broken": "ImportError: needs libfoo"}
    assert "moe" in plugins.registry.names("aggregator")
    result = CliRunner().invoke(create_app(), ["plugins"])
    assert result.exit_code == 0
    assert "moe" in result.stdout and "broken" in result.stdout


def test_an_entry_point_naming_an_object_loads_and_its_code_is_blamed(site):
    """pluggy registers any object with hook implementations (``pkg:PLUGIN``); recording the
    plugin's module for error messages read ``PLUGIN.__name__``, an AttributeError that took every
    command down."""
    from mmgen.plugins import blame

    fake_distribution(site, "mmgen-testplugin-obj", {"obj": "mmgen_testplugin_obj:PLUGIN"}, {"mmgen_testplugin_obj": """
        from mmgen.hookspecs import hookimpl
        class Plugin:
            @hookimpl
            def register_commands(self, cli):
                @cli.command("obj-hello")
                def hello():
                    \"\"\"Say hello.\"\"\"
            def fail(self):
                raise RuntimeError("boom")
        PLUGIN = Plugin()
    """})
    plugins = create_plugin_manager()
    assert plugins.broken == {} and plugins.manager.has_plugin("obj")
    import mmgen_testplugin_obj

    with pytest.raises(RuntimeError) as info:
        mmgen_testplugin_obj.PLUGIN.fail()
    assert blame(info.value).plugin == "obj"
    result = console_script(site, "plugins")
    assert result.returncode == 0, result.stderr
    assert "obj-hello" in result.stdout


def test_a_plugin_modules_sibling_modules_are_the_plugins_code(site):
    """An entry point (or ``plugins:`` entry) ``pkg.plugin`` whose components live in ``pkg.priors``:
    an exception raised there named no plugin (only ``pkg.plugin`` and its submodules counted), so
    the command ended in a traceback instead of the one line."""
    from mmgen.plugins import blame

    package = site / "mmgen_testplugin_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "priors.py").write_text("def sample():\n    raise RuntimeError('boom')\n")
    (package / "plugin.py").write_text("from mmgen.hookspecs import hookimpl\nfrom mmgen_testplugin_pkg import priors\n"
                                       "@hookimpl\ndef register_priors(register):\n    pass\n")
    fake_distribution(site, "mmgen-testplugin-pkg", {"pkg": "mmgen_testplugin_pkg.plugin"})
    assert "pkg" in create_plugin_manager().versions
    from mmgen_testplugin_pkg import priors

    with pytest.raises(RuntimeError) as info:
        priors.sample()
    where = blame(info.value)
    assert where is not None and (where.plugin, where.function) == ("pkg", "sample")


def test_duplicate_component_skips_the_later_plugin_whole_and_names_both(site):
    fake_distribution(site, "mmgen-testplugin-dup", {"dup": "mmgen_testplugin_dup"}, {"mmgen_testplugin_dup": """
        from mmgen.hookspecs import hookimpl
        @hookimpl
        def register_priors(register):
            register("dup-own", object)
        @hookimpl
        def register_aggregators(register):
            register("moe", object)
    """})
    with pytest.warns(PluginWarning, match="mmgen plugin 'dup' is skipped: duplicate aggregator 'moe'.*'builtin'.*'dup'"):
        plugins = create_plugin_manager()
    assert plugins.registry.get("aggregator", "moe").plugin == "builtin"
    assert "dup-own" not in plugins.registry.names("prior")  # all of the plugin or none of it
    assert list(plugins.broken) == ["dup"]
    # Every command still works, the clash is said once (the app and the command both load the
    # plugins), and `mmgen plugins` names the culprit.
    result = CliRunner().invoke(create_app(), ["plugins"])
    assert result.exit_code == 0, result.output
    assert "broken plugin dup: duplicate aggregator 'moe'" in result.stdout
    result = console_script(site, "config", "show")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("duplicate aggregator 'moe'") == 1


def test_duplicate_component_from_a_config_named_module_is_a_one_line_error(site, tiny_overrides):
    (site / "mmgen_testplugin_clash.py").write_text(textwrap.dedent("""
        from mmgen.hookspecs import hookimpl
        @hookimpl
        def register_priors(register):
            register("ebm", object)
    """))
    result = CliRunner().invoke(create_app(), ["config", "show", "plugins=[mmgen_testplugin_clash]"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: plugins: module 'mmgen_testplugin_clash': duplicate prior 'ebm': registered by plugin "
        "'builtin' and by plugin 'mmgen_testplugin_clash'"]


@pytest.mark.parametrize("hooks, why", [
    ("def register_prior(register):\n    pass",  # a misspelled hook would never be called
     "unknown hook 'register_prior'; valid hooks: register_aggregators, register_commands, "),
    ("def register_priors(reg):\n    pass",  # an argument the hook is not given
     "hook 'register_priors'"),
])
def test_malformed_hooks_skip_the_plugin_with_one_warning(site, hooks, why):
    source = "from mmgen.hookspecs import hookimpl\n@hookimpl\n" + hooks + "\n"
    fake_distribution(site, "mmgen-testplugin-typo", {"typo": "mmgen_testplugin_typo"}, {"mmgen_testplugin_typo": source})
    with pytest.warns(PluginWarning, match="mmgen plugin 'typo' is skipped: ") as record:
        plugins = create_plugin_manager()
    assert why in str(record[0].message)
    assert list(plugins.broken) == ["typo"] and "moe" in plugins.registry.names("aggregator")
    result = CliRunner().invoke(create_app(), ["--help"])
    assert result.exit_code == 0 and "train" in result.stdout


def test_a_hook_failing_part_way_registers_none_of_the_plugins_components(site):
    fake_distribution(site, "mmgen-testplugin-half", {"half": "mmgen_testplugin_half"}, {"mmgen_testplugin_half": """
        from mmgen.hookspecs import hookimpl
        @hookimpl
        def register_datasets(register):
            register("half-data", object)
        @hookimpl
        def register_priors(register):
            register("half-prior", object)
            raise RuntimeError("boom")
    """})
    with pytest.warns(PluginWarning, match="mmgen plugin 'half' is skipped: RuntimeError in register_priors: boom"):
        plugins = create_plugin_manager()
    assert "half-data" not in plugins.registry.names("dataset")
    assert "half-prior" not in plugins.registry.names("prior")


def test_a_failing_register_commands_hook_leaves_every_other_command_working(site):
    fake_distribution(site, "mmgen-testplugin-cmd", {"cmd": "mmgen_testplugin_cmd"}, {"mmgen_testplugin_cmd": """
        from mmgen.hookspecs import hookimpl
        @hookimpl
        def register_commands(cli):
            cli.command("half-added")(lambda: None)
            raise RuntimeError("boom in commands")
    """})
    result = console_script(site, "plugins")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("mmgen plugin 'cmd' failed to add its commands, which are skipped: "
                               "RuntimeError in register_commands: boom in commands") == 1
    result = console_script(site, "half-added")  # taken out again with the failure
    assert result.returncode == 2 and "No such command 'half-added'" in result.stderr


def test_a_config_field_without_default_is_required_and_accepted_when_given(site, tiny_overrides):
    (site / "mmgen_testplugin_required.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass
        from mmgen.hookspecs import hookimpl
        from mmgen_builtin.priors.gaussian import FixedPriorConfig, GaussianPrior

        @dataclass
        class RequiredConfig:
            scale: float
            n: int = 2

        @hookimpl
        def register_priors(register):
            register("required", lambda cfg, dim: GaussianPrior(FixedPriorConfig(), dim), RequiredConfig)
    """))
    from mmgen.cli.common import resolved_config
    from mmgen.errors import ConfigError

    base = [*tiny_overrides, "plugins=[mmgen_testplugin_required]", "model.prior.name=required"]
    cfg, _ = resolved_config(None, None, {}, [*base, "model.prior.scale=2"])  # was OmegaConf's MissingMandatoryValue
    assert cfg["model"]["prior"] == {"name": "required", "scale": 2.0, "n": 2}
    with pytest.raises(ConfigError) as info:
        resolved_config(None, None, {}, base)
    assert info.value.errors == ["model.prior.scale: missing; prior 'required' has no default for it: "
                                 "set model.prior.scale=VALUE"]
    with pytest.raises(ConfigError) as info:  # a value given but invalid is reported as that alone
        resolved_config(None, None, {}, [*base, "model.prior.scale=abc"])
    assert len(info.value.errors) == 1 and info.value.errors[0].startswith(
        "model.prior.scale: invalid value 'abc' (expected float)")


def test_disable_plugins_env(monkeypatch, site):
    fake_distribution(site, "mmgen-testplugin-broken2", {"broken2": "mmgen_testplugin_broken2"},
                      {"mmgen_testplugin_broken2": "raise RuntimeError('boom')\n"})
    monkeypatch.setenv("MMGEN_DISABLE_PLUGINS", "broken2, builtin")
    plugins = create_plugin_manager()
    assert plugins.broken == {}
    # (other installed plugins may register aggregators of their own: none of the built-in ones is left)
    assert not {"moe", "poe", "mopoe"} & set(plugins.registry.names("aggregator"))
    assert all(plugins.registry.get(kind, n).plugin != "builtin" for kind in ("aggregator", "prior")
               for n in plugins.registry.names(kind))


def test_config_plugin_list_loads_module(site, tiny_overrides, plugins):
    (site / "mmgen_testplugin_local.py").write_text(textwrap.dedent("""
        from mmgen.hookspecs import hookimpl
        from mmgen_builtin.priors.gaussian import GaussianPrior, FixedPriorConfig
        __version__ = "9.9"
        @hookimpl
        def register_priors(register):
            register("wide", GaussianPrior, FixedPriorConfig, "A local prior")
    """))
    from mmgen.cli.common import resolved_config
    cfg, loaded = resolved_config(None, None, {}, tiny_overrides + ["plugins=[mmgen_testplugin_local]", "model.prior.name=wide"])
    assert cfg["model"]["prior"]["name"] == "wide"
    assert loaded.versions["mmgen_testplugin_local"] == "9.9"


def test_engine_imports_no_builtin_component():
    """mmgen/ reaches components only through the registry: no import of the built-in package."""
    import ast

    offenders = []
    for path in (REPO / "mmgen").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("mmgen_builtin", "plugins")]
    assert offenders == []
    # And at run time: importing every engine module leaves the built-in package unimported.
    modules = [f"mmgen.{p.relative_to(REPO / 'mmgen').with_suffix('').as_posix().replace('/', '.')}"
               for p in (REPO / "mmgen").rglob("*.py") if p.name != "__init__.py"]
    code = f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint('mmgen_builtin' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


FAULTY = "plugins=[tests.plugins.faulty_plugin]"


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    """A one-step run with the faulty plugin loaded (its components unused): what its metric evaluates."""
    from .conftest import TINY

    run = tmp_path_factory.mktemp("faulty") / "run"
    ok = CliRunner().invoke(create_app(with_plugin_commands=False),
                            ["train", "--out", str(run), "--max-steps", "1", *TINY, FAULTY])
    assert ok.exit_code == 0, ok.output
    return run


def test_an_exception_in_a_plugins_code_is_one_line_naming_the_plugin(tiny_overrides, tmp_path, monkeypatch, faulty_run):
    # A dataset factory (or any component) that raises in the plugin's own code: one line naming the
    # plugin, the exception and the plugin's line, exit 1 -- not a traceback through mmgen's loop.
    args = ["train", "--out", str(tmp_path / "run"), "--max-steps", "1", *tiny_overrides, FAULTY,
            "data.name=faulty", "data.fault=raise"]
    result = CliRunner().invoke(create_app(with_plugin_commands=False), args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("error: plugin 'tests.plugins.faulty_plugin' failed: RuntimeError: cannot parse the "
                               "annotations (in faulty_dataset, ")
    assert "faulty_plugin.py:" in lines[0] and lines[0].endswith("set MMGEN_TRACEBACK=1 for the traceback")
    # A metric that raises during `mmgen evaluate`, the same way.
    result = CliRunner().invoke(create_app(with_plugin_commands=False),
                                ["evaluate", str(faulty_run), "--metrics", "faulty", "faulty.fault=raise", "--no-figures"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: plugin 'tests.plugins.faulty_plugin' failed: ZeroDivisionError: no test tuples (in __call__, " \
        in result.output
    # MMGEN_TRACEBACK=1 gives the plugin author the traceback instead.
    monkeypatch.setenv("MMGEN_TRACEBACK", "1")
    result = CliRunner().invoke(create_app(with_plugin_commands=False), [*args[:2], str(tmp_path / "run2"), *args[3:]])
    assert isinstance(result.exception, RuntimeError) and "cannot parse" in str(result.exception)


@pytest.mark.parametrize("choice, message", [
    ("model.aggregator.name=faulty model.posterior_family=gaussian model.aggregator.fault=not_tuple",
     "model.aggregator: aggregator 'faulty' (plugin 'tests.plugins.faulty_plugin'): combine must return (loc, scale), "
     "each 4 x 1 x 4 (batch x components x latent) for 4 samples, 1 component and latent_dim 4; got a tensor of shape 4 x 1 x 4"),
    ("model.aggregator.name=faulty model.posterior_family=gaussian model.aggregator.fault=shape",
     "combine must return (loc, scale), each 4 x 1 x 4 (batch x components x latent) for 4 samples, 1 component and "
     "latent_dim 4; got a tuple of 2: (a tensor of shape 4 x 1 x 1, a tensor of shape 4 x 1 x 4)"),
    ("model.prior.name=faulty model.prior.fault=sample_shape",
     "model.prior: prior 'faulty' (plugin 'tests.plugins.faulty_plugin'): sample(4) must return a 4 x 4 tensor "
     "(latent_dim 4); got a tensor of shape 4 x 1"),
    ("model.prior.name=faulty model.prior.fault=log_prob_shape",
     "log_prob of 4 x 4 latents must return 4 values (summed over the last dim); got a tensor of shape 4 x 1"),
    ("model.objective.name=faulty model.objective.fault=not_result",
     "model.objective: objective 'faulty' (plugin 'tests.plugins.faulty_plugin'): forward must return an "
     "mmgen.latent.ObjectiveResult; got a tensor of shape () (a scalar)"),
    ("model.objective.name=faulty model.objective.fault=loss_shape",
     "ObjectiveResult.loss must be a scalar tensor; got a tensor of shape 3"),
    ("model.inference.name=faulty model.inference.fault=not_result",
     "model.inference: inference 'faulty' (plugin 'tests.plugins.faulty_plugin'): refine must return an "
     "mmgen.latent.InferenceResult; got a tensor of shape 4 x 4"),
    ("model.inference.name=faulty model.inference.fault=shape",
     "InferenceResult.z must be 4 x 4 (batch x latent); got a tensor of shape 4 x 1"),
])
def test_a_component_breaking_its_contract_is_named_before_training(tiny_overrides, tmp_path, choice, message):
    # Were tensor errors deep in another component (a decoder fed the prior's 4 x 1 samples), an
    # AttributeError in the training loop, or a wrong shape silently broadcast through a whole run.
    args = ["train", "--out", str(tmp_path / "run"), "--max-steps", "1", *tiny_overrides, FAULTY, *choice.split()]
    result = CliRunner().invoke(create_app(with_plugin_commands=False), args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.") and lines[0].endswith(message), lines


def test_a_metric_returning_no_dict_is_named(faulty_run):
    result = CliRunner().invoke(create_app(with_plugin_commands=False),
                                ["evaluate", str(faulty_run), "--metrics", "faulty", "faulty.fault=not_dict", "--no-figures"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == ("error: metric 'faulty' (plugin 'tests.plugins.faulty_plugin') "
                                                      "must return a dict of {key: value}; got a list")


def test_a_plugin_commands_own_exit_passes_through_and_its_bug_is_one_line(monkeypatch, capsys):
    """typer.Exit is a RuntimeError: raised in a plugin's code, it must keep its code, not become a
    "plugin failed" line."""
    import typer

    from mmgen import plugins
    from mmgen.cli.common import user_errors

    monkeypatch.setitem(plugins._PLUGIN_MODULES, __name__, "this-test")  # this module's code counts as a plugin's

    @user_errors
    def command(stop: BaseException) -> None:
        raise stop

    with pytest.raises(typer.Exit) as stopped:
        command(typer.Exit(3))
    assert stopped.value.exit_code == 3 and capsys.readouterr().err == ""
    with pytest.raises(typer.Exit) as stopped:
        command(ValueError("bad"))
    assert stopped.value.exit_code == 1
    said = " ".join(capsys.readouterr().err.split())
    assert said.startswith("error: plugin 'this-test' failed: ValueError: bad (in command, ")
