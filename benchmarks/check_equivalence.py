"""Fast path = plain path, on any device (the CUDA half of ``tests/quantizers/test_kernels.py``;
needs no pytest, so it runs on a bare GPU machine from ``gpu_check.sh``).

    python benchmarks/check_equivalence.py --device cuda

Checks, at benchmark size (N = 65,536, C = 1024, L = 64 on CUDA): the fused GM-VQ layer
against ``backend="reference"`` with the same seed, train and eval, every LatReg reading, fp32
(relative error ≤ 1e-5, identical indices) and under bf16 autocast (≤ 1e-2); then the fused
layer under ``torch.compile`` in eval mode (no noise, so the samples can be compared); on
CUDA also the fused layer with TF32 matmuls against the fp32 plain path (reported, not gated),
and GM-VQ's Triton kernels against the plain math given their noise (also on the CPU under
``TRITON_INTERPRET=1``).
Prints one line per check and exits 1 if any fails.
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantizers.gmvq import GMVQ  # noqa: E402
from vqbench.training import inductor_workarounds  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arg_parser, count, require_device, run_script  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run(q, z, upstream, seed, amp):
    z = z.clone().requires_grad_()
    q.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=amp):
        out = q(z)
    ((out.z_q.float() * upstream).sum() + out.loss).backward()
    return out, z.grad, {n: p.grad.clone() for n, p in q.named_parameters() if p.grad is not None}


def compare(a, b) -> tuple[int, float]:
    """(index mismatches, worst relative error over outputs and gradients)."""
    (oa, ga, pa), (ob, gb, pb) = a, b
    errs = [rel(oa.z_q, ob.z_q), rel(oa.probs, ob.probs), rel(oa.loss, ob.loss), rel(ga, gb)]
    errs += [rel(pa[k], pb[k]) for k in pb]
    return int((oa.indices != ob.indices).sum()), max(errs)


TIE = 1e-4  # |log π_a − log π_b| under which two codes are tied at fp32 rounding of the logits


def ties(a, b) -> torch.Tensor:
    """Rows (eval: no noise) where the two paths chose different codes that the plain path's
    posterior cannot tell apart: log π differs by ≤ TIE. The fused path drops a per-row
    constant from the logits, so such near-exact ties may round either way."""
    rows = (a[0].indices != b[0].indices).nonzero().squeeze(1)
    log_pi = b[0].probs[rows].double().clamp_min(1e-300).log()
    gap = (log_pi.gather(1, a[0].indices[rows, None]) - log_pi.gather(1, b[0].indices[rows, None])).abs()
    return rows[gap.squeeze(1) <= TIE]


def check_triton(q: GMVQ, z: torch.Tensor, upstream: torch.Tensor) -> int:
    """GM-VQ's Triton kernels (``backend="triton"``) against the plain math given the kernels'
    own noise: π, indices, z_c and the gradients of z, ŵ and M; fp32, and as the fast path
    trains (TF32 matmuls with ∂a in 3xTF32, bf16 ∂b). The number of failed checks."""
    try:
        from quantizers.kernels.triton import gumbel_noise, posterior_sample
    except ImportError as exc:
        print(f"skip triton kernels: {exc}")
        return 0
    import quantizers.functional as Fq

    seed = torch.tensor(1234, dtype=torch.int64, device=z.device)
    noise = gumbel_noise(seed, len(z), q.num_codes, z.device)
    tau = q.tau.clone()
    up_probs = torch.randn(q.num_codes, device=z.device).expand(len(z), -1) / len(z)  # q^B-like
    failed = 0
    for label, grad_dtype, split, bar in (("fp32", None, False, 1e-4),
                                          ("3xTF32 ∂a, bf16 ∂b", torch.bfloat16, True, 1e-2)):
        runs = []
        for kind in ("triton", "plain"):
            zz = z.clone().requires_grad_()
            with torch.no_grad():
                w = q.precision_weights(z)
            ww, mm = w.clone().requires_grad_(), q.codebook.detach().clone().requires_grad_()
            if kind == "triton":
                torch.set_float32_matmul_precision("high" if split else "highest")
                try:
                    probs, centre, idx, _ = posterior_sample(zz, ww, mm, tau, True, seed=seed,
                                                             grad_dtype=grad_dtype, split_tf32=split)
                    ((centre * upstream).sum() + (probs * up_probs).sum()).backward()
                finally:
                    torch.set_float32_matmul_precision("highest")
            else:
                log_pi = torch.log_softmax(-0.5 * Fq.weighted_squared_distances(zz, ww, mm), -1)
                probs = log_pi.exp()
                c_q, idx, _ = Fq.gumbel_softmax_st(log_pi, tau, noise=noise)
                centre = c_q @ mm
                ((centre * upstream).sum() + (probs * up_probs).sum()).backward()
            runs.append((probs, centre, idx, zz.grad, ww.grad, mm.grad))
        (p1, c1, i1, *g1), (p2, c2, i2, *g2) = runs
        mism = int((i1 != i2).sum())
        err = max([rel(p1, p2), rel(c1, c2)] + [rel(a, b) for a, b in zip(g1, g2)])
        ok = err <= bar and mism <= 2  # different summation orders; near-ties of log π + g may flip
        print(f"{'ok  ' if ok else 'FAIL'} triton kernels vs plain (same noise) train {label}: max rel err "
              f"{err:.1e} (≤ {bar:g}), index mismatches {mism}")
        failed += int(not ok)
    return failed


def main(argv: list[str] | None = None) -> int:
    p = arg_parser("check_equivalence", __doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokens", type=count)
    p.add_argument("--codes", type=count, default=1024)
    p.add_argument("--dim", type=count, default=64)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    require_device("check_equivalence", args.device)
    device = torch.device(args.device)
    n = args.tokens if args.tokens is not None else (65536 if device.type == "cuda" else 4096)
    gen = torch.Generator().manual_seed(0)
    z = (torch.randn(n, args.dim, generator=gen) * 0.5).to(device)
    upstream = (torch.randn(n, args.dim, generator=gen) / n).to(device)
    failed = 0
    for latreg in ("sampled", "aggregated", "posterior"):
        torch.manual_seed(0)
        fast = GMVQ(args.codes, args.dim, latreg=latreg)
        with torch.no_grad():
            fast.weight_head.weight.normal_(0.0, 0.2)
        fast.init_codebook(torch.randn(4 * args.codes, args.dim) * 0.5, generator=torch.Generator().manual_seed(0))
        fast.to(device).set_progress(0.3)
        plain = copy.deepcopy(fast)
        plain.backend = "reference"
        for training in (True, False):
            for amp, tol in ((False, 1e-5), (True, 1e-2)):
                fast.train(training), plain.train(training)
                zz, up = z.bfloat16() if amp else z, upstream
                a, b = run(fast, zz, up, 1, amp), run(plain, zz, up, 1, amp)
                tied = ties(a, b) if not training else torch.zeros(0, dtype=torch.long)
                if tied.numel():  # compare the rest: a flipped tie moves z_q and the codebook gradient
                    keep = torch.ones(len(zz), dtype=torch.bool, device=device)
                    keep[tied] = False
                    zz, up = zz[keep], up[keep]
                    a, b = run(fast, zz, up, 1, amp), run(plain, zz, up, 1, amp)
                mism, err = compare(a, b)
                ok = err <= tol and mism <= (n // 10000 if amp else 0)  # bf16: rare exact-tie flips
                if not ok and not amp and not training and mism == 0:
                    # Which path is off? Both against float64 (eval: no noise to redraw).
                    ref = copy.deepcopy(plain).double()
                    c = run(ref, zz.double(), up.double(), 1, False)
                    fused_err, plain_err = compare(a, c)[1], compare(b, c)[1]
                    ok = fused_err <= max(tol, plain_err)
                    print(f"     float64 reference: fused {fused_err:.1e}, plain {plain_err:.1e} "
                          f"({'the fused path is at least as close' if ok else 'the fused path is further off'})")
                failed += not ok
                print(f"{'ok  ' if ok else 'FAIL'} layer {latreg:<10} {'train' if training else 'eval '} "
                      f"{'bf16' if amp else 'fp32'}: max rel err {err:.1e} (≤ {tol:g}), index mismatches {mism}"
                      f" (+{tied.numel()} tied to |Δlog π| ≤ {TIE:g}, excluded)")
    if device.type == "cuda":  # TF32 (train.matmul_precision=high): one product, and the 3xTF32 split
        for split in ("fp32", "3xtf32"):
            fast.logit_matmul = split
            for training in (True, False):
                fast.train(training), plain.train(training)
                torch.set_float32_matmul_precision("high")
                try:
                    tf32 = run(fast, z, upstream, 1, False)
                finally:
                    torch.set_float32_matmul_precision("highest")
                b = run(plain, z, upstream, 1, False)
                tied = ties(tf32, b) if not training else torch.zeros(0, dtype=torch.long)
                mism, err = compare(tf32, b)
                mism -= tied.numel()
                label = "TF32 fused" if split == "fp32" else "3xTF32 fused"
                print(f"{'ok  ' if err <= 1e-2 else 'over'} {label} vs fp32 plain {'train' if training else 'eval '}: "
                      f"max rel err {err:.1e} (reduced-precision bar 1e-2), index mismatches {mism} of {n} "
                      f"(+{tied.numel()} ties; info)")
        fast.logit_matmul = "fp32"
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":  # the kernels, or their interpreter
        failed += check_triton(fast, z, upstream)
    if not args.no_compile:
        inductor_workarounds()
        fast.eval()
        compiled = torch.compile(fast, dynamic=False)
        with torch.no_grad():
            a, b = compiled(z), plain.eval()(z)
        tied = ties((a,), (b,))
        keep = torch.ones(len(z), dtype=torch.bool, device=device)
        keep[tied] = False
        err = max(rel(a.z_q[keep], b.z_q[keep]), rel(a.probs[keep], b.probs[keep]))
        mism = int((a.indices != b.indices).sum()) - tied.numel()
        ok = err <= 1e-5 and mism == 0
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} torch.compile(fused) eval vs plain: max rel err {err:.1e}, "
              f"index mismatches {mism} (+{tied.numel()} ties excluded)")
    print(f"equivalence on {device}: {'all passed' if not failed else f'{failed} FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_script("check_equivalence", main))
