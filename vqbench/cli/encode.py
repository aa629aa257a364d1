"""``vqbench encode RUN --out tokens.npz``: the code grid of every image of a dataset, the
data a prior is trained on."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("encode", help="token grids of every image of a dataset by a trained run (.npz)")
    p.add_argument("run", metavar="RUN", help="a run folder (runs/<name>)")
    p.add_argument("--dataset", "-d", default=None, help="a registered dataset (default: the run's own)")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="the token file: arrays train, test (N, h, w)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    p.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE", help="e.g. data.train=... data.limit=1000")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..data import load_dataset
    from ..tokenizer import load_run
    from ..tokens import output_file, prepare_output, run_data, save_tokens
    from ..training.setup import progress_bar

    out = output_file(args.out, ".npz", "token file")
    tok = load_run(args.run, device=args.device)
    data_cfg = run_data(tok, args.dataset, args.overrides)
    data = load_dataset(data_cfg)
    bar = progress_bar(len(data.train) + len(data.test), f"encode {data_cfg.name}", unit="img")
    tokens = {"train": tok.encode(data.train, progress=bar.update), "test": tok.encode(data.test, progress=bar.update)}
    bar.close()
    arrays = save_tokens(prepare_output(out, "token file"), tokens, tok, data_cfg.name)
    shapes = ", ".join(f"{split} {arrays[split].shape}" for split in tokens)
    print(f"{out}: {shapes} {arrays['train'].dtype} codes of {tok.num_codes} ({tok.name} on {data_cfg.name})")
    return 0
