"""quantizers/gmvq.py: GM-VQ's posterior, precision weights, σ_c² (eq. 18), sampler, gradients
and VQ limit as properties (shared/MATH.md, "Properties worth testing"), and its loss under
every LatReg reading checked against the closed forms of quantizers.bounds on the tractable
linear-Gaussian mixture (shared/MATH.md, "The bound is not a bound")."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given
from hypothesis import strategies as st

from quantizers import bounds as Bd
from quantizers import functional as Fq
from tests._strategies import F64, TOL, Case, array, cases, finite, log_uniform, magnitude, slack

# Tiny float64 tensors: one thread is several times faster than two (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@given(cases(), st.booleans())
def test_posterior_is_a_distribution(case: Case, training: bool) -> None:
    q = case.module().train(training)
    out = q(case.z)
    b, _, h, w = case.z.shape
    assert out.probs.shape == (b, h, w, case.codebook.shape[0])
    assert torch.isfinite(out.probs).all() and (out.probs >= 0).all()
    assert torch.allclose(out.probs.sum(-1), torch.ones((), dtype=F64), atol=TOL, rtol=0)
    assert torch.isfinite(out.loss) and torch.isfinite(out.z_q).all()


def test_regression_underflowed_posterior_has_finite_gradient() -> None:
    """Found by hypothesis: ŵ = 858, ẑ = 0, codes (0,0,1) and (1,1,1): π_1 = e^{−858} underflows to
    0 and xlogy's gradient −∞ · 0 made every codeword's gradient NaN."""
    case = Case(torch.zeros(1, 3, 1, 1, dtype=F64), torch.tensor([[0.0, 0, 1], [1, 1, 1]], dtype=F64),
                torch.full((3,), 858.064, dtype=F64), 1.0, 1.0)
    for latreg in ("sampled", "aggregated", "posterior"):
        torch.manual_seed(0)
        q = case.module(gamma=1.0, latreg=latreg).train()
        out = q(case.z)
        (out.loss + out.z_q.sum()).backward()
        assert torch.isfinite(q.embedding.grad).all() and torch.isfinite(q.weight_head.bias.grad).all()


@given(cases(max_b=4, max_c=16), array((16,), -10, 10))
def test_weights_and_logits(case: Case, shift: torch.Tensor) -> None:
    q = case.module()
    flat, codebook = case.flat, case.codebook
    w = q.precision_weights(flat)
    assert (w > 0).all()
    logits = -0.5 * Fq.weighted_squared_distances(flat, w, codebook)
    assert (logits <= 0).all()
    exact = -0.5 * ((flat[:, None, :] - codebook[None]).pow(2) * w[:, None, :]).sum(-1)
    scale = magnitude(flat, case.w, codebook)
    assert torch.allclose(logits, exact, atol=1e-12 * scale, rtol=0)
    on_code = (flat[:, None, :] == codebook[None]).all(-1)
    assert (logits[on_code].abs() <= 1e-12 * scale).all()  # equality at ẑ = μ_c ...
    assert (logits[-exact > 1e-10 * scale] < 0).all()  # ... and only there
    t = shift[: flat.shape[1]]
    shifted = case.module()
    with torch.no_grad():
        shifted.embedding.add_(t)
    log_pi, log_pi_shifted = q.log_posterior(flat), shifted.log_posterior(flat + t)
    assert torch.allclose(log_pi.exp(), log_pi_shifted.exp(), atol=1e-11 * scale, rtol=0)


@example(Case(torch.zeros(1, 2, 1, 1, dtype=F64), torch.tensor([[0.0, 5.31486674e-160]], dtype=F64),
              torch.full((2,), math.log(2.0), dtype=F64), 1.0, 1.0), 1.0)  # d² subnormal
@given(cases(max_b=4, max_c=16), log_uniform(1e-3, 1e3))
def test_component_variance(case: Case, factor: float) -> None:
    flat, codebook = case.flat, case.codebook
    sq = (flat[:, None, :] - codebook[None]).pow(2).sum(-1)
    exact = case.module(eps=0.0)
    var = exact.component_variance(sq)
    assert (var >= 0).all()
    dim = flat.shape[1]
    normal = sq > 1e-280  # away from subnormals, where relative precision is lost
    assert (var[sq == 0] == 0).all() and (var[normal] > 0).all()  # zero iff ẑ = μ_c
    assert torch.allclose((var * 2 * case.sigma2 * dim)[normal], sq[normal], rtol=1e-13, atol=0)
    scaled = case.module(eps=0.0, sigma2=case.sigma2 * factor).component_variance(sq)
    assert torch.allclose((scaled * factor)[normal], var[normal], rtol=1e-12, atol=0)  # ∝ 1/σ²
    # Finite gradient at ẑ = μ_c through the sampler's σ_j (default eps floor).
    q = case.module()
    z0 = codebook[:1].clone().requires_grad_(True)
    z_s, _, _ = q.sample(z0, torch.zeros(1, codebook.shape[0], dtype=F64).log_softmax(-1),
                         gumbel=torch.zeros(1, codebook.shape[0], dtype=F64),
                         normal=torch.ones(1, dim, dtype=F64))
    (grad,) = torch.autograd.grad(z_s.sum(), z0)
    assert torch.isfinite(grad).all()


@given(cases(max_b=4, max_c=16), st.integers(0, 2**31 - 1))
def test_noise_free_sample_is_the_codeword(case: Case, seed: int) -> None:
    q = case.module().train()
    log_pi = q.log_posterior(case.flat)
    g = Fq.gumbel_noise(log_pi, generator=torch.Generator().manual_seed(seed))
    z_s, j, sq = q.sample(case.flat, log_pi, gumbel=g, normal=torch.zeros_like(case.flat))
    assert torch.equal(z_s, case.codebook[j]) and (sq == 0).all()


@given(cases(max_b=2, max_hw=2, max_c=16), st.integers(0, 2**31 - 1))
def test_sampled_spread_matches_eq18(case: Case, seed: int) -> None:
    """mean ‖z − μ_j‖² → L σ_j² = ‖ẑ − μ_j‖²/(2σ²) (+ eps/(2σ²)), within 5 standard errors."""
    q = case.module().train()
    z = case.flat[:1]
    log_pi = q.log_posterior(z)
    reps = 4000
    gen = torch.Generator().manual_seed(seed)
    zr, lr = z.expand(reps, -1), log_pi.expand(reps, -1)
    g = Fq.gumbel_noise(lr, generator=gen)
    normal = torch.randn(zr.shape, dtype=F64, generator=gen)
    z_s, j, _ = q.sample(zr, lr, gumbel=g, normal=normal)
    for code in j.unique()[:3]:
        sel = j == code
        if int(sel.sum()) < 50:
            continue
        spread = (z_s[sel] - case.codebook[code]).pow(2).sum(-1)
        target = (float((z[0] - case.codebook[code]).pow(2).sum()) + q.eps) / (2 * case.sigma2)
        se = float(spread.std()) / math.sqrt(int(sel.sum()))
        assert abs(float(spread.mean()) - target) <= 5 * se + 1e-12 * (1 + target)


@given(cases(max_b=4, max_c=16), st.sampled_from(["sampled", "aggregated", "posterior"]),
       st.integers(0, 2**31 - 1))
def test_every_used_codeword_gets_a_gradient(case: Case, latreg: str, seed: int) -> None:
    # Coincident codewords are a second measure-zero exception (regression below): Σ_c y_c = 1
    # makes ∂(yᵀM)/∂μ vanish between equal rows, and KL(q^B‖U) is stationary at uniform.
    # "Coincident" up to rounding: codes 1e-45 apart got an exactly zero gradient (regression).
    pairwise = (case.codebook[:, None, :] - case.codebook[None]).pow(2).sum(-1)
    assume(not bool((pairwise + torch.eye(case.codebook.shape[0], dtype=F64) <= 1e-8).any()))
    torch.manual_seed(seed)
    q = case.module(latreg=latreg, gamma=1.0).train()
    out = q(case.z)
    decoder = torch.randn(out.z_q.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
    (out.loss + (out.z_q * decoder).sum()).backward()
    probs = out.probs.reshape(-1, case.codebook.shape[0]).detach()
    used = probs.max(0).values > 1e-6
    # Measure-zero exception (found by hypothesis, kept below as a regression): eq. 16's
    # ∂l_c/∂μ_c = ŵ ⊙ (ẑ − μ_c) vanishes at ẑ = μ_c, so a code only ever used by vectors
    # sitting exactly on it, and not sampled, can get no gradient.
    on_code = (case.flat[:, None, :] == case.codebook[None]).all(-1)
    stationary = ((probs > 1e-6) <= on_code).all(0)
    assert (q.embedding.grad.abs().sum(-1)[used & ~stationary] > 0).all()


@pytest.mark.parametrize("centre", [0.0, 1.0])
def test_regression_codeword_gradient_degenerate(centre: float) -> None:
    """Found by hypothesis: one vector ẑ = 0, two equal codewords (on ẑ, or at 1): π = q^B =
    (½, ½); the unsampled duplicate gets exactly zero gradient. Why the property excludes them
    (a third find, codes 0 and 1.4e-45 with ẑ = 0, is the same case up to rounding)."""
    case = Case(torch.zeros(1, 1, 1, 1, dtype=F64), torch.full((2, 1), centre, dtype=F64),
                torch.tensor([math.log(2.0)], dtype=F64), 1.0, 1.0)
    torch.manual_seed(0)
    q = case.module(gamma=1.0).train()
    out = q(case.z)
    (out.loss + out.z_q.sum()).backward()
    assert int((q.embedding.grad.abs().sum(-1) > 0).sum()) == 1


@given(cases(max_b=4, max_c=16))
def test_vq_limit_isotropic(case: Case) -> None:
    flat, codebook = case.flat, case.codebook
    sq = (flat[:, None, :] - codebook[None]).pow(2).sum(-1)
    two = sq.topk(min(2, sq.shape[1]), largest=False).values
    if sq.shape[1] > 1:
        assume(float((two[:, 1] - two[:, 0]).min()) > 1e-3)
    big = Case(case.z, codebook, torch.full_like(case.w, 1e6), case.tau, case.sigma2)
    q = big.module().eval()
    out = q(case.z)
    nearest = sq.argmin(-1)
    probs = out.probs.reshape(-1, codebook.shape[0])
    assert torch.equal(out.indices.reshape(-1), nearest)
    assert (probs.gather(1, nearest[:, None]) > 1 - 1e-12).all()
    z_q = out.z_q.permute(0, 2, 3, 1).reshape(-1, codebook.shape[1])
    assert torch.equal(z_q, codebook[nearest])


@example(Case(torch.zeros(1, 2, 1, 1, dtype=F64), torch.tensor([[1.0, 0.0], [0.0, 0.5]], dtype=F64),
              torch.tensor([1.0, 100.0], dtype=F64), 1.0, 0.5))
@given(cases(max_b=4, max_c=16))
def test_vq_limit_weighted_pick(case: Case) -> None:
    """With unequal ŵ the eval pick is the ŵ-weighted nearest codeword (not the Euclidean one)."""
    flat, codebook = case.flat, case.codebook
    wsq = ((flat[:, None, :] - codebook[None]).pow(2) * case.w).sum(-1)
    if wsq.shape[1] > 1:
        two = wsq.topk(2, largest=False).values
        assume(float((two[:, 1] - two[:, 0]).min()) > 1e-6 * magnitude(flat, case.w, codebook))
    out = case.module().eval()(case.z)
    assert torch.equal(out.indices.reshape(-1), wsq.argmin(-1))
    if case.codebook.shape == (2, 2) and float(case.w[1]) == 100.0:  # the @example
        assert int(out.indices.reshape(-1)[0]) == 0 != int(((flat - codebook) ** 2).sum(-1).argmin())


READINGS = {"sampled": {}, "aggregated": {"latreg": "aggregated"}, "posterior": {"latreg": "posterior"},
            "bound": {"latreg": "aggregated", "objective": "bound"}}


def tractable(case: Case, gamma: float, beta: float, decoder: torch.Tensor):
    """The model GM-VQ(γ, β) is the negative ALBO of: σ_z² = β/2, σ_x² = γβ/2, p(x|z) linear."""
    dim = case.codebook.shape[1]
    a, b = decoder[:, :dim], decoder[:, dim]
    return Bd.LinearGaussianMixture(case.codebook, a, b, beta / 2, gamma * beta / 2)


@given(cases(max_b=4, max_hw=2, max_c=8, max_l=4), st.sampled_from(sorted(READINGS)),
       log_uniform(1e-2, 1e2), log_uniform(1e-2, 1e2), array((3, 5), -2, 2), array((16, 3), -10, 10))
def test_loss_is_minus_two_sigma_x2_times_objective(case, reading, gamma, beta, decoder, x) -> None:
    q = case.module(gamma=gamma, beta=beta, **READINGS[reading])
    model = tractable(case, gamma, beta, decoder[:, : case.codebook.shape[1] + 1])
    z = case.flat
    x = x[: z.shape[0]].repeat(math.ceil(z.shape[0] / x.shape[0]) + 1, 1)[: z.shape[0]]
    pi = q.log_posterior(z).exp().detach()
    s2 = q.component_variance(Fq.squared_distances(z, case.codebook)).detach()
    recon = Bd.expected_reconstruction(model, x, pi, s2).mean()
    loss = recon + q.expected_loss(z).detach()
    target = -2 * model.sigma_x2 * (Bd.gmvq_objective(model, x, pi, s2, reading).mean() + Bd.gmvq_loss_constant(model))
    assert float((loss - target).abs()) <= 1e-9 * (1 + float(loss.abs()) + float(recon.abs()))


@example(Case(torch.zeros(1, 1, 1, 1, dtype=F64), torch.tensor([[4.0], [0], [0], [0]], dtype=F64),
              torch.tensor([math.log(2.0)], dtype=F64), 1.0, 1.0), "aggregated", 1.0, 1.0, 0)  # π_0 = 0.13%
@given(cases(max_b=2, max_hw=2, max_c=8, max_l=4), st.sampled_from(sorted(READINGS)),
       log_uniform(1e-2, 1e2), log_uniform(1e-2, 1e2), st.integers(0, 2**31 - 1))
def test_monte_carlo_loss_matches_closed_form(case, reading, gamma, beta, seed) -> None:
    """The training loss of quantize() (LatReg sampled) averages to expected_loss within 5 SE.
    The batch is duplicated so each draw averages many samples with q^B unchanged."""
    q = case.module(gamma=gamma, beta=beta, **READINGS[reading]).train()
    z = case.flat.repeat(50, 1)
    torch.manual_seed(seed)
    draws = torch.stack([q.quantize(z).loss.detach() for _ in range(40)])
    expected = float(q.expected_loss(case.flat).detach())
    se = float(draws.std()) / math.sqrt(len(draws))
    # Components too rare to be sampled reliably in 2,000 draws (π < 3%) may be missed entirely
    # (then the SE is ~0 too): allow their whole contribution, bounded by γ π_k (L s_k² + max_c ‖μ_k − μ_c‖²).
    pi = q.log_posterior(case.flat).exp().detach()
    s2 = q.component_variance(Fq.squared_distances(case.flat, case.codebook)).detach()
    spread = case.codebook.shape[1] * s2 + Fq.squared_distances(case.codebook, case.codebook).max(-1).values
    rare = gamma * float((torch.where(pi < 0.03, pi, torch.zeros_like(pi)) * spread).sum(-1).mean())
    assert abs(float(draws.mean()) - expected) <= 5 * se + 2 * rare + 1e-9 * (1 + abs(expected))


@given(cases(max_b=4, max_hw=2, max_c=8, max_l=4), array((3, 5), -2, 2), array((16, 3), -10, 10),
       finite(0.1, 10.0))
def test_gmvq_bound_objective_is_a_lower_bound(case, decoder, x, beta) -> None:
    """For GM-VQ's own q(z|x) (π from eq. 17, σ_k² from eq. 18), F_lower ≤ log p(x) per vector."""
    q = case.module(beta=beta, latreg="aggregated", objective="bound")
    model = tractable(case, 1.0, beta, decoder[:, : case.codebook.shape[1] + 1])
    z = case.flat
    x = x[: z.shape[0]].repeat(math.ceil(z.shape[0] / x.shape[0]) + 1, 1)[: z.shape[0]]
    pi = q.log_posterior(z).exp().detach()
    s2 = q.component_variance(Fq.squared_distances(z, case.codebook)).detach()
    value, log_p = Bd.gmvq_objective(model, x, pi, s2, "bound"), Bd.log_evidence(model, x)
    assert (value <= log_p + slack(value, log_p)).all()


def test_gmvq_bound_is_registered() -> None:
    import importlib
    from pathlib import Path

    import yaml

    entry = yaml.safe_load((Path(__file__).resolve().parents[2] / "registry.yaml").read_text())["quantizers"]["gmvq-bound"]
    assert entry["table1_row"] is None and "paper" not in entry
    module, name = entry["class"].split(":")
    q = getattr(importlib.import_module(module), name)(num_codes=4, dim=3, **entry["defaults"])
    assert (q.objective, q.latreg) == ("bound", "aggregated")
    out = q.train()(torch.randn(2, 3, 2, 2))
    assert "z_entropy_bound" in out.terms and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="aggregated"):
        type(q)(num_codes=4, dim=3, objective="bound", latreg="sampled")


def test_precision_scale_after_init_codebook_is_dim_over_the_mean_nearest_code_distance() -> None:
    """s = L / mean_n min_c ‖ẑ_n − μ_c‖² on the k-means codebook (the module docstring), not
    the mean distance to all codes (which is far larger on clustered data)."""
    from quantizers.gmvq import GMVQ

    g = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(8, 4, generator=g)
    z = centres[torch.randint(8, (400,), generator=g)] + 0.1 * torch.randn(400, 4, generator=g)
    q = GMVQ(num_codes=8, dim=4)
    assert not bool(q.calibrated)
    q.init_codebook(z, generator=torch.Generator().manual_seed(1))
    nearest = torch.cdist(z, q.embedding.detach()).pow(2).min(-1).values.mean()
    assert float(q.precision_scale) == pytest.approx(4 / float(nearest), rel=1e-5)
    assert bool(q.calibrated)
    fixed = GMVQ(num_codes=8, dim=4, precision_init=3.0)
    fixed.init_codebook(z)
    assert float(fixed.precision_scale) == 3.0


def test_head_learns_at_head_lr_scale_in_its_own_group() -> None:
    from quantizers.gmvq import GMVQ

    q = GMVQ(num_codes=8, dim=4, head_lr_scale=0.3)
    groups = q.param_groups()
    assert groups[0]["params"] == [q.embedding] and "lr_scale" not in groups[0]
    assert groups[1]["lr_scale"] == 0.3
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in q.weight_head.parameters()}


def test_the_sample_is_the_formula_with_the_given_noise() -> None:
    """j = argmax(log π + g) with the given Gumbel noise g, z = μ_j + σ_j ε with the given ε and
    σ_j² = (‖ẑ − μ_j‖² + eps)/(2σ²L) (eq. 18), and the returned σ_j²‖ε‖²; exactly, in float64."""
    from quantizers.gmvq import GMVQ

    g = torch.Generator().manual_seed(3)
    q = GMVQ(num_codes=6, dim=3, sigma2=0.7, eps=1e-3).double().train()
    z = torch.randn(40, 3, dtype=F64, generator=g)
    log_pi = q.log_posterior(z)
    gumbel = Fq.gumbel_noise(log_pi, generator=g)
    normal = torch.randn(z.shape, dtype=F64, generator=g)
    z_s, j, sampled_sq = q.sample(z, log_pi, gumbel=gumbel, normal=normal)
    assert torch.equal(j, (log_pi + gumbel).argmax(-1))
    assert not torch.equal(j, log_pi.argmax(-1))  # the noise moved some picks: it was used
    mu = q.codebook[j]
    var = ((z - mu).pow(2).sum(-1) + 1e-3) / (2 * 0.7 * 3)
    assert torch.allclose(z_s, mu + var.sqrt()[:, None] * normal, rtol=1e-12, atol=1e-12)
    assert torch.allclose(sampled_sq, var * normal.pow(2).sum(-1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("latreg, objective", [("sampled", "albo"), ("aggregated", "albo"),
                                               ("posterior", "albo"), ("aggregated", "bound")])
def test_float64_input_to_a_float32_module_computes_in_float64(latreg: str, objective: str) -> None:
    """The reference path (auto's choice for float64) casts the float32 codebook to the input's
    dtype everywhere it meets it: the same loss and sample as a float64 copy of the module
    (without the precision head, whose float32 Linear takes float32 input only)."""
    from quantizers.gmvq import GMVQ

    torch.manual_seed(0)
    q = GMVQ(num_codes=8, dim=4, latreg=latreg, objective=objective, weight_head=False).train()
    z = torch.randn(2, 4, 3, 3, dtype=F64)
    twin = GMVQ(num_codes=8, dim=4, latreg=latreg, objective=objective, weight_head=False).double().train()
    twin.load_state_dict(q.state_dict())
    torch.manual_seed(1)
    out = q(z)
    torch.manual_seed(1)
    ref = twin(z)
    assert out.z_q.dtype == F64 and out.loss.dtype == F64
    assert torch.equal(out.indices, ref.indices)
    assert torch.allclose(out.z_q, ref.z_q, rtol=1e-6, atol=1e-6)
    assert torch.allclose(out.loss, ref.loss, rtol=1e-6, atol=0)


def test_the_precision_scale_is_one_value_on_every_rank(monkeypatch) -> None:
    """calibrate_from averages the ranks' mean nearest distance (sum over ranks / world size):
    two ranks that saw the same data get the scale one process gets."""
    from quantizers import distributed as Fd
    from quantizers.gmvq import GMVQ

    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    alone = GMVQ(num_codes=8, dim=4)
    alone.init_codebook(z, generator=torch.Generator().manual_seed(1))
    two = GMVQ(num_codes=8, dim=4)
    two.embedding.data.copy_(alone.embedding.data)
    monkeypatch.setattr(Fd, "world_size", lambda: 2)
    monkeypatch.setattr(Fd, "all_reduce_sum_", lambda t: t.mul_(2))  # the other rank's equal value
    two.calibrate_from(z)
    assert float(two.precision_scale) == pytest.approx(float(alone.precision_scale), rel=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_the_logged_terms_are_the_loss_s_parts(training: bool) -> None:
    """terms: latreg and kl (KL(q^B‖U) of the batch's mean posterior), loss = γ (latreg + β kl)
    (eq. 21), the mean posterior entropy and τ; under the names the runner logs."""
    from quantizers.gmvq import GMVQ

    torch.manual_seed(0)
    q = GMVQ(num_codes=8, dim=4, gamma=0.3, beta=1.7, backend="reference").train(training)
    out = q(torch.randn(3, 4, 2, 2))
    assert set(out.terms) == {"latreg", "kl", "posterior_entropy", "tau"}
    probs = out.probs.reshape(-1, 8)
    q_batch = probs.mean(0)
    assert torch.allclose(out.terms["kl"], (q_batch * (q_batch * 8).log()).sum(), atol=1e-6)
    assert torch.allclose(out.terms["posterior_entropy"], Fq.entropy(probs).mean(), atol=1e-6)
    assert torch.allclose(out.loss, 0.3 * (out.terms["latreg"] + 1.7 * out.terms["kl"]), rtol=1e-6)
    assert float(out.terms["tau"]) == 2.0 and (float(out.terms["latreg"]) > 0) == training


@pytest.mark.parametrize("logit_matmul, split", [("3xtf32", True), ("fp32", False), (None, False)])
def test_logit_matmul_reaches_the_fused_backend(monkeypatch, logit_matmul, split) -> None:
    from quantizers import kernels
    from quantizers.gmvq import GMVQ

    seen = []
    real = kernels.posterior_sample
    monkeypatch.setattr(kernels, "posterior_sample", lambda *a, **k: seen.append(k["split_tf32"]) or real(*a, **k))
    GMVQ(8, 4, backend="fused", logit_matmul=logit_matmul).train()(torch.randn(2, 4, 2, 2))
    assert seen == [split]


@pytest.mark.parametrize("training", [True, False])
def test_the_bound_objective_subtracts_beta_times_its_entropy_term(training: bool) -> None:
    """objective="bound": loss = γ (latreg + β kl − β h_lower), h_lower logged as z_entropy_bound."""
    from quantizers.gmvq import GMVQ

    torch.manual_seed(0)
    q = GMVQ(num_codes=8, dim=4, gamma=0.3, beta=1.7, latreg="aggregated", objective="bound",
             backend="reference").train(training)
    out = q(torch.randn(3, 4, 2, 2))
    assert set(out.terms) == {"latreg", "kl", "z_entropy_bound", "posterior_entropy", "tau"}
    h = out.terms["z_entropy_bound"]
    assert isinstance(h, torch.Tensor) and h.numel() == 1 and float(h) != 0.0
    expected = 0.3 * (out.terms["latreg"] + 1.7 * out.terms["kl"] - 1.7 * h)
    assert torch.allclose(out.loss, expected, rtol=1e-6)


@pytest.mark.parametrize("latreg", ["aggregated", "posterior"])
def test_latent_regularizer_weights_by_the_reading_it_names(latreg: str) -> None:
    """Σ_c w_c ‖z_n − μ_c‖² averaged over n, with w = q^B for "aggregated" and π_n for "posterior"."""
    from quantizers.gmvq import GMVQ

    torch.manual_seed(0)
    q = GMVQ(num_codes=5, dim=3, latreg=latreg, backend="reference")
    z = torch.randn(4, 3, dtype=torch.float64)
    probs = torch.softmax(torch.randn(4, 5, dtype=torch.float64), -1)
    q_batch = torch.softmax(torch.randn(5, dtype=torch.float64), -1)  # not probs' mean: tells them apart
    sq = ((z[:, None, :] - q.codebook.double()[None]) ** 2).sum(-1)  # (N, C)
    w = q_batch[None, :].expand(4, 5) if latreg == "aggregated" else probs
    expected = (w * sq).sum(-1).mean()
    got = q.latent_regularizer(z, probs, q_batch, sampled_sq=torch.full((4,), 99.0, dtype=torch.float64))
    assert torch.allclose(got, expected, rtol=1e-10)


def test_log_posterior_uses_the_precisions_it_is_given() -> None:
    from quantizers.gmvq import GMVQ

    torch.manual_seed(0)
    q = GMVQ(num_codes=5, dim=3, backend="reference")
    z = torch.randn(4, 3, dtype=torch.float64)
    w = torch.rand(4, 3, dtype=torch.float64) * 3 + 0.1  # not the head's ŵ
    logits = -0.5 * (w[:, None, :] * (z[:, None, :] - q.codebook.double()[None]) ** 2).sum(-1)
    assert torch.allclose(q.log_posterior(z, w), torch.log_softmax(logits, -1), rtol=1e-10)


@pytest.mark.parametrize("training, aggregate, global_batch", [
    (True, "global", True), (False, "global", False), (True, "local", False), (False, "local", False)])
def test_the_aggregated_posterior_spans_ranks_only_in_training_with_aggregate_global(
        monkeypatch, training: bool, aggregate: str, global_batch: bool) -> None:
    """One process cannot see the all-reduce (tests/quantizers/test_distributed.py runs it on two
    ranks); here the flag that asks for it."""
    from quantizers import gmvq

    seen = []
    real = gmvq.Fq.aggregated_posterior
    monkeypatch.setattr(gmvq.Fq, "aggregated_posterior", lambda p, global_batch: seen.append(global_batch)
                        or real(p, global_batch=global_batch))
    gmvq.GMVQ(8, 4, aggregate=aggregate).train(training)(torch.randn(2, 4, 2, 2))
    assert seen == [global_batch]


def test_the_defaults_are_the_paper_s_recipe_and_an_isotropic_unit_precision_start() -> None:
    """§5.1: 1024 codes of 64 dimensions, τ 2 → 0.1; γ = 1e-2, β = 1, σ² = 0.5 (registry.yaml's
    gmvq entry repeats them); the head starts at ŵ = softplus(b) = 1 everywhere, and the
    data-dependent scale s at 1 until ``init_codebook`` calibrates it."""
    from quantizers.gmvq import GMVQ

    q = GMVQ()
    assert (q.num_codes, q.dim, tuple(q.codebook.shape)) == (1024, 64, (1024, 64))
    assert (q.gamma, q.beta, q.sigma2, q.eps, q.head_lr_scale) == (1e-2, 1.0, 0.5, 1e-8, 0.1)
    assert (q.latreg, q.objective, q.aggregate, q.precision_init) == ("sampled", "albo", "global", "auto")
    assert (q.tau_start, q.tau_end) == (2.0, 0.1)
    assert float(q.precision_scale) == 1.0
    head = q.weight_head(torch.randn(3, 64))
    assert torch.allclose(F.softplus(head), torch.ones(3, 64), atol=1e-7)
    assert float(GMVQ(precision_init=2.5).precision_scale) == 2.5


@pytest.mark.parametrize("kwargs, message", [
    ({"gamma": -1.0}, "gamma must be a finite number ≥ 0, got -1.0"),
    ({"beta": -1.0}, "beta must be a finite number ≥ 0, got -1.0"),
    ({"eps": -1.0}, "eps must be a finite number ≥ 0, got -1.0"),
    ({"sigma2": 0.0}, "sigma2 must be a finite number > 0, got 0.0"),
    ({"precision_init": 0.0}, "precision_init must be a finite number > 0, got 0.0"),
    ({"head_lr_scale": 0.0}, "head_lr_scale must be a finite number > 0, got 0.0"),
    ({"latreg": "x"}, "latreg must be one of sampled, aggregated, posterior, got 'x'"),
    ({"objective": "x"}, "objective must be one of albo, bound, got 'x'"),
    ({"aggregate": "x"}, "aggregate must be one of global, local, got 'x'"),
])
def test_each_bad_option_is_named_in_its_refusal(kwargs: dict, message: str) -> None:
    from quantizers.gmvq import GMVQ

    with pytest.raises(ValueError) as info:
        GMVQ(8, 4, **kwargs)
    assert str(info.value) == message


def test_aggregate_local_is_accepted() -> None:
    from quantizers.gmvq import GMVQ

    assert GMVQ(8, 4, aggregate="local").aggregate == "local"
