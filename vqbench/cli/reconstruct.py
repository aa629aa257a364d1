"""``vqbench reconstruct RUN``: a PNG of a split's images (``--n``, evenly spaced over the split,
the first and the last included) above their reconstructions."""
from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("reconstruct", help="PNG grid of images above their reconstructions by a trained run")
    p.add_argument("run", metavar="RUN", help="a run folder (runs/<name>)")
    p.add_argument("--n", type=int, default=32, help="how many images, evenly spaced over the split (default: 32)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="default: test")
    p.add_argument("--out", default=None, metavar="FILE.png", help="default: RUN/reconstructions-SPLIT.png")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    p.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                   help="where the run's images are now (e.g. data.root=... or data.test=...)")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..errors import UserError
    from ..tokens import output_file, prepare_output, read_split, run_data

    if args.n < 1:
        raise UserError(f"--n must be a whole number ≥ 1 (how many images to show), got {args.n}")
    out = output_file(args.out, ".png", "reconstruction PNG") if args.out else None
    from ..images import comparison_grid
    from ..tokenizer import load_run
    from ..training.evaluation import psnr

    tok = load_run(args.run, device=args.device)
    out = out or output_file(tok.run_dir / f"reconstructions-{args.split}.png", ".png", "reconstruction PNG")
    images = read_split(tok, run_data(tok, None, args.overrides), args.split)
    n = min(args.n, len(images))
    if n < args.n:
        print(f"vqbench: the {args.split} split has {len(images)} images; showing all of them", file=sys.stderr)
    import torch

    picked = images[torch.linspace(0, len(images) - 1, n).round().long()]
    x = picked.float().div(255)
    x_hat = tok.reconstruct(picked).cpu()
    mse, db = float((x_hat.double() - x.double()).pow(2).mean()), float(psnr(x_hat, x).mean())
    title = (f"{tok.name}  ({tok.config.quantizer.name}, {tok.num_codes} codes)\n"
             f"{n} of the {len(images)} {args.split} images (upper rows) and their reconstructions (lower rows): "
             f"MSE {mse:.5f}, PSNR {db:.2f} dB (per image, mean)")
    from ..results.token_plots import reconstruction_png

    reconstruction_png(prepare_output(out, "reconstruction PNG"), comparison_grid(x, x_hat), title)
    print(f"{out}: {n} {args.split} images of {tok.name} and their reconstructions, mse {mse:.6f}, psnr {db:.2f} dB")
    return 0
