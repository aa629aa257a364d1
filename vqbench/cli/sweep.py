"""``vqbench sweep NAME``: Optuna tunes a sweep (``sweeps/NAME.yaml``); ``--report`` shows the result."""
from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="tune hyperparameters with Optuna (sweeps/NAME.yaml); resumable, parallel")
    p.add_argument("name", metavar="NAME", help="a sweep name (gamma, beta, gamma-beta, ...) or a sweep YAML path")
    p.add_argument("--dataset", "-d", default=None, help="run the sweep's base run on this dataset instead")
    p.add_argument("--storage", default=None,
                   help="an RDB URL (postgresql://user:pw@host/db) shared by many machines, or a journal file "
                        "(default: OUT/optuna.journal)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--n-trials", type=int, default=None, help="trials in the study in total, all workers together "
                                                              "(default: the sweep file's n_trials)")
    p.add_argument("--study", default=None, help="study name (default: NAME-DATASET)")
    p.add_argument("--out", default=None, help="results folder: journal, trial run folders, reports "
                                               "(default: results/sweeps)")
    p.add_argument("--report", action="store_true", help="print the best trial / Pareto front, write tables and plots")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="change the base run, e.g. train.max_steps=20")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..sweep import DEFAULT_OUT, load_sweep, redact, report, sweep

    spec = load_sweep(args.name).with_base(dataset=args.dataset, overrides=args.overrides)
    out = args.out or DEFAULT_OUT
    if args.report:
        report(spec, storage=args.storage, study_name=args.study, out=out)
        return 0
    result = sweep(spec, storage=args.storage, study_name=args.study, out=out, workers=args.workers,
                   n_trials=args.n_trials)
    c = result.counts
    print(f"study {result.study_name}: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed, "
          f"{c['running']} running, {c['waiting']} waiting  (storage {redact(result.storage)}); "
          f"`vqbench sweep {args.name} --report` shows the result")
    bad = [code for code in result.worker_exit_codes if code]
    if bad:
        print(f"vqbench: {len(bad)} of {len(result.worker_exit_codes)} workers stopped with an error", file=sys.stderr)
        return 1
    return 0
