"""``vqbench run``: one training run (``fit``)."""
from __future__ import annotations

import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("run", help="train one quantizer in an autoencoder and evaluate it")
    p.add_argument("--quantizer", "-q", required=True, help="registered name (see `vqbench list`)")
    p.add_argument("--dataset", "-d", default="cifar10", help="cifar10 (default), cifar10-tiny, npz, celeba")
    p.add_argument("--model", "-m", default=None, help="conv32, conv32-ref or conv128 (default: the dataset's)")
    p.add_argument("--out", default=None, help="folder for run folders (default: runs)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="default: auto (CUDA when present)")
    p.add_argument("--config", default=None, help="a YAML run configuration to start from")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line last")
    p.add_argument("--resume", action="store_true",
                   help="continue this command's run folder from its last checkpoint, and fail if there is "
                        "none (re-running a command resumes anyway; a finished run is not retrained)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train with DistributedDataParallel on N local processes (one per GPU; gloo on CPU) "
                        "by launching torchrun; train.batch_size stays the global batch")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.epochs=3 quantizer.gamma=0.5")
    p.set_defaults(func=handle)


def _argv_without_nproc(args) -> list[str]:
    """This command line again, for torchrun to start on every rank."""
    argv = ["--debug"] * bool(args.debug) + [x for path in args.registry for x in ("--registry", path)]
    argv += ["run", "--quantizer", args.quantizer, "--dataset", args.dataset]
    for flag in ("model", "out", "device", "config"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    argv += ["--json"] * bool(args.json) + ["--resume"] * bool(args.resume)
    return argv + list(args.overrides)


def _check_launch(nproc: int, cfg) -> None:
    """What would fail on every rank, said once before starting them."""
    import torch

    from ..errors import UserError
    from ..training import resolve_device

    if resolve_device(cfg.device).type == "cuda" and nproc > torch.cuda.device_count():
        raise UserError(f"--nproc {nproc} needs one GPU per process but {torch.cuda.device_count()} are visible; "
                        f"use --nproc {torch.cuda.device_count()} or --device cpu")
    if cfg.train.batch_size % nproc:
        raise UserError(f"train.batch_size {cfg.train.batch_size} is the global batch and must be divisible by "
                        f"--nproc {nproc}; use a multiple of {nproc}")


def handle(args) -> int:
    from ..config import load_config_file, resolve_config
    from ..errors import UserError
    from ..training import DivergenceError, ddp, fit

    overrides = list(args.overrides)
    for flag in ("out", "device"):  # a flag and a different key=value: which one was meant?
        other = [o for o in overrides if o.split("=", 1)[0] == flag and o.split("=", 1)[1] != getattr(args, flag)]
        if getattr(args, flag) is not None and other:
            raise UserError(f"--{flag} {getattr(args, flag)} and {other[0]} both set {flag}; give it once")
    if args.out is not None:
        overrides.append(f"out={args.out}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    base = load_config_file(args.config) if args.config else None
    cfg = resolve_config(args.quantizer, args.dataset, args.model, overrides, base=base)  # fails fast, once
    if args.nproc is not None:
        if args.nproc < 1:
            raise UserError(f"--nproc must be a whole number ≥ 1, got {args.nproc}")
        if ddp.env_world_size() > 1 and args.nproc != ddp.env_world_size():
            raise UserError(f"--nproc {args.nproc} inside a torchrun job of {ddp.env_world_size()} processes; "
                            "drop --nproc under torchrun")
        if args.nproc > 1 and ddp.env_world_size() == 1:
            _check_launch(args.nproc, cfg)
            return ddp.launch(args.nproc, _argv_without_nproc(args))
    try:
        result = fit(cfg, resume=args.resume)
    except DivergenceError as exc:
        if args.debug:
            raise
        print(f"vqbench: run failed: {exc}", file=sys.stderr)
        return 1
    if ddp.env_rank() != 0:
        return 0  # rank 0 reports
    s = result.summary
    steady = f" ({s['steady_images_per_s']:.0f} after epoch 1)" if s.get("steady_images_per_s") else ""
    print(f"{s['quantizer']} on {s['dataset']}: test mse {s['mse']:.6f} ({s['mse'] * 1e3:.3f}e-3; "
          f"mean-image baseline {s['mean_image_mse']:.6f})  "
          + (f"psnr {s['psnr']:.2f} dB  ssim {s['ssim']:.4f}  " if s.get("psnr") is not None else "")
          + f"perplexity {s['perplexity']:.1f}  "
          f"code_perplexity {s['code_perplexity']:.1f}  codes_used {s['codes_used']}/{s['num_codes']}  "
          f"{s['images_per_s']:.0f} img/s{steady}  -> {s['run_dir']}")
    if args.json:
        print(json.dumps(s))
    return 0
