"""``vqbench experiment gradient-bias``: Figure 3 / Appendix A.1 of the GM-VQ paper."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("experiment", help="the paper's small experiments (gradient-bias: Figure 3)")
    p.add_argument("name", choices=["gradient-bias"], help="gradient-bias: ST Gumbel-softmax bias vs entropy")
    p.add_argument("--seeds", type=int, default=10, help="number of seeds (default 10)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--out", default="experiments/gradient-bias", help="folder for the PNG and CSV")
    p.set_defaults(func=handle)


def handle(args) -> int:
    import pandas as pd

    from ..errors import UserError
    from ..experiments import gradient_bias_study, median_rho
    from ..results.plots import plot_gradient_bias
    from ..rundir import writable_dir

    if args.seeds < 1:
        raise UserError(f"--seeds must be ≥ 1, got {args.seeds}")
    out = writable_dir(args.out, "output folder", "pass --out to a writable folder")  # before the study
    results = gradient_bias_study(args.seeds, args.first_seed)
    png = plot_gradient_bias(results, out / "gradient_bias.png")
    per_seed = pd.DataFrame({"seed": [r.seed for r in results], "rho": [r.rho for r in results],
                             "p_value": [r.p_value for r in results]})
    per_seed.to_csv(out / "rho_per_seed.csv", index=False)
    points = pd.concat([pd.DataFrame({"seed": r.seed, "entropy": r.entropy, "bias": r.bias}) for r in results])
    points.to_csv(out / "points.csv", index=False)
    for r in results:
        print(f"seed {r.seed:>3}  rho {r.rho:+.3f}  p {r.p_value:.2g}")
    print(f"median rho over {len(results)} seeds: {median_rho(results):.3f} (paper: 0.77)")
    print(f"wrote {png}, {out / 'rho_per_seed.csv'}, {out / 'points.csv'}")
    return 0
