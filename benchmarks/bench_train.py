"""End-to-end benchmark: training images/s of the real ``conv32`` autoencoder on a real
CIFAR-10 shard, GM-VQ and VQ-VAE on the fast path beside the same model with an identity
bottleneck (the ceiling) and the eager baseline, all in one process.

    python benchmarks/bench_train.py --device cpu --steps 3 --repeats 3
    python benchmarks/bench_train.py --device cuda --json train.json

Variants (each a runner ``Trainer``; its ``step_batch`` is what is timed: gather from the
uint8 split on the device, forward, loss, backward, AdamW, scheduler, quantizer hooks):

- ``eager``: GM-VQ's plain path (``backend="reference"``), no ``torch.compile``, the runner's
  defaults otherwise (bf16 autocast and channels_last on CUDA): the pre-fast-path step.
- ``gmvq`` / ``vqvae`` / ``identity``: the fast path. On CUDA: fused GM-VQ,
  ``train.compile=--compile`` (default ``default``) and ``train.cuda_graph=true`` (the
  whole step one CUDA graph, vqbench/training/graph.py); on CPU: ``train.compile=none``.
- CUDA only, one lever at a time: ``gmvq-fp32grad`` (the fast path with GM-VQ's backward
  matmuls in fp32, ``quantizer.bf16_backward=false``), ``gmvq-compiled`` (compile reduce-overhead, optimiser
  eager: the model's forward/backward graphed by inductor), ``gmvq-graph-eager`` (whole-step
  graph, no inductor), ``gmvq-tf32`` / ``identity-tf32`` (the fast path with
  ``train.matmul_precision=high``), ``gmvq-3xtf32`` (the same with GM-VQ's logits and ∂a as
  three TF32-exact products, ``quantizer.logit_matmul=3xtf32``), ``gmvq-triton`` /
  ``gmvq-triton-graph-eager`` (GM-VQ's Triton kernels, ``quantizer.backend=triton``, with the
  backward's GEMMs as in ``gmvq-3xtf32``, with and without inductor).

A variant that fails to build, compile or capture is reported (table and JSON ``errors``)
and the others still run.

Rounds are interleaved (every variant runs ``--steps`` steps per round) and a ratio is the
median over rounds of the two variants' images/s in the same round, so a shared, loaded
machine moves both sides alike. The identity bottleneck is registered here only (never in
registry.yaml).
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (arg_parser, check_json_path, count, describe, device_defaults, fail, finish,  # noqa: E402
                    require_device, run_script, steady_allocator, sync)
from vqbench.data import read_npz_images  # noqa: E402
from vqbench.errors import UserError  # noqa: E402
from quantizers.base import Quantizer, QuantizerOutput  # noqa: E402
from vqbench.config import resolve_config  # noqa: E402
from vqbench.data import ImageData  # noqa: E402
from vqbench.registry import register_quantizer  # noqa: E402
from vqbench.training import Trainer  # noqa: E402

SHARDS = (ROOT / ".data" / "cifar10" / "train.npz", ROOT.parent / "shared" / "data" / "cifar10" / "train-0.npz")


@register_quantizer("identity", citation="benchmark-only: z_q = z_e, the autoencoder without a quantizer")
class IdentityBottleneck(Quantizer):
    """z_q = z_e, zero loss: the bare autoencoder's step, the ceiling a quantizer is held to."""

    def __init__(self, num_codes: int = 1024, dim: int = 64) -> None:
        super().__init__(num_codes, dim)

    @property
    def codebook(self) -> torch.Tensor:
        return torch.zeros(self.num_codes, self.dim)

    @property
    def cuda_graph_safe(self) -> bool:
        return True

    def quantize(self, z: torch.Tensor) -> QuantizerOutput:
        return QuantizerOutput(z_q=z, loss=z.new_zeros((), dtype=torch.float32),
                               indices=torch.zeros(z.shape[0], dtype=torch.long, device=z.device))


def load_shard(path: Path | None, limit: int) -> ImageData:
    path = path or next((p for p in SHARDS if p.exists()), None)
    if path is None:
        fail("bench_train", f"no CIFAR-10 shard at {' or '.join(map(str, SHARDS))}; pass --data")
    if not path.is_file():
        fail("bench_train", f"--data {path} is not a file; pass a CIFAR-10 .npz shard")
    x = read_npz_images(path, ("x", "x_train"))[:limit]
    return ImageData(train=x, test=x[:256])


def variants(device: str, compile_mode: str) -> dict[str, tuple[str, list[str]]]:
    """name → (quantizer, overrides). The fast path on CUDA: compiled model, whole step in
    one CUDA graph; the extra CUDA rows isolate what each lever buys."""
    if device != "cuda":
        fast = [f"train.compile={compile_mode}"]
        return {"eager": ("gmvq", ["quantizer.backend=reference", "train.compile=none"]),
                "gmvq": ("gmvq", fast), "vqvae": ("vqvae", fast), "identity": ("identity", fast)}
    fast = [f"train.compile={compile_mode}", "train.cuda_graph=true"]
    split = ["train.matmul_precision=high", "quantizer.logit_matmul=3xtf32"]  # fp32-exact on tensor cores
    # Most telling first: --budget-s drops variants from the end.
    return {"eager": ("gmvq", ["quantizer.backend=reference", "train.compile=none"]),
            "identity": ("identity", fast),
            "gmvq": ("gmvq", fast),
            "vqvae": ("vqvae", fast),
            "gmvq-3xtf32": ("gmvq", [*fast, *split]),
            "gmvq-triton": ("gmvq", [*fast, *split, "quantizer.backend=triton"]),
            "gmvq-triton-graph-eager": ("gmvq", ["train.compile=none", "train.cuda_graph=true", *split,
                                                 "quantizer.backend=triton"]),
            "gmvq-fp32grad": ("gmvq", [*fast, "quantizer.bf16_backward=false"]),
            "gmvq-tf32": ("gmvq", [*fast, "train.matmul_precision=high"]),
            "gmvq-graph-eager": ("gmvq", ["train.compile=none", "train.cuda_graph=true"]),  # no inductor
            "gmvq-compiled": ("gmvq", ["train.compile=reduce-overhead"]),  # model graphs, optimiser eager
            "identity-tf32": ("identity", [*fast, "train.matmul_precision=high"])}


def make_trainer(quantizer: str, overrides: list[str], args, data: ImageData, out: str) -> Trainer:
    cfg = resolve_config(quantizer, "npz", "conv32", [
        f"device={args.device}", f"out={out}", f"train.batch_size={args.batch_size}",
        "train.kmeans_init=false", "train.epochs=1000", f"seed={args.seed}", *overrides])
    trainer = Trainer(cfg, data=data, log=lambda line: None)
    trainer.setup_optimization()
    trainer.model.train()
    return trainer


def run_steps(trainer: Trainer, steps: int, order: torch.Tensor) -> torch.Tensor:
    loss = None
    for _ in range(steps):
        start = (trainer.step * trainer.batch_size) % (len(order) - trainer.batch_size + 1)
        loss, _, _ = trainer.step_batch(order[start:start + trainer.batch_size])
        trainer.step += 1
    return loss


def warm_up(name: str, quantizer: str, overrides: list[str], args, data: ImageData, out: str,
            order: torch.Tensor) -> tuple[Trainer, float]:
    """Build the trainer and run its untimed steps (compile, graph capture, calibration)."""
    sync(args.device)
    t0 = time.perf_counter()
    trainer = make_trainer(quantizer, overrides, args, data, out)
    loss = run_steps(trainer, args.warmup, order)
    if not torch.isfinite(loss):
        raise RuntimeError(f"diverged during warm-up (loss {float(loss)})")
    sync(args.device)
    return trainer, time.perf_counter() - t0


def run(args) -> dict:
    data = load_shard(args.data, args.images)
    table = variants(args.device, args.compile)
    names = args.only or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        fail("bench_train", f"no variant {', '.join(unknown)} on {args.device}; choose from {', '.join(table)}")
    trainers, compile_s, errors = {}, {}, {}
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0)).to(args.device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        for name in names:  # one variant failing (a compile or capture error) does not stop the rest
            if args.budget_s and time.perf_counter() - started > args.budget_s:
                errors[name] = f"skipped: warm-ups passed --budget-s {args.budget_s:g}"
                continue
            try:
                trainers[name], compile_s[name] = warm_up(name, *table[name], args, data, out, order)
                print(f"warm-up {name}: {compile_s[name]:.1f} s", file=sys.stderr, flush=True)
            except UserError:  # a bad --compile or --batch-size: the user's, one line and exit 2
                raise
            except Exception as exc:  # noqa: BLE001 - reported in the table and the JSON
                errors[name] = describe(exc)
                print(f"warm-up {name} FAILED: {errors[name]}", file=sys.stderr, flush=True)
        times = {n: [] for n in trainers}
        for _ in range(args.repeats):
            for name, trainer in trainers.items():
                sync(args.device)
                t0 = time.perf_counter()
                run_steps(trainer, args.steps, order)
                sync(args.device)
                times[name].append(time.perf_counter() - t0)
    per_round = {n: [args.steps * args.batch_size / t for t in ts] for n, ts in times.items()}

    def ratio(a: str, b: str) -> float | None:
        if a not in per_round or b not in per_round:
            return None
        return statistics.median(x / y for x, y in zip(per_round[a], per_round[b]))

    results = [{"name": n, "quantizer": table[n][0], "overrides": table[n][1],
                "images_per_s": statistics.median(per_round[n]), "warmup_s": compile_s[n],
                "ratio_to_identity": ratio(n, "identity"), "ratio_to_eager": ratio(n, "eager")}
               for n in trainers]
    return {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "torch": torch.__version__, "batch_size": args.batch_size, "steps": args.steps,
            "repeats": args.repeats, "compile": args.compile, "threads": torch.get_num_threads(),
            "results": results, "errors": errors}


def print_table(report: dict) -> None:
    print(f"# conv32 train step, batch {report['batch_size']}, {report['device']}, torch {report['torch']}, "
          f"fast path compile={report['compile']}, {report['threads']} threads")
    print(f"{'variant':<18}{'images/s':>12}{'× identity':>12}{'× eager':>10}{'warm-up s':>11}")
    fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    for r in report["results"]:
        print(f"{r['name']:<18}{r['images_per_s']:>12,.0f}{fmt(r['ratio_to_identity']):>12}"
              f"{fmt(r['ratio_to_eager']):>10}{r['warmup_s']:>11.1f}")
    for name, error in report["errors"].items():
        print(f"{name:<18}FAILED  {error}")


def main(argv: list[str] | None = None) -> int:
    p = arg_parser("bench_train", __doc__)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", type=Path, help="a CIFAR-10 .npz shard (default .data/ or ../shared/data)")
    p.add_argument("--images", type=count, default=12500, help="images of the shard to load")
    p.add_argument("--batch-size", type=count, default=256)
    p.add_argument("--steps", type=count, help="steps per variant per round (default 50 cuda, 3 cpu)")
    p.add_argument("--warmup", type=count, help="untimed steps first (default 10 cuda, 2 cpu)")
    p.add_argument("--repeats", type=count, default=3)
    p.add_argument("--compile", help="train.compile of the fast path (default: default on cuda, with "
                   "train.cuda_graph=true; none on cpu)")
    p.add_argument("--threads", type=count, help="torch threads (default 1 on cpu, see bench_quantizers)")
    p.add_argument("--only", nargs="+", help="variant names (default: all for the device)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, help="skip the variants not yet warmed up after this many "
                   "seconds (compiles are the slow part), so a time-limited run still prints its table")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    require_device("bench_train", args.device)
    check_json_path("bench_train", args.json)
    device_defaults(args, steps=(50, 3), warmup=(10, 2), compile=("default", "none"),
                    threads=(torch.get_num_threads(), 1))
    torch.set_num_threads(args.threads)
    steady_allocator()
    return finish(run(args), print_table, args.json)


if __name__ == "__main__":
    sys.exit(run_script("bench_train", main))
