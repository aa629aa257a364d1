"""``vqbench plot [DIR]``: training curves, β box plots (Figure 4), MSE-vs-perplexity Pareto front."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plot", help="PNG figures from run folders (curves, β box plots, Pareto front)")
    p.add_argument("dir", nargs="?", default="runs", help="folder of run folders, or a results folder (default: runs)")
    p.add_argument("--out", default=None, help="where the PNGs go (default: DIR/plots)")
    p.add_argument("--suite", default=None, help="a results folder's rows of this suite only")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..results.plots import plot_runs

    for path in plot_runs(args.dir, args.out, args.suite):
        print(path)
    return 0
