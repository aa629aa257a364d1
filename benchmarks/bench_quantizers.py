"""Layer benchmark: forward + backward tokens/s and peak memory of every registered quantizer
beside vector-quantize-pytorch's ``VectorQuantize`` (the anchor), in one process.

    python benchmarks/bench_quantizers.py --device cpu                  # N = 8192
    python benchmarks/bench_quantizers.py --device cuda --json out.json # N = 65536

Each step is one forward and backward of a (N, L) batch through the layer with a fixed
random upstream gradient on z_q plus the layer's own loss. Timing rounds are interleaved
(anchor, q1, q2, ..., anchor, q1, ...) and each quantizer's ratio is the median over rounds
of (its tokens/s) / (the anchor's tokens/s in the same round), so a machine shared with
others moves both sides alike. Peak memory: on CUDA ``torch.cuda.max_memory_allocated``
during one step, above what was allocated before it; on CPU the growth of the process's
max RSS (``resource.getrusage``) over one step in a fresh subprocess per quantizer (the
peak is reset through /proc/self/clear_refs first, so the interpreter's import-time peak does
not hide it; where that is unavailable, the growth of ru_maxrss, a lower bound).
``gmvq-plain`` is ``gmvq`` with ``backend="reference"``, for comparison; any name
takes the suffixes ``-compiled`` (``torch.compile``) and ``-tf32`` (TF32 matmuls), the
anchor's too (see ``build``). A variant that fails to build or compile is reported, not fatal.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (arg_parser, check_json_path, count, describe, device_defaults, fail, finish,  # noqa: E402
                    require_device, run_script, steady_allocator, sync)
from vqbench.errors import UserError  # noqa: E402

ANCHOR = "VectorQuantize"


SUFFIXES = ("-plain", "-compiled", "-tf32", "-3xtf32", "-bf16", "-triton")


def split_name(name: str) -> tuple[str, set[str]]:
    """'gmvq-compiled-tf32' → ('gmvq', {'compiled', 'tf32'})."""
    flags = set()
    while name.endswith(SUFFIXES):
        suffix = next(x for x in SUFFIXES if name.endswith(x))
        flags.add(suffix[1:])
        name = name.removesuffix(suffix)
    return name, flags


def build(name: str, codes: int, dim: int, device: torch.device):
    """(module, step(z, grad) -> None): one forward + backward.

    Suffixes: ``-plain`` GM-VQ's reference path (``backend="reference"``); ``-compiled`` the module
    under ``torch.compile`` (forward and, through AOTAutograd, backward); ``-tf32`` the step
    under ``torch.set_float32_matmul_precision("high")`` (TF32 tensor cores on CUDA);
    ``-3xtf32`` TF32 matmuls with GM-VQ's logits split into three TF32-exact products
    (``logit_matmul="3xtf32"``); ``-bf16`` the step under bf16 autocast, as the runner
    trains on CUDA; ``-triton`` GM-VQ's Triton kernels (``backend="triton"``, CUDA).
    """
    base, flags = split_name(name)
    if base == ANCHOR:
        from vector_quantize_pytorch import VectorQuantize

        # STE, learnable codebook, no EMA, no rotation trick: plain VQ-VAE semantics.
        module = VectorQuantize(dim=dim, codebook_size=codes, learnable_codebook=True, ema_update=False,
                                rotation_trick=False).to(device).train()

        def forward(z):
            quantized, _, loss = module(z[None])
            return quantized[0], loss.sum()
    else:
        from vqbench.registry import build_quantizer

        kwargs = {"backend": "reference"} if "plain" in flags else {}
        if "3xtf32" in flags:
            kwargs["logit_matmul"] = "3xtf32"
        if "triton" in flags:
            kwargs["backend"] = "triton"
        module = build_quantizer(base, num_codes=codes, dim=dim, **kwargs).to(device).train()
        module.check_device(device)  # e.g. -triton off CUDA: a FAILED row, not the PyTorch path's timings
        raw = module.codebook_parameter()
        if raw is not None:  # codes at the inputs' scale (k-means here would set the CPU peak)
            with torch.no_grad():
                raw.copy_(torch.randn(raw.shape, generator=torch.Generator().manual_seed(1)).to(device) * 0.5)

        def forward(z):
            out = module(z)
            return out.z_q, out.loss
    if "compiled" in flags:
        from vqbench.training import inductor_workarounds

        inductor_workarounds()
        module.compile(dynamic=False)
    precision = "high" if flags & {"tf32", "3xtf32"} else "highest"
    amp = "bf16" in flags

    def step(z, g):
        torch.set_float32_matmul_precision(precision)
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                z_q, loss = forward(z)
            ((z_q.float() * g).sum() + loss).backward()
        finally:
            torch.set_float32_matmul_precision("highest")
    return module, step


def inputs(n: int, dim: int, device: torch.device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    z = (torch.randn(n, dim, generator=gen) * 0.5).to(device).requires_grad_()
    g = (torch.randn(n, dim, generator=gen) / n).to(device)
    return z, g


def peak_mib_cuda(module, step, z, g, device: torch.device) -> float:
    """Allocation peak of one (warmed-up) step above what was allocated before it."""
    module.zero_grad(set_to_none=True)
    z.grad = None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step(z, g)
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def peak_mib_cpu(name: str, args) -> float:
    """Max-RSS growth over one step, in a fresh interpreter (so earlier peaks do not hide it)."""
    cmd = [sys.executable, __file__, "--device", "cpu", "--tokens", str(args.tokens), "--codes",
           str(args.codes), "--dim", str(args.dim), "--threads", str(args.threads), "--_peak", name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
    return float(out.stdout.strip().splitlines()[-1])


def _peak_child(name: str, args) -> None:
    device = torch.device("cpu")
    _, step = build(name, args.codes, args.dim, device)
    z, g = inputs(args.tokens, args.dim, device)
    small_z, small_g = inputs(64, args.dim, device)
    step(small_z, small_g)  # load kernels and lazy state at a size that does not set the peak
    try:  # Linux: "5" resets the peak RSS (VmHWM), so imports' peaks do not hide the step's
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        step(z, g)
        print((_status_kib("VmHWM") - before) / 1024)
    except OSError:  # elsewhere: max-RSS growth, a lower bound
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step(z, g)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def run(args) -> dict:
    device = torch.device(args.device)
    names = list(dict.fromkeys(args.only or [ANCHOR, *list_names(), "gmvq-plain"]))  # a name twice: timed once
    if ANCHOR not in names:
        names = [ANCHOR, *names]
    known = {ANCHOR, *list_names()}
    unknown = [n for n in names if split_name(n)[0] not in known]
    if unknown:
        fail("bench_quantizers", f"unknown quantizer {', '.join(unknown)}; choose from {', '.join(sorted(known))} "
             f"with the suffixes {', '.join(SUFFIXES)}")
    steps, errors, peaks = {}, {}, {}
    z, g = inputs(args.tokens, args.dim, device)
    for name in names:  # warm-up (compile; GM-VQ's precision calibration on its first batch)
        try:
            module, steps[name] = build(name, args.codes, args.dim, device)
            steps[name](z, g)
            steps[name](z, g)
            if device.type == "cuda":  # here, so a compiled variant is not compiled twice
                peaks[name] = peak_mib_cuda(module, steps[name], z, g, device)
        except UserError:  # the user's mistake (e.g. an option the quantizer lacks): one line, exit 2
            raise
        except Exception as exc:  # noqa: BLE001 - a failing variant is reported, the rest still run
            steps.pop(name, None)
            errors[name] = describe(exc)
            print(f"{name} FAILED: {errors[name]}", file=sys.stderr, flush=True)
            if name == ANCHOR:
                raise SystemExit(f"bench_quantizers: error: the anchor failed: {errors[name]}")
    names = [n for n in names if n in steps]
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                z.grad = None
                steps[name](z, g)
            sync(device)
            times[name].append((time.perf_counter() - t0) / args.iters)
    del steps
    results = []
    for name in names:
        ratios = [a / t for a, t in zip(times[ANCHOR], times[name])]
        peak = peaks[name] if device.type == "cuda" else peak_mib_cpu(name, args)
        results.append({"name": name, "tokens_per_s": args.tokens / statistics.median(times[name]),
                        "peak_mib": peak, "ratio": statistics.median(ratios),
                        "ratio_min": min(ratios), "ratio_max": max(ratios)})
    return {"device": device_name(device), "torch": torch.__version__, "tokens": args.tokens,
            "codes": args.codes, "dim": args.dim, "repeats": args.repeats, "iters": args.iters,
            "threads": torch.get_num_threads(), "anchor": ANCHOR,
            "peak_method": "cuda max_memory_allocated" if device.type == "cuda"
            else "peak RSS (VmHWM after resetting it) minus RSS before one step, fresh subprocess each",
            "results": results, "errors": errors}


def list_names() -> list[str]:
    from vqbench.registry import list_quantizers

    return list_quantizers()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def print_table(report: dict) -> None:
    print(f"# layer fwd+bwd, N={report['tokens']} C={report['codes']} L={report['dim']}, "
          f"{report['device']}, torch {report['torch']}, {report['threads']} threads")
    print(f"{'quantizer':<20}{'tokens/s':>14}{'peak MiB':>10}{'ratio':>8}  (min–max over rounds)")
    for r in report["results"]:
        print(f"{r['name']:<20}{r['tokens_per_s']:>14,.0f}{r['peak_mib']:>10.0f}{r['ratio']:>8.2f}"
              f"  ({r['ratio_min']:.2f}–{r['ratio_max']:.2f})")
    for name, error in report.get("errors", {}).items():
        print(f"{name:<20}FAILED  {error}")


def main(argv: list[str] | None = None) -> int:
    p = arg_parser("bench_quantizers", __doc__)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokens", type=count, help="N (default 65536 on cuda, 8192 on cpu)")
    p.add_argument("--codes", type=count, default=1024)
    p.add_argument("--dim", type=count, default=64)
    p.add_argument("--repeats", type=count, default=5, help="interleaved timing rounds")
    p.add_argument("--iters", type=count, help="steps per round (default 20 cuda, 2 cpu)")
    p.add_argument("--threads", type=count, help="torch threads (default: torch's on cuda, 1 on cpu: "
                   "on a shared, loaded CPU, OpenMP barriers across 2 threads cost more than they gain)")
    p.add_argument("--only", nargs="+", help="quantizer names (the anchor is always added)")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--_peak", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    require_device("bench_quantizers", args.device)
    check_json_path("bench_quantizers", args.json)
    device_defaults(args, tokens=(65536, 8192), iters=(20, 2), threads=(torch.get_num_threads(), 1))
    torch.set_num_threads(args.threads)
    if args._peak:  # glibc's default mmap returns each freed temporary: the RSS peak is the live peak
        _peak_child(args._peak, args)
        return 0
    steady_allocator()  # for timing only
    return finish(run(args), print_table, args.json)


if __name__ == "__main__":
    sys.exit(run_script("bench_quantizers", main))
