"""Property tests of the ALBO finding (shared/MATH.md, "The bound is not a bound"): closed forms in
quantizers.bounds on the tractable linear-Gaussian mixture, and GM-VQ's loss checked against them."""
from __future__ import annotations

import math

import pytest
import torch
from _strategies import F64, Case, array, cases, finite, log_uniform
from hypothesis import example, given
from hypothesis import strategies as st

from quantizers import bounds as Bd
from quantizers import functional as Fq


@st.composite
def problems(draw, max_c: int = 8, max_l: int = 4, max_d: int = 4, max_n: int = 4, one_code: bool = False):
    """(model, x, π with zeros allowed, m, s², r with zeros allowed)."""
    c = 1 if one_code else draw(st.integers(1, max_c))
    dim, d, n = draw(st.integers(1, max_l)), draw(st.integers(1, max_d)), draw(st.integers(1, max_n))
    k = draw(st.integers(1, max_c))
    model = Bd.LinearGaussianMixture(
        draw(array((c, dim), -10, 10)), draw(array((d, dim), -3, 3)), draw(array((d,), -3, 3)),
        draw(log_uniform(1e-3, 1e3)), draw(log_uniform(1e-3, 1e3)),
    )
    x = draw(array((n, d), -10, 10))

    def simplex(shape):
        raw = draw(array(shape, 0, 1)) * draw(array(shape, 0, 1).map(lambda t: (t > 0.3).to(F64)))
        raw[..., 0] += (raw.sum(-1) == 0).to(F64)
        return raw / raw.sum(-1, keepdim=True)

    return model, x, simplex((n, k)), draw(array((n, k, dim), -10, 10)), draw(array((n, k), 1e-3, 1e3)), simplex((c,))


def slack(*values: torch.Tensor) -> float:
    return 1e-9 * (1 + max(float(v.abs().max()) for v in values))


@given(problems())
def test_f_lower_and_elbo_are_bounds(problem) -> None:
    model, x, pi, m, s2, r = problem
    log_p = Bd.log_evidence(model, x)
    f = Bd.f_lower(model, x, pi, m, s2, r)
    assert (f <= log_p + slack(f, log_p)).all()
    c, k = model.mu.shape[0], pi.shape[1]
    if k == c:  # the standard ELBO pairs component k with code k
        e = Bd.elbo(model, x, pi, m, s2)
        assert (e <= log_p + slack(e, log_p)).all()


@given(problems(one_code=True, max_c=1))
def test_bounds_are_tight_at_the_exact_posterior(problem) -> None:
    """C = 1, A = a·U with orthonormal columns: the posterior N(m*, s*² I) is in the family."""
    model, x, _, _, _, _ = problem
    d, dim = model.A.shape
    if d < dim:
        return
    u, _ = torch.linalg.qr(model.A + 1e-3 * torch.eye(d, dim, dtype=F64))
    a = float(model.A.norm()) / math.sqrt(dim) + 0.1
    model = Bd.LinearGaussianMixture(model.mu, a * u, model.b, model.sigma_z2, model.sigma_x2)
    s2 = 1.0 / (1.0 / model.sigma_z2 + a * a / model.sigma_x2)
    m = s2 * (model.mu / model.sigma_z2 + (x - model.b) @ model.A / model.sigma_x2)  # (N, L)
    n = x.shape[0]
    pi, s2t, one = torch.ones(n, 1, dtype=F64), torch.full((n, 1), s2, dtype=F64), torch.ones(1, dtype=F64)
    log_p = Bd.log_evidence(model, x)
    for value in (Bd.f_lower(model, x, pi, m[:, None], s2t, one), Bd.elbo(model, x, pi, m[:, None], s2t)):
        assert torch.allclose(value, log_p, rtol=1e-9, atol=1e-9)


@given(problems())
def test_albo_is_a_bound_under_the_entropy_condition(problem) -> None:
    model, x, pi, m, s2, r = problem
    s2 = s2 + 1.0 / (2 * math.pi * math.e)  # every component has h_k ≥ 0
    assert (Bd.entropy_condition(pi, s2) >= 0).all()
    value, log_p = Bd.albo(model, x, pi, m, s2, r), Bd.log_evidence(model, x)
    assert (value <= log_p + slack(value, log_p)).all()


@given(problems(), log_uniform(1e-3, 1e3))
def test_albo_rescaling(problem, a: float) -> None:
    """z → a z leaves log p(x) unchanged and shifts ALBO by −L log a: some scale breaks it."""
    model, x, pi, m, s2, r = problem
    scaled = model.rescaled(a)
    dim = model.mu.shape[1]
    base = Bd.albo(model, x, pi, m, s2, r)
    moved = Bd.albo(scaled, x, pi, a * m, a * a * s2, r)
    assert torch.allclose(moved - base, torch.full_like(base, -dim * math.log(a)), atol=slack(base), rtol=0)
    log_p = Bd.log_evidence(model, x)
    assert torch.allclose(Bd.log_evidence(scaled, x), log_p, atol=slack(log_p), rtol=1e-10)


def test_counterexample_scalar() -> None:
    out = Bd.scalar_counterexample()
    assert out["log_p"] == pytest.approx(1.0371, abs=5e-5)
    assert out["albo"] == pytest.approx(2.7573, abs=5e-5)
    assert out["f"] == pytest.approx(-0.4289, abs=5e-5)
    assert out["albo"] > out["log_p"] > out["f"] and out["entropy_condition"] < 0


def test_counterexample_paper_regime() -> None:
    out = Bd.paper_regime_counterexample()
    assert out["log_p"] == pytest.approx([-1.2495] * 2, abs=5e-5)
    assert out["albo"] == pytest.approx([-0.5947, -0.5810], abs=5e-5)
    assert out["q_batch"] == pytest.approx([0.5, 0.5], abs=1e-4)
    assert all(a > p > f for a, p, f in zip(out["albo"], out["log_p"], out["f_lower"]))


# --- GM-VQ's loss through the same terms ----------------------------------------------------
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

    entry = yaml.safe_load((Path(__file__).resolve().parents[1] / "registry.yaml").read_text())["quantizers"]["gmvq-bound"]
    assert entry["table1_row"] is None and "paper" not in entry
    module, name = entry["class"].split(":")
    q = getattr(importlib.import_module(module), name)(num_codes=4, dim=3, **entry["defaults"])
    assert (q.objective, q.latreg) == ("bound", "aggregated")
    out = q.train()(torch.randn(2, 3, 2, 2))
    assert "z_entropy_bound" in out.terms and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="aggregated"):
        type(q)(num_codes=4, dim=3, objective="bound", latreg="sampled")
