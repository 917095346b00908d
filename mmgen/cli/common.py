"""Shared CLI plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from mmgen.config import compose, resolve
from mmgen.errors import ConfigError, MMGenError
from mmgen.plugins import Plugins, create_plugin_manager

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; an :class:`MMGenError` prints one clear message (no traceback), exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            if len(exc.errors) == 1:
                raise fail(f"config: {exc.errors[0]}") from None
            for e in exc.errors:
                err_console.print(f"  - {e}", soft_wrap=True, markup=False)
            raise fail(f"config: {len(exc.errors)} errors (listed above)") from None
        except MMGenError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except OSError as exc:  # an unwritable --out, a path under a file, a full disk, ...
            where = f"{exc.filename}: " if exc.filename else ""
            raise fail(f"{where}{exc.strerror or exc}") from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper


def note_unfinished(loaded: Any) -> None:
    """Say so when a command works from an unfinished run's latest checkpoint."""
    if loaded.unfinished:
        err_console.print(f"[yellow]note:[/] {loaded.run_dir} has not finished; using {loaded.checkpoint} "
                          f"(step {loaded.step})", soft_wrap=True)


def data_override(run_dir: Path, data: str) -> dict[str, Any]:
    """The run's config with ``data`` replaced by ``NAME[:PATH]``, validated through the registry.

    With the run's own dataset name, the run's other data options (``modalities``, ...) carry over.
    """
    from mmgen.checkpoint import load_checkpoint
    from mmgen.config import merge_sources
    from mmgen.run import find_checkpoint

    stored = load_checkpoint(find_checkpoint(run_dir))["config"]
    plugins = load_plugins([str(m) for m in stored.get("plugins", [])])
    name, _, path = data.partition(":")
    section: dict[str, Any] = {"name": name}
    if path:
        section["path"] = path
    cfg = resolve(merge_sources([stored, {"data": section}]), plugins.registry)
    return cfg["data"]


def load_plugins(extra_modules: list[str] | tuple[str, ...] = ()) -> Plugins:
    """A fresh plugin manager; plugin load warnings go to stderr as one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plugins = create_plugin_manager(extra_modules)
    for w in caught:
        err_console.print(f"[yellow]warning:[/] {escape(str(w.message))}", soft_wrap=True)
    return plugins


def resolved_config(recipe: str | None, config_file: str | None, shortcuts: dict[str, Any],
                    overrides: list[str] | None) -> tuple[dict[str, Any], Plugins]:
    """Compose and validate a run config; returns it with the plugins it was resolved against."""
    raw = compose(recipe, config_file, shortcuts, overrides or [])
    extra = raw.get("plugins") or []
    if not isinstance(extra, list):
        raise ConfigError([f"plugins: expected a list of module paths, got {extra!r}"])
    plugins = load_plugins([str(m) for m in extra])
    return resolve(raw, plugins.registry), plugins
