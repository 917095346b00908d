"""The host-owned registry of components.

Plugins never hold a registry: each ``register_<kind>s(register)`` hook receives a ``register``
callable bound to one kind and one plugin, so the registry always knows who registered what
(the pattern of simonw/llm). The registry is strict: a duplicate name is an error naming both
plugins, an unknown name is an error listing the valid names with a close-match suggestion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmgen.errors import MMGenError, did_you_mean

#: Every component kind, in the order ``mmgen plugins`` lists them.
KINDS: tuple[str, ...] = (
    "dataset",
    "encoder",
    "decoder",
    "aggregator",
    "prior",
    "inference",
    "objective",
    "metric",
)


@dataclass(frozen=True)
class Component:
    """One registered component: the factory, its config dataclass and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    config: type | None
    plugin: str
    version: str
    summary: str

    def default_config(self) -> dict[str, Any]:
        """The component's config defaults as plain data (empty when it takes none)."""
        if self.config is None:
            return {}
        return {
            f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(self.config)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }


class Registry:
    """All components known to one plugin manager, keyed by (kind, name)."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}

    def add(self, component: Component) -> None:
        """Add a component; a second component with the same kind and name is an error."""
        if component.kind not in self._components:
            raise MMGenError(
                f"plugin '{component.plugin}' registers unknown kind '{component.kind}'; "
                f"valid kinds: {', '.join(KINDS)}"
            )
        if component.config is not None and not dataclasses.is_dataclass(component.config):
            raise MMGenError(
                f"{component.kind} '{component.name}' from plugin '{component.plugin}': "
                "config must be a dataclass"
            )
        self._check_free(component)
        self._components[component.kind][component.name] = component

    def _check_free(self, component: Component) -> None:
        existing = self._components[component.kind].get(component.name)
        if existing is not None:
            raise MMGenError(
                f"duplicate {component.kind} '{component.name}': registered by plugin "
                f"'{existing.plugin}' and by plugin '{component.plugin}'"
            )

    def merge(self, other: Registry) -> None:
        """Add every component of ``other``, or none of them: a name already taken here is an
        error (the first such, naming both plugins) that leaves this registry as it was."""
        components = [c for of_kind in other._components.values() for c in of_kind.values()]  # as registered
        for component in components:
            self._check_free(component)
        for component in components:
            self._components[component.kind][component.name] = component

    def get(self, kind: str, name: str) -> Component:
        """Look a component up; an unknown name lists the registered ones."""
        if kind not in self._components:
            raise MMGenError(f"unknown component kind '{kind}'; valid kinds: {', '.join(KINDS)}")
        try:
            return self._components[kind][name]
        except KeyError:
            valid = sorted(self._components[kind])
            raise MMGenError(
                f"unknown {kind} '{name}'{did_you_mean(str(name), valid)}; "
                f"registered {kind}s: {', '.join(valid) or '(none)'}"
            ) from None

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, sorted."""
        return sorted(self._components[kind])

    def registered(self, kind: str) -> list[str]:
        """Registered names of one kind in the order they were registered: the built-in plugin's
        first, each plugin's in the order its hook registered them."""
        return list(self._components[kind])

    def __iter__(self):
        for kind in KINDS:
            yield from (self._components[kind][n] for n in sorted(self._components[kind]))

    def make_register(self, kind: str, plugin: str, version: str) -> Callable[..., None]:
        """The ``register`` callable handed to one plugin's ``register_<kind>s`` hook."""

        def register(
            name: str,
            factory: Callable[..., Any],
            config: type | None = None,
            summary: str | None = None,
        ) -> None:
            doc = (summary or (factory.__doc__ or "")).strip().splitlines()
            self.add(Component(kind, name, factory, config, plugin, version, doc[0] if doc else ""))

        return register
