"""``vqbench``: a thin shell over the library calls (``fit``, ``build_quantizer``, ...).

Every module of this package that defines ``add_parser(subparsers)`` is one subcommand:
``add_parser`` creates its subparser and sets ``func=handler``, ``handler(args) -> int``.
A user mistake (:class:`UserError`, a bad argument) prints one line and exits 2;
``--debug`` shows the traceback. The library never imports this package.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings

from ..errors import (WRITE_ERRNOS, OneLineParser, UserError, WriteFailed, first_line, one_line_warning,
                      print_error)
from ..version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vqbench", description="Compare vector quantizers on equal terms.")
    parser.add_argument("--version", action="version", version=f"vqbench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--registry", action="append", default=[], metavar="YAML",
                        help="a registry YAML adding quantizers (module:Class); repeatable")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "add_parser"):
            module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = one_line_warning
    parser = build_parser()
    if any("\x00" in a for a in (sys.argv[1:] if argv is None else argv)):  # a shell cannot pass one; paths with one break later
        parser.error("an argument contains a NUL character")
    # KEY=VALUE overrides may sit between options (`run -q gmvq train.epochs=3 --device cpu x=1`);
    # argparse hands back the ones after an option as unknown, so they are put back here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.registry:
            from ..registry import add_registry_file

            for path in args.registry:
                add_registry_file(path)
        return int(args.func(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print_error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print("vqbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vqbench table | head`: the reader left; Python's documented exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except RuntimeError as exc:
        if args.debug or "home directory" not in str(exc):
            raise
        print_error(f"a path starts with ~ but {first_line(exc).rstrip('.').lower()} (no such user?)")
        return 2
    except OSError as exc:  # one the library did not turn into a UserError: still one line
        if args.debug or (exc.filename is None and exc.errno not in WRITE_ERRNOS):
            raise  # not about a file: a bug, show it
        if exc.errno in WRITE_ERRNOS:  # the machine failed (disk full): exit 1
            print_error(str(WriteFailed(exc.filename or "a file", exc)))
            return 1
        print_error(f"cannot use {exc.filename}: {exc.strerror or first_line(exc)}")  # name too long, no permission, ...
        return 2
