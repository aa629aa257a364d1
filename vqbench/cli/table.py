"""``vqbench table [DIR]``: Table 1 of the GM-VQ paper, our numbers beside the paper's."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("table", help="Table 1 layout: our MSE/perplexity beside the paper's")
    p.add_argument("dir", nargs="?", default="results", help="results folder (default: results)")
    p.add_argument("--suite", default=None, help="only this suite's runs (e.g. table1-cifar10-short)")
    p.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    p.add_argument("--metrics", default="mse,perplexity", metavar="M,M,...",
                   help="columns: mse, perplexity, psnr, ssim, usage, code_perplexity, codes_used "
                        "(default: mse,perplexity, the paper's)")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..results import build_table1, to_csv, to_markdown
    from ..results.table import check_metrics
    from ..rows import load_results

    metrics = check_metrics([m.strip() for m in args.metrics.split(",") if m.strip()])  # before reading any row
    table = build_table1(load_results(args.dir), suite=args.suite, metrics=metrics)
    print(to_markdown(table) if args.format == "markdown" else to_csv(table), end="\n" if args.format == "markdown" else "")
    return 0
