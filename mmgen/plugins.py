"""The plugin-manager factory: discovers plugins and fills a fresh registry.

Built-in and third-party plugins load through the same path, the ``mmgen`` entry-point group,
plus any module a config names explicitly under ``plugins:``. There is no module-global manager:
every call of :func:`create_plugin_manager` returns a new one, which keeps tests independent.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import pluggy

from mmgen import hookspecs
from mmgen.errors import MMGenError
from mmgen.registry import KINDS, Registry

ENTRY_POINT_GROUP = "mmgen"
DISABLE_ENV = "MMGEN_DISABLE_PLUGINS"


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
    after the entry points; a failure to import one of those is an error, since the user asked
    for it by name. A broken entry-point plugin only warns.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    versions: dict[str, str] = {}
    broken: dict[str, str] = {}
    disabled = _disabled()

    if entry_points:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in disabled or pm.has_plugin(ep.name):
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a third-party plugin must never take the CLI down
                _mark_broken(broken, ep.name, f"{type(exc).__name__}: {exc}",
                             f"({ep.value}) failed to load and is skipped")
                continue
            pm.register(module, name=ep.name)
            versions[ep.name] = ep.dist.version if ep.dist is not None else _module_version(module)

    for path in extra_modules:
        if path in disabled or pm.has_plugin(path):
            continue
        try:
            module = importlib.import_module(path)
        except Exception as exc:
            raise MMGenError(f"plugins: cannot import plugin module '{path}': {exc}") from None
        pm.register(module, name=path)
        versions[path] = _module_version(module)

    # A hookimpl whose name matches no hookspec (a typo such as register_encoder) fails loudly.
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise MMGenError(f"plugin error: {exc}") from None

    registry = Registry()
    for kind in KINDS:
        hook = getattr(pm.hook, f"register_{kind}s")
        for impl in hook.get_hookimpls():
            if impl.plugin_name in broken:
                continue
            register = registry.make_register(kind, impl.plugin_name, versions.get(impl.plugin_name, "unknown"))
            try:
                impl.function(register=register)
            except MMGenError:
                raise  # a registry contract (duplicate name, ...) is the user's to fix
            except Exception as exc:
                _mark_broken(broken, impl.plugin_name, f"{type(exc).__name__} in register_{kind}s: {exc}",
                             f"failed in register_{kind}s and some of its components are missing")
    return Plugins(pm, registry, versions, broken)
