"""``vqbench table [DIR ...]``: Table 1 of the GM-VQ paper, our numbers beside the paper's, or
the table of any other suite; with ``--versus``, which differences exceed run-to-run noise."""
from __future__ import annotations

from pathlib import Path

# The rows the docs report, committed with the code: `vqbench table --suite S` prints them on a
# fresh clone without training (docs/reproduction.md, docs/quantizers.md).
PUBLISHED = "published"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("table", help="Table 1 layout (our numbers beside the paper's) or a suite's table")
    p.add_argument("dirs", nargs="*", metavar="DIR",
                   help=f"results folders (default: results and {PUBLISHED}, those that exist)")
    p.add_argument("--suite", default=None,
                   help="only this suite's runs; a suite of other quantizers than Table 1's gets one row each")
    p.add_argument("--versus", default=None, metavar="QUANTIZER",
                   help="add each method's difference from this one, marked when within noise (e.g. gmvq)")
    p.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    p.add_argument("--metrics", default="mse,perplexity,code_perplexity", metavar="M,M,...",
                   help="columns: mse, perplexity, psnr, ssim, usage, code_perplexity, codes_used, "
                        "images_per_s, wall_s "
                        "(default: mse,perplexity,code_perplexity)")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..results import build_table, to_csv, to_markdown
    from ..results.table import check_metrics
    from ..rows import load_results_from

    metrics = check_metrics([m.strip() for m in args.metrics.split(",") if m.strip()])  # before reading any row
    dirs = args.dirs or [d for d in ("results", PUBLISHED) if Path(d).is_dir()] or ["results"]
    table = build_table(load_results_from(dirs), suite=args.suite, metrics=metrics, versus=args.versus)
    print(to_markdown(table) if args.format == "markdown" else to_csv(table), end="\n" if args.format == "markdown" else "")
    return 0
