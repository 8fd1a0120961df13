"""Exceptions that map to the CLI's exit codes.

A :class:`UserError` is something the user can fix (a bad recipe, missing data, a bad
argument): the CLI prints its one-sentence message and exits with code 2, never a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake the user can fix; the CLI prints the message and exits with code 2."""

    exit_code = 2


class RecipeError(UserError):
    """One or more problems in a recipe; ``problems`` holds one sentence each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class DivergedError(Exception):
    """Training produced a non-finite loss; the CLI exits with code 3."""

    exit_code = 3


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
