"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MMGenError(Exception):
    """A problem with the user's input (config, component name, data, checkpoint).

    Its message is complete on its own: what is wrong and what would be valid.
    """

    exit_code = 2


class ConfigError(MMGenError):
    """One or more configuration errors, each naming its key path."""

    def __init__(self, errors: Iterable[str]):
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


class RunExists(MMGenError):
    """A new run's --out already holds a run (every process of a multi-process run sees it alike)."""


class DataError(MMGenError):
    """A dataset file is missing, corrupt or inconsistent."""


class DataNotFound(DataError):
    """The dataset's folder is not there (a run's data may have moved: commands that reopen a run
    say how to point it at the new folder)."""


class MMGenWarning(RuntimeWarning):
    """Something mmgen handled by itself that the user should know about (a damaged cache
    rebuilt, a CUDA graph given up for eager); the message is complete on its own, and the CLI
    prints it as one ``warning:`` line."""


class PluginError(MMGenError):
    """A plugin's code failed or broke its component's contract (an exception raised in it, an
    output of the wrong type or shape): the message names the plugin and where. Exit code 1: a
    bug to fix in the plugin, not an input to change."""

    exit_code = 1


class CheckpointError(MMGenError):
    """A checkpoint cannot be read or does not match the installed components."""


class DivergenceError(MMGenError):
    """Training produced a non-finite value and the policy is to stop."""


class Interrupted(MMGenError):
    """A signal stopped training, which saved where it was: exit 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest valid name, or ''."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
