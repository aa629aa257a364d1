"""How precise must GM-VQ's logit matmul be? Argmax flips against float64, on the CPU.

    python benchmarks/logit_precision.py          # N = 65,536, C = 1024, L = 64; ~20 s

The logits a·bᵀ (a = [ŵ⊙ẑ, ŵ], b = [μ, −½μ²]) cancel large terms (ŵẑ·μ against ½ŵμ²), so
reduced-precision operands move them by far more than their rounding suggests. This
emulates each operand format exactly (rounding the fp32 operands' bit patterns) and
accumulates in float64, on the same setup as ``check_equivalence.py``: fp32 as computed,
TF32 (10-bit mantissa, what ``matmul_precision=high`` does on tensor cores), 3xTF32 (each
operand split into two TF32 parts, three products: what Triton's ``tl.dot(...,
input_precision="tf32x3")`` and CUTLASS's 3xTF32 GEMMs do), bf16 and 3xbf16.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantizers.kernels.precision import round_mantissa  # noqa: E402
from quantizers.gmvq import GMVQ  # noqa: E402


def split3(a: torch.Tensor, b: torch.Tensor, bits: int) -> torch.Tensor:
    ah, bh = round_mantissa(a, bits), round_mantissa(b, bits)
    al, bl = round_mantissa(a - ah, bits), round_mantissa(b - bh, bits)
    d = torch.float64
    return ah.to(d) @ bh.to(d).t() + ah.to(d) @ bl.to(d).t() + al.to(d) @ bh.to(d).t()


def main() -> int:
    n, codes, dim = 65536, 1024, 64
    torch.manual_seed(0)
    q = GMVQ(codes, dim)
    with torch.no_grad():
        q.weight_head.weight.normal_(0.0, 0.2)
    q.init_codebook(torch.randn(4 * codes, dim) * 0.5, generator=torch.Generator().manual_seed(0))
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(0)) * 0.5
    with torch.no_grad():
        w = q.precision_weights(z)
        a, b = torch.cat([w * z, w], -1), torch.cat([q.codebook, -0.5 * q.codebook**2], -1)
        ref = a.double() @ b.double().t()
        pi_ref = torch.softmax(ref, -1)
        rows = {"fp32": (a @ b.t()).double(),
                "TF32": round_mantissa(a, 10).double() @ round_mantissa(b, 10).double().t(),
                "3xTF32": split3(a, b, 10),
                "bf16": round_mantissa(a, 7).double() @ round_mantissa(b, 7).double().t(),
                "3xbf16": split3(a, b, 7)}
        print(f"# logits a·bᵀ, N={n} C={codes} L={dim}; mean |logit| {float(ref.abs().mean()):.1f}")
        print(f"{'operands':<10}{'max |Δlogit|':>14}{'π rel err':>12}{'argmax flips':>14}")
        for name, logits in rows.items():
            pi = torch.softmax(logits, -1)
            flips = int((logits.argmax(-1) != ref.argmax(-1)).sum())
            print(f"{name:<10}{float((logits - ref).abs().max()):>14.2e}"
                  f"{float((pi - pi_ref).norm() / pi_ref.norm()):>12.1e}{flips:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
