"""GM-VQ: Gaussian Mixture Vector Quantization with the aggregated categorical posterior.

Paper: "Gaussian Mixture Vector Quantization with Aggregated Categorical Posterior"
(``shared/paper/gmvq-paper.txt``), §3.3, eqs. 12–18 and 21. Choices where the paper is
silent follow ``shared/MATH.md`` and are constructor options:

- eq. 15: ŵ = softplus(r̂). The raw weights r̂ come from a linear head on ẑ that this
  module owns (``weight_head=True``), so any encoder works unchanged; it is a 1×1
  convolution on the encoder's output, i.e. part of E_φ. ``weight_head=False``: ŵ = 1.
- Scale of ŵ: the encoder's output scale is arbitrary (≈ 0.01 per dimension at init), so
  ŵ = 1 gives a uniform π and training collapses to the degenerate optimum of KL(q^B‖U)
  where every π is uniform. ŵ = s · softplus(r̂) with a fixed (buffer) scale s set once from
  data (``precision_init="auto"``: s = 1/(mean nearest-code squared distance per dimension),
  at k-means init or the first training batch; a float fixes s), the head starting at
  softplus(r̂) = 1: a constant reparameterisation of eq. 15, like ActNorm's data init.
- ``head_lr_scale`` (0.1): the head learns at a tenth of the lr; at the paper's lr 1e-2 a
  full-rate head swings every logit at once (one CIFAR-10 shard, one epoch: test MSE 0.0588,
  the mean image's 0.0618; 0.1 gives 0.0370).
- eq. 16/17: l_c = −½ Σ_i ŵ_i (ẑ_i − μ_{c,i})², π = softmax(l), computed by log_softmax.
- eq. 12: q^B(c) = mean of π over every latent vector of the batch (all B·H·W). Under DDP
  ``aggregate="global"`` (default) takes every rank's batch (an all-reduce that keeps
  autograd); ``"local"`` the rank's, whose KL is larger (Jensen). docs/distributed.md.
- eq. 18: σ_c² = (‖ẑ − μ_c‖² + eps) / (2 σ² L) with its own ``sigma2`` (not tied to β, so
  "+ Entropy" raising β does not change the noise); eps (default 1e-8) is a variance floor
  that keeps ∂σ_c/∂ẑ finite at ẑ = μ_c (√(d² + eps)); ``eps=0`` is eq. 18 exactly.
  q(z|x) = Σ_k π_k N(μ_k, σ_k² I) uses these variances in every closed form below.
- Sampling: j = argmax(log π + g), c_q = onehot(j) + y − sg(y), y = softmax_τ(log π + g),
  z = c_qᵀM + σ_j ε; τ anneals 2.0 → 0.1 exponentially through ``set_progress``.
- eq. 14 LatReg, three readings (``latreg``): ``sampled`` ‖z − μ_j‖² = σ_j²‖ε‖² (default),
  ``aggregated`` Σ_c q^B(c)‖z − μ_c‖², ``posterior`` Σ_c π(c)‖z − μ_c‖².
- Loss (eq. 13/14/21), ``objective="albo"``: γ (mean_n LatReg_n + β KL(q^B ‖ U)). The runner
  adds the reconstruction as a mean over pixels; LatReg is summed over L and averaged over
  vectors; the KL counts once per batch. γ's scale depends on these reductions. With the
  reconstruction summed over each vector's pixels, γ = σ_x²/σ_z², β = 2σ_z² and the loss is
  −2σ_x² (ALBO + const) (``quantizers.bounds``, Appendix A.3).
- Eval (§5.1): no noise, z = μ_j with j = argmax π.
- ``backend``: ``"reference"``, the path :meth:`GMVQ.quantize` writes out eq. by eq.;
  ``"fused"`` / ``"triton"`` (CUDA, experimental): the same function faster, tested equal to
  it (:mod:`quantizers.kernels`). ``"auto"``: ``"fused"``, the fastest tested equal on every
  device, and ``"reference"`` for float64 input; never ``"triton"``. ``logit_matmul`` and
  ``bf16_backward`` (None: the backend's default) set the fast backends' matmul precision
  (:mod:`quantizers.kernels.precision`) and are refused with ``backend="reference"``.

Registered variants (``registry.yaml``):

- ``gmvq``: the paper's method, ``latreg="sampled"``, ``objective="albo"``.
- ``gmvq-entropy``: the same with β > 1 (registry default β = 2, tuned by the ``beta`` sweep).
- ``gmvq-bound``: trained on a valid lower bound of log p(x) (``shared/MATH.md``, "The bound is
  not a bound"; ``docs/albo.md``). ALBO drops the differential entropy h(q(z|x)), which can be
  negative, so ALBO can exceed log p(x). ``objective="bound"`` keeps it through the mixture
  lower bound h(q(z|x)) ≥ Σ_k π_k h_k, h_k = (L/2) log(2πe σ_k²), and needs
  ``latreg="aggregated"``: loss = γ (mean_n LatReg_n + β KL(q^B ‖ U) − β mean_n Σ_k π_nk h_nk),
  i.e. L − γβ Σ_k π_k h_k in the same per-vector units as LatReg (γβ = 2σ_x²), which is
  −2σ_x² (F_lower + const).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import bounds as Bd
from . import distributed as Fd
from . import functional as Fq
from . import kernels
from .base import AnnealedQuantizer, CodebookQuantizer, QuantizerOutput, check_positive
from .calibration import CalibratedQuantizer
from .kernels.precision import backward_dtype

LOW_PRECISION = (torch.float16, torch.bfloat16)


class GMVQ(AnnealedQuantizer, CalibratedQuantizer, CodebookQuantizer):
    """Gaussian-mixture VQ trained on the (negative) ALBO, paper eq. 21, or on a valid bound."""

    def __init__(
        self,
        num_codes: int = 1024, dim: int = 64,
        gamma: float = 1e-2, beta: float = 1.0, sigma2: float = 0.5,
        latreg: str = "sampled", objective: str = "albo",
        tau_start: float = 2.0, tau_end: float = 0.1,
        weight_head: bool = True, precision_init: str | float = "auto", eps: float = 1e-8,
        aggregate: str = "global", head_lr_scale: float = 0.1,
        backend: str = "auto", logit_matmul: str | None = None, bf16_backward: bool | None = None,
    ) -> None:
        super().__init__(num_codes, dim)  # the codebook μ (C, L)
        for name, value in (("gamma", gamma), ("beta", beta), ("eps", eps)):
            check_positive(name, value, allow_zero=True)
        check_positive("sigma2", sigma2)
        self.init_temperature(tau_start, tau_end)  # τ's buffer first, as checkpoints list it
        for name, value, allowed in (("latreg", latreg, ("sampled", "aggregated", "posterior")),
                                     ("objective", objective, ("albo", "bound")), ("aggregate", aggregate, ("global", "local"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if objective == "bound" and latreg != "aggregated":
            raise ValueError(f"objective='bound' is a bound only with latreg='aggregated', got {latreg!r}")
        kernels.check_options(backend, dim, logit_matmul=logit_matmul, bf16_backward=bf16_backward)
        if precision_init != "auto":
            check_positive("precision_init", precision_init)
        check_positive("head_lr_scale", head_lr_scale)
        self.gamma, self.beta, self.sigma2, self.eps = float(gamma), float(beta), float(sigma2), float(eps)
        self.latreg, self.objective, self.aggregate = latreg, objective, aggregate
        self.precision_init, self.head_lr_scale = precision_init, float(head_lr_scale)
        self.backend, self.logit_matmul = backend, logit_matmul or "fp32"
        self.bf16_backward = True if bf16_backward is None else bf16_backward
        self.weight_head = nn.Linear(dim, dim) if weight_head else None
        if self.weight_head is not None:
            # Start isotropic with ŵ = 1: zero weights, bias = softplus⁻¹(1).
            nn.init.zeros_(self.weight_head.weight)
            nn.init.constant_(self.weight_head.bias, math.log(math.expm1(1.0)))
        scale = 1.0 if precision_init == "auto" else float(precision_init)
        self.register_buffer("precision_scale", torch.tensor(scale))
        self.init_calibration(from_data=precision_init == "auto")

    @property
    def cuda_graph_safe(self) -> bool:
        return True  # τ and s are buffers; s is calibrated in the eager steps before capture

    def check_device(self, device: torch.device) -> None:
        kernels.check_device(self.backend, device)

    def param_groups(self) -> list[dict]:
        """The precision head may take a smaller step than the codebook (``head_lr_scale``):
        ŵ scales every logit, so its updates move π far more than a codeword's do."""
        if self.weight_head is None:
            return super().param_groups()
        head = list(self.weight_head.parameters())
        return [{"params": [self.embedding]}, {"params": head, "lr_scale": self.head_lr_scale}]

    def calibrate_from(self, z: Tensor) -> None:
        """s = L / mean_n min_c ‖ẑ_n − μ_c‖² (see the module docstring)."""
        nearest = Fq.squared_distances(z.float(), self.codebook.float()).min(-1).values.mean()
        nearest = Fd.all_reduce_sum_(nearest.reshape(1)).squeeze(0) / Fd.world_size()  # one s on every rank
        self.precision_scale.fill_(float(self.dim / nearest.clamp_min(1e-12)))

    def _working(self, z: Tensor) -> Tensor:
        """``z`` in its compute dtype (fp32 under low precision), having set s from it if unset."""
        z = z.float() if z.dtype in LOW_PRECISION else z
        self.calibrate_if_unset(z)
        return z

    def precision_weights(self, z: Tensor) -> Tensor:
        """ŵ = s · softplus(r̂(ẑ)) (eq. 15), shape (N, L)."""
        if self.weight_head is None:
            return self.precision_scale.expand_as(z)
        return self.precision_scale * F.softplus(self.weight_head(z))

    def log_posterior(self, z: Tensor, weights: Tensor | None = None) -> Tensor:
        """log π = log_softmax(l), l_c = −½ Σ_i ŵ_i (ẑ_i − μ_{c,i})² (eqs. 16/17), shape (N, C);
        fp32 under autocast (float64 stays float64, for the exact property tests)."""
        dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
        weights = (self.precision_weights(z) if weights is None else weights).to(dtype)
        with torch.autocast(z.device.type, enabled=False):
            logits = -0.5 * Fq.weighted_squared_distances(z.to(dtype), weights, self.codebook.to(dtype))
            return torch.log_softmax(logits, dim=-1)

    def component_variance(self, sq_dist: Tensor) -> Tensor:
        """σ_c² = (‖ẑ − μ_c‖² + eps) / (2σ²L), eq. 18 with the variance floor eps."""
        return (sq_dist + self.eps) / (2.0 * self.sigma2 * self.dim)

    def sample(self, z: Tensor, log_pi: Tensor, gumbel: Tensor | None = None, normal: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
        """z = c_qᵀM + σ_j ε with c_q the straight-through Gumbel sample; (z_s, j, σ_j²‖ε‖²).
        ``gumbel`` (N, C) and ``normal`` (N, L) fix the noise (tests); drawn when None."""
        c_q, indices, _ = Fq.gumbel_softmax_st(log_pi, self.tau, noise=gumbel)
        with torch.autocast(z.device.type, enabled=False):  # the sample in fp32 under autocast too
            centre = c_q @ self.codebook.to(z.dtype)
        z_s, sampled_sq = self._add_noise(z, centre, indices, normal)
        return z_s, indices, sampled_sq

    def _add_noise(self, z: Tensor, centre: Tensor, indices: Tensor, normal: Tensor | None = None
                   ) -> tuple[Tensor, Tensor]:
        """(z = centre + σ_j ε, σ_j²‖ε‖²) with σ_j from eq. 18; every backend's last step."""
        noise = torch.randn_like(z) if normal is None else normal
        # σ_j = √(σ_j²): the eps floor keeps ∂σ/∂ẑ finite at ẑ = μ_j.
        std = torch.sqrt(self.component_variance((z - self.codebook.to(z.dtype)[indices]).pow(2).sum(-1)))
        with torch.autocast(z.device.type, enabled=False):
            z_s = centre + std[:, None] * noise
        # ‖z − μ_j‖² = σ_j²‖ε‖²: only σ_j carries gradient (a commitment-like pull).
        return z_s, std.pow(2) * noise.pow(2).sum(-1)

    def latent_regularizer(self, z: Tensor, probs: Tensor, q_batch: Tensor, sampled_sq: Tensor) -> Tensor:
        """Mean over vectors of eq. 14's LatReg under the configured reading (one sample)."""
        if self.latreg == "sampled":
            return sampled_sq.mean()
        codebook = self.codebook.to(z.dtype)
        weights = q_batch[None, :] if self.latreg == "aggregated" else probs
        # Σ_c w_c ‖z − μ_c‖² = ‖z‖² − 2 z·(wᵀM) + w·‖μ‖², without an N×C×L tensor.
        per_vector = z.pow(2).sum(-1) - 2.0 * (z * (weights @ codebook)).sum(-1) \
            + (weights * codebook.pow(2).sum(-1)).sum(-1)
        return per_vector.mean()

    def _batch_posterior(self, probs: Tensor) -> Tensor:
        """q^B (eq. 12): over every rank's batch in training with ``aggregate="global"``."""
        return Fq.aggregated_posterior(probs, global_batch=self.training and self.aggregate == "global")

    def _entropy_term(self, zw: Tensor, probs: Tensor) -> Tensor:
        """mean_n Σ_k π_k h_k, h_k = (L/2) log(2πe σ_k²): a lower bound of h(q(z|x)) (bounds.py)."""
        variances = self.component_variance(Fq.squared_distances(zw, self.codebook.to(zw.dtype)))
        return Bd.mixture_entropy_lower_bound(probs, variances, self.dim).mean()

    def expected_loss(self, z: Tensor) -> Tensor:
        """E_{q(z|x)} of the training loss of :meth:`quantize` (no reconstruction), closed form."""
        zw = self._working(z)
        probs = self.log_posterior(zw).exp()
        return Bd.gmvq_expected_loss(self, zw, probs, self._batch_posterior(probs))

    def quantize(self, z: Tensor) -> QuantizerOutput:
        """GM-VQ on (N, L) vectors: eq. 15 → 16/17 → 12 → the sample (§3.3.2, eq. 18) → 14 → 21."""
        zw = self._working(z)
        backend = self.backend if self.backend != "auto" else "reference" if zw.dtype == torch.float64 else "fused"
        weights = self.precision_weights(zw)  # eq. 15
        if backend == "reference":
            log_pi = self.log_posterior(zw, weights)  # eqs. 16/17
            probs = log_pi.exp()
            q_batch = self._batch_posterior(probs)  # eq. 12
            post_entropy = Fq.entropy(probs).mean()
            if self.training:  # the straight-through Gumbel sample plus σ_j ε (eq. 18)
                z_s, indices, sampled_sq = self.sample(zw, log_pi)
            else:  # §5.1: no noise, z = μ_j with j = argmax π
                indices = log_pi.argmax(-1)
                z_s, sampled_sq = self.codebook.to(zw.dtype)[indices], torch.zeros_like(zw[:, 0])
        else:  # the same lines by a fast backend (quantizers.kernels; "fused" draws the same noise)
            probs, centre, indices, post_entropy = kernels.posterior_sample(
                zw, weights, self.codebook.float(), self.tau, self.training, backend=backend,
                grad_dtype=backward_dtype(self.bf16_backward, zw.device.type), split_tf32=self.logit_matmul == "3xtf32")
            q_batch = self._batch_posterior(probs)
            z_s, sampled_sq = self._add_noise(zw, centre, indices) if self.training else (centre, zw.new_zeros(len(zw)))
        kl = Fq.kl_to_uniform(q_batch)
        latreg = self.latent_regularizer(z_s, probs, q_batch, sampled_sq)  # eq. 14
        penalty = self.beta * kl
        terms = {"latreg": latreg.detach(), "kl": kl.detach()}
        if self.objective == "bound":
            entropy = self._entropy_term(zw, probs)
            penalty = penalty - self.beta * entropy
            terms["z_entropy_bound"] = entropy.detach()
        loss = self.gamma * (latreg + penalty)  # eq. 21 (or the bound, module docstring)
        terms.update(posterior_entropy=post_entropy.detach(), tau=self.tau.detach().clone())
        return QuantizerOutput(z_q=z_s.to(z.dtype), loss=loss, terms=terms, indices=indices, probs=probs)
