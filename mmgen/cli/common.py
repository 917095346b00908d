"""Shared CLI plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import difflib
import functools
import importlib
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from mmgen.config import compose, resolve
from mmgen.errors import ConfigError, DivergenceError, Interrupted, MMGenError, MMGenWarning, RunExists
from mmgen.plugins import TRACEBACK_ENV, Plugins, blame, create_plugin_manager

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    return typer.Exit(code)


# Typer >= 0.29 vendors Click as typer._click; older releases use Click itself.
_click = getattr(typer.core, "_click", None) or importlib.import_module("click")


@contextmanager
def one_line_usage_errors() -> Iterator[None]:
    """Inside: a Click usage error (unknown option, bad value, missing argument) prints one line,
    ``error: <what is wrong>; see 'mmgen <command> --help'``, like every other mmgen error, instead of
    Typer's usage box; the exit code stays Click's (2). Asking for help with no arguments passes."""
    try:
        yield
    except _click.exceptions.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help text itself
            if exc.format_message().strip():  # Click's plain help (a narrow terminal) comes as text;
                typer.echo(exc.format_message())  # Typer's Rich help is already printed (and "")
                raise typer.Exit(exc.exit_code) from None
            raise
        message = "; ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, _click.exceptions.NoSuchOption) and ctx is not None:
            message = f"No such option: {exc.option_name}{_closest_option(exc.option_name, ctx.command)}"
        hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
        raise fail(message.rstrip(".") + hint, exc.exit_code) from None


# A line break inside a paragraph of a docstring: not before a blank line, an indented line or a
# list item. Typer's help keeps every line break of a docstring, so wrapped source lines showed up
# as ragged short lines in `--help`.
_SOFT_BREAK = re.compile(r"\n(?=[^\s\-*])")


def reflow_help(command: Any) -> None:
    """Join the lines of each paragraph of ``command``'s help (and its subcommands', for a group),
    so that the terminal wraps them; blank lines, indented lines and list items stay."""
    if command.help:
        command.help = "\n\n".join(_SOFT_BREAK.sub(" ", part) for part in command.help.split("\n\n"))
    for sub in getattr(command, "commands", {}).values():
        reflow_help(sub)


# Below this many columns Typer's Rich help table cuts long option names and words with an
# ellipsis (`--inception-weig…`); Click's plain help wraps them instead.
PLAIN_HELP_BELOW = 90


def plain_help_when_narrow(command: Any) -> None:
    """On a terminal narrower than :data:`PLAIN_HELP_BELOW` columns, ``command`` (and its
    subcommands) print Click's plain help instead of Typer's Rich panels."""
    if Console().width >= PLAIN_HELP_BELOW:  # measured as Typer's own help console measures it
        return
    command.rich_markup_mode = None
    for sub in getattr(command, "commands", {}).values():
        plain_help_when_narrow(sub)


def _closest_option(name: str, command: Any) -> str:
    """`` (did you mean '--max-steps'?)`` for the command's option closest to ``name``, compared
    without the dashes (Click compares them with, so every long option looks alike: `--nosuchopt`
    drew `--out`)."""
    options = {opt.lstrip("-"): opt for param in command.params for opt in getattr(param, "opts", ()) if opt.startswith("-")}
    close = difflib.get_close_matches(name.lstrip("-"), list(options), n=1, cutoff=0.6)  # did_you_mean's rule
    return f" (did you mean '{options[close[0]]}'?)" if close else ""


class OneLineErrorsGroup(typer.core.TyperGroup):
    """The root command group: parse errors of any command, built-in or from a plugin, go through
    :func:`one_line_usage_errors` (a subcommand parses its options inside the root's ``invoke``);
    and every command's help is reflowed (:func:`reflow_help`)."""

    def get_command(self, ctx: Any, name: str) -> Any:
        command = super().get_command(ctx, name)
        if command is not None:
            reflow_help(command)
            plain_help_when_narrow(command)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        plain_help_when_narrow(self)
        super().format_help(ctx, formatter)

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with one_line_usage_errors():
            return super().invoke(ctx)


#: How long a process other than rank 0 waits before exiting on an error rank 0 reports: torchrun
#: terminates the others as soon as one process exits, which could cut rank 0 off before it printed.
RANK0_GRACE_S = 2.0


def said_by_another_process() -> bool:
    """In a multi-process launch (torchrun, accelerate launch), every process but rank 0."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and os.environ.get("RANK", "0") != "0"


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; an :class:`MMGenError` prints one clear message (no traceback), exit 2
    (:class:`mmgen.errors.PluginError`: 1). An exception raised in a third-party plugin's code
    prints one line naming the plugin, the exception and where (exit 1; ``MMGEN_TRACEBACK=1``
    shows the traceback instead).

    In a multi-process launch, an error every process meets alike (the config, an --out that holds a
    run, a divergence the processes agree on, an interrupt) is said once, by rank 0; the others exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DivergenceError, Interrupted, RunExists, KeyboardInterrupt) as exc:
            if said_by_another_process():
                # The launcher stops every process when one exits: leave rank 0 a moment to say it.
                time.sleep(RANK0_GRACE_S)
                raise typer.Exit(getattr(exc, "exit_code", 130)) from None
            if isinstance(exc, KeyboardInterrupt):
                raise fail("interrupted", 130) from None
            if not isinstance(exc, ConfigError):
                raise fail(str(exc), exc.exit_code) from None
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
        except (typer.Exit, typer.Abort, _click.ClickException):
            raise  # a command's own way to stop (a plugin's command's too): Typer handles it
        except Exception as exc:  # a bug: in a third-party plugin's code, one line naming it
            location = None if os.environ.get(TRACEBACK_ENV) else blame(exc)
            if location is None:
                raise  # mmgen's own (or the built-in plugin's) bug: the traceback is what helps
            raise fail(location.describe(exc), 1) from None

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


def one_line_warnings() -> None:
    """From now on an :class:`MMGenWarning` prints as one ``warning: ...`` line on stderr (its
    message says everything; Python's format adds a file name and a source line); other warnings
    keep Python's format. The console script calls this once."""
    python_format = warnings.showwarning

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if issubclass(category, MMGenWarning):
            err_console.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)
        else:
            python_format(message, category, filename, lineno, file, line)

    warnings.showwarning = show


# Plugin warnings already printed by this CLI invocation: the app loads the plugins for their
# commands, and a command loads them again (with its config's plugin modules); each is said once.
_said: set[str] = set()


def forget_warnings() -> None:
    """Start a new invocation: every plugin warning may be printed again (:func:`create_app`)."""
    _said.clear()


@contextmanager
def plugin_warnings() -> Iterator[None]:
    """Inside: plugin warnings go to stderr as one line each, each text once per invocation."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if str(w.message) not in _said:
            _said.add(str(w.message))
            err_console.print(f"[yellow]warning:[/] {escape(str(w.message))}", soft_wrap=True)


def load_plugins(extra_modules: list[str] | tuple[str, ...] = ()) -> Plugins:
    """A fresh plugin manager (its load warnings printed by :func:`plugin_warnings`)."""
    with plugin_warnings():
        return create_plugin_manager(extra_modules)


def resolved_config(recipe: str | None, config_file: str | None, shortcuts: dict[str, Any],
                    overrides: list[str] | None) -> tuple[dict[str, Any], Plugins]:
    """Compose and validate a run config; returns it with the plugins it was resolved against."""
    raw = compose(recipe, config_file, shortcuts, overrides or [])
    extra = raw.get("plugins") or []
    if not isinstance(extra, list):
        raise ConfigError([f"plugins: expected a list of module paths, got {extra!r}"])
    plugins = load_plugins([str(m) for m in extra])
    return resolve(raw, plugins.registry), plugins
