"""User-facing errors: one clear line, exit status 2, never a traceback."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in what the user asked for; the CLI prints it as one line and exits 2."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """An exception's first non-blank message line, or its type's name when it has none."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def exception_line(exc: BaseException) -> str:
    """'Type: first line' (just the type when there is no message), for reports that keep going."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def suggest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for close matches, else the list of valid choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    if close:
        return f"; did you mean {' or '.join(repr(c) for c in close)}?"
    return f"; choose from: {', '.join(choices)}" if choices else ""
