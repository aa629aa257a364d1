"""Where a training step's GPU time goes: kernel times of the fast-path step, per kernel.

    python benchmarks/profile_step.py --quantizers gmvq identity     # CUDA; ~1 min with compiles

For each quantizer: the real ``conv32`` step on a real CIFAR-10 shard, ``torch.compile``
(default mode) without the whole-step graph (so every kernel is its own launch and the
profiler attributes its device time), ``--steps`` profiled steps after warm-up. Prints the
device time per step and the top kernels; the difference between ``gmvq`` and ``identity``
is what the quantizer costs inside the step.
"""
from __future__ import annotations

import collections
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train import load_shard, make_trainer, run_steps  # noqa: E402  (registers `identity`)
from common import arg_parser, count, fail, require_device, run_script  # noqa: E402
from vqbench.registry import list_quantizers  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = arg_parser("profile_step", __doc__)
    p.add_argument("--quantizers", nargs="+", default=["gmvq", "identity"])
    p.add_argument("--steps", type=count, default=20)
    p.add_argument("--batch-size", type=count, default=256)
    p.add_argument("--compile", default="default")
    p.add_argument("--top", type=count, default=18)
    p.add_argument("--data", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    require_device("profile_step", "cuda")
    known = set(list_quantizers())
    for name in args.quantizers:
        if name not in known:
            fail("profile_step", f"unknown quantizer {name!r}; choose from {', '.join(sorted(known))}")
    args.device = "cuda"
    data = load_shard(args.data, 12500)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0)).cuda()
    with tempfile.TemporaryDirectory() as out:
        for name in args.quantizers:
            trainer = make_trainer(name, [f"train.compile={args.compile}"], args, data, out)
            run_steps(trainer, 5, order)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                run_steps(trainer, args.steps, order)
                torch.cuda.synchronize()
            per_kernel: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
            for event in prof.events():
                if event.device_type == torch.autograd.DeviceType.CUDA:
                    per_kernel[event.name][0] += 1
                    per_kernel[event.name][1] += event.device_time_total if hasattr(event, "device_time_total") \
                        else event.cuda_time_total
            total = sum(t for _, t in per_kernel.values()) / args.steps
            print(f"# {name}: device time {total:,.0f} µs per step (batch {args.batch_size}, "
                  f"{args.batch_size / total * 1e6:,.0f} images/s if nothing else ran), "
                  f"{sum(c for c, _ in per_kernel.values()) / args.steps:.0f} kernels per step")
            ranked = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:args.top]
            for kernel, (calls, t) in ranked:
                print(f"{t / args.steps:>9,.1f} µs {100 * t / args.steps / total:>5.1f}%  x{calls / args.steps:<4.0f} "
                      f"{kernel[:90]}")
            del trainer
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(run_script("profile_step", main))
