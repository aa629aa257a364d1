"""CLI subcommands: every module here that defines ``add_parser(subparsers)`` is one.

``add_parser`` creates its subparser and sets ``func=handler``, ``handler(args) -> int``.
"""
