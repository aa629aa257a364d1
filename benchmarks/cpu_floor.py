"""GM-VQ's matmul floor on this CPU against VectorQuantize's whole step, in one process.

    python benchmarks/cpu_floor.py --threads 2            # N = 4096, C = 1024, L = 64

Times, at the layer benchmark's size: the seven N·L·C matmul units one fused GM-VQ
forward + backward cannot avoid (logits a·bᵀ and ∂a, ∂b with a = [ŵ⊙ẑ, ŵ] of width 2L:
two units each; ∂L/∂y = (∂L/∂z_c)Mᵀ: one), in fp32 and with bf16 operands; drawing the
N×C Gumbel noise (``torch.rand``); and VectorQuantize's whole forward + backward
(``bench_quantizers.build``). If the fp32 matmuls alone take longer than the anchor's whole
step, the layer cannot reach 1.0× in fp32 here, whatever else is fused.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_quantizers import ANCHOR, build, inputs  # noqa: E402
from common import arg_parser, count, run_script, steady_allocator  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = arg_parser("cpu_floor", __doc__)
    p.add_argument("--tokens", type=count, default=4096)
    p.add_argument("--codes", type=count, default=1024)
    p.add_argument("--dim", type=count, default=64)
    p.add_argument("--threads", type=count, default=2)
    p.add_argument("--repeats", type=count, default=9)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    steady_allocator()
    n, c, d = args.tokens, args.codes, args.dim
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, 2 * d, generator=gen), torch.randn(c, 2 * d, generator=gen)
    g, gc, book = torch.randn(n, c, generator=gen), torch.randn(n, d, generator=gen), torch.randn(c, d, generator=gen)

    def seven(dtype):
        xa, xb, xg, xgc, xm = (t.to(dtype) for t in (a, b, g, gc, book))
        return lambda: (xa @ xb.t(), xg @ xb, xg.t() @ xa, xgc @ xm.t())

    flop = 2 * n * d * c * 7
    fp32, bf16 = timed(seven(torch.float32), args.repeats), timed(seven(torch.bfloat16), args.repeats)
    noise = timed(lambda: torch.rand(n, c), args.repeats)
    _, anchor_step = build(ANCHOR, c, d, torch.device("cpu"))
    z, up = inputs(n, d, torch.device("cpu"))

    def anchor():
        z.grad = None
        anchor_step(z, up)
    anchor_s = timed(anchor, args.repeats)
    print(f"# N={n} C={c} L={d}, cpu, torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    print(f"GM-VQ's 7 matmul units, fp32: {fp32 * 1e3:7.1f} ms  ({flop / fp32 / 1e9:,.0f} GFLOP/s)")
    print(f"GM-VQ's 7 matmul units, bf16: {bf16 * 1e3:7.1f} ms  ({flop / bf16 / 1e9:,.0f} GFLOP/s)")
    print(f"N×C Gumbel uniforms (rand):   {noise * 1e3:7.1f} ms")
    print(f"{ANCHOR} whole step:  {anchor_s * 1e3:7.1f} ms  ({n / anchor_s:,.0f} tokens/s)")
    print(f"fp32 matmul floor / anchor step: {fp32 / anchor_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script("cpu_floor", main))
