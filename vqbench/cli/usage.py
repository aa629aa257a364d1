"""``vqbench usage RUN``: how a run's codes are used on a split: a sorted histogram PNG, dead
codes, usage and the code perplexity."""
from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("usage", help="code-usage histogram (sorted), dead codes, usage %%, perplexity of a run")
    p.add_argument("run", metavar="RUN", help="a run folder (runs/<name>)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="default: test")
    p.add_argument("--out", default=None, metavar="FILE.png", help="default: RUN/usage-SPLIT.png")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON line last")
    p.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE", help="where the run's images are now")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..tokenizer import load_run
    from ..tokens import output_file, prepare_output, read_split, run_data, usage_stats
    from ..training.setup import progress_bar

    out = output_file(args.out, ".png", "usage PNG") if args.out else None
    tok = load_run(args.run, device=args.device)
    out = out or output_file(tok.run_dir / f"usage-{args.split}.png", ".png", "usage PNG")
    images = read_split(tok, run_data(tok, None, args.overrides), args.split)
    bar = progress_bar(len(images), f"encode {args.split}", unit="img")
    counts = tok.code_counts(images, progress=bar.update)
    bar.close()
    stats = {"run": tok.name, "split": args.split, "images": len(images), **usage_stats(counts)}
    from ..results.token_plots import usage_png

    usage_png(prepare_output(out, "usage PNG"), counts, stats,
              f"{tok.name} ({tok.config.quantizer.name}) on its {len(images)} {args.split} images")
    print(f"{tok.name}: {stats['codes_used']}/{stats['num_codes']} codes used ({stats['usage']:.1%}), "
          f"{stats['dead_codes']} dead, code perplexity {stats['code_perplexity']:.1f} on {len(images)} {args.split} "
          f"images ({stats['positions']} positions) -> {out}")
    if args.json:
        print(json.dumps(stats))
    return 0
