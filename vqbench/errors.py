"""User-facing errors: one clear line, exit status 2, never a traceback.

The library raises :class:`UserError`; the CLI, sweep workers and benchmark scripts report
it with :func:`print_error`, the one place an ``error:`` line is written. Warnings read as
one line too (:func:`one_line_warning`) and argparse mistakes as well (:class:`OneLineParser`).
"""
from __future__ import annotations

import argparse
import difflib
import errno
import sys
from collections.abc import Iterable
from typing import NoReturn


class UserError(Exception):
    """A mistake in what the user asked for; the CLI prints it as one line and exits 2."""

    exit_code = 2


# The machine, not the request: disk full, I/O error, quota, read-only file system.
WRITE_ERRNOS = (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS)


class WriteFailed(UserError):
    """A file could not be written (disk full, I/O error, read-only disk). Not the user's
    mistake, so exit 1 (the command was right, the machine failed it, as a diverged run is
    exit 1), but reported as one: one line naming the file and the reason, no traceback."""

    exit_code = 1

    def __init__(self, path, exc: OSError) -> None:
        self.path, self.errno = path, exc.errno
        super().__init__(f"could not write {path}: {exc.strerror or first_line(exc)}; "
                         "the files written before it are intact")


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


def print_error(message: str, prog: str = "vqbench") -> None:
    """``PROG: error: MESSAGE`` on stderr: how every user mistake is reported; on one line,
    whatever the message carries (a user's argument with a newline in it is shown escaped)."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (``\\n``, ``\\x00``)."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in str(text).strip())


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    """``warnings.formatwarning`` for users: ``vqbench: warning: MESSAGE``, no source line."""
    return f"vqbench: warning: {one_line(message)}\n"


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 1 (a count of steps, workers, ...)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (exit 2), not usage + message."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        print_error(f"{message} (see {self.prog} --help)", self.prog)
        raise SystemExit(2)
