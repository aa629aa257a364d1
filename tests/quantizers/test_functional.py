"""quantizers/functional.py as properties (shared/MATH.md, "Properties worth testing"): the
aggregated posterior q^B, KL(q^B ‖ U), perplexity, entropy, Gumbel noise and the
straight-through Gumbel-softmax."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from quantizers import distributed as Fd
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
    with pytest.raises(ValueError, match="^k-means needs at least one sample$"):
        Fq.kmeans(y[:0], 2)


# --- known answers for the shared math (each function alone, not only through a quantizer) ---

def test_squared_distances_equal_cdist_squared_and_are_zero_on_the_codes() -> None:
    gen = torch.Generator().manual_seed(0)
    x, codebook = torch.randn(7, 5, generator=gen, dtype=F64), torch.randn(4, 5, generator=gen, dtype=F64)
    torch.testing.assert_close(Fq.squared_distances(x, codebook), torch.cdist(x, codebook) ** 2)
    on_codes = Fq.squared_distances(codebook * 1e3, codebook * 1e3)  # cancellation: clamped, never < 0
    assert (on_codes >= 0).all() and torch.allclose(on_codes.diagonal(), torch.zeros(4, dtype=F64), atol=1e-6)


def test_weighted_squared_distances_equal_the_weighted_sum() -> None:
    gen = torch.Generator().manual_seed(1)
    x, codebook = torch.randn(6, 3, generator=gen, dtype=F64), torch.randn(5, 3, generator=gen, dtype=F64)
    w = torch.rand(6, 3, generator=gen, dtype=F64) + 0.1
    brute = (w[:, None, :] * (x[:, None, :] - codebook[None]) ** 2).sum(-1)
    torch.testing.assert_close(Fq.weighted_squared_distances(x, w, codebook), brute)
    assert (Fq.weighted_squared_distances(codebook, torch.ones(5, 3, dtype=F64), codebook).diagonal() >= 0).all()


def test_straight_through_has_the_codes_value_and_the_identitys_gradient() -> None:
    z = torch.randn(4, 3, dtype=F64, requires_grad=True)
    z_q = torch.randn(4, 3, dtype=F64, requires_grad=True)
    out = Fq.straight_through(z, z_q)
    assert torch.equal(out, z + (z_q - z)) and torch.allclose(out, z_q)
    upstream = torch.randn(4, 3, dtype=F64)
    gz, gq = torch.autograd.grad(out, (z, z_q), upstream, allow_unused=True)
    assert torch.equal(gz, upstream) and gq is None


def test_rotation_trick_value_is_the_code_and_its_gradient_is_lambda_r_transpose() -> None:
    gen = torch.Generator().manual_seed(2)
    e = torch.randn(5, 4, generator=gen, dtype=F64, requires_grad=True)
    q = torch.randn(5, 4, generator=gen, dtype=F64, requires_grad=True)
    out = Fq.rotation_trick(e, q)
    torch.testing.assert_close(out, q.detach(), rtol=0, atol=1e-12)
    upstream = torch.randn(5, 4, generator=gen, dtype=F64)
    ge, gq = torch.autograd.grad(out, (e, q), upstream, allow_unused=True)
    assert gq is None  # R and λ are constants: no task gradient reaches the code
    for n in range(5):  # R = I − 2rrᵀ + 2q̂êᵀ built explicitly (Fifty et al. 2024 eq. 4.2)
        en, qn = e[n].detach(), q[n].detach()
        e_hat, q_hat = en / en.norm(), qn / qn.norm()
        r = (e_hat + q_hat) / (e_hat + q_hat).norm()
        rot = torch.eye(4, dtype=F64) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat)
        lam = qn.norm() / en.norm()
        torch.testing.assert_close(lam * rot @ en, qn)  # λR takes e to q
        torch.testing.assert_close(ge[n], lam * rot.t() @ upstream[n])


def test_gumbel_noise_is_standard_gumbel_and_reproducible() -> None:
    like = torch.zeros(200_000, dtype=F64)
    g = Fq.gumbel_noise(like, generator=torch.Generator().manual_seed(3))
    assert g.shape == like.shape and g.dtype == F64 and torch.isfinite(g).all()
    assert abs(float(g.mean()) - 0.5772156649) < 0.01  # the Euler–Mascheroni constant
    assert abs(float(g.var()) - math.pi ** 2 / 6) < 0.02
    assert torch.equal(g, Fq.gumbel_noise(like, generator=torch.Generator().manual_seed(3)))
    u = torch.exp(-torch.exp(-g))  # the CDF: uniform
    assert abs(float((u < 0.25).double().mean()) - 0.25) < 0.01


def test_gumbel_noise_stays_finite_where_the_uniform_hits_zero_or_one(monkeypatch) -> None:
    edges = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float32)
    monkeypatch.setattr(torch, "rand", lambda *a, **k: edges.clone())
    g = Fq.gumbel_noise(edges)
    assert torch.isfinite(g).all() and g[0] < g[2] < g[1]


def test_gumbel_softmax_st_draws_its_own_noise_when_none_is_given() -> None:
    log_pi = torch.log_softmax(torch.randn(64, 6), -1)
    torch.manual_seed(4)
    c_q, j, y = Fq.gumbel_softmax_st(log_pi, 0.7)
    torch.manual_seed(4)
    expected = (log_pi + Fq.gumbel_noise(log_pi)).argmax(-1)
    assert torch.equal(j, expected) and c_q.shape == y.shape == (64, 6)
    torch.testing.assert_close(y.sum(-1), torch.ones(64))


def test_entropy_of_known_distributions_and_a_finite_gradient_at_zero() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.25, 0.25, 0.5]], dtype=F64)
    torch.testing.assert_close(Fq.entropy(p), torch.tensor([math.log(2), 0.0, 1.5 * math.log(2)], dtype=F64))
    torch.testing.assert_close(Fq.entropy(p.t(), dim=0), Fq.entropy(p))
    logits = torch.tensor([0.0, 0.0, -1e4], dtype=F64, requires_grad=True)  # π underflows to 0
    (grad,) = torch.autograd.grad(Fq.entropy(torch.softmax(logits, -1)), logits)
    assert torch.isfinite(grad).all()


def test_exponential_schedule_endpoints_geometric_midpoint_and_clamping() -> None:
    assert Fq.exponential_schedule(2.0, 0.1, 0.0) == 2.0
    assert math.isclose(Fq.exponential_schedule(2.0, 0.1, 1.0), 0.1)
    assert math.isclose(Fq.exponential_schedule(2.0, 0.1, 0.5), math.sqrt(0.2))
    assert Fq.exponential_schedule(2.0, 0.1, -1.0) == 2.0
    assert math.isclose(Fq.exponential_schedule(2.0, 0.1, 3.0), 0.1)


def test_code_histogram_and_its_perplexity() -> None:
    counts = Fq.code_histogram(torch.tensor([[0, 2], [2, 2]]), 4)
    assert counts.dtype == torch.float64 and counts.tolist() == [1.0, 0.0, 3.0, 0.0]
    torch.testing.assert_close(Fq.histogram_perplexity(counts),
                               torch.tensor(math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))), dtype=F64))
    assert float(Fq.histogram_perplexity(torch.zeros(4, dtype=F64))) == 1.0  # nothing counted yet
    assert float(Fq.histogram_perplexity(torch.tensor([2.0, 2.0, 2.0, 2.0]))) == pytest.approx(4.0)
    assert float(Fq.histogram_perplexity(torch.tensor([0.25, 0.25]))) == pytest.approx(2.0)  # weights, not counts


def test_ema_is_in_place_and_weighs_the_new_value_by_one_minus_decay() -> None:
    average = torch.tensor([1.0, 2.0], dtype=F64)
    out = Fq.ema_(average, torch.tensor([3.0, -2.0], dtype=F64), 0.75)
    assert out is average
    torch.testing.assert_close(average, torch.tensor([1.5, 1.0], dtype=F64))


def test_laplace_smoothing_keeps_the_total_and_lifts_zero_counts() -> None:
    counts = torch.tensor([3.0, 0.0, 1.0], dtype=F64)
    smoothed = Fq.laplace_smoothed(counts, 0.5)
    torch.testing.assert_close(smoothed, (counts + 0.5) / (4.0 + 1.5) * 4.0)
    torch.testing.assert_close(smoothed.sum(), counts.sum())
    assert (smoothed > 0).all()


def test_l2_normalize_gives_unit_rows_and_leaves_zero_rows_finite() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=F64)
    out = Fq.l2_normalize(x)
    torch.testing.assert_close(out[0], torch.tensor([0.6, 0.8], dtype=F64))
    assert torch.equal(out[1], torch.zeros(2, dtype=F64))


def test_kmeans_with_fewer_samples_than_codes_returns_only_samples() -> None:
    x = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    c = Fq.kmeans(x, 5, iters=3, generator=torch.Generator().manual_seed(5))
    assert c.shape == (5, 2)
    assert all(any(torch.equal(row, s) for s in x) for row in c)
    assert {tuple(r.tolist()) for r in c} == {(0.0, 0.0), (10.0, 10.0)}


def test_row_functions_work_on_the_last_dimension_of_any_batch_shape() -> None:
    """(B, H, W, D) inputs, as a caller with unflattened latents passes them."""
    gen = torch.Generator().manual_seed(6)
    e, q = torch.randn(2, 3, 4, 5, generator=gen, dtype=F64), torch.randn(2, 3, 4, 5, generator=gen, dtype=F64)
    torch.testing.assert_close(Fq.l2_normalize(e), e / e.norm(dim=-1, keepdim=True))
    e4 = e.clone().requires_grad_()
    batched = Fq.rotation_trick(e4, q)
    upstream = torch.randn(2, 3, 4, 5, generator=gen, dtype=F64)
    e_rows = e.reshape(-1, 5).clone().requires_grad_()
    (g_rows,) = torch.autograd.grad(Fq.rotation_trick(e_rows, q.reshape(-1, 5)), e_rows, upstream.reshape(-1, 5))
    (g_batched,) = torch.autograd.grad(batched, e4, upstream)
    torch.testing.assert_close(g_batched.reshape(-1, 5), g_rows)
    log_pi = torch.log_softmax(torch.randn(2, 3, 4, 6, generator=gen, dtype=F64), -1)
    noise = Fq.gumbel_noise(log_pi, generator=gen)
    c_q, j, y = Fq.gumbel_softmax_st(log_pi, 0.5, noise=noise)
    c_flat, j_flat, y_flat = Fq.gumbel_softmax_st(log_pi.reshape(-1, 6), 0.5, noise=noise.reshape(-1, 6))
    assert c_q.shape == (2, 3, 4, 6) and torch.equal(j.reshape(-1), j_flat)
    torch.testing.assert_close(y.reshape(-1, 6), y_flat)
    torch.testing.assert_close(c_q.reshape(-1, 6), c_flat)


def test_kmeans_draws_only_from_its_generator() -> None:
    """Seeded k-means is reproducible whatever the global RNG did (k-means init is part of a
    run's seed): the start (with and without replacement) and the re-seeding of empty clusters."""
    few = torch.tensor([[0.0], [1.0], [5.0]])
    many = torch.cat([torch.zeros(20, 1), torch.full((2, 1), 9.0)])  # clusters empty out: refills
    for samples, codes in ((few, 7), (many, 6)):
        runs = []
        for global_seed in (0, 1):
            torch.manual_seed(global_seed)
            runs.append(Fq.kmeans(samples, codes, iters=2, generator=torch.Generator().manual_seed(7)))
        assert torch.equal(runs[0], runs[1])


def test_the_ddp_branches_reduce_over_ranks_and_broadcast_rank0s_centroids(monkeypatch) -> None:
    """In process, two ranks that hold the same batch: the all-reduce doubles the sums and the
    count, so q^B is still the mean and its gradient that of one process (divided back by W)."""
    calls = []
    monkeypatch.setattr(Fd, "is_distributed", lambda: True)

    def all_reduce_sum_autograd(t):
        calls.append(("reduce", tuple(t.shape)))
        return 2 * t

    def on_rank0_then_broadcast(compute, out):
        calls.append(("broadcast", tuple(out.shape), out.dtype))
        out.copy_(compute())
        return out

    monkeypatch.setattr(Fd, "all_reduce_sum_autograd", all_reduce_sum_autograd)
    monkeypatch.setattr(Fd, "on_rank0_then_broadcast", on_rank0_then_broadcast)
    probs = torch.softmax(torch.randn(2, 3, 4, dtype=F64), -1).requires_grad_()
    q_b = Fq.aggregated_posterior(probs, global_batch=True)
    torch.testing.assert_close(q_b, probs.detach().reshape(-1, 4).mean(0))
    assert calls == [("reduce", (5,))]  # C sums and the count in one collective
    (grad,) = torch.autograd.grad(q_b[1], probs)
    torch.testing.assert_close(grad, torch.zeros_like(grad).index_fill_(-1, torch.tensor([1]), 1 / 6))
    torch.testing.assert_close(Fq.aggregated_posterior(probs), q_b.detach())  # not global: no collective
    assert len(calls) == 1

    x = torch.randn(30, 3, dtype=F64)
    centroids = Fq.kmeans(x, 4, iters=3, generator=torch.Generator().manual_seed(8))
    assert calls[-1] == ("broadcast", (4, 3), F64)  # `out` has the samples' dtype
    monkeypatch.setattr(Fd, "is_distributed", lambda: False)
    torch.testing.assert_close(centroids, Fq.kmeans(x, 4, iters=3, generator=torch.Generator().manual_seed(8)))


def test_kmeans_with_as_many_samples_as_codes_keeps_each_sample_as_its_own_cluster() -> None:
    """N = C: the start is the samples without repetition, and a cluster of one point is not empty."""
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [-3.0, 2.0]])
    for iters in (0, 3):
        c = Fq.kmeans(x, 5, iters=iters, generator=torch.Generator().manual_seed(9))
        assert sorted(map(tuple, c.tolist())) == sorted(map(tuple, x.tolist()))


def test_rotation_trick_on_short_vectors() -> None:
    """λ = ‖q‖/‖e‖ for encoder outputs of norm well below 1 (conv32 starts near 1e-2)."""
    e = (torch.randn(3, 4, dtype=F64) * 1e-2).requires_grad_()
    q = torch.randn(3, 4, dtype=F64) * 1e-2
    upstream = torch.randn(3, 4, dtype=F64)
    (ge,) = torch.autograd.grad(Fq.rotation_trick(e, q), e, upstream)
    lam = q.norm(dim=-1) / e.detach().norm(dim=-1)
    # R is orthogonal: the gradient's norm is λ times the upstream's
    torch.testing.assert_close(ge.norm(dim=-1), lam * upstream.norm(dim=-1))
