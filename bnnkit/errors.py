"""Errors a user can act on: the CLI prints them without a traceback, exits with ``exit_code``."""

from __future__ import annotations


class BnnkitError(Exception):
    """An error whose message is meant for the user, not for a debugger."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class UsageError(BnnkitError):
    """Wrong input from the user: a bad recipe, option or path (exit code 2)."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe with one or more problems; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], source: str = "recipe") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}:\n{lines}")


class PluginError(UsageError):
    """An unknown plugin name, or plugins that do not fit together."""


class UnsafeFileError(BnnkitError):
    """A file that would execute code when loaded (e.g. a pickle) was refused."""

    exit_code = 2


class DiskFullError(BnnkitError):
    """No space left on the device while writing; the files written before are intact."""

    exit_code = 1


class CheckpointWarning(UserWarning):
    """The latest checkpoint of a run is unusable and the previous good one is used instead."""
