"""`vqbench theory albo-counterexample`: show that the paper's ALBO exceeds log p(x).

Both counterexamples of ``docs/albo.md`` (shared/MATH.md), computed in closed form with
``quantizers.bounds`` on the linear-Gaussian mixture where log p(x) is exact.
"""
from __future__ import annotations

import argparse

from quantizers import bounds
from vqbench.errors import print_error  # absolute: tests load this file on its own


def _albo_counterexample(args: argparse.Namespace) -> int:
    print(bounds.counterexample_report())
    return 0


def _handler(args: argparse.Namespace) -> int:
    func = getattr(args, "theory_func", None)
    if func is None:  # one line on stderr, as the CLI's other usage errors
        print_error(f"name a CHECK (see {args.theory_parser.prog} --help)", args.theory_parser.prog)
        return 2
    return func(args)


def add_parser(subparsers) -> None:
    """Register `vqbench theory` and its sub-commands."""
    p = subparsers.add_parser("theory", help="closed-form checks of the paper's theory (ALBO vs log p(x))")
    sub = p.add_subparsers(title="checks", metavar="CHECK")
    albo = sub.add_parser("albo-counterexample", help="print two cases where ALBO > log p(x)")
    albo.set_defaults(theory_func=_albo_counterexample)
    p.set_defaults(func=_handler, theory_parser=p)
