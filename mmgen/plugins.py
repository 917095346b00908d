"""The plugin-manager factory: discovers plugins and fills a fresh registry.

Built-in and third-party plugins load through the same path, the ``mmgen`` entry-point group,
plus any module a config names explicitly under ``plugins:``. There is no module-global manager:
every call of :func:`create_plugin_manager` returns a new one, which keeps tests independent.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from mmgen import hookspecs
from mmgen.errors import MMGenError
from mmgen.registry import KINDS, Registry

ENTRY_POINT_GROUP = "mmgen"
DISABLE_ENV = "MMGEN_DISABLE_PLUGINS"
BUILTIN = "builtin"  # the built-in components' entry point, loaded first


#: The module of every third-party plugin loaded in this process -> its plugin name, so that an
#: exception raised in a plugin's code (or its submodules') can name the plugin (:func:`blame`).
#: The built-in plugin is left out: an exception in its code is mmgen's own bug, with a traceback.
_PLUGIN_MODULES: dict[str, str] = {}
#: The package around a third-party plugin module that is not a package itself (``myplug`` for an
#: entry point or ``plugins:`` entry ``myplug.plugin``) -> its plugin name, so that the plugin's
#: code in sibling modules (``myplug.priors``) counts as the plugin's too; None where two plugins
#: share the package (their sibling modules are then no one's). Never mmgen's own package.
_PLUGIN_PACKAGES: dict[str, str | None] = {}
TRACEBACK_ENV = "MMGEN_TRACEBACK"


class PluginWarning(UserWarning):
    """A plugin could not be loaded; everything else keeps working."""


@dataclass
class Plugins:
    """A plugin manager, the registry it filled, and what it could not load."""

    manager: pluggy.PluginManager
    registry: Registry
    versions: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)


def _disabled() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def _module_version(module) -> str:
    return str(getattr(module, "__version__", "unknown"))


def _mark_broken(broken: dict[str, str], name: str, why: str, what: str) -> None:
    """Record a plugin that failed and warn once, naming it; everything else keeps working."""
    broken[name] = why
    warnings.warn(f"mmgen plugin '{name}' {what}: {why}", PluginWarning, stacklevel=3)


def create_plugin_manager(extra_modules: Iterable[str] = (), entry_points: bool = True) -> Plugins:
    """Create a plugin manager, load every plugin and return it with a filled registry.

    ``extra_modules`` are importable module paths (a config's ``plugins:`` list) registered
    after the entry points; any failure of one of those (it does not import, a misspelled hook,
    a name another plugin registered) is an error, since the user asked for it by name. An
    entry-point plugin with such a failure is skipped whole, with one warning naming it and
    why, and everything else keeps working: an installed third-party plugin never takes the CLI
    down. The built-in plugin loads first, so a name clash skips the plugin that came later.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    versions: dict[str, str] = {}
    broken: dict[str, str] = {}
    named: set[str] = set()  # the config's plugin modules
    disabled = _disabled()

    def fail(name: str, why: str, what: str = "is skipped") -> None:
        if name in named:
            raise MMGenError(f"plugins: module '{name}': {why}")
        if pm.has_plugin(name):
            pm.unregister(name=name)
        versions.pop(name, None)
        _mark_broken(broken, name, why, what)

    def add(module, name: str) -> bool:
        try:  # pluggy checks each hook's argument names against its spec here
            pm.register(module, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            fail(name, str(exc))
            return False
        if name != BUILTIN:
            module_name = _module_name(module)
            _PLUGIN_MODULES[module_name] = name
            package = module_name.rpartition(".")[0]
            if package and not hasattr(module, "__path__") and package.split(".")[0] != "mmgen":
                _PLUGIN_PACKAGES[package] = name if _PLUGIN_PACKAGES.get(package, name) == name else None
        return True

    if entry_points:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(eps, key=lambda e: (e.name != BUILTIN, e.name)):
            if ep.name in disabled or pm.has_plugin(ep.name):
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a third-party plugin must never take the CLI down
                fail(ep.name, f"{type(exc).__name__}: {exc}", f"({ep.value}) failed to load and is skipped")
                continue
            if add(module, ep.name):
                versions[ep.name] = ep.dist.version if ep.dist is not None else _module_version(module)

    for path in extra_modules:
        if path in disabled or pm.has_plugin(path):
            continue
        try:
            module = importlib.import_module(path)
        except Exception as exc:
            raise MMGenError(f"plugins: cannot import plugin module '{path}': {exc}") from None
        named.add(path)
        if add(module, path):
            versions[path] = _module_version(module)

    # A hook whose name matches no hookspec (a typo such as register_prior) would never be called.
    valid = ", ".join(sorted(name for name in dir(hookspecs) if name.startswith("register_")))
    for name, hooks in _unknown_hooks(pm).items():
        fail(name, f"unknown hook {', '.join(hooks)}; valid hooks: {valid}")

    # Each plugin's components go into a registry of their own first and join the shared one
    # all together, or not at all when a hook fails or a name is taken.
    registry = Registry()
    for name, _ in pm.list_name_plugin():
        try:
            registry.merge(_components_of(pm, name, versions.get(name, "unknown")))
        except MMGenError as exc:
            fail(name, str(exc))
    return Plugins(pm, registry, versions, broken)


def _module_name(plugin: object) -> str:
    """The module a registered plugin's code lives in: the module itself, or the module that
    defines it when an entry point names an object in one (``pkg:PLUGIN``, which pluggy accepts)."""
    if inspect.ismodule(plugin):
        return plugin.__name__
    return str(getattr(plugin, "__module__", None) or type(plugin).__module__)


def _plugin_of_module(module: str) -> str | None:
    """The plugin whose code ``module`` is: under a plugin's module first, else under the package
    around one (the most specific match of each)."""
    for table in (_PLUGIN_MODULES, _PLUGIN_PACKAGES):
        matches = [prefix for prefix in table if module == prefix or module.startswith(prefix + ".")]
        if matches:
            return table[max(matches, key=len)]
    return None


def blame(exc: BaseException) -> PluginErrorLocation | None:
    """Where in a third-party plugin's code ``exc`` was raised: the innermost frame of its
    traceback (or of the exceptions it was raised from) that runs a loaded plugin's module;
    ``None`` when no plugin code was running (mmgen's own or the built-in plugin's code)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb, found = exc.__traceback__, None
        while tb is not None:
            plugin = _plugin_of_module(str(tb.tb_frame.f_globals.get("__name__", "")))
            if plugin is not None:
                found = PluginErrorLocation(plugin, tb.tb_frame.f_code.co_filename, tb.tb_lineno,
                                            tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        if found is not None:
            return found
        exc = exc.__cause__ or exc.__context__
    return None


@dataclass(frozen=True)
class PluginErrorLocation:
    """The plugin, file, line and function an exception was raised in (:func:`blame`)."""

    plugin: str
    file: str
    line: int
    function: str

    def describe(self, exc: BaseException) -> str:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (f"plugin '{self.plugin}' failed: {type(exc).__name__}{': ' + first if first else ''} "
                f"(in {self.function}, {self.file}:{self.line}); set {TRACEBACK_ENV}=1 for the traceback")


def _components_of(pm: pluggy.PluginManager, name: str, version: str) -> Registry:
    """Everything plugin ``name`` registers, in a registry of its own; a hook that raises is an
    :class:`MMGenError` naming the hook."""
    own = Registry()
    for kind in KINDS:
        for impl in getattr(pm.hook, f"register_{kind}s").get_hookimpls():
            if impl.plugin_name != name:
                continue
            try:
                impl.function(register=own.make_register(kind, name, version))
            except MMGenError:
                raise  # a registry contract (a config that is not a dataclass, ...): said as it is
            except Exception as exc:
                raise MMGenError(f"{type(exc).__name__} in register_{kind}s: {exc}") from None
    return own


def _unknown_hooks(pm: pluggy.PluginManager) -> dict[str, list[str]]:
    """plugin name -> the hook implementations it defines that match no hookspec."""
    unknown: dict[str, list[str]] = {}
    for hook_name, caller in vars(pm.hook).items():
        if hook_name.startswith("_") or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if not impl.optionalhook:
                unknown.setdefault(impl.plugin_name, []).append(f"'{hook_name}'")
    return unknown


def add_commands(plugins: Plugins, cli: Any) -> list[tuple[str, str, str]]:
    """Let every plugin add its commands to ``cli`` (a Typer app). A plugin whose
    ``register_commands`` raises is recorded as broken and warned about, and the commands it
    added before failing are taken out again; the other commands keep working. Returns what was
    added: ``(plugin, command name, summary)`` (a group of commands under its group's name)."""
    added = []
    for impl in plugins.manager.hook.register_commands.get_hookimpls():
        before = len(cli.registered_commands), len(cli.registered_groups)
        try:
            impl.function(cli=cli)
        except Exception as exc:  # a third-party plugin must never take the CLI down
            del cli.registered_commands[before[0]:], cli.registered_groups[before[1]:]
            _mark_broken(plugins.broken, impl.plugin_name, f"{type(exc).__name__} in register_commands: {exc}",
                         "failed to add its commands, which are skipped")
            continue
        for info in cli.registered_commands[before[0]:]:
            callback = info.callback
            name = info.name or (callback.__name__.replace("_", "-") if callback else "?")
            added.append((impl.plugin_name, name, _first_line(info.help or (callback.__doc__ if callback else None))))
        for group in cli.registered_groups[before[1]:]:
            app_info = group.typer_instance.info if group.typer_instance else None
            help_text = group.help or (app_info.help if app_info else None)
            added.append((impl.plugin_name, group.name or (app_info.name if app_info else None) or "?",
                          _first_line(help_text if isinstance(help_text, str) else None)))
    return added


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n")[0].strip()
