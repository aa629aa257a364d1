"""``vqbench table [DIR]``: Table 1 of the GM-VQ paper, our numbers beside the paper's."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("table", help="Table 1 layout: our MSE/perplexity beside the paper's")
    p.add_argument("dir", nargs="?", default="results", help="results folder (default: results)")
    p.add_argument("--suite", default=None, help="only this suite's runs (e.g. table1-cifar10-short)")
    p.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..rows import load_results
    from ..results import build_table1, to_csv, to_markdown

    table = build_table1(load_results(args.dir), suite=args.suite)
    print(to_markdown(table) if args.format == "markdown" else to_csv(table), end="\n" if args.format == "markdown" else "")
    return 0
