"""Matmul precision of the fast GM-VQ backends: speed levers that keep fp32 accuracy.

- ``logit_matmul="3xtf32"``: with TF32 matmuls on (``train.matmul_precision=high``) one
  TF32 product of GM-VQ's cancelling logits moved 41 of 65,536 sampled codes on an H100;
  three TF32-exact products (:func:`matmul_3xtf32`) keep fp32 accuracy on tensor cores.
- ``bf16_backward``: under bf16 autocast two of the backward's three matmuls (∂L/∂y and ∂b)
  take bf16 operands (:func:`backward_dtype`), gradients within ≈ 5e-3 of the fp32 ones (the
  reduced-precision bar is 1e-2). ∂a stays fp32 (:func:`logit_input_grads`), and so do the
  forward's logits, so the sampled codes do not move (docs/performance.md).
"""
from __future__ import annotations

import torch
from torch import Tensor


def round_mantissa(x: Tensor, bits: int) -> Tensor:
    """fp32 → the nearest fp32 value with a ``bits``-bit mantissa (ties to even); 10 is TF32."""
    drop = 23 - bits
    i = x.contiguous().view(torch.int32)
    i = (i + (1 << (drop - 1)) - 1 + ((i >> drop) & 1)) & ~((1 << drop) - 1)
    return i.view(torch.float32)


def matmul_3xtf32(x: Tensor, y: Tensor) -> Tensor:
    """x @ y (fp32) from three products of TF32-exact parts, x = x_hi + x_lo, y likewise:
    x_hi·y_hi + x_hi·y_lo + x_lo·y_hi (the x_lo·y_lo term is below fp32 rounding). With
    TF32 matmuls on (``torch.set_float32_matmul_precision("high")``) each product runs on
    tensor cores exactly, so the sum keeps ≈ fp32 accuracy where one TF32 product would not
    (benchmarks/logit_precision.py); without TF32 it is plain fp32 arithmetic."""
    (x_hi, x_lo), (y_hi, y_lo) = tf32_split(x), tf32_split(y)
    return x_hi @ y_hi + (x_hi @ y_lo + x_lo @ y_hi)


def tf32_split(x: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo), both TF32-exact (10-bit mantissas), with hi + lo = x to ≈ 2⁻²¹ relative."""
    hi = round_mantissa(x, 10)
    return hi, round_mantissa(x - hi, 10)


def backward_dtype(bf16_backward: bool, device_type: str) -> torch.dtype | None:
    """bf16 for the backward's ∂L/∂y and ∂b operands when asked for and the step runs under
    bf16 autocast; None (fp32) otherwise."""
    if bf16_backward and torch.is_autocast_enabled(device_type) \
            and torch.get_autocast_dtype(device_type) == torch.bfloat16:
        return torch.bfloat16
    return None


def logit_input_grads(g: Tensor, a: Tensor, b: Tensor, needs: tuple[bool, bool], split: bool,
                      grad_dtype: torch.dtype | None) -> tuple[Tensor | None, Tensor | None]:
    """(∂a, ∂b) of the logits a·bᵀ given g = ∂L/∂logits (N, C), for both fast backends.

    ∂a stays fp32 (or 3xTF32 with ``split``): ∂ŵ sums g_c·(−½μ_c²) terms that cancel, and
    bf16 rounding of b does not average out (the head's bias gradient moved by 1e-2 in
    bf16). ∂b takes ``grad_dtype`` operands (None: fp32), accumulated in fp32."""
    g_a = g_b = None
    if needs[0]:
        g_a = (matmul_3xtf32(g, b.float()) if split else g @ b.float()).to(a.dtype)
    if needs[1]:
        mm = grad_dtype or torch.float32
        g_b = (g.to(mm).t() @ a.to(mm)).to(b.dtype)
    return g_a, g_b
