"""quantizers/functional.py as properties (shared/MATH.md, "Properties worth testing"): the
aggregated posterior q^B, KL(q^B ‖ U), perplexity, entropy, Gumbel noise and the
straight-through Gumbel-softmax."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from quantizers import functional as Fq
from tests._strategies import F64, TOL, Case, cases, distributions, finite

# Tiny float64 tensors: one thread is several times faster than two (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def posterior(case: Case) -> torch.Tensor:
    return case.module().log_posterior(case.flat).exp()


@given(cases(), st.integers(0, 2**31 - 1), st.integers(2, 3))
def test_aggregated_posterior(case: Case, seed: int, copies: int) -> None:
    probs = posterior(case)
    q_b = Fq.aggregated_posterior(probs)
    assert q_b.shape == (case.codebook.shape[0],)
    assert (q_b >= 0).all() and abs(float(q_b.sum()) - 1) <= TOL
    assert torch.allclose(q_b, probs.reshape(-1, probs.shape[-1]).mean(0), atol=TOL, rtol=0)
    perm = torch.randperm(probs.shape[0], generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(Fq.aggregated_posterior(probs[perm]), q_b, atol=TOL, rtol=0)
    assert torch.allclose(Fq.aggregated_posterior(probs.repeat(copies, 1)), q_b, atol=TOL, rtol=0)
    assert (q_b >= probs.min(0).values - TOL).all() and (q_b <= probs.max(0).values + TOL).all()
    # Through the module, on the (B, L, H, W) layout: q^B pools every position of the batch.
    out = case.module().eval()(case.z)
    assert torch.allclose(Fq.aggregated_posterior(out.probs), q_b, atol=TOL, rtol=0)


@given(distributions())
def test_kl_to_uniform(q: torch.Tensor) -> None:
    c = q.shape[0]
    leaf = q.clone().requires_grad_(True)
    kl = Fq.kl_to_uniform(leaf)
    (grad,) = torch.autograd.grad(kl, leaf)
    assert torch.isfinite(kl) and torch.isfinite(grad).all()  # finite with zeros, also backward
    kl = kl.detach()
    assert -TOL <= float(kl) <= math.log(c) + TOL
    assert abs(float(kl) - (math.log(c) - float(Fq.entropy(q)))) <= TOL
    if float((q - 1.0 / c).abs().max()) > 1e-3:
        assert float(kl) > 0  # Pinsker: KL ≥ 2 TV² > 0
    uniform = torch.full((c,), 1.0 / c, dtype=F64)
    assert abs(float(Fq.kl_to_uniform(uniform))) <= TOL


@given(distributions())
def test_perplexity_range(q: torch.Tensor) -> None:
    c = q.shape[0]
    ppl = float(Fq.perplexity(q))
    assert 1 - TOL <= ppl <= c * (1 + TOL)
    assert abs(float(Fq.perplexity(torch.full((c,), 1.0 / c, dtype=F64))) - c) <= c * TOL
    one_hot = torch.zeros(c, dtype=F64)
    one_hot[c - 1] = 1.0
    assert float(Fq.perplexity(one_hot)) == 1.0
    if abs(ppl - c) <= 1e-9 * c:  # = C only if uniform
        assert float((q - 1.0 / c).abs().max()) <= 1e-4
    if abs(ppl - 1) <= 1e-12:  # = 1 only if one-hot
        assert float(q.max()) >= 1 - 1e-6


@given(cases())
def test_batch_entropy_exceeds_mean_posterior_entropy(case: Case) -> None:
    probs = posterior(case)
    q_b = Fq.aggregated_posterior(probs)
    assert float(Fq.entropy(q_b)) >= float(Fq.entropy(probs).mean()) - TOL


@given(distributions(max_c=32, zeros=False), st.integers(0, 2**31 - 1))
def test_gumbel_frequencies(pi: torch.Tensor, seed: int) -> None:
    n, c, delta = 20_000, pi.shape[0], 1e-6
    gen = torch.Generator().manual_seed(seed)  # seeded: a given π either passes or fails, always
    log_pi = pi.log().expand(n, c)
    _, indices, _ = Fq.gumbel_softmax_st(log_pi, 1.0, noise=Fq.gumbel_noise(log_pi, generator=gen))
    freq = torch.bincount(indices, minlength=c).to(F64) / n
    assert float((freq - pi).abs().max()) <= math.sqrt(math.log(2 * c / delta) / (2 * n))


@given(cases(max_b=4, max_c=16), finite(0.05, 5.0), st.integers(0, 2**31 - 1))
def test_gumbel_straight_through(case: Case, tau2: float, seed: int) -> None:
    log_pi = case.module().log_posterior(case.flat).detach().requires_grad_(True)
    g = Fq.gumbel_noise(log_pi, generator=torch.Generator().manual_seed(seed))
    c_q, j, y = Fq.gumbel_softmax_st(log_pi, case.tau, noise=g)
    _, j2, _ = Fq.gumbel_softmax_st(log_pi, tau2, noise=g)
    assert torch.equal(j, j2)  # τ never changes the argmax
    assert torch.equal(c_q, torch.nn.functional.one_hot(j, log_pi.shape[-1]).to(F64))  # exactly
    v = torch.randn(c_q.shape, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    (grad,) = torch.autograd.grad((c_q * v).sum(), log_pi)
    y = y.detach()
    jac_v = y * (v - (y * v).sum(-1, keepdim=True)) / case.tau  # (diag y − y yᵀ) v / τ
    assert torch.allclose(grad, jac_v, atol=1e-12 * (1 + float(v.abs().max()) / case.tau), rtol=0)


def test_regression_straight_through_forward_is_exactly_one_hot() -> None:
    """(onehot + y) − y is not exactly onehot in float: c_q was 1 ± 1 ulp in ~25% of rows."""
    log_pi = torch.log_softmax(torch.randn(1000, 5, dtype=F64, generator=torch.Generator().manual_seed(0)), -1)
    c_q, j, _ = Fq.gumbel_softmax_st(log_pi, 0.5)
    assert ((c_q == 0) | (c_q == 1)).all()


def test_squared_distances_are_fp32_under_bf16_autocast():
    """Autocast would run the x·μ matmul in bf16, where the argmin among close codes flips (the
    codes here are 1e-3 apart on latents of scale 1e-2, like a k-means codebook at init)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g) * 1e-2
    codebook = x[:256] + torch.randn(256, 64, generator=g) * 1e-3
    exact = Fq.squared_distances(x, codebook)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = Fq.squared_distances(x, codebook)
        plain_bf16 = (x.pow(2).sum(-1, keepdim=True) - 2.0 * x @ codebook.t() + codebook.pow(2).sum(-1))
    assert (plain_bf16.argmin(-1) != exact.argmin(-1)).any()  # the defect this guards against is real here
    assert torch.equal(under_autocast, exact)


def test_kmeans_centroids_are_their_clusters_means_and_empty_clusters_are_reseeded() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=F64)
    x = centres[torch.arange(300) % 3] + torch.randn(300, 2, dtype=F64, generator=g)
    c = Fq.kmeans(x, 3, generator=torch.Generator().manual_seed(1))
    assign = torch.cdist(x, c).argmin(-1)
    for k in range(3):  # a fixed point of Lloyd's step: each centroid is its cluster's mean
        torch.testing.assert_close(c[k], x[assign == k].mean(0))
    assert sorted(torch.bincount(assign, minlength=3).tolist()) == [100, 100, 100]
    start = Fq.kmeans(x, 3, iters=0, generator=torch.Generator().manual_seed(1))
    assert all(bool((x == row).all(-1).any()) for row in start), "iters=0: distinct random samples"
    # A sample repeated, more codes than distinct points: empty clusters are re-seeded from
    # samples, so every centroid stays a data point, never a stale or NaN one.
    y = torch.tensor([[0.0, 0.0]] * 6 + [[1.0, 1.0]] * 2, dtype=F64)
    c = Fq.kmeans(y, 4, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(c).all() and all(bool((y == row).all(-1).any()) for row in c)
    with pytest.raises(ValueError, match="at least one sample"):
        Fq.kmeans(y[:0], 2)
