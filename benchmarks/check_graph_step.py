"""The whole-step CUDA graph (``train.cuda_graph``) trains as the eager step does, on a GPU.

    python benchmarks/check_graph_step.py            # CUDA only; ~15 s, no torch.compile

Same seed, same batches of a real CIFAR-10 shard, ``--steps`` steps from a fresh model,
learning rate changing every step (warm-up): for ``vqvae`` (no random draws) the graphed
losses must follow the eager ones (relative difference ≤ ``--tol``, bf16 autocast and
atomics make them not bit-identical); a stale lr, a missed gradient reset or a wrong static
buffer moves them far more. ``gmvq`` draws its Gumbel and Gaussian noise from the graph's
RNG offsets, so its losses are reported beside the eager ones, not compared. Exit 1 on a
mismatch.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train import load_shard, make_trainer  # noqa: E402
from common import arg_parser, count, require_device, run_script  # noqa: E402


def losses(quantizer: str, graph: bool, args, data, out: str) -> list[float]:
    trainer = make_trainer(quantizer, [f"train.max_steps={args.steps}", "train.warmup_fraction=0.5",
                                       f"train.cuda_graph={str(graph).lower()}"], args, data, out)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0)).cuda()
    result = []
    for step in range(args.steps):
        loss, _, _ = trainer.step_batch(order[step * args.batch_size:(step + 1) * args.batch_size])
        trainer.step += 1
        result.append(loss)
    return [float(x) for x in result]


def main(argv: list[str] | None = None) -> int:
    p = arg_parser("check_graph_step", __doc__)
    p.add_argument("--steps", type=count, default=16)
    p.add_argument("--batch-size", type=count, default=256)
    p.add_argument("--tol", type=float, default=2e-2)
    p.add_argument("--data", type=Path)
    args = p.parse_args(argv)
    require_device("check_graph_step", "cuda")
    args.device, args.seed = "cuda", 0  # what make_trainer reads
    data = load_shard(args.data, args.steps * args.batch_size)
    failed = 0
    with tempfile.TemporaryDirectory() as out:
        for quantizer in ("vqvae", "gmvq"):
            eager, graphed = losses(quantizer, False, args, data, out), losses(quantizer, True, args, data, out)
            worst = max(abs(a - b) / abs(a) for a, b in zip(eager, graphed))
            gated = quantizer == "vqvae"
            ok = worst <= args.tol or not gated
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {quantizer} graphed vs eager, {args.steps} steps: max rel loss "
                  f"difference {worst:.1e}{f' (≤ {args.tol:g})' if gated else ' (info: different noise)'}; "
                  f"eager {eager[0]:.4f} → {eager[-1]:.4f}, graphed {graphed[0]:.4f} → {graphed[-1]:.4f}")
    print(f"graph step: {'all passed' if not failed else f'{failed} FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_script("check_graph_step", main))
