"""GM-VQ's posterior and Gumbel straight-through sample as Triton kernels that never store
the N×C logits, noise or soft sample (``GMVQ(kernel="triton")``, CUDA; experimental).

Same function as :mod:`quantizers.fused` (paper eqs. 16–17 and §3.3.2) with one difference:
the Gumbel noise is Philox noise drawn inside the kernel (``tl.rand(seed, n·C + c)``), so
the backward regenerates it instead of reading a stored copy. Per row block of latents, the
forward walks the codebook in tiles of codes twice: pass 1 computes the logits a·bᵀ on the
fly (a = [ŵ⊙ẑ, ŵ], b = [μ, −½μ²]) with online log-sum-exps for log π and for
y = softmax((log π + g)/τ) and the running Gumbel-max; pass 2 writes π (the only N×C output,
which GM-VQ's q^B and the layer's output need) and the posterior entropy. The backward
kernel reads π back (ℓ = log π + lse, so no product is recomputed), regenerates the noise,
needs two row sums first (S1 = ⟨y, ∂L/∂y⟩, S2 = ⟨π, ∂L/∂π⟩; Σ_c y_c = 1 makes
Σ_c ∂L/∂ℓ_c = S2), then writes ∂L/∂ℓ = y⊙(∂L/∂y − S1) + π⊙(∂L/∂π − S2); ∂a and ∂b are the
two GEMMs of :func:`quantizers.fused.logit_input_grads`, as in the PyTorch fused path. ∂L/∂π
may be a broadcast view (stride 0 over rows, as q^B's mean gives it): it is read through its
strides, never materialised.

Tile sizes: on a GPU, unlike under the interpreter, a kernel must fit the registers and
shared memory of an SM. ``benchmarks/triton_fit.py`` compiles both kernels for sm_80 and
sm_90 on any machine (no GPU needed) and reports shared memory, registers and spills; the
first design (∂a, ∂b accumulated inside the backward kernel) needed 352 KiB of shared memory
on sm_90, more than the 227 KiB an H100 block may have, and spilled 3 KiB of registers.

Not yet measured on a GPU (written after the session's GPU time was spent): the pure-PyTorch
fused path stays the default until ``benchmarks/bench_quantizers.py`` shows this one faster.
Tested on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``) against the plain
path given the same noise (``gumbel_noise``), in ``tests/test_gmvq_triton.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .fused import codebook_grad, logit_input_grads, logit_operands

# torch.finfo(float32).tiny, the clamp functional.gumbel_noise uses; a constexpr, since compiled
# kernels (unlike the interpreter) may read no other globals.
TINY = tl.constexpr(1.1754943508222875e-38)


@triton.jit
def _gumbel(seed, rows, c0, C, BC: tl.constexpr, WIDE: tl.constexpr):
    """Gumbel noise for the tile of ``rows`` × codes c0 … c0+BC−1 (c0 a multiple of 4).

    One Philox call gives four uniforms: code c of row n takes lane c mod 4 of counter
    n·⌈C/4⌉ + ⌊c/4⌋, so a tile costs a quarter of ``tl.rand``'s Philox rounds, the kernels'
    largest integer cost, and the noise does not depend on the tile size."""
    quads = _offsets(rows, c0 // 4 + tl.arange(0, BC // 4), (C + 3) // 4, WIDE)
    u0, u1, u2, u3 = tl.rand4x(seed, quads)
    # join adds a minor axis of 2, so [n, q, i, j] holds lane 2i + j, the uniform of code 4q + 2i + j.
    u = tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), [rows.shape[0], BC])
    u = tl.minimum(tl.maximum(u, TINY), 1.0 - 1e-7)
    return -tl.log(-tl.log(u))


@triton.jit
def _offsets(rows, cols, C, WIDE: tl.constexpr):
    """n·C + c: int32 (32-bit Philox, the fast one) unless N·C ≥ 2³¹."""
    r = rows[:, None]
    if WIDE:  # one return: compiled Triton requires one return type (the interpreter does not)
        r = r.to(tl.int64)
    return r * C + cols[None, :]


@triton.jit
def _logits(a, b_ptr, cols, cmask, ks, K: tl.constexpr, DOT: tl.constexpr):
    b = tl.load(b_ptr + cols[:, None] * K + ks[None, :], mask=cmask[:, None], other=0.0)
    return tl.dot(a, tl.trans(b), input_precision=DOT)


@triton.jit
def _forward(a_ptr, b_ptr, tau_ptr, seed_ptr, probs_ptr, lse_ptr, lse_y_ptr, idx_ptr, ent_ptr,
             N, C, K: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, SAMPLE: tl.constexpr,
             DOT: tl.constexpr, WIDE: tl.constexpr):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    rmask = rows < N
    ks = tl.arange(0, K)
    a = tl.load(a_ptr + rows[:, None] * K + ks[None, :], mask=rmask[:, None], other=0.0)
    tau = tl.load(tau_ptr)
    seed = tl.load(seed_ptr)
    m = tl.full([BN], float("-inf"), tl.float32)
    s = tl.zeros([BN], tl.float32)
    m_y = tl.full([BN], float("-inf"), tl.float32)
    s_y = tl.zeros([BN], tl.float32)
    best = tl.full([BN], float("-inf"), tl.float32)
    best_idx = tl.zeros([BN], tl.int64)
    for c0 in range(0, C, BC):
        cols = c0 + tl.arange(0, BC)
        cmask = cols < C
        logits = _logits(a, b_ptr, cols, cmask, ks, K, DOT)
        logits = tl.where(cmask[None, :], logits, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, 1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
        m = m_new
        if SAMPLE:
            perturbed = logits + _gumbel(seed, rows, c0, C, BC, WIDE)
        else:
            perturbed = logits
        tile_best = tl.max(perturbed, 1)
        tile_idx = tl.argmax(perturbed, 1).to(tl.int64) + c0
        better = tile_best > best  # strict: the first maximum wins, as torch.argmax
        best_idx = tl.where(better, tile_idx, best_idx)
        best = tl.where(better, tile_best, best)
        if SAMPLE:
            scaled = perturbed / tau
            my_new = tl.maximum(m_y, tl.max(scaled, 1))
            s_y = s_y * tl.exp(m_y - my_new) + tl.sum(tl.exp(scaled - my_new[:, None]), 1)
            m_y = my_new
    lse = m + tl.log(s)
    entropy = tl.zeros([BN], tl.float32)
    for c0 in range(0, C, BC):
        cols = c0 + tl.arange(0, BC)
        cmask = cols < C
        logits = _logits(a, b_ptr, cols, cmask, ks, K, DOT)
        log_pi = logits - lse[:, None]
        probs = tl.exp(log_pi)
        entropy -= tl.sum(tl.where(cmask[None, :], probs * log_pi, 0.0), 1)
        tl.store(probs_ptr + _offsets(rows, cols, C, WIDE), probs,
                 mask=rmask[:, None] & cmask[None, :])
    tl.store(lse_ptr + rows, lse, mask=rmask)
    if SAMPLE:
        tl.store(lse_y_ptr + rows, m_y + tl.log(s_y), mask=rmask)
    tl.store(idx_ptr + rows, best_idx, mask=rmask)
    tl.atomic_add(ent_ptr, tl.sum(tl.where(rmask, entropy, 0.0), 0))


@triton.jit
def _logit_grad(probs_ptr, lse_ptr, lse_y_ptr, book_ptr, tau_ptr, seed_ptr, gp_ptr, gp_sn, gp_sc, gc_ptr,
                grad_ptr, N, C, L: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, SAMPLE: tl.constexpr,
                HAS_GP: tl.constexpr, DOT: tl.constexpr, WIDE: tl.constexpr):
    """∂L/∂ℓ (N, C) from the stored π: sweep 0 the row sums S1, S2, sweep 1 writes ∂ℓ."""
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    rmask = rows < N
    ls = tl.arange(0, L)
    tau = tl.load(tau_ptr)
    seed = tl.load(seed_ptr)
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    lse_y = tl.load(lse_y_ptr + rows, mask=rmask, other=0.0)
    gc = tl.load(gc_ptr + rows[:, None] * L + ls[None, :], mask=rmask[:, None], other=0.0) / tau
    s1 = tl.zeros([BN], tl.float32)
    s2 = tl.zeros([BN], tl.float32)
    for sweep in tl.static_range(2):
        for c0 in range(0, C, BC):
            cols = c0 + tl.arange(0, BC)
            cmask = cols < C
            both = rmask[:, None] & cmask[None, :]
            offsets = _offsets(rows, cols, C, WIDE)
            probs = tl.load(probs_ptr + offsets, mask=both, other=0.0)
            grad = tl.zeros([BN, BC], tl.float32)
            if HAS_GP:  # without ∂L/∂π, S2 = 0 and π's term vanishes
                gp = tl.load(gp_ptr + rows[:, None].to(tl.int64) * gp_sn + cols[None, :] * gp_sc, mask=both, other=0.0)
                if sweep == 0:
                    s2 += tl.sum(gp * probs, 1)
                else:
                    grad += probs * (gp - s2[:, None])
            if SAMPLE:
                # ℓ = log π + lse; where π underflows, log of the smallest normal float instead:
                # y there is below e^(−35) either way (τ ≤ 2, g < 16.2).
                perturbed = tl.log(tl.maximum(probs, TINY)) + lse[:, None] + _gumbel(seed, rows, c0, C, BC, WIDE)
                y = tl.where(both, tl.exp(perturbed / tau - lse_y[:, None]), 0.0)
                book = tl.load(book_ptr + cols[:, None] * L + ls[None, :], mask=cmask[:, None], other=0.0)
                dy = tl.dot(gc, tl.trans(book), input_precision=DOT)  # ∂L/∂y = (∂L/∂z_c) Mᵀ / τ
                if sweep == 0:
                    s1 += tl.sum(y * dy, 1)
                else:
                    grad += y * (dy - s1[:, None])
            if sweep == 1:
                tl.store(grad_ptr + offsets, grad, mask=both)


# Tiles (latents × codes), warps and pipeline stages per kernel and GPU generation (compute
# capability major; Hopper's values for newer ones and the interpreter): the largest that
# compile without register spills and within shared memory (benchmarks/triton_fit.py, which
# tests/test_gmvq_triton.py runs for sm_80 and sm_90 on any machine).
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
    :class:`quantizers.fused.GMVQPosteriorSample`; ``configs``: the forward's and the ∂ℓ
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
        _forward[(triton.cdiv(n, bn),)](a, b, tau, seed, probs, lse, lse_y, indices, entropy, n, c,
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
            _logit_grad[(triton.cdiv(n, bn),)](probs, lse, lse_y, book, tau, seed, gp, gp.stride(0), gp.stride(-1),
                                               g_centre32, grad, n, c, L=dim, BN=bn, BC=bc, SAMPLE=sample,
                                               HAS_GP=g_probs is not None, DOT=DOT_PRECISION, WIDE=wide,
                                               num_warps=warps, num_stages=STAGES)
            g_a, g_b = logit_input_grads(grad, a, b, ctx.needs_input_grad[:2], ctx.split, ctx.grad_dtype)
        if ctx.needs_input_grad[2] and g_centre is not None:
            g_book = codebook_grad(indices, g_centre, codebook)
        return g_a, g_b, g_book, None, None, None, None, None, None


def gumbel_noise(seed: Tensor, n: int, c: int, device: torch.device) -> Tensor:
    """The (N, C) noise the kernels draw for ``seed`` (for tests: the plain path given it
    must compute what the kernels compute)."""
    out = torch.empty(n, c, device=device, dtype=torch.float32)
    _noise[(triton.cdiv(n, 32), triton.cdiv(c, 32))](seed, out, n, c, BN=32, BC=32, WIDE=n * c >= WIDE_FROM)
    return out


@triton.jit
def _noise(seed_ptr, out_ptr, N, C, BN: tl.constexpr, BC: tl.constexpr, WIDE: tl.constexpr):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    c0 = tl.program_id(1) * BC
    cols = c0 + tl.arange(0, BC)
    tl.store(out_ptr + _offsets(rows, cols, C, WIDE), _gumbel(tl.load(seed_ptr), rows, c0, C, BC, WIDE),
             mask=(rows < N)[:, None] & (cols < C)[None, :])


def triton_posterior_sample(z: Tensor, weights: Tensor, codebook: Tensor, tau: Tensor, sample: bool,
                            seed: Tensor | None = None, grad_dtype: torch.dtype | None = None,
                            split_tf32: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """As :func:`quantizers.fused.gmvq_posterior_sample`, by the Triton kernels; ``seed``
    (an int64 device scalar) is drawn from torch's generator when None."""
    a, b, codebook, tau = logit_operands(z, weights, codebook, tau)
    if seed is None:
        seed = torch.randint(0, 2**31 - 1, (), device=z.device, dtype=torch.int64)
    # Resolved here, outside the autograd.Function, so a compiled model asks the device once.
    configs = (launch_config(FORWARD, z.device), launch_config(LOGIT_GRAD, z.device))
    return TritonPosteriorSample.apply(a, b, codebook, tau, seed, sample, grad_dtype, split_tf32, configs)
