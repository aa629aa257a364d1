"""GM-VQ's posterior and Gumbel straight-through sample as Triton kernels that never store
the N×C logits, noise or soft sample (``GMVQ(kernel="triton")``, CUDA; experimental).

Same function as :mod:`quantizers.fused` (paper eqs. 16–17 and §3.3.2) with one difference:
the Gumbel noise is Philox noise drawn inside the kernel (``tl.rand(seed, n·C + c)``), so
the backward regenerates it instead of reading a stored copy. Per row block of ``BN``
latents, the forward walks the codebook in tiles of ``BC`` codes twice: pass 1 computes the
logits a·bᵀ on the fly (a = [ŵ⊙ẑ, ŵ], b = [μ, −½μ²]) with online log-sum-exps for log π and
for y = softmax((log π + g)/τ) and the running Gumbel-max; pass 2 writes π (the only N×C
output, which GM-VQ's q^B and the layer's output need) and the posterior entropy. The
backward needs two row sums first (S1 = ⟨y, ∂L/∂y⟩, S2 = ⟨π, ∂L/∂π⟩; Σ_c y_c = 1 makes
Σ_c ∂L/∂ℓ_c = S2), then forms ∂L/∂ℓ = y⊙(∂L/∂y − S1) + π⊙(∂L/∂π − S2) tile by tile and
accumulates ∂a in registers and ∂b with atomics. ∂L/∂π may be a broadcast view (stride 0
over rows, as q^B's mean gives it): it is read through its strides, never materialised.

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

TINY = 1.1754943508222875e-38  # torch.finfo(float32).tiny, the clamp functional.gumbel_noise uses


@triton.jit
def _gumbel(seed, offsets):
    u = tl.rand(seed, offsets)
    u = tl.minimum(tl.maximum(u, TINY), 1.0 - 1e-7)
    return -tl.log(-tl.log(u))


@triton.jit
def _offsets(rows, cols, C, WIDE: tl.constexpr):
    """n·C + c: int32 (32-bit Philox, the fast one) unless N·C ≥ 2³¹."""
    if WIDE:
        return rows[:, None].to(tl.int64) * C + cols[None, :]
    return rows[:, None] * C + cols[None, :]


@triton.jit
def _logits(a, b_ptr, cols, cmask, ks, K: tl.constexpr, DOT: tl.constexpr):
    b = tl.load(b_ptr + cols[:, None] * K + ks[None, :], mask=cmask[:, None], other=0.0)
    return tl.dot(a, tl.trans(b), input_precision=DOT), b


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
        logits, _ = _logits(a, b_ptr, cols, cmask, ks, K, DOT)
        logits = tl.where(cmask[None, :], logits, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, 1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
        m = m_new
        if SAMPLE:
            perturbed = logits + _gumbel(seed, _offsets(rows, cols, C, WIDE))
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
        logits, _ = _logits(a, b_ptr, cols, cmask, ks, K, DOT)
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
def _backward(a_ptr, b_ptr, book_ptr, tau_ptr, seed_ptr, lse_ptr, lse_y_ptr, gp_ptr, gp_sn, gp_sc,
              gc_ptr, ga_ptr, gb_ptr, N, C, K: tl.constexpr, L: tl.constexpr, BN: tl.constexpr,
              BC: tl.constexpr, SAMPLE: tl.constexpr, HAS_GP: tl.constexpr, DOT: tl.constexpr,
              WIDE: tl.constexpr):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    rmask = rows < N
    ks = tl.arange(0, K)
    ls = tl.arange(0, L)
    a = tl.load(a_ptr + rows[:, None] * K + ks[None, :], mask=rmask[:, None], other=0.0)
    tau = tl.load(tau_ptr)
    seed = tl.load(seed_ptr)
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    lse_y = tl.load(lse_y_ptr + rows, mask=rmask, other=0.0)
    gc = tl.load(gc_ptr + rows[:, None] * L + ls[None, :], mask=rmask[:, None], other=0.0) / tau
    s1 = tl.zeros([BN], tl.float32)
    s2 = tl.zeros([BN], tl.float32)
    for sweep in tl.static_range(2):  # 0: the row sums S1, S2; 1: ∂ℓ, ∂a, ∂b
        g_a = tl.zeros([BN, K], tl.float32)
        for c0 in range(0, C, BC):
            cols = c0 + tl.arange(0, BC)
            cmask = cols < C
            both = rmask[:, None] & cmask[None, :]
            logits, b = _logits(a, b_ptr, cols, cmask, ks, K, DOT)
            probs = tl.where(both, tl.exp(logits - lse[:, None]), 0.0)
            grad = tl.zeros([BN, BC], tl.float32)
            if HAS_GP:  # without ∂L/∂π, S2 = 0 and π's term vanishes
                gp = tl.load(gp_ptr + rows[:, None].to(tl.int64) * gp_sn + cols[None, :] * gp_sc, mask=both, other=0.0)
                if sweep == 0:
                    s2 += tl.sum(gp * probs, 1)
                else:
                    grad += probs * (gp - s2[:, None])
            if SAMPLE:
                noise = _gumbel(seed, _offsets(rows, cols, C, WIDE))
                y = tl.where(both, tl.exp((logits + noise) / tau - lse_y[:, None]), 0.0)
                book = tl.load(book_ptr + cols[:, None] * L + ls[None, :], mask=cmask[:, None], other=0.0)
                dy = tl.dot(gc, tl.trans(book), input_precision=DOT)  # ∂L/∂y = (∂L/∂z_c) Mᵀ / τ
                if sweep == 0:
                    s1 += tl.sum(y * dy, 1)
                else:
                    grad += y * (dy - s1[:, None])
            if sweep == 1:
                g_a += tl.dot(grad, b, input_precision=DOT)
                g_b = tl.dot(tl.trans(grad), a, input_precision=DOT)
                tl.atomic_add(gb_ptr + cols[:, None] * K + ks[None, :], g_b, mask=cmask[:, None])
        if sweep == 1:
            tl.store(ga_ptr + rows[:, None] * K + ks[None, :], g_a, mask=rmask[:, None])


BN, BC = 64, 64  # latents × codes per tile
WARPS = 8  # a (BN×2L) and ∂a stay in registers across the whole codebook walk
# Every product is recomputed per tile (the logits four times), so they must run on tensor
# cores: 3xTF32 is as exact as fp32 on GM-VQ's cancelling logits (benchmarks/logit_precision.py:
# max |Δlogit| 2.9e-5, no argmax flips at N = 65,536), where one TF32 product is not.
DOT_PRECISION = "tf32x3"
WIDE_FROM = 2**31  # N·C from which noise offsets need int64 (64-bit Philox, slower)


class TritonPosteriorSample(torch.autograd.Function):
    """(a, b, codebook, tau, seed, sample) → (π, z_c, j, mean posterior entropy)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, codebook: Tensor, tau: Tensor, seed: Tensor, sample: bool):
        a, b = a.float().contiguous(), b.float().contiguous()
        n, k = a.shape
        c = b.shape[0]
        bn, bc = BN, BC
        probs = torch.empty(n, c, device=a.device, dtype=torch.float32)
        lse = torch.empty(n, device=a.device, dtype=torch.float32)
        lse_y = torch.empty_like(lse)
        indices = torch.empty(n, device=a.device, dtype=torch.int64)
        entropy = torch.zeros((), device=a.device, dtype=torch.float32)
        _forward[(triton.cdiv(n, bn),)](a, b, tau, seed, probs, lse, lse_y, indices, entropy, n, c,
                                        K=k, BN=bn, BC=bc, SAMPLE=sample, DOT=DOT_PRECISION, WIDE=n * c >= WIDE_FROM,
                                        num_warps=WARPS)
        centre = codebook.float().index_select(0, indices)
        ctx.sample = sample
        ctx.mark_non_differentiable(indices, entropy)
        ctx.save_for_backward(a, b, codebook, tau, seed, indices, lse, lse_y)
        return probs, centre, indices, entropy / n

    @staticmethod
    def backward(ctx, g_probs: Tensor | None, g_centre: Tensor | None, _g_idx, _g_ent):
        a, b, codebook, tau, seed, indices, lse, lse_y = ctx.saved_tensors
        n, k = a.shape
        c, dim = codebook.shape
        bn, bc = BN, BC
        book = codebook.float().contiguous()
        sample = ctx.sample and g_centre is not None
        g_centre32 = (g_centre.float().contiguous() if g_centre is not None
                      else torch.zeros(n, dim, device=a.device, dtype=torch.float32))
        gp = g_probs.float() if g_probs is not None else a  # placeholder pointer when absent
        g_a = torch.empty_like(a)
        g_b = torch.zeros_like(b)
        _backward[(triton.cdiv(n, bn),)](a, b, book, tau, seed, lse, lse_y, gp, gp.stride(0), gp.stride(-1),
                                         g_centre32, g_a, g_b, n, c, K=k, L=dim, BN=bn, BC=bc,
                                         SAMPLE=sample, HAS_GP=g_probs is not None, DOT=DOT_PRECISION,
                                         WIDE=n * c >= WIDE_FROM, num_warps=WARPS)
        g_book = None
        if ctx.needs_input_grad[2] and g_centre is not None:
            g_book = torch.zeros(codebook.shape, dtype=torch.float32, device=codebook.device)
            g_book.index_add_(0, indices, g_centre.float())
            g_book = g_book.to(codebook.dtype)
        return g_a, g_b, g_book, None, None, None


def gumbel_noise(seed: Tensor, n: int, c: int, device: torch.device) -> Tensor:
    """The (N, C) noise the kernels draw for ``seed`` (for tests: the plain path given it
    must compute what the kernels compute)."""
    out = torch.empty(n, c, device=device, dtype=torch.float32)
    _noise[(triton.cdiv(n * c, 1024),)](seed, out, n * c, B=1024, WIDE=n * c >= WIDE_FROM)
    return out


@triton.jit
def _noise(seed_ptr, out_ptr, total, B: tl.constexpr, WIDE: tl.constexpr):
    offsets = tl.program_id(0) * B + tl.arange(0, B)
    if WIDE:
        offsets = offsets.to(tl.int64)
    tl.store(out_ptr + offsets, _gumbel(tl.load(seed_ptr), offsets), mask=offsets < total)


def triton_posterior_sample(z: Tensor, weights: Tensor, codebook: Tensor, tau: Tensor, sample: bool,
                            seed: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """As :func:`quantizers.fused.gmvq_posterior_sample`, by the Triton kernels; ``seed``
    (an int64 device scalar) is drawn from torch's generator when None."""
    z, weights, codebook = z.float(), weights.float(), codebook.float()
    a = torch.cat([weights * z, weights], dim=-1)
    b = torch.cat([codebook, -0.5 * codebook.pow(2)], dim=-1)
    if seed is None:
        seed = torch.randint(0, 2**31 - 1, (), device=z.device, dtype=torch.int64)
    tau = torch.as_tensor(tau, dtype=torch.float32, device=z.device).clone()
    return TritonPosteriorSample.apply(a, b, codebook, tau, seed, sample)
