"""quantizers/bounds.py: the closed forms of the ALBO finding (shared/MATH.md, "The bound is not
a bound") on the tractable linear-Gaussian mixture: F_lower and the ELBO are bounds, tight at
the exact posterior; the ALBO is one only under the entropy condition; the counterexamples."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from quantizers import bounds as Bd
from tests._strategies import F64, array, log_uniform, slack

# Tiny float64 tensors: one thread is several times faster than two (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("torch_one_thread")


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
