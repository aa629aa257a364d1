"""Closed-form bounds for the linear-Gaussian mixture model (``shared/MATH.md``).

p(c) = π⁰ (uniform by default), p(z|c) = N(μ_c, σ_z² I_L), p(x|z) = N(Az + b, σ_x² I_D), and a
variational family q(z|x) = Σ_k π_k N(m_k, s_k² I_L). Everything here is exact and meant for
float64: it is the oracle the GM-VQ loss is checked against.

- ``log_evidence``: log p(x) = logsumexp_c [log p(c) + log N(x; Aμ_c + b, σ_z² AAᵀ + σ_x² I)].
- ``albo``: the paper's eq. 11 for any r(c) (q^B included): Σ_k π_k E_k log p(x|z)
  + Σ_c r_c Σ_k π_k E_k log p(z|c) − KL(r ‖ p). Not a bound in general (``docs/albo.md``).
- ``f_lower``: ALBO + Σ_k π_k h_k ≤ ALBO + h(q(z|x)) = F ≤ log p(x) (Appendix A.2, lines 1–3).
- ``elbo``: the standard ELBO with q(c|x) = π and q(z|x, c=k) = N(m_k, s_k² I).
- ``entropy_condition``: Σ_k π_k log(2πe s_k²); ≥ 0 is sufficient for ALBO ≤ log p(x).
- ``gmvq_objective``: the objective each GM-VQ LatReg reading is −1/(2σ_x²) times the loss of
  (up to ``gmvq_loss_constant``), so L = −2σ_x² (objective + constant), γ = σ_x²/σ_z², β = 2σ_z².
- ``gmvq_expected_loss``: E_{q(z|x)} of GM-VQ's training loss, closed form (``GMVQ.expected_loss``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import functional as Fq

READINGS = ("sampled", "aggregated", "posterior", "bound")


@dataclass(frozen=True)
class LinearGaussianMixture:
    """The tractable model: codebook mu (C, L), decoder A (D, L), b (D,), variances, prior."""

    mu: Tensor
    A: Tensor
    b: Tensor
    sigma_z2: float
    sigma_x2: float
    prior: Tensor | None = None

    @property
    def log_prior(self) -> Tensor:
        c = self.mu.shape[0]
        if self.prior is None:
            return torch.full((c,), -math.log(c), dtype=self.mu.dtype)
        return torch.log(self.prior)

    @property
    def prior_probs(self) -> Tensor:
        return self.log_prior.exp()

    def rescaled(self, a: float) -> LinearGaussianMixture:
        """The same p(x) with z → a z: μ → aμ, σ_z → aσ_z, A → A/a."""
        return LinearGaussianMixture(self.mu * a, self.A / a, self.b, self.sigma_z2 * a * a, self.sigma_x2, self.prior)


def log_evidence(model: LinearGaussianMixture, x: Tensor) -> Tensor:
    """Exact log p(x) for x (N, D), shape (N,)."""
    d = model.A.shape[0]
    cov = model.sigma_z2 * model.A @ model.A.t() + model.sigma_x2 * torch.eye(d, dtype=model.A.dtype)
    means = model.mu @ model.A.t() + model.b  # (C, D)
    dist = torch.distributions.MultivariateNormal(means, covariance_matrix=cov)
    return torch.logsumexp(model.log_prior + dist.log_prob(x[:, None, :]), dim=-1)


def expected_log_likelihood(model: LinearGaussianMixture, x: Tensor, m: Tensor, s2: Tensor) -> Tensor:
    """E_{N(m_k, s_k² I)} log p(x|z), shape (N, K), for x (N, D), m (N, K, L), s2 (N, K)."""
    d = model.A.shape[0]
    resid = x[:, None, :] - m @ model.A.t() - model.b
    frob = model.A.pow(2).sum()
    return -0.5 * d * math.log(2 * math.pi * model.sigma_x2) - (resid.pow(2).sum(-1) + s2 * frob) / (
        2 * model.sigma_x2
    )


def expected_log_prior(model: LinearGaussianMixture, m: Tensor, s2: Tensor) -> Tensor:
    """E_{N(m_k, s_k² I)} log p(z|c), shape (N, K, C)."""
    n, k, dim = m.shape
    sq = Fq.squared_distances(m.reshape(n * k, dim), model.mu).reshape(n, k, -1)
    return -0.5 * dim * math.log(2 * math.pi * model.sigma_z2) - (sq + dim * s2[..., None]) / (2 * model.sigma_z2)


def component_entropy(s2: Tensor, dim: int) -> Tensor:
    """h_k = (L/2) log(2πe s_k²), the differential entropy of N(m_k, s_k² I_L)."""
    return 0.5 * dim * torch.log(2 * math.pi * math.e * s2)


def kl_categorical(r: Tensor, log_p: Tensor) -> Tensor:
    """KL(r ‖ p) over the last axis; zeros in r count 0 (xlogy)."""
    return (torch.special.xlogy(r, r) - r * log_p).sum(-1)


def _weighted(p: Tensor, v: Tensor) -> Tensor:
    """p ⊙ v with 0 where p = 0 (a component of weight 0 contributes nothing, even if v = ±∞)."""
    return torch.where(p > 0, p * v, torch.zeros_like(v))


def _rows(r: Tensor, n: int) -> Tensor:
    return r.expand(n, -1) if r.dim() == 1 else r


def albo(model: LinearGaussianMixture, x: Tensor, pi: Tensor, m: Tensor, s2: Tensor, r: Tensor) -> Tensor:
    """ALBO (eq. 11) with c ~ r independent of z ~ q(z|x); r (C,) shared or (N, C); shape (N,)."""
    r = _rows(r, x.shape[0])
    ell = (pi * expected_log_likelihood(model, x, m, s2)).sum(-1)
    elp = torch.einsum("nc,nk,nkc->n", r, pi, expected_log_prior(model, m, s2))
    return ell + elp - kl_categorical(r, model.log_prior)


def mixture_entropy_lower_bound(pi: Tensor, s2: Tensor, dim: int) -> Tensor:
    """Σ_k π_k h_k ≤ h(Σ_k π_k N(m_k, s_k² I)) (concavity of entropy), shape (N,)."""
    return _weighted(pi, component_entropy(s2, dim)).sum(-1)


def f_lower(model: LinearGaussianMixture, x: Tensor, pi: Tensor, m: Tensor, s2: Tensor, r: Tensor) -> Tensor:
    """ALBO + Σ_k π_k h_k ≤ ALBO + h(q(z|x)) ≤ log p(x), shape (N,)."""
    return albo(model, x, pi, m, s2, r) + mixture_entropy_lower_bound(pi, s2, m.shape[-1])


def elbo(model: LinearGaussianMixture, x: Tensor, pi: Tensor, m: Tensor, s2: Tensor) -> Tensor:
    """Standard ELBO, q(c|x) = π, q(z|x,c=k) = N(m_k, s_k² I) (K = C), shape (N,)."""
    elp = torch.diagonal(expected_log_prior(model, m, s2), dim1=1, dim2=2)
    per_k = expected_log_likelihood(model, x, m, s2) + elp + component_entropy(s2, m.shape[-1])
    return _weighted(pi, per_k).sum(-1) - kl_categorical(pi, model.log_prior)


def entropy_condition(pi: Tensor, s2: Tensor) -> Tensor:
    """Σ_k π_k log(2πe s_k²); where ≥ 0, h(q(z|x)) ≥ 0 and ALBO ≤ log p(x) is guaranteed."""
    return _weighted(pi, torch.log(2 * math.pi * math.e * s2)).sum(-1)


def gmvq_objective(
    model: LinearGaussianMixture, x: Tensor, pi: Tensor, s2: Tensor, reading: str
) -> Tensor:
    """Per-vector objective whose batch mean is what GM-VQ's loss optimises, q(z|x) centred on μ.

    With q^B = mean_n π_n and m_k = μ_k (eq. 17/18):
    - sampled: Σ_k π_k [E_k log p(x|z) + E_k log p(z|k)] − KL(q^B‖p) (batch mean = mean
      ELBO + I_B − mean Σ π h, I_B = H(q^B) − mean H(π_n));
    - aggregated: ALBO with r = q^B;  posterior: z-term with r = π_n, but KL(q^B‖p) as coded;
    - bound: F_lower with r = q^B (``gmvq-bound``).
    """
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {', '.join(READINGS)}, got {reading!r}")
    n = x.shape[0]
    m = model.mu.expand(n, -1, -1)
    q_b = Fq.aggregated_posterior(pi)
    if reading == "aggregated":
        return albo(model, x, pi, m, s2, q_b)
    if reading == "bound":
        return f_lower(model, x, pi, m, s2, q_b)
    ell = (pi * expected_log_likelihood(model, x, m, s2)).sum(-1)
    elp_all = expected_log_prior(model, m, s2)
    if reading == "sampled":
        elp = (pi * torch.diagonal(elp_all, dim1=1, dim2=2)).sum(-1)
    else:
        elp = torch.einsum("nc,nk,nkc->n", pi, pi, elp_all)
    return ell + elp - kl_categorical(q_b, model.log_prior)


def gmvq_loss_constant(model: LinearGaussianMixture) -> float:
    """The constant c in L = −2σ_x² (objective + c): (D/2) log 2πσ_x² + (L/2) log 2πσ_z²."""
    d, dim = model.A.shape
    return 0.5 * d * math.log(2 * math.pi * model.sigma_x2) + 0.5 * dim * math.log(2 * math.pi * model.sigma_z2)


def gmvq_expected_loss(q, z: Tensor, probs: Tensor, q_batch: Tensor) -> Tensor:
    """E over z ~ q(z|x) and j of a ``GMVQ`` ``q``'s training loss at latents ``z`` with π = ``probs``:
    γ (E LatReg + β KL(q^B‖U)), − γβ mean_n Σ_k π_k h_k for the bound; E LatReg: sampled Σ_k π_k L σ_k²,
    aggregated / posterior Σ_c w_c Σ_k π_k (‖μ_k − μ_c‖² + L σ_k²), w = q^B / π (MATH.md choice 1)."""
    codebook = q.codebook.to(z.dtype)
    variances = q.component_variance(Fq.squared_distances(z, codebook))
    spread = (probs * variances).sum(-1) * q.dim
    if q.latreg == "sampled":
        latreg = spread.mean()
    else:
        weights = q_batch[None, :] if q.latreg == "aggregated" else probs
        between = (weights * (probs @ Fq.squared_distances(codebook, codebook))).sum(-1)  # Σ_c w_c Σ_k π_k d_kc
        latreg = (between + spread).mean()
    penalty = q.beta * Fq.kl_to_uniform(q_batch)
    if q.objective == "bound":
        penalty = penalty - q.beta * mixture_entropy_lower_bound(probs, variances, q.dim).mean()
    return q.gamma * (latreg + penalty)


def expected_reconstruction(model: LinearGaussianMixture, x: Tensor, pi: Tensor, s2: Tensor) -> Tensor:
    """E_{q(z|x)} ‖x − Az − b‖² with q(z|x) = Σ_k π_k N(μ_k, s_k² I), shape (N,)."""
    resid = x[:, None, :] - model.mu @ model.A.t() - model.b
    return (pi * (resid.pow(2).sum(-1) + s2 * model.A.pow(2).sum())).sum(-1)


def scalar_counterexample() -> dict[str, float]:
    """C = L = D = 1, A = 1, b = 0, μ = 0, σ_z = σ_x = 0.1, x = 0, q = N(0, 0.01²)."""
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    model = LinearGaussianMixture(t([[0.0]]), t([[1.0]]), t([0.0]), 0.01, 0.01)
    x, pi, m, s2 = t([[0.0]]), t([[1.0]]), t([[[0.0]]]), t([[1e-4]])
    return {
        "log_p": float(log_evidence(model, x)),
        "albo": float(albo(model, x, pi, m, s2, t([1.0]))),
        "f": float(f_lower(model, x, pi, m, s2, t([1.0]))),  # exact F: C = 1, q Gaussian
        "entropy_condition": float(entropy_condition(pi, s2)),
    }


def paper_regime_counterexample() -> dict[str, list[float]]:
    """C = 2, M = [−1, 1], σ_z² = ½ (β = 1), σ_x = 0.05 (γ = 0.005), x ∈ {−1, 1},
    ẑ = μ_c + 0.01, r̂ = 5 (ŵ = softplus 5), σ² = ½ in eq. 18: π from eq. 16/17, σ_k² from
    eq. 18, r = q^B ≈ (½, ½), decoder A = 1, b = 0."""
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    mu = t([[-1.0], [1.0]])
    model = LinearGaussianMixture(mu, t([[1.0]]), t([0.0]), 0.5, 0.05**2)
    x = t([[-1.0], [1.0]])
    z_hat = mu + 0.01
    w = torch.nn.functional.softplus(torch.full_like(z_hat, 5.0))
    pi = torch.softmax(-0.5 * Fq.weighted_squared_distances(z_hat, w, mu), -1)
    s2 = Fq.squared_distances(z_hat, mu) / (2 * 0.5 * 1)
    q_b = Fq.aggregated_posterior(pi)
    return {
        "log_p": log_evidence(model, x).tolist(),
        "albo": albo(model, x, pi, mu.expand(2, -1, -1), s2, q_b).tolist(),
        "f_lower": f_lower(model, x, pi, mu.expand(2, -1, -1), s2, q_b).tolist(),
        "q_batch": q_b.tolist(),
        "entropy_condition": entropy_condition(pi, s2).tolist(),
    }


def counterexample_report() -> str:
    """The two counterexamples as printable text (used by the CLI and examples/)."""
    one = scalar_counterexample()
    two = paper_regime_counterexample()
    lines = [
        "ALBO (paper eq. 11) is not a lower bound of log p(x): two exact counterexamples.",
        "",
        "1) C = L = D = 1, A = 1, b = 0, mu = 0, sigma_z = sigma_x = 0.1, x = 0, q(z|x) = N(0, 0.01^2)",
        f"   log p(x) = {one['log_p']:.4f}",
        f"   ALBO     = {one['albo']:.4f}   > log p(x)",
        f"   F        = {one['f']:.4f}   (ALBO + h(q(z|x)), the true bound)",
        f"   sum_k pi_k log(2 pi e s_k^2) = {one['entropy_condition']:.4f} < 0 (entropy condition fails)",
        "",
        "2) The paper's regime: C = 2, M = [-1, 1], sigma_z^2 = 1/2 (beta = 1), sigma_x = 0.05 (gamma = 0.005),",
        "   batch x in {-1, +1}, z_hat = mu_c + 0.01, r_hat = 5, q^B = "
        + "({:.4f}, {:.4f})".format(*two["q_batch"]),
    ]
    for i, x in enumerate((-1, 1)):
        lines.append(
            f"   x = {x:+d}: log p(x) = {two['log_p'][i]:.4f}, ALBO = {two['albo'][i]:.4f} > log p(x), "
            f"F_lower = {two['f_lower'][i]:.4f}"
        )
    return "\n".join(lines)
