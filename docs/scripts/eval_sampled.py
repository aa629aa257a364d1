"""Test MSE of a trained run with the quantizer's argmax codes (what vqbench evaluates, the
paper's §5.1 noise-free eval) beside the same model with its training-time sampling; the
autoencoder itself (BatchNorm) in eval mode either way.

    python docs/scripts/eval_sampled.py RUN_DIR ../shared/data/cifar10/test.npz

Used by docs/reproduction.md (GM-VQ's argmax/sample gap).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from vqbench.tokenizer import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("test_npz")
    parser.add_argument("--batch", type=int, default=250)
    args = parser.parse_args()
    model = load_run(args.run_dir, device="cpu").model
    x = torch.from_numpy(np.load(args.test_npz)["x"]).permute(0, 3, 1, 2).float() / 255
    model.eval()
    result = {}
    with torch.no_grad():
        for mode in ("argmax", "sampled"):
            torch.manual_seed(0)
            model.quantizer.train(mode == "sampled")
            sse = sum(float((model(x[i:i + args.batch])[0] - x[i:i + args.batch]).pow(2).sum())
                      for i in range(0, len(x), args.batch))
            result[mode] = sse / x.numel()
    print(f"{args.run_dir}: test MSE x1e-3 over {len(x)} images: argmax {result['argmax'] * 1e3:.3f}, "
          f"sampled {result['sampled'] * 1e3:.3f}")


if __name__ == "__main__":
    main()
