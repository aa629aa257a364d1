"""Shared math of every quantizer: one tested copy of each formula.

Equation numbers refer to the GM-VQ paper (``shared/paper/gmvq-paper.txt``); the
choices made where the paper is silent are in ``shared/MATH.md``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import distributed as Fd


def squared_distances(x: Tensor, codebook: Tensor) -> Tensor:
    """‖x_n − μ_c‖² for x (N, L) and codebook (C, L), as (N, C), clamped at 0.

    Expanded as ‖x‖² − 2 x·μ + ‖μ‖² so the N×C×L difference tensor is never built. In the
    inputs' dtype with autocast off: under bf16 autocast fp32 inputs would be multiplied in
    bf16, where the argmin over codes close together flips (28 % of vectors agreed with fp32
    at the conv32 encoder's initial scale, issue 16).
    """
    with torch.autocast(x.device.type, enabled=False):
        x_sq = x.pow(2).sum(-1, keepdim=True)
        c_sq = codebook.pow(2).sum(-1)
        return (x_sq - 2.0 * x @ codebook.t() + c_sq).clamp_min_(0.0)


def weighted_squared_distances(x: Tensor, weights: Tensor, codebook: Tensor) -> Tensor:
    """Σ_i w_{n,i} (x_{n,i} − μ_{c,i})² (the Mahalanobis-like term of eq. 16), as (N, C).

    With per-vector weights this is Σ w x² − 2 (w⊙x)·μ + w·μ²: two matmuls, no N×C×L tensor.
    """
    wx = weights * x
    d = (wx * x).sum(-1, keepdim=True) - 2.0 * wx @ codebook.t() + weights @ codebook.pow(2).t()
    return d.clamp_min(0.0)


def straight_through(z: Tensor, z_q: Tensor) -> Tensor:
    """Forward value z_q, gradient of the identity to z (Bengio et al. 2013)."""
    return z + (z_q - z).detach()


def rotation_trick(e: Tensor, q: Tensor) -> Tensor:
    """Forward value q, backward through sg(λR) e instead of the straight-through copy (Fifty
    et al. 2024 §4.2): R = I − 2rrᵀ + 2q̂êᵀ, r = (ê + q̂)/‖ê + q̂‖ rotates e's direction ê to
    q's q̂ and λ = ‖q‖/‖e‖, both constants; computed as λ(e − 2(e·r)r + 2(e·ê)q̂) without R."""
    e_hat, q_hat = l2_normalize(e).detach(), l2_normalize(q).detach()
    r = l2_normalize(e_hat + q_hat)
    lam = (q.norm(dim=-1, keepdim=True) / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)).detach()
    rotated = lam * (e - 2 * (e * r).sum(-1, keepdim=True) * r + 2 * (e * e_hat).sum(-1, keepdim=True) * q_hat)
    return rotated + (q - rotated).detach()  # the value is exactly q's, as the STE's


def gumbel_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """i.i.d. Gumbel(0, 1) noise shaped like ``like`` (−log(−log U), U kept off 0 and 1)."""
    u = torch.rand(like.shape, dtype=like.dtype, device=like.device, generator=generator)
    # In place: the fused path's N×C noise needs no second buffer.
    return u.clamp_(torch.finfo(like.dtype).tiny, 1.0 - 1e-7).log_().neg_().log_().neg_()


def gumbel_softmax(log_probs: Tensor, tau: float | Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The soft Gumbel-softmax sample (Jang et al. 2017): (y, j), y = softmax((log π + g)/τ),
    j = argmax(log π + g). No one-hot: a soft sample (SQ-VAE) needs none, and its N×C int64
    buffer and the ``hard + y − sg(y)`` passes were a third of SQ-VAE's CPU step."""
    perturbed = log_probs + (gumbel_noise(log_probs) if noise is None else noise)
    return torch.softmax(perturbed / tau, dim=-1), perturbed.argmax(dim=-1)


def gumbel_softmax_st(
    log_probs: Tensor, tau: float | Tensor, noise: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Straight-through Gumbel-softmax sample (Jang et al. 2017; paper §3.3.2).

    Returns (c_q, indices, y): y = softmax((log π + g)/τ), indices = argmax(log π + g)
    (τ never changes the argmax), c_q = onehot(j) + y − sg(y): exactly one-hot forward,
    the softmax_τ Jacobian backward. τ may be a 0-dim tensor (a buffer): no host sync,
    and a captured CUDA graph reads its current value.
    """
    y, indices = gumbel_softmax(log_probs, tau, noise)
    hard = F.one_hot(indices, log_probs.shape[-1]).to(y.dtype)
    # Parenthesised: (hard + y) − y is 1 ± 1 ulp in about a quarter of the rows.
    return hard + (y - y.detach()), indices, y


def aggregated_posterior(probs: Tensor, global_batch: bool = False) -> Tensor:
    """q^B(c) = mean of q(c|x) over every latent vector of the batch (eq. 12), shape (C,).

    ``global_batch=True`` under DDP: B is the union of every rank's batch (one all-reduce of
    C + 1 numbers that keeps autograd, see :func:`distributed.all_reduce_sum_autograd`), so
    q^B, the KL term and its gradient equal one process's on the global batch. It is a
    collective: call it on every rank (training forwards are). Single process: the mean.
    """
    flat = probs.reshape(-1, probs.shape[-1])
    if not (global_batch and Fd.is_distributed()):
        return flat.mean(0)
    count = torch.full((1,), float(flat.shape[0]), dtype=flat.dtype, device=flat.device)
    summed = Fd.all_reduce_sum_autograd(torch.cat([flat.sum(0), count]))
    return summed[:-1] / summed[-1]


def entropy(p: Tensor, dim: int = -1) -> Tensor:
    """H(p) in nats; zero probabilities count 0, in value and in gradient.

    xlogy(p, p) has a finite value at p = 0 but the gradient log p + 1 = −∞ there, which times
    ∂p/∂logits = 0 gives NaN: any π that underflows to 0 (large ŵ, far codes) poisoned the
    whole backward pass. The double ``where`` keeps both the value and the gradient finite.
    """
    positive = p > 0
    safe = torch.where(positive, p, torch.ones_like(p))
    return -torch.where(positive, p * torch.log(safe), torch.zeros_like(p)).sum(dim)


def exponential_schedule(start: float, end: float, fraction: float) -> float:
    """start · (end/start)^f for training progress f clamped to [0, 1] (MATH.md choice 4:
    the Gumbel temperature anneals 2.0 → 0.1 exponentially; the paper gives only endpoints)."""
    f = min(max(float(fraction), 0.0), 1.0)
    return start * (end / start) ** f


def kl_to_uniform(q: Tensor) -> Tensor:
    """KL(q ‖ uniform over C) = log C − H(q) (eq. 14's entropy term), in nats."""
    return math.log(q.shape[-1]) - entropy(q)


def perplexity(q: Tensor) -> Tensor:
    """exp(H_nats(q)) = 2^{H_bits(q)}, in [1, C] (paper §5.1, MATH.md choice 5)."""
    return entropy(q).exp()


def code_histogram(indices: Tensor, num_codes: int) -> Tensor:
    """Counts of each chosen code, shape (C,), float."""
    return torch.bincount(indices.reshape(-1), minlength=num_codes).to(torch.float64)


def histogram_perplexity(counts: Tensor) -> Tensor:
    """Perplexity of the empirical code distribution given by ``counts``."""
    total = counts.sum()
    if total <= 0:
        return counts.new_tensor(1.0)
    return perplexity(counts / total)


def ema_(average: Tensor, value: Tensor, decay: float) -> Tensor:
    """In place, the exponential moving average a ← γa + (1 − γ)v (van den Oord et al. 2017
    App. A.1 eqs. 6–7, γ = ``decay``); returns ``average``."""
    return average.mul_(decay).add_(value, alpha=1 - decay)


def laplace_smoothed(counts: Tensor, eps: float) -> Tensor:
    """Ñ_c = (N_c + ε)/(ΣN + Cε) · ΣN: no count is 0 and the total is kept (Sonnet's VQ-VAE EMA;
    Razavi et al. 2019), so m_c / Ñ_c is defined for a code no vector chose."""
    total = counts.sum()
    return (counts + eps) / (total + counts.numel() * eps) * total


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit-norm rows (ViT-VQGAN's l2 lookup, Yu et al. 2021)."""
    return F.normalize(x, dim=-1, eps=eps)


def kmeans(
    samples: Tensor, num_codes: int, iters: int = 20, generator: torch.Generator | None = None
) -> Tensor:
    """Lloyd's k-means on (N, L) samples; returns (num_codes, L) centroids.

    Starts from distinct random samples (with replacement only when N < C); an empty
    cluster is re-seeded from a random sample so every centroid stays a data point's mean.

    Under DDP it is a collective: rank 0 clusters its own samples and broadcasts the
    centroids, so every rank starts from the same codebook (per-rank k-means differs with
    the data and, on GPUs, with atomic-add order). Other ranks do not touch ``generator``.
    """
    if Fd.is_distributed():
        out = torch.empty(num_codes, samples.shape[1], dtype=samples.dtype, device=samples.device)
        return Fd.on_rank0_then_broadcast(lambda: _lloyd(samples, num_codes, iters, generator), out)
    return _lloyd(samples, num_codes, iters, generator)


def _lloyd(samples: Tensor, num_codes: int, iters: int, generator: torch.Generator | None) -> Tensor:
    n = samples.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one sample")
    if n >= num_codes:
        start = torch.randperm(n, generator=generator)[:num_codes]
    else:
        start = torch.randint(n, (num_codes,), generator=generator)
    centroids = samples[start.to(samples.device)].clone()
    for _ in range(iters):
        assign = squared_distances(samples, centroids).argmin(-1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, samples)
        counts = torch.bincount(assign, minlength=num_codes).to(samples.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            refill = torch.randint(n, (int(empty.sum()),), generator=generator)
            centroids[empty] = samples[refill.to(samples.device)]
    return centroids
