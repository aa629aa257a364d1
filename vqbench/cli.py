"""``vqbench``: a thin shell over the library calls (``fit``, ``build_quantizer``, ...).

Subcommands live in ``vqbench/commands/``: each module with ``add_parser(subparsers)`` is one.
A user mistake (:class:`UserError`, a bad argument) prints one line and exits 2;
``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings

from . import __version__
from .errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (exit 2), not usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"vqbench: warning: {message}\n"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vqbench", description="Compare vector quantizers on equal terms.")
    parser.add_argument("--version", action="version", version=f"vqbench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--registry", action="append", default=[], metavar="YAML",
                        help="a registry YAML adding quantizers (module:Class); repeatable")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "add_parser"):
            module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    parser = build_parser()
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
            from .registry import add_registry_file

            for path in args.registry:
                add_registry_file(path)
        return int(args.func(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"vqbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vqbench: interrupted", file=sys.stderr)
        return 130
