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
- ``head_lr_scale`` (0.1): the precision head learns at a tenth of the base lr. At the
  paper's lr 1e-2 a full-rate head swings every logit at once; on one CIFAR-10 shard for one
  epoch it left the test MSE at 0.0588 (mean-image baseline 0.0618), 0.1 gives 0.0370.
- eq. 16/17: l_c = −½ Σ_i ŵ_i (ẑ_i − μ_{c,i})², π = softmax(l), computed by log_softmax.
- eq. 12: q^B(c) = mean of π over every latent vector of the batch (all B·H·W). Under DDP
  ``aggregate="global"`` (default) takes B = every rank's batch (an all-reduce that keeps
  autograd), so KL(q^B‖U) is that of one process on the global batch; ``"local"`` uses the
  rank's batch, a smaller-batch estimate whose KL is larger (Jensen). docs/distributed.md.
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
- ``fused=True`` (default): posterior and sample by :mod:`quantizers.fused`, one autograd
  Function that computes the same function with far fewer N×C passes and stored tensors;
  ``fused=False`` is the plain reference path (``tests/test_fast_path.py`` compares them).
  ``bf16_backward=True`` (default): under bf16 autocast two of the fused backward's three
  matmuls take bf16 operands (the forward stays fp32); without autocast nothing changes.
  ``logit_matmul="3xtf32"``: the fused logits and ∂a as three TF32-exact products, for
  ``train.matmul_precision=high`` (one TF32 product moved 41 of 65,536 codes on an H100).
  ``kernel="triton"`` (CUDA; experimental, unmeasured): :mod:`quantizers.gmvq_triton`,
  which never stores the N×C logits, noise or soft sample (its Gumbel noise is Philox noise
  drawn in the kernel, so its samples differ from the PyTorch paths' for the same seed).

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
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import bounds as Bd
from . import distributed as Fd
from . import functional as Fq
from .fused import gmvq_posterior_sample
from .base import AnnealedQuantizer, QuantizerOutput, check_positive

LATREG_READINGS = ("sampled", "aggregated", "posterior")
OBJECTIVES = ("albo", "bound")
LOW_PRECISION = (torch.float16, torch.bfloat16)
TRITON_DIMS = (8, 16, 32, 64)


class GMVQ(AnnealedQuantizer):
    """Gaussian-mixture VQ trained on the (negative) ALBO, paper eq. 21, or on a valid bound."""

    def __init__(
        self,
        num_codes: int = 1024,
        dim: int = 64,
        gamma: float = 1e-2,
        beta: float = 1.0,
        sigma2: float = 0.5,
        latreg: str = "sampled",
        objective: str = "albo",
        tau_start: float = 2.0,
        tau_end: float = 0.1,
        weight_head: bool = True,
        precision_init: str | float = "auto",
        eps: float = 1e-8,
        aggregate: str = "global",
        fused: bool = True,
        head_lr_scale: float = 0.1,
        bf16_backward: bool = True,
        logit_matmul: str = "fp32",
        kernel: str = "torch",
    ) -> None:
        super().__init__(num_codes, dim)
        for name, value in (("gamma", gamma), ("beta", beta), ("eps", eps)):
            check_positive(name, value, allow_zero=True)
        check_positive("sigma2", sigma2)
        self.init_temperature(tau_start, tau_end)  # τ's buffer first, as checkpoints list it
        if latreg not in LATREG_READINGS:
            raise ValueError(f"latreg must be one of {', '.join(LATREG_READINGS)}, got {latreg!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if objective == "bound" and latreg != "aggregated":
            raise ValueError(f"objective='bound' is a bound only with latreg='aggregated', got {latreg!r}")
        self.gamma, self.beta, self.sigma2 = float(gamma), float(beta), float(sigma2)
        if precision_init != "auto":
            check_positive("precision_init", precision_init)
        self.latreg, self.objective, self.eps = latreg, objective, float(eps)
        if aggregate not in ("global", "local"):
            raise ValueError(f"aggregate must be global or local, got {aggregate!r}")
        self.aggregate = aggregate
        self.precision_init = precision_init
        self.fused, self.bf16_backward = bool(fused), bool(bf16_backward)
        if logit_matmul not in ("fp32", "3xtf32"):
            raise ValueError(f"logit_matmul must be fp32 or 3xtf32, got {logit_matmul!r}")
        self.logit_matmul = logit_matmul
        if kernel not in ("torch", "triton"):
            raise ValueError(f"kernel must be torch or triton, got {kernel!r}")
        if kernel == "triton" and (dim not in TRITON_DIMS):
            # tl.arange needs powers of two; the tiles fit an SM up to L = 64 (benchmarks/triton_fit.py).
            raise ValueError(f"kernel='triton' needs dim in {', '.join(map(str, TRITON_DIMS))}, got {dim}; "
                             "use kernel='torch'")
        self.kernel = kernel
        check_positive("head_lr_scale", head_lr_scale)
        self.head_lr_scale = float(head_lr_scale)
        self._calibrated_seen = False  # caches the buffer: no host sync per step once True
        self.embedding = nn.Parameter(torch.randn(self.num_codes, self.dim) / self.dim**0.5)
        self.weight_head = nn.Linear(dim, dim) if weight_head else None
        if self.weight_head is not None:
            # Start isotropic with ŵ = 1: zero weights, bias = softplus⁻¹(1).
            nn.init.zeros_(self.weight_head.weight)
            nn.init.constant_(self.weight_head.bias, math.log(math.expm1(1.0)))
        scale = 1.0 if precision_init == "auto" else float(precision_init)
        self.register_buffer("precision_scale", torch.tensor(scale))
        self.register_buffer("calibrated", torch.tensor(precision_init != "auto"))

    @property
    def codebook(self) -> Tensor:
        return self.embedding

    @property
    def cuda_graph_safe(self) -> bool:
        return True  # τ and s are buffers; s is calibrated in the eager steps before capture

    def check_device(self, device: torch.device) -> None:
        if self.kernel == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"kernel='triton' needs a CUDA device, but this run is on {device.type}; "
                             "use kernel='torch' (or TRITON_INTERPRET=1 to run the kernels in Triton's interpreter)")

    def param_groups(self) -> list[dict]:
        """The precision head may take a smaller step than the codebook (``head_lr_scale``):
        ŵ scales every logit, so its updates move π far more than a codeword's do."""
        if self.weight_head is None:
            return super().param_groups()
        head = list(self.weight_head.parameters())
        return [{"params": [self.embedding]}, {"params": head, "lr_scale": self.head_lr_scale}]

    @torch.no_grad()
    def calibrate_precision(self, z: Tensor) -> None:
        """s = L / mean_n min_c ‖ẑ_n − μ_c‖² (see the module docstring)."""
        nearest = Fq.squared_distances(z.float(), self.codebook.float()).min(-1).values.mean()
        nearest = Fd.all_reduce_sum_(nearest.reshape(1)).squeeze(0) / Fd.world_size()  # one s on every rank
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

    def precision_weights(self, z: Tensor) -> Tensor:
        """ŵ = softplus(r̂(ẑ)) (eq. 15), shape (N, L)."""
        if self.weight_head is None:
            return self.precision_scale.expand_as(z)
        return self.precision_scale * F.softplus(self.weight_head(z))

    def log_posterior(self, z: Tensor) -> Tensor:
        """log π = log_softmax(l) with l from eq. 16, shape (N, C); fp32 under autocast
        (float64 stays float64, for the exact property tests)."""
        dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
        weights = self.precision_weights(z).to(dtype)
        with torch.autocast(z.device.type, enabled=False):
            logits = -0.5 * Fq.weighted_squared_distances(z.to(dtype), weights, self.codebook.to(dtype))
            return torch.log_softmax(logits, dim=-1)

    def component_variance(self, sq_dist: Tensor) -> Tensor:
        """σ_c² = (‖ẑ − μ_c‖² + eps) / (2σ²L), eq. 18 with the variance floor eps."""
        return (sq_dist + self.eps) / (2.0 * self.sigma2 * self.dim)

    def component_std(self, sq_dist: Tensor) -> Tensor:
        """σ_c = √(σ_c²) (eq. 18); the eps floor keeps ∂σ/∂ẑ finite at ẑ = μ_c."""
        return torch.sqrt(self.component_variance(sq_dist))

    def sample(
        self, z: Tensor, log_pi: Tensor, gumbel: Tensor | None = None, normal: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """z = c_qᵀM + σ_j ε with c_q the straight-through Gumbel sample; (z_s, j, σ_j²‖ε‖²).

        ``gumbel`` (N, C) and ``normal`` (N, L) fix the noise (tests); drawn when None.
        """
        c_q, indices, _ = Fq.gumbel_softmax_st(log_pi, self.tau, noise=gumbel)
        with torch.autocast(z.device.type, enabled=False):  # the sample in fp32 under autocast too
            centre = c_q @ self.codebook.to(z.dtype)
        z_s, sampled_sq = self._add_noise(z, centre, indices, normal)
        return z_s, indices, sampled_sq

    def _add_noise(self, z: Tensor, centre: Tensor, indices: Tensor, normal: Tensor | None = None
                   ) -> tuple[Tensor, Tensor]:
        """(z = centre + σ_j ε, σ_j²‖ε‖²) with σ_j from eq. 18; both paths' last step."""
        noise = torch.randn_like(z) if normal is None else normal
        std = self.component_std((z - self.codebook.to(z.dtype)[indices]).pow(2).sum(-1))
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
        per_vector = (
            z.pow(2).sum(-1)
            - 2.0 * (z * (weights @ codebook)).sum(-1)
            + (weights * codebook.pow(2).sum(-1)).sum(-1)
        )
        return per_vector.mean()

    def expected_latent_regularizer(self, probs: Tensor, q_batch: Tensor, variances: Tensor) -> Tensor:
        """E over z ~ q(z|x) (and j) of :meth:`latent_regularizer`, in closed form.

        sampled: Σ_k π_k L σ_k²; aggregated / posterior: Σ_c w_c Σ_k π_k (‖μ_k − μ_c‖² + L σ_k²)
        with w = q^B / π (MATH.md choice 1).
        """
        spread = (probs * variances).sum(-1) * self.dim
        if self.latreg == "sampled":
            return spread.mean()
        codebook = self.codebook.to(probs.dtype)
        weights = q_batch[None, :] if self.latreg == "aggregated" else probs
        between = (weights * (probs @ Fq.squared_distances(codebook, codebook))).sum(-1)  # Σ_c w_c Σ_k π_k d_kc
        return (between + spread).mean()

    def _working(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(z in its compute dtype, log π, π, q^B): fp32 under low precision, else z's dtype."""
        zw = self._calibrated(z.float() if z.dtype in LOW_PRECISION else z)
        log_pi = self.log_posterior(zw)
        probs = log_pi.exp()
        return zw, log_pi, probs, self._batch_posterior(probs)

    def _backward_dtype(self, device_type: str) -> torch.dtype | None:
        """bf16 for the fused backward's matmuls when the step runs under bf16 autocast."""
        if self.bf16_backward and torch.is_autocast_enabled(device_type) \
                and torch.get_autocast_dtype(device_type) == torch.bfloat16:
            return torch.bfloat16
        return None

    def _calibrated(self, z: Tensor) -> Tensor:
        """``z`` unchanged, once the precision scale has been set from it (first training batch)."""
        if self.training and self._needs_calibration():
            self.calibrate_precision(z.detach())
        return z

    def _batch_posterior(self, probs: Tensor) -> Tensor:
        """q^B (eq. 12): over every rank's batch in training with ``aggregate="global"``."""
        return Fq.aggregated_posterior(probs, global_batch=self.training and self.aggregate == "global")

    def _variances(self, zw: Tensor) -> Tensor:
        """σ_c² (eq. 18) of every vector and code, (N, C)."""
        return self.component_variance(Fq.squared_distances(zw, self.codebook.to(zw.dtype)))

    def _entropy_term(self, probs: Tensor, variances: Tensor) -> Tensor:
        """mean_n Σ_k π_k h_k, h_k = (L/2) log(2πe σ_k²): a lower bound of h(q(z|x)) (bounds.py)."""
        return Bd.mixture_entropy_lower_bound(probs, variances, self.dim).mean()

    def expected_loss(self, z: Tensor) -> Tensor:
        """E_{q(z|x)} of the training loss of :meth:`quantize` (no reconstruction), closed form."""
        zw, _, probs, q_batch = self._working(z)
        variances = self._variances(zw)
        penalty = self.beta * Fq.kl_to_uniform(q_batch)
        if self.objective == "bound":
            penalty = penalty - self.beta * self._entropy_term(probs, variances)
        return self.gamma * (self.expected_latent_regularizer(probs, q_batch, variances) + penalty)

    def quantize(self, z: Tensor) -> QuantizerOutput:
        if self.fused and z.dtype != torch.float64:
            # One pass for π, q^B's input and the Gumbel sample (quantizers/fused.py); same
            # function and the same noise draws as the plain path below.
            zw = self._calibrated(z.float())
            path = gmvq_posterior_sample
            if self.kernel == "triton" and (zw.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
                from .gmvq_triton import triton_posterior_sample as path  # Triton only when asked for
            probs, centre, indices, post_entropy = path(
                zw, self.precision_weights(zw), self.codebook.float(), self.tau, sample=self.training,
                grad_dtype=self._backward_dtype(z.device.type), split_tf32=self.logit_matmul == "3xtf32")
            q_batch = self._batch_posterior(probs)
            if self.training:
                z_s, sampled_sq = self._add_noise(zw, centre, indices)
            else:
                z_s, sampled_sq = centre, torch.zeros_like(zw[:, 0])
        else:
            zw, log_pi, probs, q_batch = self._working(z)
            post_entropy = Fq.entropy(probs).mean()
            if self.training:
                z_s, indices, sampled_sq = self.sample(zw, log_pi)
            else:
                indices = log_pi.argmax(-1)
                z_s = self.codebook.to(zw.dtype)[indices]
                sampled_sq = torch.zeros_like(zw[:, 0])
        kl = Fq.kl_to_uniform(q_batch)
        latreg = self.latent_regularizer(z_s, probs, q_batch, sampled_sq)
        penalty = self.beta * kl
        terms = {"latreg": latreg.detach(), "kl": kl.detach()}
        if self.objective == "bound":
            entropy = self._entropy_term(probs, self._variances(zw))
            penalty = penalty - self.beta * entropy
            terms["z_entropy_bound"] = entropy.detach()
        loss = self.gamma * (latreg + penalty)
        terms["posterior_entropy"] = post_entropy.detach()
        terms["tau"] = self.tau.detach().clone()
        return QuantizerOutput(z_q=z_s.to(z.dtype), loss=loss, terms=terms, indices=indices, probs=probs)
