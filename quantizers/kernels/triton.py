"""GM-VQ's posterior and Gumbel straight-through sample by Triton kernels
(:mod:`.triton_jit`; ``GMVQ(backend="triton")``, CUDA, L ∈ {8, 16, 32, 64}). Experimental: its
speed is not yet measured on a GPU, so ``backend="auto"`` never picks it. Imported only when
this backend is used.

The same function as :mod:`.fused` but for the noise (Philox noise drawn in the kernels, so
other samples than the PyTorch paths' for the same seed); ∂a and ∂b are the two GEMMs of
:func:`.precision.logit_input_grads`, as in the fused path. ``tests/quantizers/test_kernels.py`` checks
it under ``TRITON_INTERPRET=1`` against the reference path given the same noise
(:func:`gumbel_noise`).
"""
from __future__ import annotations

import torch
import triton
from torch import Tensor

from . import triton_jit as jit
from .fused import codebook_grad, logit_operands
from .precision import logit_input_grads

# Tiles (latents × codes), warps and pipeline stages per kernel and GPU generation (compute
# capability major; Hopper's values for newer ones and the interpreter): the largest that
# compile without register spills and within shared memory (benchmarks/triton_fit.py, which
# tests/quantizers/test_kernels.py runs for sm_80 and sm_90 on any machine).
FORWARD = {8: ((64, 16), 4), 9: ((64, 32), 4)}
LOGIT_GRAD = {8: ((32, 64), 8), 9: ((32, 64), 8)}
STAGES = 2


def launch_config(table: dict, device: torch.device) -> tuple[tuple[int, int], int]:
    """((BN, BC), warps) from ``table`` for ``device``'s GPU generation."""
    major = torch.cuda.get_device_capability(device)[0] if device.type == "cuda" else max(table)
    return table[min(max(major, min(table)), max(table))]


# The logits are recomputed in the forward's second pass, so their products run on tensor
# cores: 3xTF32 is as exact as fp32 on GM-VQ's cancelling logits (benchmarks/logit_precision.py:
# max |Δlogit| 2.9e-5, no argmax flips at N = 65,536), where one TF32 product is not.
DOT_PRECISION = "tf32x3"
WIDE_FROM = 2**31  # N·C from which noise offsets need int64 (64-bit Philox, slower)


class TritonPosteriorSample(torch.autograd.Function):
    """(a, b, codebook, tau, seed, sample, grad_dtype, split, configs) → (π, z_c, j, mean
    posterior entropy); ``grad_dtype`` and ``split`` as in
    :class:`quantizers.kernels.fused.GMVQPosteriorSample`; ``configs``: the forward's and the ∂ℓ
    kernel's :func:`launch_config`."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, codebook: Tensor, tau: Tensor, seed: Tensor, sample: bool,
                grad_dtype: torch.dtype | None, split: bool, configs: tuple):
        a, b = a.float().contiguous(), b.float().contiguous()
        n, k = a.shape
        c = b.shape[0]
        ((bn, bc), warps), wide = configs[0], n * c >= WIDE_FROM
        probs = torch.empty(n, c, device=a.device, dtype=torch.float32)
        lse = torch.empty(n, device=a.device, dtype=torch.float32)
        lse_y = torch.empty_like(lse)
        indices = torch.empty(n, device=a.device, dtype=torch.int64)
        entropy = torch.zeros((), device=a.device, dtype=torch.float32)
        jit.forward[(triton.cdiv(n, bn),)](a, b, tau, seed, probs, lse, lse_y, indices, entropy, n, c,
                                           K=k, BN=bn, BC=bc, SAMPLE=sample, DOT=DOT_PRECISION, WIDE=wide,
                                           num_warps=warps, num_stages=STAGES)
        centre = codebook.float().index_select(0, indices)
        ctx.sample, ctx.grad_dtype, ctx.split, ctx.grad_config = sample, grad_dtype, split, configs[1]
        ctx.mark_non_differentiable(indices, entropy)
        ctx.save_for_backward(a, b, codebook, tau, seed, indices, probs, lse, lse_y)
        return probs, centre, indices, entropy / n

    @staticmethod
    def backward(ctx, g_probs: Tensor | None, g_centre: Tensor | None, _g_idx, _g_ent):
        a, b, codebook, tau, seed, indices, probs, lse, lse_y = ctx.saved_tensors
        n, c = probs.shape
        dim = codebook.shape[1]
        sample = ctx.sample and g_centre is not None
        g_a = g_b = g_book = None
        if sample or g_probs is not None:
            ((bn, bc), warps), wide = ctx.grad_config, n * c >= WIDE_FROM
            book = codebook.float().contiguous()
            g_centre32 = (g_centre.float().contiguous() if g_centre is not None
                          else torch.zeros(n, dim, device=a.device, dtype=torch.float32))
            gp = g_probs.float() if g_probs is not None else probs  # placeholder pointer when absent
            grad = torch.empty(n, c, device=a.device, dtype=torch.float32)
            jit.logit_grad[(triton.cdiv(n, bn),)](probs, lse, lse_y, book, tau, seed, gp, gp.stride(0), gp.stride(-1),
                                                  g_centre32, grad, n, c, L=dim, BN=bn, BC=bc, SAMPLE=sample,
                                                  HAS_GP=g_probs is not None, DOT=DOT_PRECISION, WIDE=wide,
                                                  num_warps=warps, num_stages=STAGES)
            g_a, g_b = logit_input_grads(grad, a, b, ctx.needs_input_grad[:2], ctx.split, ctx.grad_dtype)
        if ctx.needs_input_grad[2] and g_centre is not None:
            g_book = codebook_grad(indices, g_centre, codebook)
        return g_a, g_b, g_book, None, None, None, None, None, None


def gumbel_noise(seed: Tensor, n: int, c: int, device: torch.device) -> Tensor:
    """The (N, C) noise the kernels draw for ``seed`` (for tests: the reference path given it
    must compute what the kernels compute)."""
    out = torch.empty(n, c, device=device, dtype=torch.float32)
    jit.noise[(triton.cdiv(n, 32), triton.cdiv(c, 32))](seed, out, n, c, BN=32, BC=32, WIDE=n * c >= WIDE_FROM)
    return out


def posterior_sample(z: Tensor, weights: Tensor, codebook: Tensor, tau: Tensor, sample: bool,
                     seed: Tensor | None = None, grad_dtype: torch.dtype | None = None,
                     split_tf32: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """As :func:`quantizers.kernels.fused.posterior_sample`, by the Triton kernels; ``seed``
    (an int64 device scalar) is drawn from torch's generator when None."""
    a, b, codebook, tau = logit_operands(z, weights, codebook, tau)
    if seed is None:
        seed = torch.randint(0, 2**31 - 1, (), device=z.device, dtype=torch.int64)
    # Resolved here, outside the autograd.Function, so a compiled model asks the device once.
    configs = (launch_config(FORWARD, z.device), launch_config(LOGIT_GRAD, z.device))
    return TritonPosteriorSample.apply(a, b, codebook, tau, seed, sample, grad_dtype, split_tf32, configs)
