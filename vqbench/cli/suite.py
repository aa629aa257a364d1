"""``vqbench suite NAME``: run a named list of runs (registry.yaml ``suites:``), resumably."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("suite", help="run a named suite (e.g. table1-cifar10-short); skips finished runs")
    p.add_argument("name", nargs="?", help="suite name; omit to list the suites")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="replace the suite's seeds")
    p.add_argument("--only", nargs="+", default=None, metavar="QUANTIZER", help="run only these of its quantizers")
    p.add_argument("--dry-run", action="store_true", help="print the plan (and what is done) and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="on top of the suite's recipe, e.g. results=DIR out=DIR device=cuda")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..rows import finished_hashes
    from ..results import list_suites, plan_suite, run_suite

    if not args.name:
        for name, spec in list_suites().items():
            runs = len(spec.get("quantizers", [])) * len(spec.get("seeds", [0]))
            print(f"{name:<24} {runs} runs  {spec.get('description', '')}")
        return 0
    if args.only:  # `--only a b results=DIR`: argparse hands the KEY=VALUE words to --only
        args.overrides = [*args.overrides, *(w for w in args.only if "=" in w)]
        args.only = [w for w in args.only if "=" not in w] or None
    if args.dry_run:
        plan = plan_suite(args.name, args.overrides, args.seeds, args.only)
        done = finished_hashes(plan[0].config.results) if plan[0].config.get("results") else set()
        for run in plan:
            state = "done" if run.config_hash in done else "todo"
            print(f"{state}  {run.quantizer:<18} seed {run.seed}  {run.config_hash}")
        return 0
    report = run_suite(args.name, args.overrides, args.seeds, args.only)
    print(f"suite {args.name}: {len(report.finished)} trained, {len(report.skipped)} already done, "
          f"{len(report.failed)} failed")
    return 1 if report.failed else 0
