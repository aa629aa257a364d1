"""``vqbench run``: one training run (``fit``)."""
from __future__ import annotations

import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("run", help="train one quantizer in an autoencoder and evaluate it")
    p.add_argument("--quantizer", "-q", required=True, help="registered name (see `vqbench list`)")
    p.add_argument("--dataset", "-d", default="cifar10", help="cifar10 (default), cifar10-tiny, npz, celeba")
    p.add_argument("--model", "-m", default=None, help="conv32 or conv128 (default: the dataset's)")
    p.add_argument("--out", default=None, help="folder for run folders (default: runs)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="default: auto (CUDA when present)")
    p.add_argument("--config", default=None, help="a YAML run configuration to start from")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line last")
    p.add_argument("--resume", action="store_true",
                   help="continue this command's run folder from its last checkpoint, and fail if there is "
                        "none (re-running a command resumes anyway; a finished run is not retrained)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.epochs=3 quantizer.gamma=0.5")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..config import load_config_file, resolve_config
    from ..runner import DivergenceError, fit

    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"out={args.out}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    base = load_config_file(args.config) if args.config else None
    cfg = resolve_config(args.quantizer, args.dataset, args.model, overrides, base=base)
    try:
        result = fit(cfg, resume=args.resume)
    except DivergenceError as exc:
        if args.debug:
            raise
        print(f"vqbench: run failed: {exc}", file=sys.stderr)
        return 1
    s = result.summary
    print(f"{s['quantizer']} on {s['dataset']}: test mse {s['mse']:.6f} ({s['mse'] * 1e3:.3f}e-3; "
          f"mean-image baseline {s['mean_image_mse']:.6f})  perplexity {s['perplexity']:.1f}  "
          f"code_perplexity {s['code_perplexity']:.1f}  codes_used {s['codes_used']}/{s['num_codes']}  "
          f"{s['images_per_s']:.0f} img/s  -> {s['run_dir']}")
    if args.json:
        print(json.dumps(s))
    return 0
