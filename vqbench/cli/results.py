"""``vqbench results [DIR]``: the tidy result rows, merged."""
from __future__ import annotations

SHOWN = ["run_id", "status", "quantizer", "dataset", "seed", "steps", "mse", "perplexity",
         "code_perplexity", "codes_used", "images_per_s", "wall_s", "device_name", "git_rev"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("results", help="list the result rows of finished runs")
    p.add_argument("dir", nargs="?", default="results", help="results folder (default: results)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="table: the main columns; csv/json: every column")
    p.add_argument("--publish", metavar="DEST", default=None,
                   help="copy the finished rows of --suite to DEST/rows, curves included (e.g. published)")
    p.add_argument("--suite", action="append", default=None, metavar="NAME", help="with --publish: whose rows (repeatable)")
    p.set_defaults(func=handle)


def handle(args) -> int:
    import pandas as pd

    from ..errors import UserError
    from ..rows import load_results

    if args.publish is not None or args.suite:
        if args.publish is None or not args.suite:
            raise UserError("--publish DEST and --suite NAME go together (e.g. --publish published --suite table1-cifar10-cpu-ref)")
        from ..results.publish import publish_rows

        written = publish_rows(args.dir, args.publish, args.suite)
        print(f"published {len(written)} rows of {', '.join(args.suite)} to {args.publish}/rows")
        return 0
    rows = load_results(args.dir)
    if args.format == "csv":
        print(rows.to_csv(index=False), end="")
    elif args.format == "json":
        print(rows.to_json(orient="records", date_format="iso"))
    elif rows.empty:
        print(f"no result rows in {args.dir}")
    else:
        shown = rows[[c for c in SHOWN if c in rows]]
        with pd.option_context("display.max_rows", None, "display.width", 200,
                               "display.float_format", "{:.5g}".format):
            print(shown.to_string(index=False))
    return 0
