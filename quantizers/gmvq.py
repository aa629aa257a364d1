"""GM-VQ: Gaussian Mixture Vector Quantization with the aggregated categorical posterior.

Paper: "Gaussian Mixture Vector Quantization with Aggregated Categorical Posterior"
(``shared/paper/gmvq-paper.txt``), §3.3, eqs. 12–18 and 21. Choices where the paper is
silent follow ``shared/MATH.md`` and are constructor options:

- eq. 15: ŵ = softplus(r̂). The raw weights r̂ come from a linear head on ẑ that this
  module owns (``weight_head=True``), so any encoder works unchanged; it is a 1×1
  convolution on the encoder's output, i.e. part of E_φ. ``weight_head=False``: ŵ = 1.
- Scale of ŵ: the encoder's output scale is arbitrary (≈ 0.01 per dimension at
  initialisation), so ŵ = 1 gives a uniform π and training collapses to the degenerate
  optimum of KL(q^B‖U) where every π is uniform. ŵ = s · softplus(r̂) with a fixed
  (buffer) scale s set once from data (``precision_init="auto"``: s = 1/(mean nearest-code
  squared distance per dimension), at k-means initialisation or the first training batch);
  a float fixes s instead. The head starts at softplus(r̂) = 1. This is a constant
  reparameterisation of eq. 15, data-dependent like ActNorm's initialisation.
- eq. 16/17: l_c = −½ Σ_i ŵ_i (ẑ_i − μ_{c,i})², π = softmax(l), computed by log_softmax.
- eq. 12: q^B(c) = mean of π over every latent vector of the batch (all B·H·W).
- eq. 18: σ_c² = ‖ẑ − μ_c‖² / (2 σ² L) with its own ``sigma2`` (not tied to β, so
  "+ Entropy" raising β does not change the noise); √(d² + eps) keeps the gradient finite.
- Sampling: j = argmax(log π + g), c_q = onehot(j) + y − sg(y), y = softmax_τ(log π + g),
  z = c_qᵀM + σ_j ε; τ anneals 2.0 → 0.1 exponentially through ``set_progress``.
- eq. 14 LatReg, three readings (``latreg``): ``sampled`` ‖z − μ_j‖² = σ_j²‖ε‖² (default),
  ``aggregated`` Σ_c q^B(c)‖z − μ_c‖², ``posterior`` Σ_c π(c)‖z − μ_c‖².
- Loss (eq. 13/14/21): γ (mean_n LatReg_n + β KL(q^B ‖ U)). The runner adds the
  reconstruction as a mean over pixels; LatReg is summed over L and averaged over vectors;
  the KL counts once per batch. γ's scale depends on these reductions.
- Eval (§5.1): no noise, z = μ_j with j = argmax π.
- ``fused=True`` (default): posterior and sample by :mod:`quantizers.fused`, one autograd
  Function that computes the same function with far fewer N×C passes and stored tensors;
  ``fused=False`` is the plain reference path (``tests/test_fast_path.py`` compares them).

``gmvq-entropy`` is this class with β > 1 (registry default β = 2, tuned by the ``beta`` sweep).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as Fq
from .fused import gmvq_posterior_sample
from .base import Quantizer, QuantizerOutput, check_positive

LATREG_READINGS = ("sampled", "aggregated", "posterior")


class GMVQ(Quantizer):
    """Gaussian-mixture VQ trained on the (negative) ALBO, paper eq. 21."""

    def __init__(
        self,
        num_codes: int = 1024,
        dim: int = 64,
        gamma: float = 1e-2,
        beta: float = 1.0,
        sigma2: float = 0.5,
        latreg: str = "sampled",
        tau_start: float = 2.0,
        tau_end: float = 0.1,
        weight_head: bool = True,
        precision_init: str | float = "auto",
        eps: float = 1e-8,
        fused: bool = True,
    ) -> None:
        super().__init__(num_codes, dim)
        for name, value in (("gamma", gamma), ("beta", beta)):
            check_positive(name, value, allow_zero=True)
        for name, value in (("sigma2", sigma2), ("tau_start", tau_start), ("tau_end", tau_end)):
            check_positive(name, value)
        if latreg not in LATREG_READINGS:
            raise ValueError(f"latreg must be one of {', '.join(LATREG_READINGS)}, got {latreg!r}")
        self.gamma, self.beta, self.sigma2 = float(gamma), float(beta), float(sigma2)
        if precision_init != "auto":
            check_positive("precision_init", precision_init)
        self.latreg, self.eps = latreg, float(eps)
        self.precision_init = precision_init
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.fused = bool(fused)
        self._calibrated_seen = False  # caches the buffer: no host sync per step once True
        self.embedding = nn.Parameter(torch.randn(self.num_codes, self.dim) / self.dim**0.5)
        self.weight_head = nn.Linear(dim, dim) if weight_head else None
        if self.weight_head is not None:
            # Start isotropic with ŵ = 1: zero weights, bias = softplus⁻¹(1).
            nn.init.zeros_(self.weight_head.weight)
            nn.init.constant_(self.weight_head.bias, math.log(math.expm1(1.0)))
        # A buffer, so checkpoints carry the current temperature.
        self.register_buffer("tau", torch.tensor(self.tau_start))
        scale = 1.0 if precision_init == "auto" else float(precision_init)
        self.register_buffer("precision_scale", torch.tensor(scale))
        self.register_buffer("calibrated", torch.tensor(precision_init != "auto"))

    @property
    def codebook(self) -> Tensor:
        return self.embedding

    @torch.no_grad()
    def calibrate_precision(self, z: Tensor) -> None:
        """s = L / mean_n min_c ‖ẑ_n − μ_c‖² (see the module docstring)."""
        nearest = Fq.squared_distances(z.float(), self.codebook.float()).min(-1).values.mean()
        self.precision_scale.fill_(float(self.dim / nearest.clamp_min(1e-12)))
        self.calibrated.fill_(True)
        self._calibrated_seen = True

    def _needs_calibration(self) -> bool:
        if not self._calibrated_seen:  # reads the buffer (one sync) until it is True
            self._calibrated_seen = bool(self.calibrated)
        return not self._calibrated_seen

    def init_codebook(self, samples: Tensor, generator: torch.Generator | None = None) -> None:
        super().init_codebook(samples, generator)
        if self.precision_init == "auto":
            self.calibrate_precision(samples)

    def set_progress(self, fraction: float) -> None:
        f = min(max(float(fraction), 0.0), 1.0)
        self.tau.fill_(self.tau_start * (self.tau_end / self.tau_start) ** f)

    def precision_weights(self, z: Tensor) -> Tensor:
        """ŵ = softplus(r̂(ẑ)) (eq. 15), shape (N, L)."""
        if self.weight_head is None:
            return self.precision_scale.expand_as(z)
        return self.precision_scale * F.softplus(self.weight_head(z))

    def log_posterior(self, z: Tensor) -> Tensor:
        """log π = log_softmax(l) with l from eq. 16, shape (N, C), in fp32 under autocast."""
        weights = self.precision_weights(z).float()
        with torch.autocast(z.device.type, enabled=False):
            logits = -0.5 * Fq.weighted_squared_distances(z.float(), weights, self.codebook.float())
            return torch.log_softmax(logits, dim=-1)

    def component_std(self, sq_dist: Tensor) -> Tensor:
        """σ_c from eq. 18, √((d² + eps) / (2σ²L)); eps keeps ∂σ/∂d finite at d = 0."""
        return torch.sqrt((sq_dist + self.eps) / (2.0 * self.sigma2 * self.dim))

    def latent_regularizer(self, z: Tensor, probs: Tensor, q_batch: Tensor, sampled_sq: Tensor) -> Tensor:
        """Mean over vectors of eq. 14's LatReg under the configured reading."""
        if self.latreg == "sampled":
            return sampled_sq.mean()
        codebook = self.codebook.float()
        weights = q_batch[None, :] if self.latreg == "aggregated" else probs
        # Σ_c w_c ‖z − μ_c‖² = ‖z‖² − 2 z·(wᵀM) + w·‖μ‖², without an N×C×L tensor.
        per_vector = (
            z.pow(2).sum(-1)
            - 2.0 * (z * (weights @ codebook)).sum(-1)
            + (weights * codebook.pow(2).sum(-1)).sum(-1)
        )
        return per_vector.mean()

    def quantize(self, z: Tensor) -> QuantizerOutput:
        z32 = z.float()  # distances, softmax and KL in fp32 even under autocast
        if self.training and self._needs_calibration():
            self.calibrate_precision(z32.detach())
        codebook = self.codebook.float()
        if self.fused:
            weights = self.precision_weights(z32)
            probs, centre, indices, post_entropy = gmvq_posterior_sample(
                z32, weights, codebook, self.tau, sample=self.training)
        else:
            log_pi = self.log_posterior(z32)
            probs = log_pi.exp()
            post_entropy = Fq.entropy(probs).mean()
            if self.training:
                c_q, indices, _ = Fq.gumbel_softmax_st(log_pi, float(self.tau))
                with torch.autocast(z.device.type, enabled=False):  # the sample in fp32 too
                    centre = c_q @ codebook
            else:
                indices = log_pi.argmax(-1)
                centre = codebook[indices]
        q_batch = Fq.aggregated_posterior(probs)
        kl = Fq.kl_to_uniform(q_batch)
        if self.training:
            sq_dist = (z32 - codebook[indices]).pow(2).sum(-1)
            noise = torch.randn_like(z32)
            std = self.component_std(sq_dist)
            z_s = centre + std[:, None] * noise
            # ‖z − μ_j‖² = σ_j²‖ε‖²: only σ_j carries gradient (a commitment-like pull).
            sampled_sq = std.pow(2) * noise.pow(2).sum(-1)
        else:
            z_s = centre
            sampled_sq = torch.zeros_like(z32[:, 0])
        latreg = self.latent_regularizer(z_s, probs, q_batch, sampled_sq)
        loss = self.gamma * (latreg + self.beta * kl)
        terms = {
            "latreg": latreg.detach(),
            "kl": kl.detach(),
            "posterior_entropy": post_entropy.detach(),
            "tau": self.tau.detach().clone(),
        }
        return QuantizerOutput(z_q=z_s.to(z.dtype), loss=loss, terms=terms, indices=indices, probs=probs)
